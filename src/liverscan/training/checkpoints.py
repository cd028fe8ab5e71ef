"""A training stage's checkpoint folder: current model + optimizer, best weights, loop state.

Like timm's ``CheckpointSaver``, one object owns the files of a stage (``current.keras``,
``best.weights.npz``, ``state.json``), writes each atomically, and answers "is there
something to resume?".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from liverscan.core.fileio import atomic_path, write_json_atomic
from liverscan.core.keras_env import import_keras
from liverscan.core.model import save_keras_atomic
from liverscan.training.state import LoopState


class CheckpointStore:
    """Files of one training stage under ``folder``."""

    CURRENT = "current.keras"
    BEST = "best.weights.npz"
    STATE = "state.json"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def has_state(self) -> bool:
        return (self.folder / self.STATE).is_file() and (self.folder / self.CURRENT).is_file()

    def load(self):
        """(model with optimizer, loop state), or (None, None) when nothing was saved."""
        if not self.has_state():
            return None, None
        keras = import_keras()
        model = keras.saving.load_model(self.folder / self.CURRENT, compile=True, safe_mode=True)
        return model, self.load_state()

    def load_state(self) -> LoopState:
        return LoopState.from_dict(json.loads((self.folder / self.STATE).read_text()))

    def save_state(self, state: LoopState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / self.STATE, state.to_dict())

    def save(self, model, state: LoopState, best_weights: list[np.ndarray] | None) -> None:
        """Best weights (if any), the current model with its optimizer, then the state that points at them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if best_weights is not None:
            self.save_best(best_weights)
        save_keras_atomic(model, self.folder / self.CURRENT)
        self.save_state(state)

    def has_best(self) -> bool:
        return (self.folder / self.BEST).is_file()

    def save_best(self, weights: list[np.ndarray]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / self.BEST) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, *weights)

    def load_best(self) -> list[np.ndarray]:
        with np.load(self.folder / self.BEST) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
