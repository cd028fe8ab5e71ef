"""Backend set-up: JAX's compilation cache is kept between commands unless turned off."""

from __future__ import annotations

import sys

from liverscan.core import keras_env


def test_jax_compilation_cache_defaults_to_the_user_cache_and_can_be_turned_off(monkeypatch, tmp_path):
    for var in ("JAX_COMPILATION_CACHE_DIR", "LIVERSCAN_JAX_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delitem(sys.modules, "jax", raising=False)  # JAX reads these variables when it is imported
    keras_env._jax_compilation_cache()
    assert keras_env.os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "liverscan" / "jax")
    assert keras_env.os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/else")  # the user's own setting wins
    keras_env._jax_compilation_cache()
    assert keras_env.os.environ["JAX_COMPILATION_CACHE_DIR"] == "/somewhere/else"

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("LIVERSCAN_JAX_CACHE", "off")
    keras_env._jax_compilation_cache()
    assert "JAX_COMPILATION_CACHE_DIR" not in keras_env.os.environ
