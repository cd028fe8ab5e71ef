"""``export``: write a run's model in a dedicated inference format, verified against Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscan.core.artifacts import TFLITE_FILE, LoadedRun, load_run
from liverscan.core.errors import ExportError, LiverscanError, RunDirError
from liverscan.core.fileio import sha256_file, write_bytes_atomic

FORMATS = ("tflite",)
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
    """Convert, write ``model.<fmt>`` into the run directory, check agreement, record it in the card."""
    from liverscan.core.keras_env import backend_name
    from liverscan.core.model import load_model
    from liverscan.serving.runtime import TFLiteRunner

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    run = load_run(run_dir)
    if run.run_dir is None:
        raise RunDirError(f"{run_dir}: export needs a run directory")
    if backend_name() != "tensorflow":
        raise ExportError("TFLite export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf

    model = load_model(run.model_path)
    try:
        blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TFLite conversion failed ({exc.__class__.__name__}: {exc})") from None
    target = run.run_dir / TFLITE_FILE
    write_bytes_atomic(target, blob)
    images = np.asarray(check_images(run) if images is None else images, dtype=np.float32)
    got = TFLiteRunner(target, batch_size=16)(images)
    reference = np.asarray(model.predict(images, batch_size=16, verbose=0), dtype=np.float64)
    diff = float(np.abs(got - reference / reference.sum(1, keepdims=True)).max())
    if diff > TOLERANCE:
        target.unlink(missing_ok=True)
        raise ExportError(f"exported model disagrees with Keras (max abs difference {diff:.2e} > {TOLERANCE})")
    info = {
        "file": target.name,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "max_abs_difference_vs_keras": diff,
        "checked_images": int(len(images)),
    }
    run.card.exports[fmt] = info
    run.save_card()
    return info
