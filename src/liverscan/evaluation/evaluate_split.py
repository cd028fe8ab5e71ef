"""``evaluate``: predictions, metrics with bootstrap CIs, calibration and operating points.

Input: a run directory (or a model file) and either a prepared dataset split
(default: the run's own prepared data, split ``test``) or labelled images
(a folder with one sub-folder per category, a ``{label}`` glob, or a CSV) — see
:mod:`~liverscan.evaluation.labelled`.  A cross-validated run is evaluated from its out-of-fold
predictions (:mod:`~liverscan.evaluation.evaluate_cv`); operating points are fitted by
:mod:`~liverscan.evaluation.points`; the output directory (default ``RUN/eval-<split>``) is written
by :mod:`~liverscan.evaluation.eval_dir`.  A run with a lesion head is also scored for localisation on the
evaluated images' outlines (:mod:`~liverscan.evaluation.localisation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core.aggregate import aggregate_groups
from liverscan.core.artifacts import (
    EVAL_FILES,
    OOD_FILE,
    LoadedRun,
    claim_out_dir,
    eval_dir_name,
    load_run,
)
from liverscan.core.config import Config
from liverscan.core.errors import DataError, LiverscanError
from liverscan.core.guard import Reference, Verdict, assess
from liverscan.core.operating_point import OperatingPoint
from liverscan.core.runinfo import utc_now, versions
from liverscan.evaluation.crossval import (
    group_kind,
    has_multi_image_groups,
    is_cross_validated,
)
from liverscan.evaluation.eval_dir import EvalResult, Figures, effective_config, write_eval_dir
from liverscan.evaluation.evaluate_cv import evaluate_cv
from liverscan.evaluation.labelled import LabelledImages, is_prepared, load_labelled
from liverscan.evaluation.leakage import find_seen, leave_out_seen, needs_check
from liverscan.evaluation.localisation import head_localisation
from liverscan.evaluation.metrics import bootstrap_intervals, brief_metrics, classification_metrics
from liverscan.evaluation.points import fit_operating_point, point_summary, store_operating_point
from liverscan.evaluation.results import EvalMetrics


def evaluate(
    run_path: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    operating_point: str | None = None,
    *,
    config: Config | None = None,
    bootstrap: int | None = None,
    seed: int = 0,
    ece_bins: int | None = None,
    figures: bool = True,
    ood_retention: float | None = None,
    group_column: str | None = None,
) -> EvalResult:
    """Evaluate a trained model; optionally fit and store an operating point first.

    ``config`` gives the split, bootstrap resamples and ECE bins (its ``eval``
    section) and the decoding limits (``preprocess``); explicit arguments override it.
    The out-of-distribution guard keeps the model's own threshold unless ``ood_retention`` is given
    (as in ``predict``).  Labelled images given as ``data`` (folders, a glob, a CSV) are evaluated as
    ``external`` (written to ``RUN/eval-external``), with their patients from a CSV's group column
    (``group_column``, else found by name) or ``config.data.group_regex``.  Data other than the run's own
    prepared dataset is checked for images the run has seen (exact copies and near duplicates of its
    training and validation images, ``config.data.near_duplicate_distance``): they are left out of the
    metrics, and ``leakage`` in ``metrics.json`` lists them.
    """
    from liverscan.core.model import load_model

    config = config or Config()
    settings = config.eval
    given_split = split
    split = split or settings.split
    bootstrap = settings.bootstrap if bootstrap is None else bootstrap
    ece_bins = settings.ece_bins if ece_bins is None else ece_bins
    run = load_run(run_path)
    cross_validated = is_cross_validated(run)
    if cross_validated:
        if data is None and given_split in (None, "cv"):
            out_dir = Path(out) if out else run.source / eval_dir_name("cv")
            claim_out_dir(out_dir, EVAL_FILES, "evaluate")
            return evaluate_cv(run, out_dir, operating_point, bootstrap, seed, ece_bins, figures, config)
        if data is None:
            raise DataError(
                f"{run.source}: this model was refit on every image of its prepared dataset, so its {split} "
                "split is not held out; evaluate it cross-validated (no split) or on other data"
            )
    if split == "cv" and (data is None or is_prepared(Path(data))):
        raise DataError(
            f"{run.source}: split 'cv' is a cross-validated run's own out-of-fold predictions (train --folds K, "
            "evaluated without --data); choose train, val or test"
        )
    if data is not None and not is_prepared(Path(data)):
        split = "external"  # labelled images given directly: no split of a prepared dataset
    out_dir = Path(out) if out else (run.run_dir / eval_dir_name(split) if run.run_dir else Path(eval_dir_name(split)))
    claim_out_dir(out_dir, EVAL_FILES, "evaluate")  # before any work, and before an operating point is stored
    max_pixels = config.preprocess.max_pixels
    ds = load_labelled(run, data, split, max_pixels, group_column or "", config.data.group_regex)
    leakage = None
    if data is not None and needs_check(run, data, cross_validated):
        leakage = find_seen(run, ds, config.data.near_duplicate_distance, max_pixels, cross_validated)
        ds = leave_out_seen(ds, leakage, data)  # before the model loads: nothing left fails at once
    model = load_model(run.model_path)
    if operating_point:
        store_operating_point(
            run,
            fit_operating_point(
                run, model, operating_point, data, config.eval.operating_point_level, config.eval.group_rule
            ),
        )
    op = run.card.operating_point
    warnings = [str(op.fitted_on["warning"])] if op and op.fitted_on and op.fitted_on.get("warning") else []
    reference = (
        Reference.for_model(run.model_path.with_name(OOD_FILE), ood_retention, required=bool(run.card.ood))
        if config.ood.enabled
        else None
    )
    from liverscan.core.model import predict_outputs, with_features

    probs, feats = predict_outputs(with_features(model), ds.x)
    verdicts = assess(reference, ds.x, feats) if config.ood.enabled else []
    classes = run.classes
    result: dict[str, Any] = {
        "created": utc_now(),
        "model": str(run.model_path.resolve()),
        "data": ds.source,
        "split": split,
        "n": int(len(ds.y)),
        "skipped": [{"path": p, "reason": r} for p, r in ds.skipped],
        "classes": classes,
        "argmax": classification_metrics(ds.y, probs, classes, ece_bins=ece_bins),
        "versions": versions(),
    }
    if leakage is not None:
        result["leakage"] = leakage
    absent = result["argmax"]["absent_classes"]
    if absent:
        warnings.append(absent_warning(absent, result["argmax"]["macro"].get("classes") or []))
    result["argmax"]["bootstrap"] = bootstrap_intervals(
        ds.y, probs, classes, n_resamples=bootstrap, seed=seed, groups=ds.groups
    )
    if ds.groups is not None and has_multi_image_groups(ds.groups):
        rule = (op.group_rule if op else None) or config.eval.group_rule  # a patient rule keeps its aggregation
        result["group_level"] = _group_level(ds, probs, op, classes, rule, bootstrap, seed, ece_bins)
    if config.ood.enabled:
        result["ood"] = _ood_section(reference, verdicts, ds, probs, classes, ece_bins)
    result["baseline"] = _baseline(
        run, model, ds, feats, probs, config, bootstrap, seed, ece_bins, result["argmax"]["bootstrap"]
    )
    tuned_pred = None
    cal = None
    if op and op.level == "group":
        result["operating_point"] = {
            "spec": op.spec,
            "level": "group",
            "note": "fitted on patients: applied per patient (group_level)"
            if "group_level" in result
            else "fitted on patients, and the evaluated data has no patients: not applied",
        }
        op = None  # a rule fitted on patients decides studies (group_level above), not single images
    if op:
        tuned_pred, cal = op.apply(probs)
        tuned = classification_metrics(ds.y, cal, classes, y_pred=tuned_pred, ece_bins=ece_bins)
        tuned["bootstrap"] = bootstrap_intervals(
            ds.y, cal, classes, y_pred=tuned_pred, n_resamples=bootstrap, seed=seed, groups=ds.groups
        )
        result["tuned"] = tuned
        result["operating_point"] = point_summary(op)

    result["warnings"] = warnings

    header = ["path", "true_class", "predicted_class"] + (["tuned_class"] if op else []) + [f"p_{c}" for c in classes]
    header += ["in_distribution", "ood_score", "ood_reason"]
    rows = []
    for i, path in enumerate(ds.paths):
        row = [path, classes[ds.y[i]], classes[int(probs[i].argmax())]]
        if tuned_pred is not None:
            row.append(classes[int(tuned_pred[i])])
        row += [f"{p:.6f}" for p in probs[i]]
        v = verdicts[i] if verdicts else None
        row += [
            "" if v is None or v.in_distribution is None else str(v.in_distribution).lower(),
            "" if v is None or v.score is None else f"{v.score:.6f}",
            "" if v is None else v.reason or "",
        ]
        rows.append(row)
    plots = None
    if figures:
        plots = Figures(ds.y, probs, split, f"operating point {op.spec}" if op else None)
        if op and cal is not None:
            plots.curves[f"temperature {op.temperature:.2f}"] = (cal, result["tuned"]["calibration"]["ece"])
    localised = head_localisation(run, ds, model, bootstrap, seed, cal if cal is not None else probs)
    cfg = effective_config(run, settings.split if split == "external" else split, bootstrap, ece_bins)
    write_eval_dir(out_dir, header, rows, result, cfg, classes, plots, ece_bins, localised)
    return EvalResult(out_dir, EvalMetrics.from_dict(result))


def absent_warning(absent: list[str], present: list[str]) -> str:
    """The one line saying which classes the evaluated data has no images of, and what that leaves out."""
    return (
        f"no images of {', '.join(absent)} in the evaluated data: their precision, recall, F1 and ROC-AUC are "
        f"not available (n/a), and the macro averages are over the classes present ({', '.join(present)})"
    )


def _group_level(ds, probs, op: OperatingPoint | None, classes, rule, bootstrap, seed, ece_bins) -> dict:
    """Metrics with one case per group (patient): probabilities aggregated by ``rule``, CIs by a
    bootstrap over groups; with a stored operating point, its rule decides the groups."""
    keys = [str(g) for g in ds.groups]
    names, yg, pg, mixed = aggregate_groups(ds.y, probs, keys, rule, classes)
    out = {
        "kind": group_kind(ds.groups),
        "rule": rule,
        "n_groups": len(names),
        "mixed_label_groups": int(mixed.sum()),
        "argmax": classification_metrics(yg, pg, classes, ece_bins=ece_bins),
    }
    out["argmax"]["bootstrap"] = bootstrap_intervals(yg, pg, classes, n_resamples=bootstrap, seed=seed)
    if op:  # as predict --group-by applies it: calibrate the frames, aggregate, then the rule
        cal, pred = op.decide_groups(probs, keys, rule, classes)
        out["tuned"] = classification_metrics(yg, cal, classes, y_pred=pred, ece_bins=ece_bins)
        out["tuned"]["bootstrap"] = bootstrap_intervals(yg, cal, classes, y_pred=pred, n_resamples=bootstrap, seed=seed)
    return out


def _ood_section(
    reference: Reference | None,
    verdicts: list[Verdict],
    ds: LabelledImages,
    probs: np.ndarray,
    classes: list[str],
    ece_bins: int,
) -> dict:
    """In-distribution rate, metrics on all images vs the in-distribution subset, and a per-source table."""
    inside = np.array([v.in_distribution is not False for v in verdicts], bool)
    sources = ds.sources or [ds.source] * len(ds.y)

    def brief(mask: np.ndarray) -> dict | None:
        return brief_metrics(ds.y, probs, classes, mask, ece_bins)

    per_source = []
    for name in sorted(set(sources)):
        mask = np.array([s == name for s in sources], bool)
        per_source.append(
            {
                "source": name,
                "n": int(mask.sum()),
                "in_distribution_rate": round(float(inside[mask].mean()), 4),
                "all": brief(mask),
                "in_distribution": brief(mask & inside),
            }
        )
    return {
        "guard": reference.describe() if reference is not None else "image checks only (no reference in this run)",
        "n_out_of_distribution": int((~inside).sum()),
        "in_distribution_rate": round(float(inside.mean()), 4) if len(inside) else None,
        "all": brief(np.ones(len(inside), bool)),
        "in_distribution": brief(inside),
        "per_source": per_source,
    }


def _baseline(
    run: LoadedRun,
    model,
    ds: LabelledImages,
    feats,
    probs,
    config: Config,
    bootstrap: int,
    seed: int,
    ece_bins: int,
    own_bootstrap: dict,
) -> dict | None:
    """The linear probe fitted on the run's own training split, evaluated on the same images as the model
    (a linear run's probe is the model itself: its metrics and bootstrap, ``own_bootstrap``, are reused)."""
    from liverscan.core.dataset import PreparedData
    from liverscan.core.model import feature_extractor
    from liverscan.core.probe import fit_linear_probe

    classes = run.classes
    if run.card.build.get("head") == "linear":
        m = classification_metrics(ds.y, probs, classes, ece_bins=ece_bins)
        return {**m, "bootstrap": own_bootstrap, "name": "linear probe (this model's own head)"}
    try:
        prepared = PreparedData(run.card.prepared_dir or "")
        train = prepared.split("train", run.image_size, config.preprocess.max_pixels)
    except LiverscanError:
        return None  # the training data is gone: no baseline to fit
    if len(train.y) == 0:
        return None
    remap = np.array([classes.index(c) for c in prepared.classes])
    extractor = feature_extractor(model)
    ftrain = np.asarray(extractor.predict(train.x.astype(np.float32), batch_size=64, verbose=0))
    assert train.groups is not None  # PreparedData.split gives every image a group
    probe = fit_linear_probe(ftrain, remap[train.y], train.groups, len(classes), seed=seed)
    p = probe.probabilities(feats)
    m = classification_metrics(ds.y, p, classes, ece_bins=ece_bins)
    m["bootstrap"] = bootstrap_intervals(ds.y, p, classes, n_resamples=bootstrap, seed=seed, groups=ds.groups)
    return {**m, "name": f"linear probe (fitted on the run's training split, C={probe.c:.3g})"}
