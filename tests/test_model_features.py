"""The classifier's feature options: multi-stage pooled features and flip averaging, built inside the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liverscan.core.config import Config, set_value
from liverscan.core.errors import ConfigError
from liverscan.core.model import (
    STAGES,
    build_model,
    calibrate_batchnorm,
    feature_extractor,
    feature_options,
    imagenet_weights_in_use,
    load_model,
)

SIZE = 32


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Images with structure that differs left to right (a horizontal ramp plus noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, SIZE, dtype=np.float32)[None, None, :, None]
    return np.clip(ramp + rng.uniform(0, 75, (n, SIZE, SIZE, 3)), 0, 255).astype(np.float32)


def _calibrated(**options):
    model = build_model(3, SIZE, "none", head="linear", **options)
    calibrate_batchnorm(model, _images(16, seed=1))
    return model


@pytest.fixture(scope="module")
def models() -> dict:
    """One random-weight 32x32 classifier per option set, BatchNorm calibrated so features carry signal."""
    return {
        "last": _calibrated(),
        "multistage+flip": _calibrated(features="multistage", flip_average=True),
    }


def test_multistage_pools_three_stages_into_2048_features(models):
    model = models["multistage+flip"]
    assert feature_extractor(model).output.shape[-1] == 2048
    assert feature_extractor(models["last"]).output.shape[-1] == 1280
    assert model.get_layer("head").input.shape[-1] == 2048
    # the vector the head reads is each stage's map averaged over positions, image and mirror averaged
    x = _images(3, seed=2)
    backbone = model.get_layer("backbone")
    assert [t.name for t in backbone.outputs] and len(backbone.outputs) == len(STAGES)

    def pooled(pixels):
        maps = backbone(pixels / 127.5 - 1.0, training=False)
        return np.concatenate([np.asarray(m).mean(axis=(1, 2)) for m in maps], axis=1)

    want = (pooled(x) + pooled(x[:, :, ::-1])) / 2
    got = np.asarray(feature_extractor(model)(x))
    assert [np.asarray(m).shape[-1] for m in backbone(x / 127.5 - 1.0)] == [192, 576, 1280]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_flip_average_gives_an_image_and_its_mirror_the_same_features(models):
    x = _images(4, seed=3)
    mirrored = x[:, :, ::-1].copy()
    flip = feature_extractor(models["multistage+flip"])
    np.testing.assert_allclose(np.asarray(flip(x)), np.asarray(flip(mirrored)), rtol=1e-5, atol=1e-6)
    plain = feature_extractor(models["last"])  # without it the mirror is another image
    assert np.abs(np.asarray(plain(x)) - np.asarray(plain(mirrored))).max() > 1e-3


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> Path:
    """The multistage + flip model with a random linear head, saved as ``.keras``."""
    model = models["multistage+flip"]
    rng = np.random.default_rng(4)
    head = model.get_layer("head").get_layer("logits")
    head.set_weights([rng.normal(0, 0.05, (2048, 3)).astype(np.float32), np.zeros(3, np.float32)])
    path = tmp_path_factory.mktemp("saved") / "model.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_saved_model_loads_in_safe_mode_with_identical_outputs(models, saved: Path):
    model = models["multistage+flip"]
    loaded = load_model(saved)  # safe mode: the mirror layer is a registered class, not a Lambda
    assert feature_options(loaded) == {"features": "multistage", "flip_average": True}
    x = _images(4, seed=5)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))  # eager: no graph tracing
    config = json.dumps(model.get_config())
    assert "Lambda" not in config and "HorizontalMirror" in config


BUILD = {"alpha": 1.0, "dropout": 0.5, "dense_units": 128, "head": "linear"}


def _packed_run(model, folder: Path, build: dict) -> Path:
    from liverscan.core.artifacts import ModelCard, write_card

    folder.mkdir()
    write_card(folder, ModelCard(name="packed", classes=["a", "b", "c"], image_size=SIZE, build=build))
    np.savez(folder / "weights.npz", *model.get_weights())
    return folder / "weights.npz"


@pytest.mark.slow
def test_packed_weights_and_card_rebuild_the_same_architecture(models, tmp_path: Path):
    model = models["multistage+flip"]
    packed = _packed_run(model, tmp_path / "new", {**BUILD, "features": "multistage", "flip_average": True})
    rebuilt = load_model(packed)
    assert feature_options(rebuilt) == {"features": "multistage", "flip_average": True}
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    x = _images(2, seed=6)
    np.testing.assert_allclose(np.asarray(rebuilt(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_a_card_without_the_options_rebuilds_the_last_stage_model(models, tmp_path: Path):
    old = load_model(_packed_run(models["last"], tmp_path / "old", BUILD))
    assert feature_options(old) == {"features": "last", "flip_average": False}
    assert feature_extractor(old).output.shape[-1] == 1280
    assert [layer.name for layer in old.layers] == [layer.name for layer in models["last"].layers]


def test_fine_tuning_unfreezes_the_top_blocks_of_the_multistage_backbone(models):
    from liverscan.core.model import unfreeze_top_blocks

    model = models["multistage+flip"]
    try:
        names = unfreeze_top_blocks(model, 2)
        assert "Conv_1" in names and "block_15_project" in names and "block_13_expand" not in names
        trainable = {w.path.split("/")[-2] for w in model.trainable_weights}
        assert {"Conv_1", "block_16_project"} <= trainable and "Conv_1_bn" not in trainable
    finally:
        unfreeze_top_blocks(model, 0)
    assert [w.path for w in model.trainable_weights] == [w.path for w in model.get_layer("head").trainable_weights]


def test_config_defaults_and_validation():
    cfg = Config()
    assert (cfg.model.features, cfg.model.flip_average) == ("auto", False)
    assert cfg.model.feature_set == "multistage" and set_value(cfg, "model.head", "mlp").model.feature_set == "last"
    cfg = set_value(set_value(cfg, "model.features", "multistage"), "model.flip_average", "yes")
    assert (cfg.model.features, cfg.model.flip_average) == ("multistage", True)
    with pytest.raises(ConfigError, match=r"model\.features must be auto or one of last, multistage \(got 'middle'\)"):
        set_value(Config(), "model.features", "middle")
    with pytest.raises(ConfigError, match=r"model\.flip_average: expected true/false"):
        set_value(Config(), "model.flip_average", "sometimes")


def test_build_model_refuses_unknown_features():
    from liverscan.core.errors import ModelError

    with pytest.raises(ModelError, match="unknown features 'all'"):
        build_model(2, SIZE, "none", features="all")


def test_imagenet_weights_fall_back_to_another_cached_size(monkeypatch, tmp_path: Path):
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "kh"))
    models_dir = tmp_path / "kh" / "models"
    models_dir.mkdir(parents=True)
    assert imagenet_weights_in_use(1.0, 224) is None
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{}_no_top.h5"
    (models_dir / name.format(160)).write_bytes(b"160")
    assert imagenet_weights_in_use(1.0, 224) == models_dir / name.format(160)
    assert imagenet_weights_in_use(1.0, 100) == models_dir / name.format(160)
    (models_dir / name.format(224)).write_bytes(b"224")  # Keras' own file for 224 and for sizes it has none for
    assert imagenet_weights_in_use(1.0, 224) == models_dir / name.format(224)
    assert imagenet_weights_in_use(1.0, 100) == models_dir / name.format(224)
    assert imagenet_weights_in_use(1.0, 160) == models_dir / name.format(160)
    assert imagenet_weights_in_use(0.5, 160) is None


@pytest.mark.slow
def test_offline_imagenet_at_another_size_loads_the_cached_file(monkeypatch, tmp_path: Path):
    """Offline, ``weights=imagenet`` at a size without a cached file loads the cached file of another size."""
    import h5py
    from keras.src.applications import mobilenet_v2
    from keras.src.backend import config as keras_config
    from keras.src.legacy.saving import legacy_h5_format

    from liverscan.core.model import build_backbone

    source = build_backbone(SIZE, "none")
    rng = np.random.default_rng(7)
    source.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in source.get_weights()])
    cached = tmp_path / "kh" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    cached.parent.mkdir(parents=True)
    with h5py.File(cached, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "kh"))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(mobilenet_v2.file_utils, "get_file", offline)
    built = build_backbone(48, "imagenet")  # Keras would want its 224 file
    assert built.input_shape[1:3] == (48, 48)
    assert all(np.array_equal(a, b) for a, b in zip(built.get_weights(), source.get_weights()))


# ---------------------------------------------------------------- a tiny run trained with the new options


@pytest.fixture(scope="module")
def options_run(tiny_data, tmp_path_factory) -> dict:
    """``train --features multistage --flip-average`` (linear head) on the tiny prepared data, through the CLI."""
    from typer.testing import CliRunner

    from conftest import SHORT_C_GRID
    from liverscan.core import probe
    from liverscan.faces.cli import app

    run = tmp_path_factory.mktemp("features") / "run"
    args = ["train", "--data", str(tiny_data["prep"]), "--out", str(run), "--head", "linear", "--quiet"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "C_GRID", SHORT_C_GRID)
        result = CliRunner().invoke(app, [*args, "--features", "multistage", "--flip-average"])
    assert result.exit_code == 0, result.output
    return {**tiny_data, "run": run}


@pytest.mark.slow
def test_tiny_run_trains_with_the_new_options(options_run):
    from liverscan.core.artifacts import read_card
    from liverscan.core.config import load_config
    from liverscan.core.dataset import PreparedData
    from liverscan.core.guard import Reference
    from liverscan.core.model import predict_probs

    run = options_run["run"]
    card = read_card(run)
    assert card.build["features"] == "multistage" and card.build["flip_average"] is True
    assert card.architecture["features"] == "multistage" and card.architecture["flip_average"] is True
    saved = load_config(run / "config.yaml").model
    assert (saved.features, saved.flip_average) == ("multistage", True)
    model = load_model(run / "model.keras")
    assert feature_options(model) == {"features": "multistage", "flip_average": True}
    assert Reference.load(run / "ood_reference.npz").n_features == 2048  # the guard reads the 2048 pooled features
    val = PreparedData(options_run["prep"]).split("val", SIZE)
    probs = predict_probs(model, val.x)
    assert (probs.argmax(1) == val.y).mean() >= 0.8  # separable classes
    np.testing.assert_allclose(probs, predict_probs(model, val.x[:, :, ::-1]), atol=1e-5)


def test_train_refuses_a_bad_features_value(tiny_data, tmp_path: Path):
    from typer.testing import CliRunner

    from liverscan.faces.cli import app

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_data["prep"]), "--out", str(run), "--features", "x"])
    assert result.exit_code != 0
    assert "model.features must be auto or one of last, multistage" in " ".join(result.output.split())
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_multistage_flip_model_exports_and_agrees_with_keras(options_run, fmt, tmp_path: Path):
    import importlib.util
    import shutil

    from liverscan.core.artifacts import read_card
    from liverscan.core.dataset import PreparedData
    from liverscan.serving.export import export_model

    if fmt == "onnx" and importlib.util.find_spec("tf2onnx") is None:
        pytest.skip("ONNX export needs tf2onnx")
    run = tmp_path / "run"
    shutil.copytree(options_run["run"], run)
    # checked on the test images: the guard's threshold is one validation image's score, where a 1e-6
    # difference would flip that image's answer whatever the model
    images = PreparedData(options_run["prep"]).split("test", SIZE).x.astype(np.float32)
    info = export_model(run, fmt, images)  # writes the file only when probabilities and guard answers agree
    assert (run / f"model.{fmt}").is_file()
    assert info["max_abs_difference_vs_keras"] <= 1e-4 and info["same_in_distribution_as_keras"] is True
    assert info["feature_max_relative_difference_vs_keras"] < 1e-3
    assert read_card(run).exports[fmt]["sha256"] == info["sha256"]
