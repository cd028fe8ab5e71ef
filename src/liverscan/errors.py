"""Exception types that carry enough context for a one-line message."""

from __future__ import annotations

from pathlib import Path


class LiverscanError(Exception):
    """Base class for every error liverscan reports to a user."""


class ImageDecodeError(LiverscanError):
    """A file could not be turned into a model input image."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(LiverscanError):
    """Invalid configuration (unknown keys, wrong types, bad values)."""


class DataError(LiverscanError):
    """A dataset problem that stops a command (e.g. unmapped categories)."""


class RunDirError(LiverscanError):
    """A run or prepared directory is missing, incomplete or would be overwritten."""
