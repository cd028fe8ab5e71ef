"""One training stage: a Keras ``fit`` driven by a controller callback, resumable from its checkpoint.

The controller records history, applies early stopping and the learning-rate
schedule (:class:`LoopState`), keeps the best weights in memory and writes a
checkpoint when ``checkpoint_seconds`` have passed and at the end, so a killed run
loses at most that much work while fast epochs do not pay for a save each.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from liverscan.core.config import TrainConfig
from liverscan.core.errors import TrainingError
from liverscan.core.keras_env import import_keras
from liverscan.training.checkpoints import CheckpointStore
from liverscan.training.state import LoopState


class Reporter(Protocol):
    """Receives progress events (the CLI shows them with Rich)."""

    def phase(self, name: str, total: int | None) -> None: ...

    def advance(self, done: int, total: int) -> None: ...

    def epoch(self, row: dict, state: LoopState, max_epochs: int) -> None: ...


class SilentReporter:
    """A reporter that shows nothing."""

    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, done: int, total: int) -> None:
        pass

    def epoch(self, row: dict, state: LoopState, max_epochs: int) -> None:
        pass


def epoch_dataset(n_items: int, batch_size: int, make_epoch: Callable[[int], Callable[[int], tuple]]):
    """A Keras PyDataset whose batches depend on the epoch.

    ``make_epoch(epoch)`` returns ``get(batch_index) -> (x, y[, sample_weight])``;
    the controller sets ``.epoch`` at the start of every epoch, so the content of
    an epoch is a pure function of (seed, epoch) and survives resuming.
    """
    keras: Any = import_keras()  # the module, untyped: its classes are bases here

    class _EpochBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self._made: tuple[int, Callable[[int], tuple]] | None = None

        def __len__(self):
            return math.ceil(n_items / batch_size)

        def __getitem__(self, i):
            if self._made is None or self._made[0] != self.epoch:
                self._made = (self.epoch, make_epoch(self.epoch))
            return self._made[1](i)

    return _EpochBatches()


def _controller(
    stage: str, state: LoopState, t: TrainConfig, store: CheckpointStore, reporter: Reporter, max_epochs: int, dataset
):
    keras: Any = import_keras()  # the module, untyped: its classes are bases here

    class _Controller(keras.callbacks.Callback):
        best_weights: list | None = None
        last_save = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            dataset.epoch = epoch
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {
                "epoch": len(state.history) + 1,
                "stage": stage,
                "loss": float(logs["loss"]),
                "accuracy": float(logs["accuracy"]),
                "val_loss": float(logs["val_loss"]),
                "val_accuracy": float(logs["val_accuracy"]),
                "learning_rate": float(state.learning_rate),
                "seconds": round(time.perf_counter() - self.t0, 3),
            }
            if not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])):
                raise TrainingError(
                    f"{stage}: the loss became non-finite at epoch {row['epoch']} "
                    f"(learning rate {state.learning_rate:g}); lower the learning rate"
                )
            improved, stop = state.record(row, epoch, t.early_stopping_patience, t.lr_patience, t.lr_factor, max_epochs)
            if improved:
                self.best_weights = self.model.get_weights()
            self.model.optimizer.learning_rate = state.learning_rate
            if state.complete or time.perf_counter() - self.last_save >= t.checkpoint_seconds:
                store.save(self.model, state, self.best_weights)
                self.last_save = time.perf_counter()
            reporter.epoch(row, state, max_epochs)
            if stop:
                self.model.stop_training = True

    return _Controller()


@dataclass
class Stage:
    """What one stage trains: a name, its epoch limit and learning rate, its data."""

    name: str
    epochs: int
    learning_rate: float
    dataset: object  # an epoch_dataset
    validation: tuple[np.ndarray, np.ndarray]
    title: str


def run_stage(
    stage: Stage,
    make_trainer: Callable[[float], Any],  # a compiled Keras model
    t: TrainConfig,
    store: CheckpointStore,
    reporter: Reporter,
    initial_best: float | None = None,
):
    """Train one stage from scratch or from its checkpoint; returns (trainer with best weights, state).

    ``make_trainer(learning_rate)`` builds and compiles a fresh trainer.  A stage
    already complete is not trained again: its best weights are restored.
    ``initial_best``: the validation accuracy this stage must beat (fine-tuning
    keeps the head's best weights unless it improves on them).
    """
    trainer, state = store.load()
    if trainer is None:
        trainer = make_trainer(stage.learning_rate)
        state = LoopState(learning_rate=stage.learning_rate)
        if initial_best is not None:
            state.best_val_accuracy = initial_best
            store.save_best(trainer.get_weights())
    if not state.complete and state.next_epoch < stage.epochs:
        reporter.phase(stage.title, stage.epochs)
        trainer.optimizer.learning_rate = state.learning_rate
        controller = _controller(stage.name, state, t, store, reporter, stage.epochs, stage.dataset)
        trainer.fit(
            stage.dataset,
            epochs=stage.epochs,
            initial_epoch=state.next_epoch,
            validation_data=stage.validation,
            validation_batch_size=max(t.batch_size, 64),
            callbacks=[controller],
            verbose=0,
        )
        state.complete = True
        store.save_state(state)
        if controller.best_weights is not None:
            trainer.set_weights(controller.best_weights)
            return trainer, state
    state.complete = True
    store.save_state(state)
    if store.has_best():
        trainer.set_weights(store.load_best())
    return trainer, state
