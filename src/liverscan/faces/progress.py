"""Rich live progress for training (epoch, metrics, learning rate, ETA)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichReporter:
    """Implements liverscan.training.train.Reporter with a Rich progress display."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def phase(self, name: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(name, total=total, metrics="")

    def advance(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def epoch(self, row: dict, state, max_epochs: int) -> None:
        metrics = (
            f"loss {row['loss']:.3f} acc {row['accuracy']:.3f} | val loss {row['val_loss']:.3f} "
            f"acc {row['val_accuracy']:.3f} | lr {row['learning_rate']:.1e} | best {state.best_val_accuracy:.3f}"
            f"@{state.best_epoch}"
        )
        self.progress.update(self.task, completed=state.next_epoch, total=max_epochs, metrics=metrics)
