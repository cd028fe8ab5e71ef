"""``export``: write a run's model in a dedicated inference format, verified against Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscan.core.artifacts import EXPORT_FORMATS, ONNX_FILE, OOD_FILE, TFLITE_FILE, LoadedRun, load_run
from liverscan.core.errors import ExportError, LiverscanError, RunDirError
from liverscan.core.fileio import sha256_file, write_bytes_atomic
from liverscan.core.guard import Reference, assess

FORMATS = EXPORT_FORMATS
TOLERANCE = 1e-4


def check_images(run: LoadedRun, n: int = 32) -> np.ndarray:
    """Real validation images when the run's prepared data is at hand (random pixels saturate the
    softmax and hide differences), else seeded random images."""
    from liverscan.core.dataset import PreparedData

    size = run.image_size
    try:
        x = PreparedData(run.card.prepared_dir or "").split("val", size).x[:n]
        if len(x):
            return x.astype(np.float32)
    except LiverscanError:
        pass
    return np.random.default_rng(0).integers(0, 256, size=(16, size, size, 3)).astype(np.float32)


def export_model(run_dir: str | Path, fmt: str = "tflite", images: np.ndarray | None = None) -> dict:
    """Convert, check agreement with Keras, write ``model.<fmt>`` into the run directory, record it in the card.

    The exported graph gives the probabilities and the pooled features the
    out-of-distribution guard scores; a model whose probabilities differ by more
    than 1e-4, or whose guard answer differs on any checked image, is not written.
    """
    from liverscan.core.keras_env import backend_name
    from liverscan.core.model import load_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    run = load_run(run_dir)
    if run.run_dir is None:
        raise RunDirError(f"{run_dir}: export needs a run directory")
    if backend_name() != "tensorflow":
        raise ExportError(f"{fmt} export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    reference = None
    if (run.run_dir / OOD_FILE).is_file():
        reference = Reference.load(run.run_dir / OOD_FILE)
    images = np.asarray(check_images(run) if images is None else images, dtype=np.float32)
    write = write_tflite if fmt == "tflite" else write_onnx
    info = write(
        load_model(run.model_path), run.run_dir / (TFLITE_FILE if fmt == "tflite" else ONNX_FILE), images, reference
    )
    run.card.exports[fmt] = info
    run.save_card()
    return info


def write_tflite(model, target: Path, images: np.ndarray, reference: Reference | None = None) -> dict:
    """Convert ``model`` (probabilities + features) to TFLite at ``target`` once it agrees with Keras on ``images``."""
    import contextlib
    import io

    from liverscan.core.keras_env import import_keras, native_stderr_silenced
    from liverscan.core.model import with_features

    import_keras()
    import tensorflow as tf

    from liverscan.serving.runtime import TFLiteRunner

    both = with_features(model)
    chatter = io.StringIO()  # the converter prints every TensorSpec of the traced graph
    try:
        with contextlib.redirect_stdout(chatter), native_stderr_silenced():
            blob = tf.lite.TFLiteConverter.from_keras_model(both).convert()
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TFLite conversion failed ({exc.__class__.__name__}: {exc})") from None
    staged = target.with_name(f".{target.name}.check")
    write_bytes_atomic(staged, blob)
    return _verified(both, staged, target, TFLiteRunner, images, reference)


def write_onnx(model, target: Path, images: np.ndarray, reference: Reference | None = None) -> dict:
    """Convert ``model`` (probabilities + features) to ONNX at ``target`` once it agrees with Keras on ``images``."""
    import contextlib
    import importlib.util
    import io
    import sys
    import warnings

    from liverscan.core.keras_env import native_stderr_silenced
    from liverscan.core.model import with_features
    from liverscan.serving.runtime import OnnxRunner

    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise ExportError('ONNX export needs tf2onnx and onnxruntime: pip install "liverscan[onnx]"')
    both = with_features(model)
    staged = target.with_name(f".{target.name}.check")
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), native_stderr_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input-structure and tf2onnx deprecation warnings
            both(np.zeros((1, *both.input_shape[1:]), np.float32))  # Keras exports only a called model
            both.export(str(staged), format="onnx", verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX conversion failed ({exc.__class__.__name__}: {exc})") from None
    finally:
        if not staged.is_file() or sys.exc_info()[0] is not None:
            staged.unlink(missing_ok=True)
    return _verified(both, staged, target, OnnxRunner, images, reference)


def _verified(both, staged: Path, target: Path, runner_class, images: np.ndarray, reference) -> dict:
    """Move ``staged`` to ``target`` only when its probabilities (<= 1e-4) and guard answers agree with Keras."""
    from liverscan.core.model import predict_outputs

    try:
        got_p, got_f = runner_class(staged, batch_size=16).run(images)
        ref_p, ref_f = predict_outputs(both, images, batch_size=16)
        if got_f is None or ref_f is None:
            raise ExportError(f"{staged.name}: exported without the pooled features")
        diff = float(np.abs(got_p - ref_p).max())
        fdiff = float(np.abs(got_f - ref_f).max() / max(float(np.abs(ref_f).max()), 1e-12))
        same_guard = None
        if reference is not None:
            keras_side = [v.in_distribution for v in assess(reference, images.astype(np.uint8), ref_f)]
            lite_side = [v.in_distribution for v in assess(reference, images.astype(np.uint8), got_f)]
            same_guard = keras_side == lite_side
        if diff > TOLERANCE or same_guard is False:
            raise ExportError(
                f"exported model disagrees with Keras (max abs difference {diff:.2e}, tolerance {TOLERANCE}; "
                f"same out-of-distribution answers: {same_guard})"
            )
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    return {
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "outputs": ["probabilities", "features"],
        "max_abs_difference_vs_keras": diff,
        "feature_max_relative_difference_vs_keras": fdiff,
        "same_in_distribution_as_keras": same_guard,
        "checked_images": int(len(images)),
    }
