from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liverscan.core.errors import LiverscanError
from liverscan.core.model import (
    WeightsUnavailable,
    build_model,
    calibrate_batchnorm,
    count_params,
    feature_extractor,
    imagenet_weights_file,
    load_model,
    unfreeze_top_blocks,
)

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_160_no_top.h5"


def test_parameter_counts_match_the_paper():
    model = build_model(3, 160, weights="none")
    p = count_params(model)
    assert p["total"] == 2_422_339  # 2.42M
    assert p["trainable"] == 164_355  # ~165K: 1280*128+128 + 128*3+3
    assert model.output_shape == (None, 3)
    assert [l.name for l in model.layers][-3:] == ["backbone", "pool", "head"]


def test_offline_imagenet_message_names_the_cache_file(monkeypatch, tmp_path):
    from keras.src.applications import mobilenet_v2
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "kh"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(mobilenet_v2.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailable) as info:
        build_model(3, 160, weights="imagenet")
    msg = str(info.value)
    expected = tmp_path / "kh" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    assert str(expected) in msg and "--weights PATH" in msg
    assert imagenet_weights_file(1.0, 160) == expected


def test_missing_weights_path(tmp_path):
    with pytest.raises(WeightsUnavailable, match="weights file not found"):
        build_model(2, 160, weights=str(tmp_path / "nope.h5"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="offline backbone weights not available")
def test_imagenet_loads_from_keras_cache(monkeypatch, tmp_path):
    import shutil

    target = tmp_path / "kh" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    target.parent.mkdir(parents=True)
    shutil.copy(SHARED_WEIGHTS, target)
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "kh"))
    a = build_model(2, 160, weights="imagenet")
    b = build_model(2, 160, weights=str(SHARED_WEIGHTS))
    wa = a.get_layer("backbone").get_weights()
    wb = b.get_layer("backbone").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_unfreeze_keeps_batchnorm_frozen():
    model = build_model(3, 32, weights="none")
    before = count_params(model)["trainable"]
    names = unfreeze_top_blocks(model, 2)
    assert names and all(n.startswith(("block_15", "block_16", "Conv_1")) for n in names)
    backbone = model.get_layer("backbone")
    assert all(not l.trainable for l in backbone.layers if l.__class__.__name__ == "BatchNormalization")
    assert count_params(model)["trainable"] > before
    unfreeze_top_blocks(model, 0)
    assert count_params(model)["trainable"] == before


def test_batchnorm_calibration_makes_random_features_usable():
    model = build_model(2, 32, weights="none")
    x = np.random.default_rng(0).integers(0, 255, size=(16, 32, 32, 3)).astype(np.float32)
    extractor = feature_extractor(model)  # called directly: no predict function to trace
    before = np.asarray(extractor(x, training=False))
    calibrate_batchnorm(model, x)
    after = np.asarray(extractor(x, training=False))
    assert np.abs(before).max() < 1e-6 < after.std()


def test_load_model_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LiverscanError) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LiverscanError, match="not found"):
        load_model(tmp_path / "missing.keras")


def test_built_without_initialising_leaves_unset_weights_visible_and_restores_initialisers():
    """While building, default initialisers give NaN (a weight nobody overwrote cannot pass unnoticed);
    afterwards the layers hold their real initialisers again."""
    import keras

    from liverscan.core.model import built_without_initialising

    def build():
        layer = keras.layers.Dense(3)
        layer.build((None, 4))
        return layer

    layer = built_without_initialising(build)
    assert np.isnan(layer.kernel.numpy()).all() and np.isnan(layer.bias.numpy()).all()
    assert type(layer.kernel_initializer) is keras.initializers.GlorotUniform
    assert type(layer.bias_initializer) is keras.initializers.Zeros
    outside = build()
    assert np.isfinite(outside.kernel.numpy()).all() and np.abs(outside.kernel.numpy()).sum() > 0


@pytest.mark.slow
def test_model_built_without_initialising_saves_and_loads_like_any_model(tmp_path):
    """Its saved config names Keras' own initialisers, so plain Keras (and liverscan) load it."""
    import keras

    from liverscan.core.model import built_without_initialising

    model = built_without_initialising(lambda: build_model(2, 32, weights="none", head="mlp"))
    reference = build_model(2, 32, weights="none", head="mlp")
    model.set_weights(reference.get_weights())
    path = tmp_path / "m.keras"
    model.save(path)
    assert "_Unset" not in str(model.get_config())
    plain = keras.saving.load_model(path, compile=False, safe_mode=True)
    again = load_model(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    want = np.asarray(reference.predict_on_batch(x))
    assert np.array_equal(np.asarray(plain.predict_on_batch(x)), want)
    assert np.array_equal(np.asarray(again.predict_on_batch(x)), want)


def test_load_model_without_initialising_gives_the_saved_weights(probe_run):
    """Every weight array stored in the .keras file comes back exactly (read from the file itself: fast)."""
    import io
    import zipfile

    import h5py

    path = probe_run["run"] / "model.keras"
    with zipfile.ZipFile(path) as archive:
        stored = archive.read("model.weights.h5")
    saved: list[np.ndarray] = []
    with h5py.File(io.BytesIO(stored), "r") as f:
        f.visititems(lambda name, obj: saved.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    loaded = load_model(path).get_weights()
    key = lambda a: (a.shape, np.asarray(a).tobytes())  # noqa: E731
    assert len(saved) == len(loaded) and sorted(map(key, saved)) == sorted(map(key, loaded))


@pytest.mark.slow
def test_load_model_without_initialising_gives_the_saved_model(probe_run):
    """Loading without running the initialisers gives exactly the saved weights and outputs."""
    import keras

    path = probe_run["run"] / "model.keras"
    fast = load_model(path)
    plain = keras.saving.load_model(path, compile=False, safe_mode=True)
    wf, wp = fast.get_weights(), plain.get_weights()
    assert len(wf) == len(wp) and all(np.array_equal(a, b) for a, b in zip(wf, wp))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert np.array_equal(np.asarray(fast.predict_on_batch(x)), np.asarray(plain.predict_on_batch(x)))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="offline backbone weights not available")
def test_imagenet_backbone_built_without_initialising_equals_the_plain_build():
    import keras

    fast = build_model(2, 160, weights=str(SHARED_WEIGHTS)).get_layer("backbone").get_weights()
    plain = keras.applications.MobileNetV2(
        input_shape=(160, 160, 3), include_top=False, weights=str(SHARED_WEIGHTS)
    ).get_weights()
    assert len(fast) == len(plain) and all(np.array_equal(a, b) for a, b in zip(fast, plain))
    assert all(np.isfinite(w).all() for w in fast)


def test_load_model_runs_no_initialiser(probe_run, monkeypatch):
    """Loading a saved model never runs Keras' default initialisers (under JAX each one is a compiled program)."""
    import keras

    def boom(self, shape, dtype=None):
        raise AssertionError("an initialiser ran while loading")

    for cls in (keras.initializers.GlorotUniform, keras.initializers.Zeros, keras.initializers.Ones):
        monkeypatch.setattr(cls, "__call__", boom)
    model = load_model(probe_run["run"] / "model.keras")
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert type(model.get_layer("head").get_layer("logits").kernel_initializer) is keras.initializers.GlorotUniform


def test_damaged_keras_file_is_still_a_one_line_model_error(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LiverscanError, match=r"model.keras: cannot load model") as info:
        load_model(bad)
    assert "\n" not in str(info.value)
