"""Fast inference with an exported model: TensorFlow Lite (LiteRT) or ONNX Runtime.

``liverscan export RUN --runtime tflite|onnx`` writes ``model.tflite`` / ``model.onnx``
beside ``model.keras``.  Prediction then runs through the LiteRT interpreter (XNNPACK
kernels) or an ONNX Runtime session, which start without importing TensorFlow and run
MobileNetV2 several times faster on a CPU than the Keras graph.  Both runners give
``run(images) -> (probabilities, features or None)``.  A run with a lesion head also gets
``lesion.tflite`` / ``lesion.onnx``; :class:`MapRunner` runs either on the same plumbing and gives
``maps(images) -> (N, S, S)`` lesion probabilities.
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
    apart by width (the class count is far below the feature width).  A graph whose
    lesion head shares the classifier's backbone also gives the lesion probability
    map (the one output of rank 4; ``has_maps``), from the same backbone pass.
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
        interp, _, _, feats, maps = self._interpreter(1)  # the full batch's is allocated when a full batch comes
        self.input_shape = tuple(int(v) for v in interp.get_input_details()[0]["shape"][1:])
        self.has_features = feats is not None
        self.has_maps = maps is not None

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
            details = interp.get_output_details()
            maps = next((d["index"] for d in details if len(d["shape"]) == 4 and len(details) == 3), None)
            outputs = sorted((d for d in details if d["index"] != maps), key=lambda d: int(d["shape"][-1]))
            probs = outputs[0]["index"]
            feats = outputs[-1]["index"] if len(outputs) > 1 else None
            self._interps[batch] = (interp, detail["index"], probs, feats, maps)
        return self._interps[batch]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for any number of images."""
        return self.run(images)[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one image's first (narrowest) output."""
        interp, _, out, _, _ = self._interpreter(1)
        detail = next(d for d in interp.get_output_details() if d["index"] == out)
        return tuple(int(v) for v in detail["shape"][1:])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, features or None): full batches, then the rest one image at a time."""
        return _normalised(*self.outputs(images))

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, features or None, lesion maps ``(N, S, S)`` or None) of one pass."""
        first, second, maps = self._passes(images)
        return (*_normalised(first, second), maps)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw outputs (first, second or None) as float32: full batches, then the rest one image at a time."""
        return self._passes(images, maps=False)[:2]

    def _passes(self, images: np.ndarray, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Raw outputs of every pass; ``maps``: also copy out the lesion maps (when the graph gives them)."""
        images = np.asarray(images, dtype=np.float32)
        first, second, third = [], [], []
        start = 0
        while start < len(images):
            size = self.batch_size if len(images) - start >= self.batch_size // 2 else 1
            interp, inp, out_p, out_f, out_m = self._interpreter(size)
            batch = images[start : start + size]
            n = len(batch)
            if n < size:
                batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), np.float32)])
            interp.set_tensor(inp, batch)
            interp.invoke()
            first.append(np.array(interp.get_tensor(out_p)[:n], dtype=np.float32))
            if out_f is not None:
                second.append(np.array(interp.get_tensor(out_f)[:n], dtype=np.float32))
            if out_m is not None and maps:
                third.append(np.array(interp.get_tensor(out_m)[:n, ..., 0], dtype=np.float32))
            start += n
        return _joined(first), (np.concatenate(second) if second else None), (np.concatenate(third) if third else None)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _normalised(p: np.ndarray, feats: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities in float64, renormalised to sum to one (float32 softmax sums drift by ~1e-7)."""
    p = p.astype(np.float64)
    return (p / p.sum(1, keepdims=True) if len(p) else p), feats


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
        details = self.session.get_outputs()
        self._maps = next((o.name for o in details if len(o.shape) == 4 and len(details) == 3), None)
        outputs = sorted((o for o in details if o.name != self._maps), key=lambda o: int(o.shape[-1]))
        self._probs = outputs[0].name
        self._feats = outputs[-1].name if len(outputs) > 1 else None
        self.has_features = self._feats is not None
        self.has_maps = self._maps is not None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        """Shape of one image's first (narrowest) output (None where the graph leaves a size open)."""
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self._probs)
        return tuple(v if isinstance(v, int) else None for v in shape[1:])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, features or None), in batches of ``batch_size``."""
        return _normalised(*self.outputs(images))

    def run_all(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, features or None, lesion maps ``(N, S, S)`` or None) of one pass."""
        first, second, maps = self._passes(images)
        return (*_normalised(first, second), maps)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw outputs (first, second or None) as float32, in batches of ``batch_size``."""
        return self._passes(images, maps=False)[:2]

    def _passes(self, images: np.ndarray, maps: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Raw outputs of every batch; ``maps``: also fetch the lesion maps (when the graph gives them)."""
        images = np.asarray(images, dtype=np.float32)
        names = [n for n in (self._probs, self._feats, self._maps if maps else None) if n]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for start in range(0, len(images), self.batch_size):
            out = self.session.run(names, {self._input: images[start : start + self.batch_size]})
            for n, o in zip(names, out):
                parts[n].append(np.asarray(o, dtype=np.float32))
        second = np.concatenate(parts[self._feats]) if self._feats and parts[self._feats] else None
        got = np.concatenate(parts[self._maps])[..., 0] if self._maps in parts and parts[self._maps] else None
        return _joined(parts[self._probs]), second, got


class MapRunner:
    """Runs an exported lesion head (``lesion.tflite`` or ``lesion.onnx``): pixels ``(N, S, S, 3)`` in 0..255
    -> lesion probability maps ``(N, S, S)`` float32, on the interpreter / session of :class:`TFLiteRunner` /
    :class:`OnnxRunner`.  ``kind`` (tflite | onnx) defaults to the file's suffix."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 32,
        threads: int | None = None,
        kind: str | None = None,
        runner: TFLiteRunner | OnnxRunner | None = None,
    ):
        """``runner``: the interpreter / session already loaded on ``path`` (the classifier's, on a joint graph)."""
        self.path = Path(path)
        kind = kind or (runner.kind if runner is not None else self.path.suffix.lstrip(".").lower())
        runners: dict[str, type[TFLiteRunner] | type[OnnxRunner]] = {"tflite": TFLiteRunner, "onnx": OnnxRunner}
        if kind not in runners:
            raise ModelError(f"{self.path}: not a .tflite or .onnx lesion model")
        self.kind = kind
        self.runner: TFLiteRunner | OnnxRunner = runner or runners[kind](
            self.path, batch_size=batch_size, threads=threads
        )
        self.input_shape: tuple[int, ...] = self.runner.input_shape
        #: the file is the classifier and lesion head in one graph (``export`` writes it so when they share
        #: backbone layers); its maps are its rank-4 output
        self.joint = self.runner.has_maps
        out = self.runner.output_shape
        side = self.input_shape[:2]
        if not self.joint and (
            self.runner.has_features
            or len(out) != 3
            or out[2] != 1
            or any(o not in (s, None) for o, s in zip(out, side))
        ):
            raise ModelError(
                f"{self.path}: not a lesion map model (output {tuple(out)} per image, expected {(*side, 1)})"
            )

    def maps(self, images: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(N, S, S)`` float32 for ``images`` ``(N, S, S, 3)`` (uint8 or float pixels)."""
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.input_shape):
            wanted = ", ".join(str(v) for v in ("N", *self.input_shape))
            raise ModelError(f"{self.path}: images of shape {tuple(images.shape)} given, the model takes ({wanted})")
        if not len(images):
            return np.zeros((0, *self.input_shape[:2]), np.float32)
        if self.joint:
            maps = self.runner.run_all(images)[2]
            assert maps is not None  # a joint graph gives maps
            return maps
        return self.runner.outputs(images)[0][..., 0]
