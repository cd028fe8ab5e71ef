"""Command-line options shared by several commands, declared once, and the hidden aliases of renamed ones.

Each shared option means the same in every command that takes it; an option whose name changed keeps its
old spelling as a hidden alias that still works and says what replaced it (see the CHANGELOG).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from liverscan.faces.consoles import escape

if TYPE_CHECKING:
    from rich.console import Console

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a configuration value, e.g. --set train.epochs=30 (repeatable)."
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No tables or progress: only warnings, errors and the result line.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace what an earlier run of this command wrote there.")
]
SeedOpt = Annotated[
    Optional[int],
    typer.Option(
        help="Random seed of this command (the split, training or bootstrap); the same seed, the same result."
    ),
]
OutDirOpt = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Output directory (its default is in the command's description).")
]
ModelOpt = Annotated[
    Optional[Path], typer.Option("--model", "-m", help="Run directory or model file (default: the shipped model).")
]
UseOperatingPointOpt = Annotated[
    bool,
    typer.Option("--use-operating-point", help="Decide by the operating point stored in the model card (else argmax)."),
]

T = TypeVar("T")


def renamed(old: str, new: str, old_value: T | None, new_value: T, console: Console) -> T:
    """The value of a renamed option: the new spelling's, or the old (hidden) one's with a note saying what
    replaced it."""
    if old_value is None or old_value is False:
        return new_value
    console.print(
        f"[yellow]note:[/] {escape(old)} is now {escape(new)}; the old spelling still works for now",
        highlight=False,
        soft_wrap=True,
    )
    return old_value
