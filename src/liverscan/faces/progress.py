"""Rich live progress for training (epoch, metrics, learning rate, ETA)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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
        self.task: TaskID | None = None  # the current phase's bar

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
        assert self.task is not None, "phase() comes first"
        self.progress.update(self.task, completed=done, total=total)

    def epoch(self, row: dict, state, max_epochs: int) -> None:
        metrics = (
            f"loss {row['loss']:.3f} acc {row['accuracy']:.3f} | val loss {row['val_loss']:.3f} "
            f"acc {row['val_accuracy']:.3f} | lr {row['learning_rate']:.1e} | best {state.best_val_accuracy:.3f}"
            f"@{state.best_epoch}"
        )
        assert self.task is not None, "phase() comes first"
        self.progress.update(self.task, completed=state.next_epoch, total=max_epochs, metrics=metrics)


class RecordProgress:
    """A transient spinner counting records and their rate (nothing when ``enabled`` is false)."""

    def __init__(self, console: Console, enabled: bool):
        self.enabled = enabled and console.is_terminal
        self.count = 0
        self._t0 = 0.0
        self.progress: Progress | None = None
        if self.enabled:
            from rich.progress import SpinnerColumn

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.completed} images"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> RecordProgress:
        import time

        self._t0 = time.perf_counter()
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("predict", total=None, rate="")
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def tick(self) -> None:
        import time

        self.count += 1
        if self.progress is not None:
            rate = self.count / max(time.perf_counter() - self._t0, 1e-9)
            self.progress.update(self.task, completed=self.count, rate=f"{rate:.1f} images/s")
