"""``evaluate``: predictions, metrics with bootstrap CIs, calibration and operating points.

Input: a run directory (or a model file) and either a prepared dataset split
(default: the run's own prepared data, split ``test``) or labelled images
(a folder with one sub-folder per category, a ``{label}`` glob, or a CSV).

Output directory (default ``RUN/eval-<split>``): ``predictions.csv``,
``metrics.json``, ``confusion.png``, ``roc.png``, ``reliability.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscan.core.aggregate import aggregate_groups
from liverscan.core.artifacts import (
    CONFIG_FILE,
    MANIFEST,
    METRICS_FILE,
    OOD_FILE,
    PREDICTIONS_FILE,
    LoadedRun,
    eval_dir_name,
    load_run,
)
from liverscan.core.config import Config
from liverscan.core.decision import apply_temperature, predict_with_rule
from liverscan.core.errors import ConfigError, DataError, ImageDecodeError, LiverscanError, RunDirError
from liverscan.core.fileio import write_csv_atomic, write_json_atomic
from liverscan.core.guard import Reference, Verdict, assess
from liverscan.core.images import DEFAULT_MAX_PIXELS
from liverscan.core.model import predict_probs
from liverscan.core.runinfo import utc_now, versions
from liverscan.evaluation.calibration import (
    fit_balanced_weights,
    fit_sensitivity_threshold,
    fit_temperature,
)
from liverscan.evaluation.crossval import (
    by_group,
    cv_metrics,
    group_kind,
    has_multi_image_groups,
    headline,
    is_cross_validated,
    nested,
    read_oof,
    temperature_only,
)
from liverscan.evaluation.metrics import bootstrap_intervals, classification_metrics


@dataclass
class LabelledImages:
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    source: str
    skipped: list[tuple[str, str]]
    sources: list[str] | None = None  # per image: the name of the source it came from
    groups: np.ndarray | None = None  # per image: its group from prepare (patient, near-duplicate cluster)


def load_labelled(
    run: LoadedRun, data: str | Path | None, split: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LabelledImages:
    """Images + labels from a prepared split, or from labelled folders / a glob / a CSV."""
    from liverscan.core.dataset import PreparedData

    target = Path(data) if data is not None else Path(run.card.prepared_dir or "")
    if is_prepared(target):
        prepared = PreparedData(target)
        missing = set(prepared.classes) - set(run.classes)
        if missing:
            raise DataError(f"{target}: classes {sorted(missing)} are not predicted by this model ({run.classes})")
        s = prepared.split(split, run.image_size, max_pixels)
        # map prepared class indices to model class indices
        remap = np.array([run.classes.index(c) for c in prepared.classes])
        if len(s.y) == 0:
            raise DataError(f"{target}: split {split!r} is empty")
        source_of = {r["path"]: r.get("source", "") for r in prepared.rows}
        return LabelledImages(
            s.x, remap[s.y], s.paths, f"{target} ({split})", [], [source_of[p] for p in s.paths], s.groups
        )
    if data is None:
        raise RunDirError(f"{target}: the run's prepared dataset is gone; give the evaluation data explicitly")
    return _load_sources(run, str(data), max_pixels)


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _load_sources(run: LoadedRun, spec: str, max_pixels: int) -> LabelledImages:
    from liverscan.core.classmap import map_labels
    from liverscan.core.config import SourceSpec
    from liverscan.core.images import load_image
    from liverscan.core.sources import scan_sources

    candidates, _, _ = scan_sources([SourceSpec(spec)])
    class_map = dict(run.card.class_map or {})
    class_map.update({c: c for c in run.classes})
    label_to_class = map_labels(
        [c.source_label for c in candidates],
        class_map,
        how_to_map=f"This model knows the classes {', '.join(run.classes)} and its card's class map; rename the "
        "folders (or CSV labels) to those names, or map them with liverscan prepare --map CATEGORY=CLASS and "
        "evaluate the prepared folder.",
    )
    xs, ys, paths, skipped = [], [], [], []
    for c in candidates:
        cls = label_to_class[c.source_label]
        if cls not in run.classes:
            raise DataError(f"{c.path}: class {cls!r} is not predicted by this model ({run.classes})")
        try:
            xs.append(load_image(c.path, size=run.image_size, max_pixels=max_pixels))
        except ImageDecodeError as exc:
            skipped.append((c.path, exc.reason))
            continue
        ys.append(run.classes.index(cls))
        paths.append(c.path)
    if not xs:
        raise DataError(f"{spec}: no readable labelled images")
    source_of = {c.path: c.source for c in candidates}
    return LabelledImages(np.stack(xs), np.array(ys), paths, spec, skipped, [source_of[p] for p in paths])


def parse_operating_point(spec: str, classes: list[str]) -> dict:
    """'balanced' or 'CLASS>=SENSITIVITY' (e.g. 'tumor>=0.95')."""
    spec = spec.strip()
    if spec == "balanced":
        return {"goal": "balanced"}
    m = re.fullmatch(r"(\w[\w\- ]*)\s*>=\s*([0-9.]+)", spec)
    if not m:
        raise ConfigError(f"operating point {spec!r}: use 'balanced' or 'CLASS>=SENSITIVITY' like 'tumor>=0.95'")
    cls, target = m.group(1).strip(), float(m.group(2))
    if cls not in classes:
        raise ConfigError(f"operating point {spec!r}: unknown class {cls!r} (classes: {', '.join(classes)})")
    if not 0 < target <= 1:
        raise ConfigError(f"operating point {spec!r}: sensitivity must be in (0, 1]")
    return {"goal": "sensitivity", "class": cls, "target": target}


def fit_rule(
    y: np.ndarray,
    probs: np.ndarray,
    goal: dict,
    classes: list[str],
    where: str = "validation",
    temperature: float | None = None,
) -> dict:
    """Temperature and decision rule for an operating-point goal, fitted on (y, probs) (``temperature``:
    given instead of fitted)."""
    temperature = fit_temperature(y, probs) if temperature is None else temperature
    cal = apply_temperature(probs, temperature)
    if goal["goal"] == "balanced":
        rule = {"type": "weights", "weights": fit_balanced_weights(y, cal)}
        desc = f"temperature-scaled probabilities x per-class weights maximising {where} balanced accuracy"
    else:
        ci = classes.index(goal["class"])
        t = fit_sensitivity_threshold(y, cal, ci, goal["target"])
        rule = {"type": "threshold", "class_index": ci, "class": goal["class"], "threshold": t}
        desc = (
            f"predict {goal['class']} when its temperature-scaled probability >= {t:.4f} "
            f"({where} sensitivity target {goal['target']})"
        )
    return {"temperature": temperature, "rule": rule, "description": desc}


def fit_group_rule(
    y: np.ndarray, probs: np.ndarray, keys, goal: dict, classes: list[str], agg_rule: str, where: str
) -> dict:
    """An operating point for studies, fitted the way ``predict --group-by`` applies it: the temperature
    on the frames, then the decision rule on the groups' aggregated calibrated probabilities."""
    temperature = fit_temperature(y, probs)
    _, yg, pg, _ = aggregate_groups(y, apply_temperature(probs, temperature), keys, agg_rule, classes)
    fitted = fit_rule(yg, pg, goal, classes, f"{where}, per patient ({agg_rule} of its images)", temperature=1.0)
    return {**fitted, "temperature": temperature}


def fit_operating_point(
    run: LoadedRun, model, spec: str, data: str | Path | None = None, level: str = "image", rule: str = "mean"
) -> dict:
    """Fit temperature + decision rule on a prepared validation split; returns the operating point.

    ``data`` is used only when it is a prepared dataset (its ``val`` split); labelled
    folders are evaluation data, never fitting data, so the run's own prepared
    validation split is used for them.  ``level="group"`` fits on the validation
    split's patients (probabilities aggregated per group by ``rule``) — groups never
    span splits, so no evaluated patient is seen.
    """
    goal = parse_operating_point(spec, run.classes)
    fit_data = data if data is not None and is_prepared(Path(data)) else None
    val = load_labelled(run, fit_data, "val")
    probs = predict_probs(model, val.x)
    n_fit = len(val.y)
    if level == "group":
        if val.groups is None or not has_multi_image_groups(val.groups) or group_kind(val.groups) != "patients":
            raise DataError(
                f"{val.source}: a patient-level operating point needs patients of several images "
                "(a group column or --group-regex at prepare)"
            )
        keys = [str(g) for g in val.groups]
        fitted = fit_group_rule(val.y, probs, keys, goal, run.classes, rule, "validation")
        n_fit = len(set(keys))
    else:
        fitted = fit_rule(val.y, probs, goal, run.classes)
    cal = apply_temperature(probs, fitted["temperature"])
    pred = predict_with_rule(cal, fitted["rule"])
    return {
        "spec": spec,
        "level": level,
        **({"group_rule": rule} if level == "group" else {}),
        **fitted,
        "fitted_on": {
            "data": val.source if level == "image" else f"{val.source}, aggregated per group ({rule})",
            "n": int(n_fit),
            "created": utc_now(),
        },
        "validation": {
            "argmax": _brief(classification_metrics(val.y, probs, run.classes)),
            "tuned": _brief(classification_metrics(val.y, cal, run.classes, y_pred=pred)),
        },
    }


def _nested_group_rule(oof, group_oof, goal: dict, classes: list[str], agg_rule: str):
    """Per-group (calibrated probabilities, decisions): each fold's patients decided by a study rule
    fitted (temperature on frames, rule on patients) on the other folds of the same repeat only."""
    import dataclasses

    cal = np.zeros_like(group_oof.probs)
    pred = np.zeros(len(group_oof.y), int)
    for r in np.unique(oof.repeat):
        for k in np.unique(oof.fold[oof.repeat == r]):
            rest = (oof.repeat == r) & (oof.fold != k)
            keys = [str(g) for g in oof.groups[rest]]
            fitted = fit_group_rule(oof.y[rest], oof.probs[rest], keys, goal, classes, agg_rule, "out-of-fold")
            calibrated = dataclasses.replace(oof, probs=apply_temperature(oof.probs, fitted["temperature"]))
            g_probs = by_group(calibrated, agg_rule, classes)[0].probs
            held = (group_oof.repeat == r) & (group_oof.fold == k)
            cal[held] = g_probs[held]
            pred[held] = predict_with_rule(g_probs[held], fitted["rule"])
    return cal, pred


def _group_level(ds, probs, op, classes, rule, bootstrap, seed, ece_bins) -> dict:
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
        cal_frames = apply_temperature(probs, op["temperature"])
        decisions = predict_with_rule(cal_frames, op["rule"]) if rule == "vote" else None
        _, _, cal, _ = aggregate_groups(ds.y, cal_frames, keys, rule, classes, decisions)
        pred = cal.argmax(1) if rule == "vote" else predict_with_rule(cal, op["rule"])  # a vote is decided
        out["tuned"] = classification_metrics(yg, cal, classes, y_pred=pred, ece_bins=ece_bins)
        out["tuned"]["bootstrap"] = bootstrap_intervals(yg, cal, classes, y_pred=pred, n_resamples=bootstrap, seed=seed)
    return out


def _brief(m: dict) -> dict:
    return {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "precision": {c: v["precision"] for c, v in m["per_class"].items()},
        "ece": m["calibration"]["ece"],
    }


def store_operating_point(run: LoadedRun, op: dict) -> None:
    run.card.operating_point = op
    run.save_card()


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict


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
) -> EvalResult:
    """Evaluate a trained model; optionally fit and store an operating point first.

    ``config`` gives the split, bootstrap resamples and ECE bins (its ``eval``
    section) and the decoding limits (``preprocess``); explicit arguments override it.
    """
    from liverscan.core.model import load_model

    config = config or Config()
    settings = config.eval
    given_split = split
    split = split or settings.split
    bootstrap = settings.bootstrap if bootstrap is None else bootstrap
    ece_bins = settings.ece_bins if ece_bins is None else ece_bins
    run = load_run(run_path)
    if is_cross_validated(run):
        if data is None and given_split in (None, "cv"):
            out_dir = Path(out) if out else run.source / eval_dir_name("cv")
            return _evaluate_cv(run, out_dir, operating_point, bootstrap, seed, ece_bins, figures, config)
        if data is None:
            raise DataError(
                f"{run.source}: this model was refit on every image of its prepared dataset, so its {split} "
                "split is not held out; evaluate it cross-validated (no split) or on other data"
            )
    out_dir = Path(out) if out else (run.run_dir / eval_dir_name(split) if run.run_dir else Path(eval_dir_name(split)))
    model = load_model(run.model_path)
    if operating_point:
        store_operating_point(
            run,
            fit_operating_point(
                run, model, operating_point, data, config.eval.operating_point_level, config.eval.group_rule
            ),
        )
    op = run.card.operating_point
    ds = load_labelled(run, data, split, max_pixels=config.preprocess.max_pixels)
    reference = None
    if config.ood.enabled and run.run_dir is not None and (run.run_dir / OOD_FILE).is_file():
        reference = Reference.load(run.run_dir / OOD_FILE).with_retention(config.ood.retention)
    from liverscan.core.model import predict_outputs, with_features

    probs, feats = predict_outputs(with_features(model), ds.x)
    verdicts = assess(reference, ds.x, feats) if config.ood.enabled else []
    classes = run.classes
    result = {
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
    result["argmax"]["bootstrap"] = bootstrap_intervals(
        ds.y, probs, classes, n_resamples=bootstrap, seed=seed, groups=ds.groups
    )
    if ds.groups is not None and has_multi_image_groups(ds.groups):
        rule = (op or {}).get("group_rule") or config.eval.group_rule  # a patient rule keeps its aggregation
        result["group_level"] = _group_level(ds, probs, op, classes, rule, bootstrap, seed, ece_bins)
    if config.ood.enabled:
        result["ood"] = _ood_section(reference, verdicts, ds, probs, classes, ece_bins)
    result["baseline"] = _baseline(
        run, model, ds, feats, probs, config, bootstrap, seed, ece_bins, result["argmax"]["bootstrap"]
    )
    tuned_pred = None
    cal = None
    if op and op.get("level", "image") == "group":
        result["operating_point"] = {
            "spec": op["spec"],
            "level": "group",
            "note": "fitted on patients: applied per patient (group_level)"
            if "group_level" in result
            else "fitted on patients, and the evaluated data has no patients: not applied",
        }
        op = None  # a rule fitted on patients decides studies (group_level above), not single images
    if op:
        cal = apply_temperature(probs, op["temperature"])
        tuned_pred = predict_with_rule(cal, op["rule"])
        tuned = classification_metrics(ds.y, cal, classes, y_pred=tuned_pred, ece_bins=ece_bins)
        tuned["bootstrap"] = bootstrap_intervals(
            ds.y, cal, classes, y_pred=tuned_pred, n_resamples=bootstrap, seed=seed, groups=ds.groups
        )
        result["tuned"] = tuned
        result["operating_point"] = {k: op[k] for k in ("spec", "temperature", "rule", "description")}

    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["path", "true_class", "predicted_class"] + (["tuned_class"] if op else []) + [f"p_{c}" for c in classes]
    header += ["in_distribution", "ood_score", "ood_reason"]
    rows = []
    for i, path in enumerate(ds.paths):
        row = [path, classes[ds.y[i]], classes[int(probs[i].argmax())]]
        if op:
            row.append(classes[int(tuned_pred[i])])
        row += [f"{p:.6f}" for p in probs[i]]
        v = verdicts[i] if verdicts else None
        row += [
            "" if v is None or v.in_distribution is None else str(v.in_distribution).lower(),
            "" if v is None or v.score is None else f"{v.score:.6f}",
            "" if v is None else v.reason or "",
        ]
        rows.append(row)
    write_csv_atomic(out_dir / PREDICTIONS_FILE, header, rows)
    write_json_atomic(out_dir / METRICS_FILE, result)
    _effective_config(run, split, bootstrap, ece_bins).save(out_dir / CONFIG_FILE)
    if figures:
        from liverscan.core.plots import confusion_figure, reliability_figure, roc_figure

        am = result["argmax"]
        confusion_figure(
            am["confusion_matrix"], classes, out_dir / "confusion.png", f"Confusion matrix ({split}, argmax)"
        )
        if op:
            confusion_figure(
                result["tuned"]["confusion_matrix"],
                classes,
                out_dir / "confusion-tuned.png",
                f"Confusion matrix ({split}, operating point {op['spec']})",
            )
        roc_figure(
            ds.y,
            probs,
            classes,
            {c: v["roc_auc"] for c, v in am["per_class"].items()},
            am["macro"]["roc_auc"],
            out_dir / "roc.png",
        )
        curves = {"model": (probs, am["calibration"]["ece"])}
        if op:
            curves[f"temperature {op['temperature']:.2f}"] = (cal, result["tuned"]["calibration"]["ece"])
        reliability_figure(ds.y, curves, out_dir / "reliability.png", n_bins=ece_bins)
    return EvalResult(out_dir, result)


def _effective_config(run: LoadedRun, split: str, bootstrap: int, ece_bins: int):
    """The run's configuration with this evaluation's settings, as written beside the metrics."""
    from liverscan.core.config import load_config

    cfg_path = run.run_dir / CONFIG_FILE if run.run_dir else None
    cfg = load_config(cfg_path) if cfg_path and cfg_path.is_file() else Config()
    cfg.eval.split, cfg.eval.bootstrap, cfg.eval.ece_bins = split, bootstrap, ece_bins
    return cfg


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
        if not mask.any():
            return None
        m = classification_metrics(ds.y[mask], probs[mask], classes, ece_bins=ece_bins)
        return {
            "n": int(mask.sum()),
            "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"],
            "macro_roc_auc": m["macro"]["roc_auc"],
        }

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


def _evaluate_cv(
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
    result["baseline"] = cv_metrics(oof, baseline, classes, bootstrap, seed, ece_bins)
    result["baseline"]["name"] = "linear probe" + (" (this model's own head)" if oof.baseline is None else "")
    spec = operating_point or (run.card.operating_point or {}).get("spec")
    # a stored rule is re-evaluated at the level it was fitted at
    level = (
        config.eval.operating_point_level if operating_point else (run.card.operating_point or {}).get("level", "image")
    )
    stored = {} if operating_point else (run.card.operating_point or {})
    group_rule = stored.get("group_rule") or config.eval.group_rule
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
        goal = parse_operating_point(spec, classes)
        g_cal, g_pred = _nested_group_rule(oof, group_oof, goal, classes, group_rule)
        result["group_level"]["tuned"] = cv_metrics(group_oof, g_cal, classes, bootstrap, seed, ece_bins, pred=g_pred)
        result["group_level"]["operating_point"] = {
            "spec": spec,
            "fitted": "nested, on patients: each fold by a rule fitted on the other folds' patients",
        }
        if operating_point:
            keys = list(zip(oof.repeat.tolist(), [str(g) for g in oof.groups]))
            op = {
                "spec": spec,
                "level": "group",
                "group_rule": group_rule,
                **fit_group_rule(oof.y, oof.probs, keys, goal, classes, group_rule, "out-of-fold"),
            }
            op["fitted_on"] = {
                "data": f"out-of-fold predictions aggregated per group ({group_rule})",
                "n": int(len(group_oof.y)),
                "created": utc_now(),
            }
            op["cross_validated"] = headline(result["group_level"]["tuned"])
            run.card.operating_point = op
        spec = None  # the image-level sections below describe image-level rules only
    if spec:
        goal = parse_operating_point(spec, classes)
        cal, pred = nested(oof, oof.probs, lambda y, p: fit_rule(y, p, goal, classes, "out-of-fold"))
        result["tuned"] = cv_metrics(oof, cal, classes, bootstrap, seed, ece_bins, pred=pred)
        result["operating_point"] = {"spec": spec, "fitted": "nested: each fold by a rule fitted on the other folds"}
        if operating_point:
            op = {"spec": spec, **fit_rule(oof.y, oof.probs, goal, classes, "out-of-fold")}
            op["fitted_on"] = {"data": "out-of-fold predictions", "n": int(len(oof.y)), "created": utc_now()}
            op["cross_validated"] = headline(result["tuned"])
            run.card.operating_point = op
        result["operating_point"].update(
            {k: run.card.operating_point[k] for k in ("temperature", "rule", "description")}
            if run.card.operating_point
            else {}
        )
    if run.card.ood and config.ood.enabled:
        threshold = float(run.card.ood["threshold"])
        inside = ~(oof.ood_scores > threshold)
        m_in = classification_metrics(oof.y[inside], oof.probs[inside], classes) if inside.any() else None
        result["ood"] = {
            "guard": run.card.ood,
            "n_out_of_distribution": int((~inside).sum()),
            "in_distribution_rate": round(float(inside.mean()), 4),
            "in_distribution": None
            if m_in is None
            else {
                "n": int(inside.sum()),
                "accuracy": m_in["accuracy"],
                "balanced_accuracy": m_in["balanced_accuracy"],
                "macro_roc_auc": m_in["macro"]["roc_auc"],
            },
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
    run.save_card()

    out_dir.mkdir(parents=True, exist_ok=True)
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
        row += [classes[int(pred[i])]] if spec else []
        row += [f"{p:.6f}" for p in oof.probs[i]] + ["" if np.isnan(oof.ood_scores[i]) else f"{oof.ood_scores[i]:.6f}"]
        rows.append(row)
    write_csv_atomic(out_dir / PREDICTIONS_FILE, header, rows)
    write_json_atomic(out_dir / METRICS_FILE, result)
    _effective_config(run, "cv", bootstrap, ece_bins).save(out_dir / CONFIG_FILE)
    if figures:
        from liverscan.core.plots import confusion_figure, reliability_figure, roc_figure

        am = result["argmax"]
        confusion_figure(
            am["confusion_matrix"], classes, out_dir / "confusion.png", "Confusion matrix (out of fold, argmax)"
        )
        if spec:
            confusion_figure(
                result["tuned"]["confusion_matrix"],
                classes,
                out_dir / "confusion-tuned.png",
                f"Confusion matrix (out of fold, operating point {spec}, nested)",
            )
        roc_figure(
            oof.y,
            oof.probs,
            classes,
            {c: v["roc_auc"] for c, v in am["per_class"].items()},
            am["macro"]["roc_auc"],
            out_dir / "roc.png",
        )
        curves = {
            "model": (oof.probs, am["calibration"]["ece"]),
            "temperature (nested)": (calibrated, result["temperature_nested"]["ece"]),
        }
        reliability_figure(oof.y, curves, out_dir / "reliability.png", n_bins=ece_bins)
    return EvalResult(out_dir, result)


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
    probe = fit_linear_probe(ftrain, remap[train.y], train.groups, len(classes), seed=seed)
    p = probe.probabilities(feats)
    m = classification_metrics(ds.y, p, classes, ece_bins=ece_bins)
    m["bootstrap"] = bootstrap_intervals(ds.y, p, classes, n_resamples=bootstrap, seed=seed, groups=ds.groups)
    return {**m, "name": f"linear probe (fitted on the run's training split, C={probe.c:.3g})"}
