"""Cross-validated training and evaluation: folds, out-of-fold coverage, nesting, resume, the linear probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import class_image
from liverscan.core.config import Config, SourceSpec
from liverscan.core.errors import DataError
from liverscan.core.fileio import read_csv
from liverscan.core.operating_point import OperatingPoint
from liverscan.core.probe import fit_linear_probe
from liverscan.evaluation.crossval import OutOfFold, nested
from liverscan.faces.cli import app
from liverscan.preparation import prepare_dataset
from liverscan.training import SilentReporter, cross_validate
from liverscan.training.crossval import fold_splits


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """3 classes x 8 patients x 3 frames (32x32), grouped by patient; prepared with every image in 'train'."""
    base = tmp_path_factory.mktemp("patients")
    for ci, cat in enumerate(["normal", "fatty", "tumor"]):
        (base / "data" / cat).mkdir(parents=True)
        for p in range(8):
            for f in range(3):
                class_image(ci, seed=100 * ci + 10 * p + f, size=32).save(base / "data" / cat / f"p{ci}{p}_{f}.png")
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(base / "data"))]
    cfg.data.near_duplicate_distance = -1
    cfg.data.group_regex = r"(p\d+)_"
    cfg.data.train_ratio, cfg.data.val_ratio, cfg.data.test_ratio = 1.0, 0.0, 0.0
    cfg.preprocess.image_size = 32
    cfg.model.weights = "none"
    cfg.train.folds = 4
    cfg.train.views = 2
    cfg.train.epochs = 3
    prepare_dataset(cfg, base / "prep")
    return base, cfg


def test_folds_keep_groups_together_and_class_ratios():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 3)
    y = np.repeat(rng.integers(0, 3, size=60), 3)
    for repeat in fold_splits(y, groups, 5, 2, seed=1):
        seen = np.concatenate([test for _, test in repeat])
        assert sorted(seen) == list(range(len(y)))  # every image once per repeat
        for train, test in repeat:
            assert not set(groups[train]) & set(groups[test])
            for c in range(3):
                assert abs((y[test] == c).mean() - (y == c).mean()) < 0.12
    with pytest.raises(DataError, match="groups per class"):
        fold_splits(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), 3, 1, seed=0)


def test_linear_probe_matches_a_scikit_learn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 12)) * rng.uniform(0.5, 20, size=12) + 5
    y = np.digitize(x[:, 0] / x[:, 0].std() + rng.normal(0, 0.3, 90), [-0.3, 0.3])
    probe = fit_linear_probe(x, y, np.arange(90) // 3, 3, seed=0)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=probe.c, class_weight="balanced", max_iter=5000))
    expected = reference.fit(x, y).predict_proba(x)
    got = probe.probabilities(x)  # scaler folded into one softmax layer; differences = solver tolerance only
    np.testing.assert_allclose(got, expected, atol=5e-3)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.97
    assert 2 <= probe.inner_folds <= 5 and probe.c in np.logspace(-4, 0, 9)


def test_nested_fitting_never_sees_the_rows_it_evaluates():
    n = 40
    oof = OutOfFold(
        [f"{i}" for i in range(n)],
        np.arange(n),
        np.arange(n) % 2,
        np.repeat([0, 1], 20),
        np.tile(np.repeat(np.arange(4), 5), 2),
        np.random.default_rng(0).dirichlet([1, 1], n),
        None,
        np.zeros(n),
    )
    row_id = np.arange(n, dtype=float)
    probs = np.stack([row_id, row_id], 1)  # each row recognisable by its values
    held_of: dict[int, set] = {}

    def fit(y, p):
        seen = set(p[:, 0].astype(int))
        held_of[len(held_of)] = seen
        return OperatingPoint()

    nested(oof, probs, fit)
    assert len(held_of) == 8  # 2 repeats x 4 folds
    for (r, k), seen in zip([(r, k) for r in (0, 1) for k in range(4)], held_of.values()):
        held = set(np.flatnonzero((oof.repeat == r) & (oof.fold == k)))
        same_repeat = set(np.flatnonzero(oof.repeat == r))
        assert not seen & held and seen == same_repeat - held


class _KillAfterFolds(SilentReporter):
    def __init__(self, n: int):
        self.n = n

    def advance(self, done: int, total: int) -> None:
        if total == 4 and done >= self.n:  # the fold loop reports (folds done, folds total)
            raise KeyboardInterrupt


@pytest.mark.slow  # cross-validated training runs (4 folds and a refit)
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_cross_validated_run_resumes_and_covers_every_image(patients, tmp_path, head):
    base, cfg = patients
    cfg.model.head = head
    run = tmp_path / "cv"
    with pytest.raises(KeyboardInterrupt):
        cross_validate(cfg, base / "prep", run, reporter=_KillAfterFolds(2))
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    finished = sorted(p.parent.name for p in run.glob("folds/*/fold.json"))
    assert finished == ["r0f0", "r0f1"]
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("folds/*/fold.json")}
    res = cross_validate(Config(), None, run, resume=True)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished folds were not fitted again
    rows = read_csv(run / "oof_predictions.csv")
    manifest = read_csv(base / "prep" / "manifest.csv")
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in manifest)  # each image once (1 repeat)
    by_group: dict[str, set] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in by_group.values())  # no patient spans folds
    assert ("baseline_p_normal" in rows[0]) == (head == "mlp")
    assert (run / "model.keras").is_file() and (run / "ood_reference.npz").is_file()
    assert res.card.extra["cross_validation"]["folds"] == 4
    assert "out-of-fold" in res.card.ood["calibrated_on"]


@pytest.mark.slow
def test_cli_folds_evaluates_out_of_fold_and_refuses_a_leaky_split(patients, tmp_path):
    base, _ = patients
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(base / "prep"),
            "--out",
            str(tmp_path / "r"),
            "--folds",
            "4",
            "--set",
            "eval.bootstrap=200",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "Out of fold (72 predictions; 95% CI: bootstrap over groups" in r.stdout
    card = json.loads((tmp_path / "r" / "model_card.json").read_text())
    headline = card["cross_validation"]["metrics"]["model"]
    assert headline["balanced_accuracy"]["ci95"][0] <= headline["balanced_accuracy"]["value"]
    metrics = json.loads((tmp_path / "r" / "eval-cv" / "metrics.json").read_text())
    assert metrics["argmax"]["bootstrap"]["resampled"] == "groups" and metrics["argmax"]["per_fold"]
    assert metrics["baseline"]["name"].startswith("linear probe")
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "r"), "--split", "test"])
    assert r.exit_code == 1 and "not held out" in r.stderr
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "r"), "-p", "balanced", "--bootstrap", "100", "-q"])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "r" / "model_card.json").read_text())
    assert card["operating_point"]["fitted_on"]["data"] == "out-of-fold predictions"
    # the guard's table: every out-of-fold prediction in its "all" row, with its accuracy
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "r"), "--bootstrap", "20"], terminal_width=300)
    assert r.exit_code == 0, r.output
    cells = next(line for line in r.stdout.splitlines() if line.strip("│ ").startswith("all")).split("│")
    assert cells[2].strip() == "72" and float(cells[4]) > 0, cells  # n (all), accuracy (all)
    # external data with one of its images: left out (a cross-validated run is refit on every image); the
    # stored temperature is described as fitted on the out-of-fold predictions, not on a validation split
    ext = tmp_path / "ext"
    for ci, cls in enumerate(("normal", "fatty", "tumor")):
        (ext / cls).mkdir(parents=True)
        class_image(ci, seed=9000 + ci, size=48).save(ext / cls / "new.png")  # 48 px: no near duplicates
    seen = read_csv(base / "prep" / "manifest.csv")[0]
    (ext / seen["class"] / "seen.png").write_bytes(open(seen["path"], "rb").read())
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "r"), "--data", str(ext), "--bootstrap", "20", "-q"])
    assert r.exit_code == 0, r.output
    assert "1 evaluated image left out of the metrics, the run has seen them: 1 exact copy of a training image;" in (
        " ".join(r.stderr.split())
    )
    r = CliRunner().invoke(app, ["report", str(tmp_path / "r"), "--eval", str(tmp_path / "r" / "eval-external")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Results (external, n=3)" in md and "fitted on out-of-fold predictions (n=72)" in md
    assert "fitted on validation" not in md
    r = CliRunner().invoke(app, ["report", "--compare", str(tmp_path / "r"), "-o", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert "baseline: linear probe" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.slow  # a cross-validated training run (4 folds and a refit), then its evaluation
def test_patient_level_metrics_and_an_operating_point_fitted_on_other_folds_patients(patients, tmp_path, monkeypatch):
    from liverscan.evaluation import evaluate

    base, cfg = patients
    cfg.model.head = "linear"
    run = tmp_path / "cv"
    cross_validate(cfg, base / "prep", run)
    seen_sizes = []
    real_fit = OperatingPoint.fit.__func__

    def spy(cls, y, probs, goal, classes, *args, **kwargs):
        seen_sizes.append(len(y))
        return real_fit(cls, y, probs, goal, classes, *args, **kwargs)

    monkeypatch.setattr(OperatingPoint, "fit", classmethod(spy))
    cfg.eval.operating_point_level = "group"
    cfg.eval.bootstrap = 200
    res = evaluate(run, operating_point="tumor>=0.9", config=cfg)
    gl = res.metrics.group_level
    assert gl is not None and gl.kind == "patients" and gl.n_groups == 24 and gl.rule == "mean"
    # one row per patient: the rows themselves are resampled (the report calls them patients)
    assert gl.argmax.bootstrap is not None and gl.argmax.bootstrap.resampled == "images" and gl.argmax.per_fold
    assert "patients" in gl.argmax.bootstrap.describe(unit=gl.kind)
    oof = read_csv(run / "oof_predictions.csv")
    folds = {}
    for r in oof:
        folds.setdefault(r["fold"], set()).add(r["group"])
    # nested: each fold's patients decided by a rule fitted on the other folds' patients, then the final rule
    assert seen_sizes == [24 - len(folds[str(k)]) for k in range(4)] + [24]
    card = json.loads((run / "model_card.json").read_text())
    assert card["operating_point"]["level"] == "group" and card["operating_point"]["fitted_on"]["n"] == 24
    assert card["operating_point"]["group_rule"] == "mean"
    # evaluated again without options, the stored patient rule is re-evaluated per patient, not per image
    cfg.eval.operating_point_level = "image"
    again = evaluate(run, config=cfg)
    assert again.metrics.group_level is not None and again.metrics.group_level.tuned is not None
    assert again.metrics.tuned is None
    assert card["cross_validation"]["metrics"]["group_level"]["kind"] == "patients"
    assert gl.tuned is not None and res.metrics.tuned is None  # the rule is a patient-level rule
