"""``export``: write a run's model in a dedicated inference format, verified against Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscan.errors import LiverscanError
from liverscan.fileio import sha256_file, write_bytes_atomic, write_json_atomic

FORMATS = ("tflite",)
TOLERANCE = 1e-4


def _check_images(run, size: int) -> np.ndarray:
    """Real validation images when the run's prepared data is at hand (random pixels saturate the
    softmax and hide differences), else seeded random images."""
    from liverscan.evaluate import load_labelled

    try:
        return load_labelled(run, None, "val").x[:32].astype(np.float32)
    except LiverscanError:
        return np.random.default_rng(0).integers(0, 256, size=(16, size, size, 3)).astype(np.float32)


def export_model(run_dir: str | Path, fmt: str = "tflite", check_images: np.ndarray | None = None) -> dict:
    """Convert, write ``model.<fmt>`` into the run directory, check agreement, record it in the card."""
    from liverscan.evaluate import load_run
    from liverscan.keras_env import backend_name
    from liverscan.model import load_model
    from liverscan.runtime import TFLiteRunner

    if fmt not in FORMATS:
        raise LiverscanError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    run = load_run(run_dir)
    if run.run_dir is None:
        raise LiverscanError("export needs a run directory")
    if backend_name() != "tensorflow":
        raise LiverscanError("TFLite export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf

    model = load_model(run.model_path)
    try:
        blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as exc:  # noqa: BLE001
        raise LiverscanError(f"TFLite conversion failed ({exc.__class__.__name__}: {exc})") from None
    target = run.run_dir / "model.tflite"
    write_bytes_atomic(target, blob)
    size = run.image_size
    if check_images is None:
        check_images = _check_images(run, size)
    check_images = np.asarray(check_images, dtype=np.float32)
    got = TFLiteRunner(target, batch_size=16)(check_images)
    reference = np.asarray(model.predict(check_images, batch_size=16, verbose=0), dtype=np.float64)
    diff = float(np.abs(got - reference / reference.sum(1, keepdims=True)).max())
    if diff > TOLERANCE:
        target.unlink(missing_ok=True)
        raise LiverscanError(f"exported model disagrees with Keras (max abs difference {diff:.2e} > {TOLERANCE})")
    info = {"file": target.name, "sha256": sha256_file(target), "bytes": target.stat().st_size,
            "max_abs_difference_vs_keras": diff, "checked_images": int(len(check_images))}
    run.card.setdefault("exports", {})[fmt] = info
    write_json_atomic(run.run_dir / "model_card.json", run.card)
    return info
