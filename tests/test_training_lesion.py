"""The lesion head's training: targets from outlines, and a small real head that finds made-up lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesion_helpers import make_xu_dataset
from liverscan.core import lesion
from liverscan.core.annotations import lesion_free_classes
from liverscan.core.config import Config
from liverscan.core.images import load_image
from liverscan.training import lesion as lesion_training


def _rows(data: dict) -> list[dict[str, str]]:
    rows = []
    for cls in ("Malignant", "Normal"):
        for path in sorted((data["root"] / cls / "image").glob("*.png")):
            mass = path.parent.parent / "segmentation" / "mass" / f"{path.stem}.json"
            rows.append(
                {
                    "path": str(path),
                    "class": "tumor" if cls == "Malignant" else "normal",
                    "width": "64",
                    "height": "64",
                    "lesion_annotation": str(mass) if mass.is_file() else "",
                }
            )
    return rows


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> dict:
    return make_xu_dataset(tmp_path_factory.mktemp("xu") / "xu", n_tumour=24, n_normal=8, size=64)


def test_targets_cover_the_outline_and_normals_teach_no_lesion(discs):
    rows = _rows(discs)
    rows.append({**rows[0], "lesion_annotation": ""})  # a tumour image without its outline: unknown
    t = lesion_training.lesion_targets(rows, 16)
    assert lesion_free_classes(rows) == {"normal"}
    assert t.known[:-1].all() and not t.known[-1]
    assert t.n_lesion == 24 and t.n_free == 8
    cx, cy, r = discs["discs"][rows[0]["path"]]
    area = t.coverage[0].sum() * (64 / 16) ** 2
    assert area == pytest.approx(np.pi * r * r, rel=0.1)
    row, col = np.unravel_index(np.argmax(t.coverage[0]), (16, 16))
    assert abs((col + 0.5) * 4 - cx) <= r and abs((row + 0.5) * 4 - cy) <= r
    assert t.coverage[24:32].max() == 0.0


@pytest.mark.slow
def test_a_small_real_head_finds_made_up_lesions(discs, tmp_path: Path):
    rows = _rows(discs)
    images = np.stack([load_image(r["path"], 64) for r in rows])
    cfg = Config()
    cfg.model.weights = "none"
    cfg.lesion.epochs, cfg.lesion.width, cfg.lesion.learning_rate = 20, 8, 3e-3
    cfg.lesion.fine_tune_from, cfg.lesion.zoom = "", 1  # one pass: the decoder trains on cached features
    train = np.r_[0:18, 24:30]
    test = np.r_[18:24, 30:32]
    targets = lesion_training.lesion_targets([rows[i] for i in train], 16, {"normal"})
    model = lesion_training.fit_lesion_model(images[train], targets, cfg, seed=1)
    maps = lesion.predict_maps(model, images[test])
    assert maps.shape == (8, 64, 64)
    hits, dices = [], []
    for i, m in zip(test[:6], maps[:6]):
        cx, cy, r = discs["discs"][rows[i]["path"]]
        y, x = np.mgrid[0:64, 0:64] + 0.5
        true = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        hits.append(lesion.pointing_hit(m, true))
        dices.append(lesion.dice(lesion.predicted_mask(m), true))
    assert np.mean(hits) >= 5 / 6, hits
    assert np.mean(dices) >= 0.5, dices
    assert all(not lesion.regions(m) for m in maps[6:]), [float(m.max()) for m in maps[6:]]
    # the served model is a plain Keras file: saved and loaded in safe mode it gives the same maps
    from liverscan.core.model import load_model, save_keras_atomic

    save_keras_atomic(model, tmp_path / "lesion.keras")
    again = lesion.predict_maps(load_model(tmp_path / "lesion.keras"), images[test])
    np.testing.assert_allclose(again, maps, atol=1e-5)


def test_an_unknown_first_tuned_layer_is_a_config_error():
    from liverscan.core.errors import ConfigError
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    bb = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    with pytest.raises(ConfigError, match="no layer 'block_99'"):
        lesion_training.set_trainable(bb, "block_99")
    assert lesion_training.set_trainable(bb, "") == []
    tuned = lesion_training.set_trainable(bb, "block_16_expand")
    assert tuned[0] == "block_16_expand" and "Conv_1" in tuned and not any("BN" in n for n in tuned)


def _xu_config(root: Path) -> Config:
    from conftest import tiny_config

    cfg = tiny_config(root)
    cfg.model.head = "linear"
    cfg.ood.enabled = False
    cfg.lesion.epochs, cfg.lesion.width, cfg.lesion.fine_tune_from = 2, 4, ""
    return cfg


@pytest.fixture(scope="module")
def xu_prepared(discs, tmp_path_factory) -> dict:
    from liverscan.preparation.prepare import prepare_dataset

    prep = tmp_path_factory.mktemp("xuprep") / "prep"
    prepare_dataset(_xu_config(discs["root"]), prep)
    return {"prep": prep, "root": discs["root"]}


@pytest.mark.slow
def test_train_fits_the_head_when_the_data_has_outlines(xu_prepared, short_c_grid, tmp_path: Path):
    from liverscan.core.annotations import lesion_classes
    from liverscan.core.artifacts import LESION_FILE, read_card
    from liverscan.core.fileio import read_csv
    from liverscan.core.model import load_model
    from liverscan.training.train import train_run

    result = train_run(_xu_config(xu_prepared["root"]), xu_prepared["prep"], tmp_path / "run")
    card = read_card(tmp_path / "run")
    assert card.lesion is not None and card.lesion == result.card.lesion
    assert card.lesion["file"] == LESION_FILE
    # the card carries the rule that reads the head's maps: the config's, gated by the outlined classes
    outlined = lesion_classes(read_csv(xu_prepared["prep"] / "manifest.csv"))
    assert outlined and card.lesion["gate_classes"] == list(outlined)
    rule = lesion.LesionRule.from_entry(card.lesion)
    assert rule == lesion_training.rule_of(_xu_config(xu_prepared["root"]), outlined)
    assert (rule.threshold, rule.extent, rule.floor, rule.gate) == (0.7, 0.5, 0.2, 0.9)
    t = card.lesion["training"]
    assert t["images_with_lesion"] + t["images_without_lesion"] == 24 + 8 - _n_test(xu_prepared["prep"])
    assert t["images_with_lesion"] > 0 and t["images_without_lesion"] > 0 and t["left_out"] == 0
    head = load_model(tmp_path / "run" / LESION_FILE)
    assert tuple(head.input_shape[1:]) == (32, 32, 3) and tuple(head.output_shape[1:]) == (32, 32, 1)
    assert "Lesion" in (tmp_path / "run" / "model_card.md").read_text() or card.lesion["design"]


def _n_test(prep: Path) -> int:
    from liverscan.core.fileio import read_csv

    return sum(r["split"] == "test" for r in read_csv(prep / "manifest.csv"))


@pytest.mark.slow
def test_lesion_head_off_and_data_without_outlines_train_no_head(xu_prepared, probe_run, short_c_grid, tmp_path):
    from liverscan.core.artifacts import LESION_FILE, read_card
    from liverscan.training.train import train_run

    cfg = _xu_config(xu_prepared["root"])
    cfg.lesion.head = "off"
    train_run(cfg, xu_prepared["prep"], tmp_path / "off")
    assert read_card(tmp_path / "off").lesion is None and not (tmp_path / "off" / LESION_FILE).exists()
    assert read_card(probe_run["run"]).lesion is None and not (probe_run["run"] / LESION_FILE).exists()


@pytest.mark.slow
def test_cross_validated_run_writes_out_of_fold_maps(xu_prepared, short_c_grid, tmp_path: Path):
    from liverscan.core.artifacts import LESION_FILE, LESION_OOF_FILE, read_card
    from liverscan.core.fileio import read_csv
    from liverscan.training.crossval import cross_validate

    cfg = _xu_config(xu_prepared["root"])
    cfg.train.folds = 2
    cfg.lesion.epochs = 1
    cross_validate(cfg, xu_prepared["prep"], tmp_path / "cv")
    card = read_card(tmp_path / "cv")
    assert card.lesion is not None and card.lesion["out_of_fold"]["file"] == LESION_OOF_FILE
    with np.load(tmp_path / "cv" / LESION_OOF_FILE) as z:
        paths, maps = list(z["paths"]), z["maps"]
    rows = read_csv(xu_prepared["prep"] / "manifest.csv")
    assert sorted(paths) == sorted(r["path"] for r in rows)  # every image once, out of fold
    assert maps.shape == (len(rows), 32, 32) and maps.dtype == np.float16
    assert 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0
    assert (tmp_path / "cv" / LESION_FILE).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("zoom,flip", [(1, False), (2, True)])
def test_packed_float16_head_rebuilds_with_the_same_maps(tmp_path: Path, zoom: int, flip: bool):
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(3)
    bb = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    model = lesion.build_lesion_model(bb, width=4, zoom=zoom, flip=flip)
    lesion.save_packed(model, tmp_path / "lesion.weights.npz")
    again = lesion.load_packed(tmp_path / "lesion.weights.npz", 32, width=4, zoom=zoom, flip=flip)
    assert lesion.zoom_of(again) == zoom and lesion.flip_of(again) == flip
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(lesion.predict_maps(again, x), lesion.predict_maps(model, x), atol=2e-2)
    from liverscan.core.errors import ModelError

    with pytest.raises(ModelError, match="not packed weights of this lesion head"):
        lesion.load_packed(tmp_path / "lesion.weights.npz", 32, width=8)


@pytest.mark.slow
def test_cli_train_lesion_head_off(xu_prepared, short_c_grid, tmp_path: Path):
    from typer.testing import CliRunner

    from liverscan.core.artifacts import read_card
    from liverscan.faces.cli import app

    args = ["train", "--data", str(xu_prepared["prep"]), "--out", str(tmp_path / "run"), "--lesion-head", "off"]
    r = CliRunner().invoke(app, [*args, "--set", "train.export_runtime=none", "--set", "ood.enabled=false"])
    assert r.exit_code == 0, r.output
    assert read_card(tmp_path / "run").lesion is None and "Lesion localisation head" not in r.output
    r = CliRunner().invoke(app, [*args[:-2], "--lesion-head", "sometimes", "--overwrite"])
    assert r.exit_code == 2 and "lesion.head must be one of auto, off (got 'sometimes')" in r.output


def test_zoomed_crop_views_keep_image_and_target_aligned(discs):
    """A zoom's training view is an S-px crop of the image shown larger, cut with its target: the disc in the view
    is where its target says, and the view is 1-2x as large as the image (the disc's size grows with it)."""
    rows = _rows(discs)
    t = lesion_training.lesion_targets(rows, 32)  # zoom 2 on 64-px images: targets at 2 x 64 / 4
    rng = np.random.default_rng(0)
    radii = []
    for i in range(24):
        image = load_image(rows[i]["path"], 64)
        for _ in range(3):
            view, target = lesion_training.zoomed_crop(image, t.coverage[i], rng, (1.0, 2.0))
            assert view.shape == (64, 64, 3) and target.shape == (16, 16) and view.dtype == np.float32
            edge = np.r_[target[0], target[-1], target[:, 0], target[:, -1]]
            if target.max() < 0.9 or edge.max() > 0:
                continue  # the crop cut into the disc (it keeps the lesion's centre only half the time)
            bright = view.mean(axis=-1) > 170  # the disc (brightness changed by at most x1.25 and +-20)
            cells = bright.reshape(16, 4, 16, 4).mean(axis=(1, 3))
            assert np.abs(cells - target).mean() < 0.08
            radii.append(np.sqrt(target.sum() * 16 / np.pi) / discs["discs"][rows[i]["path"]][2])
    assert len(radii) >= 20 and 0.9 <= min(radii) and max(radii) <= 2.1 and max(radii) > 1.4, radii
    normal = load_image(rows[-1]["path"], 64)
    _, empty = lesion_training.zoomed_crop(normal, t.coverage[-1], rng, (1.0, 2.0))
    assert empty.max() == 0.0


@pytest.mark.slow
def test_a_zoomed_head_learns_from_views_and_runs_at_two_sizes(discs):
    """lesion.zoom=2: trained on zoomed crops (targets at twice the side), the served model takes S-px images,
    averages its passes at S, 2S and (lesion.run_zoom 3) 3S, and finds the made-up lesions."""
    rows = _rows(discs)
    images = np.stack([load_image(r["path"], 64) for r in rows])
    cfg = Config()
    cfg.model.weights = "none"
    cfg.lesion.epochs, cfg.lesion.width, cfg.lesion.learning_rate, cfg.lesion.zoom = 20, 8, 3e-3, 2
    cfg.lesion.fine_tune_from, cfg.lesion.run_zoom, cfg.lesion.flip = "", 3, False
    train, test = np.r_[0:18, 24:30], np.r_[18:24, 30:32]
    targets = lesion_training.lesion_targets([rows[i] for i in train], 32, {"normal"})
    with pytest.raises(ValueError, match="needs targets 32 a side"):
        lesion_training.fit_lesion_model(images[:4], lesion_training.lesion_targets(rows[:4], 16), cfg)
    model = lesion_training.fit_lesion_model(images[train], targets, cfg, seed=1)
    assert lesion.zoom_of(model) == 3 and model.input_shape == (None, 64, 64, 3)
    assert lesion_training.card_entry(cfg, targets, 1.0, "lesion.keras")["zoom"] == 3
    maps = lesion.predict_maps(model, images[test])
    assert maps.shape == (8, 64, 64)
    hits = []
    for i, m in zip(test[:6], maps[:6]):
        cx, cy, r = discs["discs"][rows[i]["path"]]
        y, x = np.mgrid[0:64, 0:64] + 0.5
        hits.append(lesion.pointing_hit(m, (x - cx) ** 2 + (y - cy) ** 2 <= r * r))
    assert np.mean(hits) >= 5 / 6, hits
    assert sum(bool(lesion.regions(m)) for m in maps[6:]) <= 1, [float(m.max()) for m in maps[6:]]
