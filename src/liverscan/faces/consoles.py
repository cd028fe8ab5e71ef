"""The command line's two Rich consoles (standard output and standard error), made on first use.

``liverscan --help`` prints through Click and never loads Rich (benchmarks/startup.py); a command that
prints a table, a note or an error loads it then.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console() -> Console:
    """The console on standard output (tables, results)."""
    from rich.console import Console

    return Console()


@functools.cache
def err_console() -> Console:
    """The console on standard error (notes, warnings, errors, progress)."""
    from rich.console import Console

    return Console(stderr=True)


def escape(text: str) -> str:
    """``text`` with Rich markup shown literally (:func:`rich.markup.escape`, loaded when first needed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)
