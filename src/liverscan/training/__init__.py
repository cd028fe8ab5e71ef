"""Stage: train the model on a prepared dataset into a run directory (resumable)."""

from liverscan.training.crossval import cross_validate
from liverscan.training.loop import Reporter, SilentReporter
from liverscan.training.train import TrainResult, finish_run, train_run

__all__ = ["Reporter", "SilentReporter", "TrainResult", "cross_validate", "finish_run", "train_run"]
