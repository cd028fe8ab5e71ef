"""Evaluating a cross-validated run from its out-of-fold predictions.

Metrics are pooled over every out-of-fold prediction (each image once per
repeat); 95 % CIs come from a bootstrap that resamples groups (patients,
near-duplicate clusters) with all their rows, never single images; per-fold
values show the spread.  Temperature scaling and the operating point are fitted
nested: the predictions of each fold are calibrated and decided by a rule fitted
on the other folds of the same repeat only, so no image is evaluated by a rule
fitted on it.  The rule stored in the model card for prediction is then fitted on
all out-of-fold predictions.  The linear probe's out-of-fold predictions on the
same folds are evaluated the same way as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscan.core.aggregate import aggregate, aggregate_groups, group_indices
from liverscan.core.artifacts import OOF_FILE, LoadedRun
from liverscan.core.errors import RunDirError
from liverscan.core.fileio import read_csv
from liverscan.core.operating_point import OperatingPoint, fit_temperature
from liverscan.evaluation.metrics import bootstrap_intervals, classification_metrics


@dataclass
class OutOfFold:
    """Out-of-fold predictions of a cross-validated run (one row per image and repeat)."""

    paths: list[str]
    groups: np.ndarray
    y: np.ndarray
    repeat: np.ndarray
    fold: np.ndarray
    probs: np.ndarray
    baseline: np.ndarray | None
    ood_scores: np.ndarray


def oof_probabilities(oof: OutOfFold) -> dict[str, np.ndarray]:
    """path -> its out-of-fold probabilities (averaged over repeats)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for path, p in zip(oof.paths, oof.probs):
        sums[path] = sums.get(path, 0.0) + np.asarray(p, np.float64)
        counts[path] = counts.get(path, 0) + 1
    return {path: sums[path] / counts[path] for path in sums}


def is_cross_validated(run: LoadedRun) -> bool:
    return run.run_dir is not None and (run.run_dir / OOF_FILE).is_file()


def read_oof(run: LoadedRun) -> OutOfFold:
    path = Path(run.run_dir or ".") / OOF_FILE
    rows = read_csv(path)
    if not rows:
        raise RunDirError(f"{path}: no out-of-fold predictions")
    classes = run.classes
    try:
        probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
        baseline = None
        if f"baseline_p_{classes[0]}" in rows[0]:
            baseline = np.array([[float(r[f"baseline_p_{c}"]) for c in classes] for r in rows])
        return OutOfFold(
            paths=[r["path"] for r in rows],
            groups=np.array([r["group"] for r in rows], dtype=object),
            y=np.array([classes.index(r["true_class"]) for r in rows]),
            repeat=np.array([int(r["repeat"]) for r in rows]),
            fold=np.array([int(r["fold"]) for r in rows]),
            probs=probs,
            baseline=baseline,
            ood_scores=np.array([float(r["ood_score"]) if r.get("ood_score") else np.nan for r in rows]),
        )
    except (KeyError, ValueError) as exc:
        raise RunDirError(f"{path}: malformed out-of-fold predictions ({exc.__class__.__name__}: {exc})") from None


def nested(
    oof: OutOfFold, probs: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], OperatingPoint]
) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, decisions) where each fold's rows use the operating point
    ``fit(y, probs)`` fitted on the other folds of its repeat."""
    cal = np.zeros_like(probs)
    pred = np.zeros(len(probs), int)
    for r in np.unique(oof.repeat):
        for k in np.unique(oof.fold[oof.repeat == r]):
            held = (oof.repeat == r) & (oof.fold == k)
            rest = (oof.repeat == r) & (oof.fold != k)
            pred[held], cal[held] = fit(oof.y[rest], probs[rest]).apply(probs[held])
    return cal, pred


def temperature_only(y: np.ndarray, probs: np.ndarray) -> OperatingPoint:
    """An operating point of temperature scaling alone (argmax of the calibrated probabilities)."""
    return OperatingPoint(spec="temperature", temperature=fit_temperature(y, probs))


def per_fold(oof: OutOfFold, probs: np.ndarray, classes: list[str], pred: np.ndarray | None = None) -> dict:
    """Mean and standard deviation over folds of accuracy, balanced accuracy and macro ROC-AUC."""
    values: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "macro_roc_auc": []}
    for r in np.unique(oof.repeat):
        for k in np.unique(oof.fold[oof.repeat == r]):
            m = (oof.repeat == r) & (oof.fold == k)
            res = classification_metrics(oof.y[m], probs[m], classes, y_pred=None if pred is None else pred[m])
            values["accuracy"].append(res["accuracy"])
            values["balanced_accuracy"].append(res["balanced_accuracy"])
            if res["macro"]["roc_auc"] is not None:
                values["macro_roc_auc"].append(res["macro"]["roc_auc"])
    return {
        key: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n_folds": len(v)}
        for key, v in values.items()
        if v
    }


def cv_metrics(
    oof: OutOfFold,
    probs: np.ndarray,
    classes: list[str],
    bootstrap: int,
    seed: int,
    ece_bins: int,
    pred: np.ndarray | None = None,
) -> dict:
    """Pooled metrics with group-bootstrap CIs and the per-fold spread."""
    m = classification_metrics(oof.y, probs, classes, y_pred=pred, ece_bins=ece_bins)
    m["bootstrap"] = bootstrap_intervals(
        oof.y, probs, classes, y_pred=pred, n_resamples=bootstrap, seed=seed, groups=oof.groups
    )
    m["per_fold"] = per_fold(oof, probs, classes, pred)
    return m


def headline(m: dict) -> dict:
    """What the model card quotes: the pooled value and its CI for the main metrics."""
    iv = m["bootstrap"]["intervals"]

    def pair(key: str, value) -> dict:
        return {
            "value": None if value is None else round(float(value), 4),
            "ci95": None if iv.get(key) is None else [round(v, 4) for v in iv[key]],
        }

    return {
        "accuracy": pair("accuracy", m["accuracy"]),
        "balanced_accuracy": pair("balanced_accuracy", m["balanced_accuracy"]),
        "macro_roc_auc": pair("macro_roc_auc", m["macro"]["roc_auc"]),
        "recall": {c: None if v["recall"] is None else round(v["recall"], 4) for c, v in m["per_class"].items()},
        "ece": round(m["calibration"]["ece"], 4),
        "ci": _ci_words(m["bootstrap"]),
    }


def _ci_words(boot: dict) -> str:
    """Which intervals the card quotes, e.g. ``95% CI: bootstrap over groups, Wilson over groups at 0 or 1``."""
    from liverscan.evaluation.results import Bootstrap

    described = Bootstrap.from_dict(boot)
    return described.describe(short=True) if described else ""


def group_kind(groups) -> str:
    """'patients' when groups come from a group column or --group-regex (named source/value or re/value),
    else 'near-duplicate groups' (clusters of look-alike images found by prepare)."""
    return "patients" if any("/" in str(g) for g in groups) else "near-duplicate groups"


def has_multi_image_groups(groups) -> bool:
    _, counts = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    return bool((counts > 1).any())


def by_group(oof: OutOfFold, rule: str, classes: list[str]) -> tuple[OutOfFold, int]:
    """One row per group and repeat: probabilities aggregated by ``rule`` (see ``core.aggregate``),
    the group's majority label; groups never span folds, so each keeps its fold. Also returns the
    number of groups holding several labels."""
    keys = list(zip(oof.repeat.tolist(), [str(g) for g in oof.groups]))
    names, labels, probs, mixed = aggregate_groups(oof.y, oof.probs, keys, rule, classes)
    first = group_indices(keys)
    baseline = None
    if oof.baseline is not None:
        baseline = np.array([aggregate(oof.baseline[first[k]], rule, classes) for k in names])
    scores = np.array(
        [np.nanmean(oof.ood_scores[first[k]]) if np.isfinite(oof.ood_scores[first[k]]).any() else np.nan for k in names]
    )
    pairs: list[tuple[int, str]] = [(int(k[0]), str(k[1])) for k in names]  # type: ignore[index]
    grouped = OutOfFold(
        paths=[g for _, g in pairs],
        groups=np.array([g for _, g in pairs], dtype=object),
        y=labels,
        repeat=np.array([r for r, _ in pairs]),
        fold=np.array([int(oof.fold[first[k][0]]) for k in names]),
        probs=probs,
        baseline=baseline,
        ood_scores=scores,
    )
    return grouped, int(mixed[grouped.repeat == grouped.repeat.min()].sum())
