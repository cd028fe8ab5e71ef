"""Fitting operating points on held-out predictions: a run's validation split, or out-of-fold predictions
per patient (nested), and storing the fitted point in the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscan.core.aggregate import aggregate_groups
from liverscan.core.artifacts import (
    LoadedRun,
)
from liverscan.core.errors import DataError
from liverscan.core.model import predict_probs
from liverscan.core.operating_point import Goal, OperatingPoint
from liverscan.core.runinfo import utc_now
from liverscan.evaluation.crossval import (
    by_group,
    group_kind,
    has_multi_image_groups,
)
from liverscan.evaluation.labelled import is_prepared, load_labelled
from liverscan.evaluation.metrics import classification_metrics


def fit_operating_point(
    run: LoadedRun, model, spec: str, data: str | Path | None = None, level: str = "image", rule: str = "mean"
) -> OperatingPoint:
    """Fit temperature + decision rule on a prepared validation split; returns the operating point.

    ``data`` is used only when it is a prepared dataset (its ``val`` split); labelled
    folders are evaluation data, never fitting data, so the run's own prepared
    validation split is used for them.  ``level="group"`` fits on the validation
    split's patients (probabilities aggregated per group by ``rule``) — groups never
    span splits, so no evaluated patient is seen.
    """
    goal = Goal.parse(spec, run.classes)  # a bad goal fails before any work
    fit_data = data if data is not None and is_prepared(Path(data)) else None
    val = load_labelled(run, fit_data, "val")
    probs = predict_probs(model, val.x)
    n_fit = len(val.y)
    decided = None  # per patient: the fitted point's decisions (a patient-level point)
    if level == "group":
        if val.groups is None or not has_multi_image_groups(val.groups) or group_kind(val.groups) != "patients":
            raise DataError(
                f"{val.source}: a patient-level operating point needs patients of several images "
                "(a group column or --group-regex at prepare)"
            )
        keys = [str(g) for g in val.groups]
        y_fit = aggregate_groups(val.y, probs, keys, rule, run.classes)[1]
        _no_images_of_the_goal(goal, y_fit, run.classes, val.source, spec, "patients")
        point = OperatingPoint.fit_groups(val.y, probs, keys, spec, run.classes, rule, "validation")
        n_fit = len(set(keys))
        decided = point.decide_groups(probs, keys, rule, run.classes)[1]
    else:
        y_fit = val.y
        _no_images_of_the_goal(goal, y_fit, run.classes, val.source, spec, "images")
        point = OperatingPoint.fit(val.y, probs, spec, run.classes)
    pred, cal = point.apply(probs)
    point.fitted_on = {
        "data": val.source if level == "image" else f"{val.source}, aggregated per group ({rule})",
        "n": int(n_fit),
        "created": utc_now(),
    }
    if goal.kind == "sensitivity":
        unit = "patients" if level == "group" else "images"
        point.fitted_on.update(goal_support(goal, y_fit, pred if decided is None else decided, run.classes, spec, unit))
    point.validation = {
        "argmax": brief(classification_metrics(val.y, probs, run.classes)),
        "tuned": brief(classification_metrics(val.y, cal, run.classes, y_pred=pred)),
    }
    return point


#: an operating point's goal is shown on its fitting data when the lower end of the 95% interval of the
#: sensitivity it reached there is at most this far below the goal
GOAL_MARGIN = 0.05


def _no_images_of_the_goal(goal: Goal, y: np.ndarray, classes: list[str], source: str, spec: str, unit: str) -> None:
    if goal.kind == "sensitivity" and not (np.asarray(y) == classes.index(str(goal.class_name))).any():
        raise DataError(f"{source}: no {unit} of {goal.class_name} to fit the operating point {spec!r} on")


def goal_support(goal: Goal, y: np.ndarray, pred: np.ndarray, classes: list[str], spec: str, unit: str) -> dict:
    """How well the fitting data shows a sensitivity goal is met: the ``positives`` (images or patients of the
    goal's class), the ``sensitivity`` reached on them with its 95% Wilson interval, and a ``warning`` when the
    interval's lower end is more than :data:`GOAL_MARGIN` below the goal - too few positives for one miss more
    or less to be told from chance (12 of 12 tumours give 0.758-1.000: a threshold fitted there may miss far more
    than the goal allows on new images)."""
    from liverscan.evaluation.metrics import wilson_interval

    assert goal.class_name is not None and goal.target is not None
    c = classes.index(goal.class_name)
    positives = np.asarray(y) == c
    n, k = int(positives.sum()), int((np.asarray(pred)[positives] == c).sum())
    lo, hi = wilson_interval(k, n)
    out: dict = {"positives": n, "sensitivity": {"value": round(k / n, 4), "ci95": [lo, hi], "method": "wilson"}}
    if lo < goal.target - GOAL_MARGIN:
        out["warning"] = (
            f"operating point {spec!r} was fitted on only {n} {unit} of {goal.class_name}: the sensitivity it "
            f"reached there, {k}/{n} = {k / n:.3f} (95% CI {lo:.3f}–{hi:.3f}), cannot show that it meets "
            f"{goal.target:g} on new {unit}; fit it on out-of-fold predictions of a cross-validated run instead "
            f"(liverscan train --folds K, then liverscan evaluate RUN --fit-operating-point {spec!r})"
        )
    return out


def nested_group_point(oof, group_oof, goal: Goal, classes: list[str], agg_rule: str):
    """Per-group (calibrated probabilities, decisions): each fold's patients decided by a study rule
    fitted (temperature on frames, rule on patients) on the other folds of the same repeat only."""
    import dataclasses

    cal = np.zeros_like(group_oof.probs)
    pred = np.zeros(len(group_oof.y), int)
    for r in np.unique(oof.repeat):
        for k in np.unique(oof.fold[oof.repeat == r]):
            rest = (oof.repeat == r) & (oof.fold != k)
            keys = [str(g) for g in oof.groups[rest]]
            point = OperatingPoint.fit_groups(
                oof.y[rest], oof.probs[rest], keys, goal, classes, agg_rule, "out-of-fold"
            )
            calibrated = dataclasses.replace(oof, probs=point.calibrate(oof.probs))
            g_probs = by_group(calibrated, agg_rule, classes)[0].probs
            held = (group_oof.repeat == r) & (group_oof.fold == k)
            cal[held] = g_probs[held]
            pred[held] = point.decide(g_probs[held])
    return cal, pred


def point_summary(op: OperatingPoint) -> dict:
    """What metrics.json says of the operating point it applied, and what it was fitted on."""
    on = op.fitted_on or {}
    fitted = (
        f"fitted on {on['data']}" + (f" (n={on['n']})" if on.get("n") is not None else "") if on.get("data") else None
    )
    out = {
        "spec": op.spec,
        "temperature": op.temperature,
        "rule": op.rule,
        "description": op.description,
        "fitted": fitted,
    }
    if on.get("warning"):
        out["warning"] = on["warning"]
    return out


def brief(m: dict) -> dict:
    return {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "precision": {c: v["precision"] for c, v in m["per_class"].items()},
        "ece": m["calibration"]["ece"],
    }


def store_operating_point(run: LoadedRun, op: OperatingPoint) -> None:
    run.card.operating_point = op
    run.save_card()
