"""The epoch loop's state: what a checkpoint must hold to resume a stage exactly where it stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class LoopState:
    """Early stopping, learning-rate schedule and history of one training stage."""

    learning_rate: float
    next_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    es_wait: int = 0
    best_val_loss: float = float("inf")
    lr_wait: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def record(
        self, row: dict[str, Any], epoch: int, patience: int, lr_patience: int, lr_factor: float, max_epochs: int
    ) -> tuple[bool, bool]:
        """Add one finished epoch; returns (improved on validation accuracy, stop now).

        Early stopping counts epochs without a higher validation accuracy; the
        learning rate is multiplied by ``lr_factor`` after ``lr_patience`` epochs
        without a lower validation loss.
        """
        self.history.append(row)
        self.next_epoch = epoch + 1
        improved = row["val_accuracy"] > self.best_val_accuracy
        if improved:
            self.best_val_accuracy, self.best_epoch, self.es_wait = row["val_accuracy"], epoch + 1, 0
        else:
            self.es_wait += 1
        if row["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.lr_wait = row["val_loss"], 0
        else:
            self.lr_wait += 1
            if self.lr_wait >= lr_patience:
                self.learning_rate = float(self.learning_rate * lr_factor)
                self.lr_wait = 0
        stop = self.es_wait >= patience
        self.stopped_early = bool(stop)
        self.complete = bool(stop or epoch + 1 >= max_epochs)
        return improved, stop
