"""Importing Keras quietly and seeding it; the only place that knows about backends."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType


def import_keras():
    """Import keras with TensorFlow's start-up chatter silenced; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["KERAS_BACKEND"] == "jax":
        _jax_compilation_cache()

    if "keras" in sys.modules:
        return sys.modules["keras"]
    with native_stderr_silenced():  # absl/oneDNN/CUDA start-up lines ignore TF_CPP_MIN_LOG_LEVEL
        import keras
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing warnings
    return keras


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence what native libraries print straight to file descriptor 2 (e.g. TFLite's XNNPACK INFO line).

    Only for short set-up calls: Python-level errors raised inside still propagate normally.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _jax_compilation_cache() -> None:
    """Keep JAX's compiled programs between commands (every command otherwise recompiles the same model and
    its initialisers: evaluate 33 s cold vs 16 s warm on a CPU). ``LIVERSCAN_JAX_CACHE=off`` turns it off;
    a ``JAX_COMPILATION_CACHE_DIR`` already set is left alone."""
    where = os.environ.get("LIVERSCAN_JAX_CACHE", "")
    if where.lower() == "off" or "JAX_COMPILATION_CACHE_DIR" in os.environ or "jax" in sys.modules:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = where or os.path.join(base, "liverscan", "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend (for tests and scripts; training uses :func:`seeded`)."""
    import_keras().utils.set_random_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed everything and make TensorFlow ops deterministic inside the block; restore determinism after."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    switch: ModuleType | None = None  # tensorflow's config module when this block switched determinism on
    if keras.backend.backend() == "tensorflow":
        try:  # the public API can only switch it on; the switch itself lives in tensorflow's config module
            from tensorflow.python.framework import config as tf_config

            if not tf_config.is_op_determinism_enabled():  # if already on, the caller's setting stays as it is
                tf_config.enable_op_determinism()
                switch = tf_config
        except (ImportError, AttributeError):  # older TensorFlow: determinism best effort
            switch = None
    try:
        yield
    finally:
        if switch is not None:
            switch.disable_op_determinism()


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
