"""Importing Keras quietly and seeding it; the only place that knows about backends."""

from __future__ import annotations

import os


def import_keras():
    """Import keras with TensorFlow's start-up chatter silenced; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend; make TensorFlow ops deterministic."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # noqa: BLE001 - older TF: determinism best effort
            pass


def backend_name() -> str:
    return import_keras().backend.backend()


def accelerator() -> str:
    """'gpu' when the active backend sees a GPU, else 'cpu'."""
    keras = import_keras()
    name = keras.backend.backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        if name == "jax":
            import jax

            return "gpu" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
        if name == "torch":
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        pass
    return "cpu"
