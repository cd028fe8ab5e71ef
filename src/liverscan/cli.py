"""Compatibility entry point: the command line lives in :mod:`liverscan.faces.cli`."""

from liverscan.faces.cli import app, main

__all__ = ["app", "main"]
