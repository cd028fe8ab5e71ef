"""Evaluating a cross-validated run from its out-of-fold predictions: pooled metrics with group-bootstrap
CIs and the per-fold spread, nested calibration and operating points (image- or patient-level), the
linear-probe baseline, the out-of-fold lesion maps' localisation scores (when training wrote them), and the
cross-validated estimate written into the model card."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import (
    LoadedRun,
)
from liverscan.core.config import Config
from liverscan.core.errors import DataError
from liverscan.core.operating_point import Goal, OperatingPoint
from liverscan.core.runinfo import utc_now, versions
from liverscan.evaluation.crossval import (
    by_group,
    cv_metrics,
    group_kind,
    has_multi_image_groups,
    headline,
    nested,
    oof_probabilities,
    read_oof,
    temperature_only,
)
from liverscan.evaluation.eval_dir import EvalResult, Figures, effective_config, write_eval_dir
from liverscan.evaluation.localisation import oof_localisation
from liverscan.evaluation.metrics import brief_metrics, classification_metrics
from liverscan.evaluation.points import nested_group_point, point_summary
from liverscan.evaluation.results import EvalMetrics


def evaluate_cv(
    run: LoadedRun,
    out_dir: Path,
    operating_point: str | None,
    bootstrap: int,
    seed: int,
    ece_bins: int,
    figures: bool,
    config: Config,
) -> EvalResult:
    """Pooled out-of-fold metrics (group-bootstrap CIs, per-fold spread), nested calibration and operating
    point, the linear-probe baseline, and the CV estimate written into the model card."""
    oof = read_oof(run)
    classes = run.classes
    cv = run.card.extra.get("cross_validation") or {}
    result: dict = {
        "created": utc_now(),
        "model": str(run.model_path.resolve()),
        "data": f"{run.card.prepared_dir} (out-of-fold predictions of {cv.get('folds')}-fold cross-validation"
        f" x {cv.get('repeats')})",
        "split": "cross-validation",
        "n": int(len(set(oof.paths))),
        "rows": int(len(oof.y)),
        "skipped": [],
        "classes": classes,
        "versions": versions(),
    }
    result["argmax"] = cv_metrics(oof, oof.probs, classes, bootstrap, seed, ece_bins)
    calibrated, _ = nested(oof, oof.probs, temperature_only)
    result["temperature_nested"] = classification_metrics(oof.y, calibrated, classes, ece_bins=ece_bins)["calibration"]
    baseline = oof.baseline if oof.baseline is not None else oof.probs
    if baseline is oof.probs or np.array_equal(baseline, oof.probs):  # the linear head is the probe: same numbers
        result["baseline"] = copy.deepcopy(result["argmax"])
    else:
        result["baseline"] = cv_metrics(oof, baseline, classes, bootstrap, seed, ece_bins)
    result["baseline"]["name"] = "linear probe" + (" (this model's own head)" if oof.baseline is None else "")
    stored = None if operating_point else run.card.operating_point
    spec = operating_point or (stored.spec if stored else None)
    # a stored rule is re-evaluated at the level it was fitted at
    level = config.eval.operating_point_level if operating_point else (stored.level if stored else "image")
    group_rule = (stored.group_rule if stored else None) or config.eval.group_rule
    group_oof = None
    if has_multi_image_groups(oof.groups[oof.repeat == oof.repeat.min()]):  # within one repeat
        group_oof, n_mixed = by_group(oof, group_rule, classes)
        result["group_level"] = {
            "kind": group_kind(oof.groups),
            "rule": group_rule,
            "n_groups": int(len(set(group_oof.paths))),
            "mixed_label_groups": n_mixed,
            "argmax": cv_metrics(group_oof, group_oof.probs, classes, bootstrap, seed, ece_bins),
        }
    elif level == "group":
        raise DataError(f"{run.source}: eval.operating_point_level=group needs groups of several images (patients)")
    cal, pred = None, None
    if spec and level == "group":
        assert group_oof is not None  # a patient-level point was refused above without patient groups
        goal = Goal.parse(spec, classes)
        g_cal, g_pred = nested_group_point(oof, group_oof, goal, classes, group_rule)
        result["group_level"]["tuned"] = cv_metrics(group_oof, g_cal, classes, bootstrap, seed, ece_bins, pred=g_pred)
        result["group_level"]["operating_point"] = {
            "spec": spec,
            "fitted": "nested, on patients: each fold by a rule fitted on the other folds' patients",
        }
        if operating_point:
            keys = list(zip(oof.repeat.tolist(), [str(g) for g in oof.groups]))
            op = OperatingPoint.fit_groups(oof.y, oof.probs, keys, spec, classes, group_rule, "out-of-fold")
            op.fitted_on = {
                "data": f"out-of-fold predictions aggregated per group ({group_rule})",
                "n": int(len(group_oof.y)),
                "created": utc_now(),
            }
            op.cross_validated = headline(result["group_level"]["tuned"])
            run.card.operating_point = op
        spec = None  # the image-level sections below describe image-level rules only
    if spec:
        goal = Goal.parse(spec, classes)
        cal, pred = nested(oof, oof.probs, lambda y, p: OperatingPoint.fit(y, p, goal, classes, "out-of-fold"))
        result["tuned"] = cv_metrics(oof, cal, classes, bootstrap, seed, ece_bins, pred=pred)
        result["operating_point"] = {"spec": spec, "fitted": "nested: each fold by a rule fitted on the other folds"}
        if operating_point:
            op = OperatingPoint.fit(oof.y, oof.probs, spec, classes, "out-of-fold")
            op.fitted_on = {"data": "out-of-fold predictions", "n": int(len(oof.y)), "created": utc_now()}
            op.cross_validated = headline(result["tuned"])
            run.card.operating_point = op
        if run.card.operating_point:
            summary = point_summary(run.card.operating_point)
            result["operating_point"].update({k: summary[k] for k in ("temperature", "rule", "description")})
    if run.card.ood and config.ood.enabled:
        threshold = float(run.card.ood["threshold"])
        inside = ~(oof.ood_scores > threshold)
        result["ood"] = {
            "guard": run.card.ood,
            "n_out_of_distribution": int((~inside).sum()),
            "in_distribution_rate": round(float(inside.mean()), 4),
            "all": brief_metrics(oof.y, oof.probs, classes, np.ones(len(inside), bool), ece_bins),
            "in_distribution": brief_metrics(oof.y, oof.probs, classes, inside, ece_bins),
            "per_source": [],
        }
    cv["metrics"] = {"model": headline(result["argmax"]), "linear_probe_baseline": headline(result["baseline"])}
    if "tuned" in result:
        cv["metrics"]["operating_point"] = {"spec": spec, **headline(result["tuned"])}
    if "group_level" in result:
        gl = result["group_level"]
        cv["metrics"]["group_level"] = {"kind": gl["kind"], "rule": gl["rule"], **headline(gl["argmax"])}
        if "tuned" in gl:
            cv["metrics"]["group_level"]["operating_point"] = {
                "spec": gl["operating_point"]["spec"],
                **headline(gl["tuned"]),
            }
    run.card.extra["cross_validation"] = cv
    localised = oof_localisation(run, bootstrap, seed, oof_probabilities(oof))
    if localised is not None and run.card.lesion is not None:
        oof_entry = dict(run.card.lesion.get("out_of_fold") or {})
        run.card.lesion["out_of_fold"] = {**oof_entry, "metrics": localised.metrics.headline()}
    run.save_card()

    header = ["path", "group", "repeat", "fold", "true_class", "predicted_class"] + (["tuned_class"] if spec else [])
    header += [f"p_{c}" for c in classes] + ["ood_score"]
    rows = []
    for i, path in enumerate(oof.paths):
        row = [
            path,
            oof.groups[i],
            int(oof.repeat[i]),
            int(oof.fold[i]),
            classes[oof.y[i]],
            classes[int(oof.probs[i].argmax())],
        ]
        row += [classes[int(pred[i])]] if pred is not None else []
        row += [f"{p:.6f}" for p in oof.probs[i]] + ["" if np.isnan(oof.ood_scores[i]) else f"{oof.ood_scores[i]:.6f}"]
        rows.append(row)
    plots = None
    if figures:
        plots = Figures(oof.y, oof.probs, "out of fold", f"operating point {spec}, nested" if spec else None)
        plots.curves["temperature (nested)"] = (calibrated, result["temperature_nested"]["ece"])
    cfg = effective_config(run, "cv", bootstrap, ece_bins)
    write_eval_dir(out_dir, header, rows, result, cfg, classes, plots, ece_bins, localised)
    return EvalResult(out_dir, EvalMetrics.from_dict(result))
