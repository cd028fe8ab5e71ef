from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liverscan import Classifier
from liverscan.faces.cli import app
from liverscan.serving import default_model_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def test_shipped_model_card_is_complete():
    card = json.loads((default_model_dir() / "model_card.json").read_text())
    assert card["classes"] == ["normal", "tumor"]
    assert "not a medical device" in card["intended_use"]
    assert "CC BY 4.0" in card["training_data_licence"]
    cv = card["cross_validation"]
    assert cv["folds"] >= 5 and cv["images"] > 500  # the headline is cross-validated, not one small split
    for key in ("accuracy", "balanced_accuracy", "macro_roc_auc"):
        v = cv["metrics"]["model"][key]
        assert v["ci95"][0] <= v["value"] <= v["ci95"][1]
    assert card["ood"]["method"] == "knn" and card["ood"]["retention"] == 0.95
    assert (default_model_dir() / "ood_reference.npz").is_file()
    text = json.dumps(card)
    assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text
    sizes = card["packed"]["bytes"]
    assert sizes["weights.npz"] < 6_000_000  # float16 weights
    # every shipped model file is vouched for by the card (checked whenever the model loads)
    assert set(card["integrity"]["files"]) == {"weights.npz", "ood_reference.npz", "lesion.weights.npz"}
    from liverscan.core.artifacts import check_file, check_integrity, read_card

    check_integrity(read_card(default_model_dir()), default_model_dir())
    for name in ("model.tflite", "lesion.tflite"):
        check_file(read_card(default_model_dir()), default_model_dir() / name, "")


def test_default_model_predicts_the_examples():
    clf = Classifier.load()
    assert clf.source == default_model_dir()
    recs = clf.predict(sorted(str(p) for p in EXAMPLES.rglob("*.jpg")))
    assert len(recs) == 9 and all(r.ok for r in recs)
    malignant = [r for r in recs if "/Malignant/" in r.path]
    assert all(r.predicted_class == "tumor" for r in malignant)


@pytest.mark.slow
def test_packed_keras_and_tflite_agree():
    from liverscan.serving import runtime

    if not runtime.available():
        pytest.skip("no TFLite runtime")
    paths = sorted(str(p) for p in EXAMPLES.rglob("*.jpg"))
    fast, slow = Classifier.load(runtime="tflite").predict(paths), Classifier.load(runtime="keras").predict(paths)
    a = np.array([list(r.probabilities.values()) for r in fast])
    b = np.array([list(r.probabilities.values()) for r in slow])
    assert np.abs(a - b).max() <= 1e-4
    assert [r.in_distribution for r in fast] == [r.in_distribution for r in slow]
    assert all(r.in_distribution for r in fast)  # the sample scans are the model's own kind of image


def test_cli_predict_without_model_says_which_model():
    r = CliRunner().invoke(app, ["predict", str(EXAMPLES), "-q"])
    assert r.exit_code == 0, r.output
    assert "Model:" in r.stderr and "models/default" in r.stderr and "normal, tumor" in r.stderr


@pytest.mark.slow
def test_shipped_lesion_head_says_where_and_its_runtimes_agree():
    card = json.loads((default_model_dir() / "model_card.json").read_text())
    les = card["lesion"]
    assert les["file"] == "lesion.weights.npz" and les["training"]["images_with_lesion"] > 500
    oof = les["out_of_fold"]["metrics"]
    for key in ("pointing", "dice_mean", "false_lesion_rate"):
        assert oof[key]["ci95"][0] <= oof[key]["value"] <= oof[key]["ci95"][1]
    assert oof["pointing"]["value"] > 2 * oof["lesion_share_of_fan"]["value"]  # far better than chance
    assert card["exports"]["lesion_tflite"]["mask_pixels_differing"] <= 1e-3
    paths = sorted(str(p) for p in EXAMPLES.rglob("*.jpg"))
    fast = Classifier.load(runtime="tflite")
    keras = Classifier.load(runtime="keras")
    assert fast.lesion is not None and fast.lesion.kind == "tflite" and keras.lesion.kind == "keras"
    assert fast.runner.has_maps  # lesion.tflite: the classifier and the head in one graph
    a, b = fast.predict(paths), keras.predict(paths)
    for x, y in zip(a, b):
        assert x.lesion is not None and y.lesion is not None
        assert x.lesion.found == y.lesion.found and x.lesion.count == y.lesion.count
        assert x.lesion.probability == pytest.approx(y.lesion.probability, abs=1e-3)
        if x.lesion.found:
            assert x.lesion.area_fraction == pytest.approx(y.lesion.area_fraction, abs=2e-3)
    # the large malignant lesion of xu-347 (17 % of the image) is found; the normals get none. (The other
    # examples' lesions cover 0.03-1.9 % of the image: small lesions are what the head misses most.)
    found = {Path(r.path).name: r.lesion.found for r in a}
    assert found["xu-347.jpg"] and not any(found[f"xu-{n}.jpg"] for n in (30, 77, 92))
