from __future__ import annotations

import os

import numpy as np
import pytest

from liverscan.evaluation.metrics import bootstrap_intervals, classification_metrics, expected_calibration_error

CLASSES = ["normal", "fatty", "tumor"]
# 8 images; argmax predictions: [0, 1, 0, 1, 2, 2, 2, 1]
Y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.5, 0.4, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
        [0.3, 0.1, 0.6],
        [0.1, 0.5, 0.4],
    ]
)


def test_hand_computed_case():
    m = classification_metrics(Y, P, CLASSES)
    # confusion (rows true): normal [1,1,0], fatty [1,1,0], tumor [0,1,3]
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 3]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    recalls = {"normal": 1 / 2, "fatty": 1 / 2, "tumor": 3 / 4}
    precisions = {"normal": 1 / 2, "fatty": 1 / 3, "tumor": 1.0}
    specificity = {"normal": 5 / 6, "fatty": 4 / 6, "tumor": 4 / 4}
    for c in CLASSES:
        pc = m["per_class"][c]
        assert pc["recall"] == pytest.approx(recalls[c])
        assert pc["precision"] == pytest.approx(precisions[c])
        assert pc["specificity"] == pytest.approx(specificity[c])
        f1 = 2 * recalls[c] * precisions[c] / (recalls[c] + precisions[c])
        assert pc["f1"] == pytest.approx(f1)
    assert m["balanced_accuracy"] == pytest.approx(np.mean(list(recalls.values())))
    assert m["macro"]["recall"] == pytest.approx(np.mean(list(recalls.values())))
    support = {"normal": 2, "fatty": 2, "tumor": 4}
    wp = sum(precisions[c] * support[c] for c in CLASSES) / 8
    assert m["weighted"]["precision"] == pytest.approx(wp)
    # normal vs rest AUC by hand: positives p=[.7,.3], negatives [.5,.1,.1,.2,.3,.1]
    # pairs won: .7 beats all 6; .3 beats .1,.1,.2,.1 (4) and ties .3 (0.5) -> (6 + 4.5) / 12
    assert m["per_class"]["normal"]["roc_auc"] == pytest.approx(10.5 / 12)
    assert m["confusion_matrix_normalized"][2] == pytest.approx([0, 0.25, 0.75])


def test_binary_auc_and_missing_class():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, np.column_stack([1 - p1, p1]), ["normal", "tumor"])
    assert m["macro"]["roc_auc"] == pytest.approx(0.75)
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.6, 0.4]]), ["normal", "tumor"])
    assert m["per_class"]["tumor"]["roc_auc"] is None and m["macro"]["roc_auc"] is None


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1]] * 4)
    y = np.array([0, 0, 1, 1])  # confidence 0.9, accuracy 0.5
    assert expected_calibration_error(y, probs, 15) == pytest.approx(0.4)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 0, 1, 0])  # bin .9: acc 1 -> gap .1; bin .6: acc .5 -> gap .1
    assert expected_calibration_error(y, probs, 10) == pytest.approx(0.1)


@pytest.mark.slow
def test_bootstrap_deterministic_and_contains_point():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    probs = rng.dirichlet([1, 1, 1], 120)
    probs[np.arange(120), y] += 0.8
    probs /= probs.sum(1, keepdims=True)
    a = bootstrap_intervals(y, probs, CLASSES, n_resamples=300, seed=1)
    b = bootstrap_intervals(y, probs, CLASSES, n_resamples=300, seed=1)
    c = bootstrap_intervals(y, probs, CLASSES, n_resamples=300, seed=2)
    assert a == b and a != c
    m = classification_metrics(y, probs, CLASSES)
    lo, hi = a["intervals"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and hi - lo > 0.02
    lo, hi = a["intervals"]["macro_roc_auc"]
    assert lo <= m["macro"]["roc_auc"] <= hi
    for c_ in CLASSES:
        lo, hi = a["intervals"][f"{c_}.recall"]
        assert lo <= m["per_class"][c_]["recall"] <= hi


@pytest.mark.slow
def test_bootstrap_over_patients_is_as_wide_as_one_case_per_patient():
    """Ten identical frames per patient add no information: resampling patients keeps the CI honest."""
    from liverscan.evaluation.metrics import bootstrap_intervals

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 15)
    p1 = np.clip(0.5 + 0.15 * (2 * y - 1) + rng.normal(0, 0.25, 30), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    frames_y, frames_p = np.repeat(y, 10), np.repeat(probs, 10, axis=0)
    patients = np.repeat(np.arange(30), 10)
    one = bootstrap_intervals(y, probs, ["a", "b"], n_resamples=100, seed=0)["intervals"]["accuracy"]
    by_patient = bootstrap_intervals(frames_y, frames_p, ["a", "b"], n_resamples=100, seed=0, groups=patients)
    by_frame = bootstrap_intervals(frames_y, frames_p, ["a", "b"], n_resamples=100, seed=0)
    width = lambda iv: iv[1] - iv[0]  # noqa: E731
    assert by_patient["resampled"] == "groups"
    assert width(by_patient["intervals"]["accuracy"]) == pytest.approx(width(one), abs=0.04)
    assert width(by_frame["intervals"]["accuracy"]) < 0.6 * width(by_patient["intervals"]["accuracy"])


def _bootstrap_case():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    p = rng.uniform(size=(120, 3)) + 0.4 * np.eye(3)[y]
    p /= p.sum(1, keepdims=True)
    return y, p, np.arange(120) // 2


def test_bootstrap_runs_in_processes_from_500_resamples(monkeypatch):
    from liverscan.evaluation.metrics import _bootstrap_jobs

    monkeypatch.setenv("LIVERSCAN_JOBS", "2")
    assert _bootstrap_jobs(500) == min(2, os.cpu_count() or 1) and _bootstrap_jobs(499) == 1
    monkeypatch.setenv("LIVERSCAN_JOBS", "1")
    assert _bootstrap_jobs(500) == 1


def test_bootstrap_tasks_give_the_resamples_of_one_serial_draw(monkeypatch):
    """Each task starts where its resamples begin in one serial draw: any split into tasks (what the processes
    get) gives the same intervals. The processes themselves start in seconds: see the slow test below."""
    from liverscan.evaluation import metrics

    y, p, groups = _bootstrap_case()
    whole = metrics.bootstrap_intervals(y, p, ["a", "b", "c"], n_resamples=60, seed=7, groups=groups)
    monkeypatch.setattr(metrics, "BOOTSTRAP_CHUNK", 25)  # tasks of 25, 25 and 10 resamples
    split = metrics.bootstrap_intervals(y, p, ["a", "b", "c"], n_resamples=60, seed=7, groups=groups)
    assert split == whole
    assert whole["intervals"]["accuracy"][0] < whole["intervals"]["accuracy"][1]


@pytest.mark.slow
def test_bootstrap_in_processes_gives_the_serial_intervals(monkeypatch):
    """The resamples are drawn in one order whatever the number of processes, so the intervals are identical."""
    from liverscan.evaluation.metrics import _bootstrap_jobs, bootstrap_intervals

    y, p, groups = _bootstrap_case()
    monkeypatch.setenv("LIVERSCAN_JOBS", "2")
    assert _bootstrap_jobs(500) == min(2, os.cpu_count() or 1)
    parallel = bootstrap_intervals(y, p, ["a", "b", "c"], n_resamples=500, seed=7, groups=groups)
    monkeypatch.setenv("LIVERSCAN_JOBS", "1")
    serial = bootstrap_intervals(y, p, ["a", "b", "c"], n_resamples=500, seed=7, groups=groups)
    assert parallel == serial
    assert parallel["intervals"]["accuracy"][0] < parallel["intervals"]["accuracy"][1]


def test_proportions_get_wilson_intervals_that_do_not_collapse_at_one():
    """12 of 12 right: a percentile bootstrap gives 1.000-1.000; the Wilson score interval does not."""
    from scipy.stats import binomtest

    y = np.repeat([0, 1], 6)
    probs = np.eye(2)[y] * 0.8 + 0.1  # every image right
    out = bootstrap_intervals(y, probs, ["normal", "tumor"], n_resamples=20, seed=0)
    wilson = binomtest(12, 12).proportion_ci(method="wilson")
    assert out["intervals"]["accuracy"] == pytest.approx([wilson.low, 1.0]) and wilson.low < 0.8
    assert out["methods"]["accuracy"] == "wilson" and out["resampled"] == "images"
    six = binomtest(6, 6).proportion_ci(method="wilson").low  # per class: 6 of 6
    for key in ("normal.recall", "tumor.specificity", "tumor.precision"):
        assert out["intervals"][key] == pytest.approx([six, 1.0]) and out["methods"][key] == "wilson"
    # a proportion inside (0, 1): Wilson too, around the point estimate; AUCs stay bootstrap
    pred = y.copy()
    pred[:2] = 1  # two normals called tumor: accuracy 10 / 12
    out = bootstrap_intervals(y, probs, ["normal", "tumor"], y_pred=pred, n_resamples=20, seed=0)
    lo, hi = binomtest(10, 12).proportion_ci(method="wilson")
    assert out["intervals"]["accuracy"] == pytest.approx([lo, hi]) and lo < 10 / 12 < hi
    assert out["methods"]["macro_roc_auc"] == out["methods"]["balanced_accuracy"] == "bootstrap"


def test_group_bootstrap_falls_back_to_wilson_over_groups_at_the_boundary():
    """12 patients of 3 frames each, all right: Wilson over the 12 patients (not over 36 frames, not 1-1);
    a proportion inside (0, 1) keeps the bootstrap over patients."""
    from scipy.stats import binomtest

    y = np.repeat([0, 1], 18)
    probs = np.eye(2)[y] * 0.8 + 0.1
    patients = np.repeat(np.arange(12), 3)
    out = bootstrap_intervals(y, probs, ["normal", "tumor"], n_resamples=20, seed=0, groups=patients)
    assert out["resampled"] == "groups" and out["methods"]["accuracy"] == "wilson over groups"
    assert out["intervals"]["accuracy"] == pytest.approx([binomtest(12, 12).proportion_ci(method="wilson").low, 1.0])
    six = binomtest(6, 6).proportion_ci(method="wilson").low  # 6 patients of each class
    assert out["intervals"]["normal.recall"] == pytest.approx([six, 1.0])
    pred = y.copy()
    pred[:3] = 1  # the first patient's frames all wrong
    out = bootstrap_intervals(y, probs, ["normal", "tumor"], y_pred=pred, n_resamples=50, seed=0, groups=patients)
    assert out["methods"]["accuracy"] == "bootstrap"
    lo, hi = out["intervals"]["accuracy"]
    assert lo < 33 / 36 <= hi <= 1.0 and lo > 0.5
    # groups of one image each are independent images: Wilson
    single = bootstrap_intervals(y, probs, ["normal", "tumor"], n_resamples=20, seed=0, groups=np.arange(36))
    assert single["resampled"] == "images" and single["methods"]["accuracy"] == "wilson"


def test_a_class_without_images_is_not_available_and_left_out_of_the_macro_averages():
    y = np.array([0, 0, 0, 1])  # no tumour images; one normal image predicted tumour
    p = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1]])
    m = classification_metrics(y, p, CLASSES)
    assert m["absent_classes"] == ["tumor"]
    tumor = m["per_class"]["tumor"]
    assert tumor["precision"] is tumor["recall"] is tumor["f1"] is tumor["roc_auc"] is None
    assert tumor["support"] == 0 and tumor["specificity"] == pytest.approx(3 / 4)
    assert "no images of tumor" in tumor["note"]
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 1) / 2) == pytest.approx(m["balanced_accuracy"])
    assert m["macro"]["precision"] == pytest.approx(1.0) and m["macro"]["classes"] == ["normal", "fatty"]
    assert "over the classes present" in m["macro"]["note"] and "tumor" in m["macro"]["note"]
    assert m["macro"]["roc_auc"] == pytest.approx(1.0)  # normal vs fatty: both present
    one = classification_metrics(np.array([0, 0]), p[:2], CLASSES)
    assert one["absent_classes"] == ["fatty", "tumor"] and one["macro"]["roc_auc"] is None
    assert "at least two classes" in one["macro"]["roc_auc_note"]
    assert one["per_class"]["normal"]["roc_auc"] is None and "other classes" in one["per_class"]["normal"]["note"]
    full = classification_metrics(Y, P, CLASSES)
    assert full["absent_classes"] == [] and "note" not in full["macro"] and "classes" not in full["macro"]
    boot = bootstrap_intervals(y, p, CLASSES, n_resamples=0)
    assert boot["intervals"]["tumor.recall"] is boot["intervals"]["tumor.precision"] is None
