"""Classification metrics, confidence intervals and calibration error.

Every metric scikit-learn has comes from scikit-learn.  Two are derived here
because it has none: specificity (from ``multilabel_confusion_matrix``) and the
expected calibration error (equal-width confidence bins).  Proportions (accuracy, per-class precision,
recall, specificity) get Wilson score intervals (SciPy), which stay honest at 0 and 1 where a percentile
bootstrap collapses to a point; the other metrics get a percentile bootstrap.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin share."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    correct = (probs.argmax(1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def _auc_per_class(y: np.ndarray, probs: np.ndarray, k: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(k):
        pos = y == c
        if pos.all() or not pos.any():
            out.append(None)  # undefined with one class only
        else:
            out.append(float(roc_auc_score(pos.astype(int), probs[:, c])))
    return out


def _macro_auc(y: np.ndarray, probs: np.ndarray, k: int) -> float | None:
    present = np.unique(y)
    if len(present) < 2:
        return None
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    if len(present) < k:
        aucs = [a for a in _auc_per_class(y, probs, k) if a is not None]
        return float(np.mean(aucs)) if aucs else None
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k))))


def classification_metrics(y_true, probs, classes: list[str], y_pred=None, ece_bins: int = 15) -> dict:
    """All point metrics for one set of predictions (``y_pred`` defaults to argmax).

    A class without images in ``y_true`` (``absent_classes``) has no precision, recall, F1 or ROC-AUC: they are
    None (not 0), with a ``note``; the macro averages are over the classes present (``macro.classes``, with a
    ``note``), and a ROC-AUC that needs images of two classes is None with its reason (``roc_auc_note``)."""
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred, dtype=int)
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # single-label subsets: labels= is passed
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        mcm = multilabel_confusion_matrix(y, pred, labels=labels)
        cm = confusion_matrix(y, pred, labels=labels)
        aucs = _auc_per_class(y, probs, k)
        present = [i for i in labels if s[i] > 0] or labels  # the classes with images (all of them: no images)
        absent = [classes[i] for i in labels if i not in present]
        per_class: dict[str, dict[str, Any]] = {}
        for i, c in enumerate(classes):
            tn, fp = mcm[i][0, 0], mcm[i][0, 1]
            here = i in present
            per_class[c] = {
                "precision": float(p[i]) if here else None,
                "recall": float(r[i]) if here else None,
                "specificity": float(tn / (tn + fp)) if (tn + fp) else None,
                "f1": float(f[i]) if here else None,
                "support": int(s[i]),
                "roc_auc": aucs[i],
            }
            if not here:
                per_class[c]["note"] = f"no images of {c} in the data: precision, recall, F1 and ROC-AUC undefined"
            elif aucs[i] is None and len(present) == 1:
                per_class[c]["note"] = "no images of the other classes in the data: ROC-AUC undefined"
        row_sums = cm.sum(1, keepdims=True)
        macro: dict[str, Any] = {
            "precision": float(precision_score(y, pred, labels=present, average="macro", zero_division=0)),
            "recall": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
            "f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
            "roc_auc": _macro_auc(y, probs, k),
        }
        if absent:
            names = [classes[i] for i in present]
            macro["classes"] = names
            macro["note"] = (
                f"averaged over the classes present in the data ({', '.join(names)}); no images of {', '.join(absent)}"
            )
        if macro["roc_auc"] is None:
            macro["roc_auc_note"] = (
                f"ROC-AUC needs images of at least two classes; the data has {classes[present[0]]} only"
                if len(present) == 1
                else "ROC-AUC is undefined here"
            )
        out = {
            "n": int(len(y)),
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "absent_classes": absent,
            "macro": macro,
            "weighted": {
                "precision": float(precision_score(y, pred, labels=labels, average="weighted", zero_division=0)),
                "recall": float(recall_score(y, pred, labels=labels, average="weighted", zero_division=0)),
                "f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
            },
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
            "confusion_matrix_normalized": np.divide(cm, row_sums, out=np.zeros(cm.shape), where=row_sums > 0)
            .round(4)
            .tolist(),
            "calibration": {
                "ece": expected_calibration_error(y, probs, ece_bins),
                "ece_bins": ece_bins,
                "brier": float(brier_score_loss(y, probs, labels=labels)),  # sum over classes, mean over images
                "log_loss": float(log_loss(y, np.clip(probs, 1e-12, 1), labels=labels)),
            },
        }
    return out


def brief_metrics(y_true, probs, classes: list[str], mask: np.ndarray, ece_bins: int = 15) -> dict | None:
    """n, accuracy, balanced accuracy and macro ROC-AUC of the rows where ``mask`` is true (None: no rows) -
    what the out-of-distribution tables show for all images and for the in-distribution ones."""
    if not mask.any():
        return None
    m = classification_metrics(np.asarray(y_true)[mask], np.asarray(probs)[mask], classes, ece_bins=ece_bins)
    return {
        "n": int(mask.sum()),
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "macro_roc_auc": m["macro"]["roc_auc"],
    }


#: resamples per task when the bootstrap runs in several processes
BOOTSTRAP_CHUNK = 125


def _bootstrap_jobs(n_resamples: int) -> int:
    """Processes for the bootstrap: the CPUs this process may use (up to 8) from 500 resamples on (~8 ms each
    with scikit-learn's input checks; fewer do not pay for starting processes), else one.
    ``LIVERSCAN_JOBS`` caps it."""
    import os

    if n_resamples < 500:
        return 1
    try:
        cap = int(os.environ.get("LIVERSCAN_JOBS") or 8)
    except ValueError:
        cap = 8
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, cap, -(-n_resamples // BOOTSTRAP_CHUNK)))


def _resample(rng: np.random.Generator, n: int, members: list | None) -> np.ndarray:
    """Rows of one resample: n images, or as many whole groups as there are (all their rows)."""
    if members is None:
        return rng.integers(0, n, size=n)
    return np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])


def _resampled_metrics(y, pred, probs, classes: list[str], members, task: tuple[Mapping[str, Any], int] | None) -> dict:
    """The metrics of ``task``'s resamples ((generator state, count)) - scikit-learn's, inputs validated once."""
    import sklearn

    indices = []
    if task is not None:
        rng = np.random.default_rng()
        rng.bit_generator.state = task[0]
        indices = [_resample(rng, len(y), members) for _ in range(task[1])]

    k = len(classes)
    labels = list(range(k))
    samples: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "macro_roc_auc": []}
    for c in classes:
        for m in ("recall", "precision", "specificity", "roc_auc"):
            samples[f"{c}.{m}"] = []
    # the inputs were validated once; skipping scikit-learn's per-call checks makes 1000 resamples ~5x faster
    with warnings.catch_warnings(), sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        warnings.simplefilter("ignore")
        for idx in indices:
            yb, pb, prb = y[idx], pred[idx], probs[idx]
            samples["accuracy"].append(accuracy_score(yb, pb))
            samples["balanced_accuracy"].append(balanced_accuracy_score(yb, pb))
            prec, rec, _, _ = precision_recall_fscore_support(yb, pb, labels=labels, average=None, zero_division=np.nan)
            aucs = _auc_per_class(yb, prb, k)
            # scikit-learn's one-vs-rest macro AUC is the mean of these per-class AUCs (class 1's for two classes)
            known = [a for a in aucs if a is not None]
            macro = (aucs[1] if k == 2 else float(np.mean(known))) if len(known) == k else _macro_auc(yb, prb, k)
            samples["macro_roc_auc"].append(np.nan if macro is None else macro)
            for i, c in enumerate(classes):
                present = (yb == i).any()
                samples[f"{c}.recall"].append(rec[i] if present else np.nan)
                samples[f"{c}.precision"].append(prec[i])
                negatives = yb != i
                samples[f"{c}.specificity"].append((pb[negatives] != i).mean() if negatives.any() else np.nan)
                auc = aucs[i]
                samples[f"{c}.roc_auc"].append(np.nan if auc is None else auc)
    return samples


def bootstrap_intervals(
    y_true,
    probs,
    classes: list[str],
    y_pred=None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups=None,
) -> dict:
    """95 % (``level``) CIs for accuracy, balanced accuracy, per-class recall / precision / specificity /
    ROC-AUC and macro ROC-AUC; ``methods`` says which interval each key got.

    Proportions (accuracy, recall, precision, specificity) of independent images: Wilson score intervals.
    The rest, and everything with ``groups`` of several images (patients, near-duplicate clusters): a
    percentile bootstrap resampling images, or whole groups with all their rows, so correlated images are not
    counted as independent cases.  Where a proportion is 0 or 1 the group bootstrap cannot vary (every
    resample gives the same value); there the Wilson interval over the groups behind it is used instead.
    """
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(1) if y_pred is None else np.asarray(y_pred, dtype=int)
    members, group_of = None, None
    if groups is not None:
        _, group_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        order = np.argsort(group_of, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(group_of))[:-1])
    clustered = members is not None and any(len(m) > 1 for m in members)
    # each task starts from the generator state where its resamples begin in one serial draw, so the
    # resamples - and the intervals - are the same whatever the number of processes
    rng = np.random.default_rng(seed)
    tasks = []
    for start in range(0, n_resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, n_resamples - start)
        tasks.append((copy.deepcopy(rng.bit_generator.state), size))
        for _ in range(size):
            _resample(rng, len(y), members)
    jobs = _bootstrap_jobs(n_resamples)
    if jobs > 1:
        from joblib.externals.loky import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:  # its own processes, gone when it ends
            parts = list(pool.map(_resampled_metrics, *zip(*[(y, pred, probs, classes, members, t) for t in tasks])))
    else:
        parts = [_resampled_metrics(y, pred, probs, classes, members, t) for t in tasks]
    parts = parts or [_resampled_metrics(y, pred, probs, classes, members, None)]
    samples = {key: [v for part in parts for v in part[key]] for key in parts[0]}
    alpha = (1 - level) / 2
    intervals: dict[str, list[float] | None] = {}
    methods: dict[str, str] = {}
    out = {
        "n_resamples": n_resamples,
        "seed": seed,
        "level": level,
        "intervals": intervals,
        "methods": methods,
        "resampled": "groups" if clustered else "images",  # groups of one image each are images
    }
    for key, vals in samples.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        methods[key] = "bootstrap"
        if len(arr) < max(10, n_resamples // 10):
            intervals[key] = None
            continue
        lo, hi = np.quantile(arr, [alpha, 1 - alpha])
        intervals[key] = [float(lo), float(hi)]
    for key, (hits, trials) in _proportions(y, pred, classes).items():
        if not trials.any():
            intervals[key] = None
            continue
        k, n = int(hits.sum()), int(trials.sum())
        if not clustered:
            intervals[key], methods[key] = wilson_interval(k, n, level), "wilson"
        elif k in (0, n):  # the group bootstrap gives k/n in every resample: Wilson over the groups behind it
            assert group_of is not None
            n_groups = len(np.unique(group_of[trials]))
            intervals[key] = wilson_interval(n_groups if k else 0, n_groups, level)
            methods[key] = "wilson over groups"
    return out


def _proportions(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per proportion metric: (rows counted as hits, rows in its denominator), as boolean masks."""
    out = {"accuracy": (pred == y, np.ones(len(y), bool))}
    for i, c in enumerate(classes):
        out[f"{c}.recall"] = ((y == i) & (pred == i), y == i)
        # a class without images has no precision (None, as in classification_metrics), however often predicted
        out[f"{c}.precision"] = ((y == i) & (pred == i), (pred == i) & (y == i).any())
        out[f"{c}.specificity"] = ((y != i) & (pred != i), y != i)
    return out


def wilson_interval(k: int, n: int, level: float = 0.95) -> list[float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (SciPy's): inside [0, 1] and not a point
    at 0 or 1 (12 of 12 gives 0.758-1.000)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]
