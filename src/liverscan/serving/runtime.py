"""Fast inference with an exported model: TensorFlow Lite (LiteRT) or ONNX Runtime.

``liverscan export RUN --runtime tflite|onnx`` writes ``model.tflite`` / ``model.onnx``
beside ``model.keras``.  Prediction then runs through the LiteRT interpreter (XNNPACK
kernels) or an ONNX Runtime session, which start without importing TensorFlow and run
MobileNetV2 several times faster on a CPU than the Keras graph.  Both runners give
``run(images) -> (probabilities, features or None)``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from liverscan.core.errors import ModelError
from liverscan.core.keras_env import native_stderr_silenced


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
            with native_stderr_silenced():
                import tensorflow as tf

            return tf.lite.Interpreter
    except (ImportError, AttributeError):
        return None


def available() -> bool:
    return _interpreter_class() is not None


class TFLiteRunner:
    """Runs a ``.tflite`` classifier on fixed-size batches.

    The exported graph has one output (probabilities) or two (probabilities and the
    pooled backbone features the out-of-distribution guard scores); they are told
    apart by width (the class count is far below the feature width).
    """

    kind = "tflite"

    def __init__(self, path: str | Path, batch_size: int = 32, threads: int | None = None):
        cls = _interpreter_class()
        if cls is None:
            raise ModelError("no TensorFlow Lite runtime: pip install ai-edge-litert (or use the Keras model)")
        self.path = Path(path)
        self._cls = cls
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self._interps: dict[int, tuple] = {}
        interp, _, _, feats = self._interpreter(batch_size)
        self.input_shape = tuple(int(v) for v in interp.get_input_details()[0]["shape"][1:])
        self.has_features = feats is not None

    def _interpreter(self, batch: int):
        """An interpreter allocated for ``batch`` images (one per size in use: single images stay cheap)."""
        if batch not in self._interps:
            with warnings.catch_warnings(), native_stderr_silenced():  # XNNPACK's INFO line
                warnings.simplefilter("ignore")
                try:
                    interp = self._cls(model_path=str(self.path), num_threads=self.threads)
                except Exception as exc:  # noqa: BLE001
                    raise ModelError(f"{self.path}: cannot load TFLite model ({exc.__class__.__name__})") from None
                detail = interp.get_input_details()[0]
                interp.resize_tensor_input(detail["index"], [batch, *[int(v) for v in detail["shape"][1:]]])
                interp.allocate_tensors()
            outputs = sorted(interp.get_output_details(), key=lambda d: int(d["shape"][-1]))
            probs = outputs[0]["index"]
            feats = outputs[-1]["index"] if len(outputs) > 1 else None
            self._interps[batch] = (interp, detail["index"], probs, feats)
        return self._interps[batch]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for any number of images."""
        return self.run(images)[0]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, features or None): full batches, then the rest one image at a time."""
        images = np.asarray(images, dtype=np.float32)
        probs, feats = [], []
        start = 0
        while start < len(images):
            size = self.batch_size if len(images) - start >= self.batch_size // 2 else 1
            interp, inp, out_p, out_f = self._interpreter(size)
            batch = images[start : start + size]
            n = len(batch)
            if n < size:
                batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), np.float32)])
            interp.set_tensor(inp, batch)
            interp.invoke()
            probs.append(np.array(interp.get_tensor(out_p)[:n], dtype=np.float64))
            if out_f is not None:
                feats.append(np.array(interp.get_tensor(out_f)[:n], dtype=np.float32))
            start += n
        p = np.concatenate(probs) if probs else np.zeros((0, 0))
        p = p / p.sum(1, keepdims=True) if len(p) else p
        return p, (np.concatenate(feats) if feats else None)


def onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxRunner:
    """Runs an exported ``model.onnx`` with ONNX Runtime (any batch size; CPU or the best provider present)."""

    kind = "onnx"

    def __init__(self, path: str | Path, batch_size: int = 32, threads: int | None = None):
        if not onnx_available():
            raise ModelError('no ONNX Runtime: pip install "liverscan[onnx]" (or use another runtime)')
        import onnxruntime as ort

        self.path = Path(path)
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{self.path}: cannot load ONNX model ({exc.__class__.__name__})") from None
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        self.input_shape = tuple(int(v) for v in inp.shape[1:])
        outputs = sorted(self.session.get_outputs(), key=lambda o: int(o.shape[-1]))
        self._probs = outputs[0].name
        self._feats = outputs[-1].name if len(outputs) > 1 else None
        self.has_features = self._feats is not None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, features or None), in batches of ``batch_size``."""
        images = np.asarray(images, dtype=np.float32)
        names = [self._probs] + ([self._feats] if self._feats else [])
        probs, feats = [], []
        for start in range(0, len(images), self.batch_size):
            out = self.session.run(names, {self._input: images[start : start + self.batch_size]})
            probs.append(np.asarray(out[0], dtype=np.float64))
            if self._feats:
                feats.append(np.asarray(out[1], dtype=np.float32))
        p = np.concatenate(probs) if probs else np.zeros((0, 0))
        p = p / p.sum(1, keepdims=True) if len(p) else p
        return p, (np.concatenate(feats) if feats else None)
