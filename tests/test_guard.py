"""The out-of-distribution guard: fit, score, threshold, image checks, and how predictions carry it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cli_helpers import edit_card
from conftest import class_image
from liverscan.core import guard
from liverscan.core.guard import GuardError, Reference
from liverscan.faces.cli import app
from liverscan.serving import Classifier

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def screenshot(size: int = 160) -> np.ndarray:
    """A white browser-like page with a toolbar, text lines and a small grey picture."""
    im = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, size, 14], fill=(60, 90, 160))
    for y in range(24, size - 10, 9):
        d.line([8, y, size - 30, y], fill=(20, 20, 20), width=2)
    d.rectangle([size // 2, size // 2, size - 12, size - 12], fill=(90, 90, 90))
    return np.asarray(im)


@pytest.fixture(scope="module")
def features_real():
    """Real ImageNet-backbone features of synthetic class images, and of screenshots and noise."""
    from liverscan.core.model import build_model, feature_extractor
    from liverscan.training.features import compute_features

    weights = SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.h5"
    if not weights.is_file():
        pytest.skip("offline backbone weights not available")
    extractor = feature_extractor(build_model(3, 160, str(weights)))
    imgs = [(k, np.asarray(class_image(k, seed, size=160))) for k in range(3) for seed in range(60)]
    x = np.stack([a for _, a in imgs])
    y = np.array([k for k, _ in imgs])
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(8)]
    inverted = [255 - np.asarray(class_image(k, 99, size=160)) for k in range(3)]
    other = np.stack([screenshot()] * 2 + noise + inverted)
    f = compute_features(extractor, x)
    train = np.arange(len(y)) % 4 != 0
    return (f[train], y[train]), f[~train], compute_features(extractor, other)


@pytest.fixture(scope="module")
def features(probe_run):
    """Real pooled features of the tiny run's model: its own training images vs other inputs."""
    from liverscan.core.dataset import PreparedData
    from liverscan.core.model import feature_extractor, load_model
    from liverscan.training.features import compute_features

    extractor = feature_extractor(load_model(probe_run["run"] / "model.keras"))
    data = PreparedData(probe_run["prep"])
    train, val = data.split("train", 32), data.split("val", 32)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(12, 32, 32, 3)).astype(np.uint8)  # unlike any class image
    return {
        "train": (compute_features(extractor, train.x), train.y),
        "val": compute_features(extractor, val.x),
        "noise": compute_features(extractor, noise),
    }


def _clusters(n: int, seed: int, shift: float = 0.0):
    """Non-negative 'pooled features' of two classes around fixed centres; ``shift`` moves them elsewhere."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).gamma(2.0, 1.0, size=(2, 64))
    y = rng.integers(0, 2, size=n)
    other = np.random.default_rng(8).gamma(2.0, 1.0, size=64)
    x = (1 - shift) * centres[y] + shift * other + rng.gamma(2.0, 0.15, size=(n, 64))
    return x.astype(np.float32), y


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_fit_score_threshold(method):
    (ftrain, ytrain), (fval, _), (fnoise, _) = _clusters(200, 1), _clusters(100, 2), _clusters(50, 3, shift=0.5)
    ref = guard.fit(ftrain, ytrain, method=method, k=3)
    ref = guard.calibrate(ref, guard.scores(ref, fval), 0.9, "val")
    s_val, s_noise = guard.scores(ref, fval), guard.scores(ref, fnoise)
    assert (s_val <= ref.threshold).mean() >= 0.9  # the stated retention holds on the held-out images
    assert (s_noise > ref.threshold).mean() > 0.9  # inputs from elsewhere are flagged
    looser = ref.with_retention(1.0)
    assert looser.threshold == pytest.approx(s_val.max()) and looser.threshold >= ref.threshold


@pytest.mark.slow
def test_real_backbone_features_separate_other_inputs(features_real):
    (ftrain, ytrain), fval, fother = features_real
    ref = guard.fit_calibrated(ftrain, ytrain, fval, retention=0.95)
    assert (guard.scores(ref, fval) <= ref.threshold).mean() >= 0.95
    assert (guard.scores(ref, fother) > ref.threshold).mean() >= 0.9


def test_reference_round_trip_and_damage(features, tmp_path):
    (ftrain, ytrain), fval = features["train"], features["val"]
    ref = guard.fit_calibrated(ftrain, ytrain, fval, retention=0.95, k=2)
    path = ref.save(tmp_path / "ood_reference.npz")
    back = Reference.load(path)
    assert back.threshold == ref.threshold and back.retention == 0.95 and back.k == 2
    np.testing.assert_allclose(guard.scores(back, fval), guard.scores(ref, fval))
    assert back.describe()["method"] == "knn"
    path.write_bytes(b"not a zip")
    with pytest.raises(GuardError, match="cannot read"):
        Reference.load(path)


def test_image_checks_flag_non_bmode_and_pass_bmode():
    grey_scan = np.asarray(class_image(2, seed=1, size=160))
    colour = np.zeros((160, 160, 3), np.uint8)
    colour[..., 0], colour[..., 1] = 200, np.arange(160, dtype=np.uint8)[None, :]
    blank = np.full((160, 160, 3), 30, np.uint8)
    reasons = guard.image_checks(np.stack([grey_scan, colour, blank, screenshot()]))
    assert reasons[0] is None
    assert "colour" in reasons[1] and "blank" in reasons[2]
    assert reasons[3] is not None and ("screenshot" in reasons[3] or "colour" in reasons[3])


@pytest.mark.slow
def test_out_of_distribution_record_needs_review(probe_run):
    clf = Classifier.load(probe_run["run"])
    assert clf.reference is not None
    own = np.asarray(Image.open(sorted((probe_run["data"] / "tumor").glob("*.png"))[0]).convert("RGB"))
    recs = clf.predict([own, screenshot()])
    assert recs[0].in_distribution is not None and recs[0].ood_score is not None
    out = recs[1]
    assert out.in_distribution is False and out.needs_review and out.decision == "out_of_distribution"
    assert out.ood_reason and out.predicted_class in clf.classes and out.probabilities  # kept in the record
    unguarded = Classifier(  # the same model in memory, the guard switched off
        clf.card, clf.source, clf.model_path, model=clf.model, options=clf.options.replace(ood=False)
    )
    off = unguarded.predict([screenshot()])[0]
    assert off.in_distribution is None and off.decision == off.predicted_class and "guard off" in off.decision_rule


def test_terminal_warns_and_records_carry_the_guard(tmp_path):
    """The default model (its exported runtime gives the features too): a scan passes, a screenshot is flagged."""
    Image.fromarray(screenshot()).save(tmp_path / "shot.png")
    shutil.copy(EXAMPLES / "Normal" / "xu-92.jpg", tmp_path / "scan.jpg")
    r = CliRunner().invoke(app, ["predict", str(tmp_path), "-f", "jsonl"])
    assert r.exit_code == 0, r.output
    recs = {json.loads(line)["path"].split("/")[-1]: json.loads(line) for line in r.stdout.splitlines()}
    assert recs["shot.png"]["decision"] == "out_of_distribution" and recs["shot.png"]["needs_review"]
    assert recs["scan.jpg"]["in_distribution"] is True
    assert "1 of 2 images look unlike this model's training data" in r.stderr
    assert "out-of-distribution guard: knn" in r.stderr


def test_model_without_reference_still_predicts(tmp_path):
    from liverscan.serving import default_model_dir

    model = tmp_path / "old"
    shutil.copytree(default_model_dir(), model)
    (model / "ood_reference.npz").unlink()
    edit_card(model, lambda card: card.update(ood=None, versions={**card["versions"], "liverscan": "0.1.0"}))
    r = CliRunner().invoke(app, ["predict", str(EXAMPLES / "Normal"), "--model", str(model), "-f", "csv"])
    assert r.exit_code == 0, r.output
    notices = [line for line in r.stderr.splitlines() if "no out-of-distribution reference" in line]
    assert len(notices) == 2 and notices[1].startswith("note:")  # the model line, and one notice line
    assert "trained before liverscan 0.2" in notices[1]
    rows = list(__import__("csv").DictReader(io.StringIO(r.stdout)))
    assert rows and all(row["in_distribution"] == "" for row in rows)


def test_guard_settings_are_the_models_own_at_prediction(probe_run):
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    k = json.loads((probe_run["run"] / "model_card.json").read_text())["ood"]["k"]
    for setting, fragment in ((f"ood.k={k + 1}", f"ood.k={k + 1} cannot be applied when predicting"),
                              ("ood.method=mahalanobis", "fitted and calibrated with ood.method=knn")):  # fmt: skip
        r = CliRunner().invoke(app, ["predict", image, "--model", str(probe_run["run"]), "--set", setting])
        assert r.exit_code != 0 and "Traceback" not in r.stderr, r.output
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and fragment in " ".join(r.stderr.split()), r.stderr
    with pytest.raises(guard.GuardError, match="missing, though the model card records"):
        Reference.for_model(probe_run["run"] / "absent.npz", required=True)
    assert Reference.for_model(probe_run["run"] / "absent.npz") is None


def test_a_guard_calibrated_on_few_images_says_so_in_the_card_and_when_predicting(probe_run):
    rng = np.random.default_rng(0)
    ref = guard.fit(rng.normal(size=(30, 8)), method="knn", k=3)
    few = guard.calibrate(ref, rng.random(4), 0.95, "validation split (n=4)").describe()
    assert few["n_calibration_images"] == 4 and "calibrated on only 4 images" in few["warning"]
    enough = guard.calibrate(ref, rng.random(guard.MIN_CALIBRATION_IMAGES), 0.95, "validation split").describe()
    assert "warning" not in enough
    ood = json.loads((probe_run["run"] / "model_card.json").read_text())["ood"]  # 9 validation images
    assert ood["n_calibration_images"] < guard.MIN_CALIBRATION_IMAGES and "calibrated on only" in ood["warning"]
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    r = CliRunner().invoke(app, ["predict", image, "--model", str(probe_run["run"])])
    assert r.exit_code == 0 and "calibrated on only" in " ".join(r.stderr.split()), r.output


def test_the_guards_reason_shows_the_score_and_threshold_apart():
    """A score just over the threshold is printed with enough digits to tell them apart (never "0.624 > 0.624")."""
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(20, 8))
    reference = guard.fit(bank, method="knn", k=3)
    features = rng.normal(size=(1, 8))
    (score,) = guard.scores(reference, features)
    reference.threshold = float(score) - 3e-5  # just under: the image is out, by a hair
    (verdict,) = guard.assess(reference, np.full((1, 16, 16, 3), 90, np.uint8), features, [None])
    assert verdict.in_distribution is False
    shown = verdict.reason.split("score ")[1].rstrip(")").split(" > threshold ")
    assert shown[0] != shown[1] and float(shown[0]) > float(shown[1]) and len(shown[0].split(".")[1]) >= 3
    assert guard.distinct(0.9, 0.5) == ("0.900", "0.500")
