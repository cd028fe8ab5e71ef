"""The typed evaluation result: ``metrics.json`` of this version and older ones, and the shared formatters."""

from __future__ import annotations

import copy
import json

import pytest

from liverscan.core.artifacts import METRICS_FILE
from liverscan.evaluation import EvalMetrics, Scores, format_value, format_with_ci
from liverscan.evaluation.results import Bootstrap, ClassScores


@pytest.fixture(scope="module")
def evaluated(evaluated_tiny_run):
    """A copy of ``tiny_run`` evaluated once on its test split, with an operating point: (result, metrics.json)."""
    res = evaluated_tiny_run["result"]  # shared with test_report (conftest)
    return res, json.loads((res.out_dir / METRICS_FILE).read_text())


def _scores(n_normal: int = 3, n_tumor: int = 5, **extra) -> dict:
    """One set of scores as the first versions of ``evaluate`` wrote them (no ``n``, no ``resampled``)."""
    per_class = {
        "normal": {
            "precision": 0.5,
            "recall": 1.0,
            "specificity": 0.4,
            "f1": 0.667,
            "support": n_normal,
            "roc_auc": 0.9,
        },
        "tumor": {
            "precision": 1.0,
            "recall": 0.4,
            "specificity": 1.0,
            "f1": 0.571,
            "support": n_tumor,
            "roc_auc": None,
        },
    }
    return {
        "accuracy": 0.625,
        "balanced_accuracy": 0.7,
        "macro": {"precision": 0.75, "recall": 0.7, "f1": 0.619, "roc_auc": 0.9},
        "weighted": {"precision": 0.8125, "recall": 0.625, "f1": 0.607},
        "per_class": per_class,
        "confusion_matrix": [[3, 0], [3, 2]],
        "confusion_matrix_normalized": [[1.0, 0.0], [0.6, 0.4]],
        "calibration": {"ece": 0.1, "ece_bins": 15, "brier": 0.3, "log_loss": 0.6},
        "bootstrap": {"n_resamples": 50, "seed": 0, "level": 0.95, "intervals": {"accuracy": [0.5, 0.75], "x": None}},
        **extra,
    }


def _old_metrics() -> dict:
    """A ``metrics.json`` of the first versions: argmax only, none of the later sections."""
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "model": "model.keras",
        "data": "prepared",
        "split": "test",
        "n": 8,
        "classes": ["normal", "tumor"],
        "argmax": _scores(),
    }


def test_reads_the_metrics_evaluate_writes(evaluated):
    res, raw = evaluated
    m = EvalMetrics.read(res.out_dir / METRICS_FILE)
    assert isinstance(res.metrics, EvalMetrics) and m == res.metrics
    assert m.to_dict() == raw
    assert (m.split, m.n, m.classes, m.cross_validated) == ("test", raw["n"], raw["classes"], False)
    am = m.argmax
    assert am.accuracy == raw["argmax"]["accuracy"] and am.n == raw["n"]
    assert am.macro.roc_auc == raw["argmax"]["macro"]["roc_auc"] == am.value("macro_roc_auc")
    assert am.calibration.ece == raw["argmax"]["calibration"]["ece"]
    assert am.confusion_matrix == raw["argmax"]["confusion_matrix"]
    for c, v in raw["argmax"]["per_class"].items():
        assert am.per_class[c] == ClassScores(**v)
        assert am.value(f"{c}.recall") == v["recall"]
    intervals = raw["argmax"]["bootstrap"]["intervals"]
    assert am.bootstrap is not None and am.bootstrap.n_resamples == 30
    for key, iv in intervals.items():
        assert am.ci(key) == (None if iv is None else tuple(iv))
    # the operating point fitted on validation, applied to the test images
    assert m.tuned is not None and m.tuned.accuracy == raw["tuned"]["accuracy"]
    assert m.operating_point is not None and m.operating_point.spec == "balanced"
    assert m.operating_point.temperature == raw["operating_point"]["temperature"]
    assert m.baseline is not None and m.baseline.name == raw["baseline"].get("name")
    assert (m.ood is None) == ("ood" not in raw)
    if m.ood:
        assert m.ood.n_out_of_distribution == raw["ood"]["n_out_of_distribution"]
        assert [s.source for s in m.ood.per_source] == [s["source"] for s in raw["ood"]["per_source"]]


def test_older_metrics_without_the_later_sections_read_as_none():
    m = EvalMetrics.from_dict(_old_metrics())
    assert (m.tuned, m.baseline, m.group_level, m.ood, m.operating_point, m.temperature_nested, m.rows) == (None,) * 7
    assert m.skipped == [] and not m.cross_validated
    am = m.argmax
    assert am.n == 8  # from the supports, as before ``n`` was written
    assert am.bootstrap == Bootstrap({"accuracy": (0.5, 0.75), "x": None}, 0.95, 50, "images")
    assert am.ci("accuracy") == (0.5, 0.75) and am.ci("x") is None and am.ci("tumor.recall") is None
    assert am.per_fold is None and am.name is None
    assert am.per_class["tumor"].roc_auc is None


def test_scores_without_bootstrap_and_with_keys_of_other_versions():
    d = _scores()
    del d["bootstrap"]
    d["per_class"]["normal"]["npv"] = 0.9  # a key this version does not know
    del d["per_class"]["tumor"]["specificity"]  # and one it knows that was not written
    d["calibration"]["mce"] = 0.2
    s = Scores.from_dict(d)
    assert s is not None and s.bootstrap is None and s.ci("accuracy") is None
    assert s.per_class["tumor"].specificity is None and s.calibration.ece == 0.1
    assert Scores.from_dict(None) is None and Scores.from_dict({}) is None


def test_cross_validated_metrics_with_patients():
    d = _old_metrics()
    d.update(
        split="cross-validation",
        rows=8,
        skipped=[{"path": "a.png", "reason": "unreadable"}],
        temperature_nested={"ece": 0.05, "ece_bins": 15, "brier": 0.2, "log_loss": 0.4},
        operating_point={"spec": "tumor>=0.9", "fitted": "nested", "temperature": 1.1, "rule": {}, "description": "d"},
        ood={
            "guard": {"method": "knn"},
            "n_out_of_distribution": 1,
            "in_distribution_rate": 0.875,
            "in_distribution": {"n": 7, "accuracy": 0.6, "balanced_accuracy": 0.6, "macro_roc_auc": None},
            "per_source": [],
        },
        group_level={
            "kind": "patients",
            "rule": "mean",
            "n_groups": 2,
            "argmax": _scores(1, 1),
            "tuned": _scores(1, 1, name="ignored"),
            "operating_point": {"spec": "tumor>=0.9"},
        },
    )
    d["argmax"]["per_fold"] = {"accuracy": {"mean": 0.6, "sd": 0.1, "n_folds": 3}}
    d["tuned"] = copy.deepcopy(d["argmax"])
    m = EvalMetrics.from_dict(json.loads(json.dumps(d)))
    assert m.cross_validated and m.rows == 8 and m.skipped == [("a.png", "unreadable")]
    assert m.temperature_nested is not None and m.temperature_nested.ece == 0.05
    assert m.operating_point is not None and m.operating_point.fitted == "nested" and m.operating_point.level == "image"
    assert m.argmax.per_fold == {"accuracy": {"mean": 0.6, "sd": 0.1, "n_folds": 3}}
    assert m.ood is not None and m.ood.all is None and m.ood.per_source == []
    assert m.ood.in_distribution is not None and m.ood.in_distribution.macro_roc_auc is None
    gl = m.group_level
    assert gl is not None and (gl.kind, gl.rule, gl.n_groups, gl.mixed_label_groups) == ("patients", "mean", 2, 0)
    assert gl.argmax.n == 2 and gl.tuned is not None and gl.operating_point == {"spec": "tumor>=0.9"}


def test_one_interval_style():
    assert format_with_ci(0.9123, (0.88, 0.94)) == "0.912 (0.880–0.940)"
    assert format_with_ci(0.9123, (0.88, 0.94), digits=2) == "0.91 (0.88–0.94)"
    assert format_with_ci(0.9123, None) == "0.912"
    assert format_with_ci(None, None) == "n/a"
    assert format_value(None) == "n/a" and format_value(1) == "1.000" and format_value(0.12345, 4) == "0.1235"
