"""Fast CPU inference with an exported TensorFlow Lite (LiteRT) model.

``liverscan export RUN --format tflite`` writes ``model.tflite`` beside
``model.keras``.  Prediction then runs through the LiteRT interpreter (XNNPACK
kernels), which starts without importing TensorFlow and runs MobileNetV2 several
times faster on a CPU than the Keras graph.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from liverscan.errors import LiverscanError


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            import tensorflow as tf

            return tf.lite.Interpreter
    except (ImportError, AttributeError):
        return None


def available() -> bool:
    return _interpreter_class() is not None


class TFLiteRunner:
    """Runs a ``.tflite`` classifier on fixed-size batches."""

    def __init__(self, path: str | Path, batch_size: int = 32, threads: int | None = None):
        cls = _interpreter_class()
        if cls is None:
            raise LiverscanError("no TensorFlow Lite runtime: pip install ai-edge-litert (or use the Keras model)")
        self.path = Path(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.interp = cls(model_path=str(self.path), num_threads=threads or os.cpu_count() or 1)
            except Exception as exc:  # noqa: BLE001
                raise LiverscanError(f"{self.path}: cannot load TFLite model ({exc.__class__.__name__})") from None
        detail = self.interp.get_input_details()[0]
        self._in = detail["index"]
        self._out = self.interp.get_output_details()[0]["index"]
        self.input_shape = tuple(int(v) for v in detail["shape"][1:])
        self.batch_size = batch_size
        self.interp.resize_tensor_input(self._in, [batch_size, *self.input_shape])
        self.interp.allocate_tensors()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for any number of images (padded to the fixed batch internally)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = np.asarray(images[start : start + self.batch_size], dtype=np.float32)
            n = len(batch)
            if n < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), np.float32)])
            self.interp.set_tensor(self._in, batch)
            self.interp.invoke()
            out.append(np.array(self.interp.get_tensor(self._out)[:n], dtype=np.float64))
        probs = np.concatenate(out) if out else np.zeros((0, 0))
        return probs / probs.sum(1, keepdims=True) if len(probs) else probs
