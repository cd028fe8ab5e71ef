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

from liverscan.calibration import (
    apply_temperature,
    fit_balanced_weights,
    fit_sensitivity_threshold,
    fit_temperature,
    predict_with_rule,
)
from liverscan.errors import DataError, ImageDecodeError, LiverscanError, RunDirError
from liverscan.fileio import write_csv_atomic, write_json_atomic
from liverscan.metrics import bootstrap_intervals, classification_metrics
from liverscan.runinfo import utc_now, versions

PRED_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"


@dataclass
class LoadedRun:
    """A trained model with its card (run directory or bare model file)."""

    model_path: Path
    run_dir: Path | None
    card: dict

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def image_size(self) -> int:
        return int(self.card["input"]["size"][0])


def load_run(path: str | Path) -> LoadedRun:
    """Resolve a run directory or ``.keras`` file; a model file next to a card uses that card."""
    from liverscan.modelcard import read_card

    p = Path(path)
    if p.is_dir():
        model_path = p / "model.keras"
        if not model_path.is_file() and (p / "weights.npz").is_file():
            model_path = p / "weights.npz"  # a packed (shipped) model
        if not model_path.is_file():
            raise RunDirError(f"{p}: no model.keras (is this a finished 'liverscan train' run?)")
        return LoadedRun(model_path, p, read_card(p))
    if p.is_file():
        if (p.parent / "model_card.json").is_file():
            return LoadedRun(p, p.parent, read_card(p.parent))
        raise RunDirError(f"{p}: no model_card.json beside the model file; pass the run directory")
    raise RunDirError(f"{p}: no such run directory or model file")


def predict_probs(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities in fixed-shape batches, renormalised to sum to one."""
    from liverscan.train import pad_batch

    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        probs = model.predict_on_batch(pad_batch(batch, batch_size))
        out.append(np.asarray(probs, dtype=np.float64)[: len(batch)])
    if not out:
        return np.zeros((0, 0))
    probs = np.concatenate(out)
    return probs / probs.sum(1, keepdims=True)  # float32 softmax sums drift by ~1e-7


@dataclass
class LabelledImages:
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    source: str
    skipped: list[tuple[str, str]]


def load_labelled(run: LoadedRun, data: str | Path | None, split: str) -> LabelledImages:
    """Images + labels from a prepared split, or from labelled folders / a glob / a CSV."""
    from liverscan.dataset import PreparedData

    target = Path(data) if data is not None else Path(run.card["data"]["prepared_dir"])
    if target.is_dir() and (target / "manifest.csv").is_file():
        prepared = PreparedData(target)
        missing = set(prepared.classes) - set(run.classes)
        if missing:
            raise DataError(f"{target}: classes {sorted(missing)} are not predicted by this model ({run.classes})")
        s = prepared.split(split, run.image_size)
        # map prepared class indices to model class indices
        remap = np.array([run.classes.index(c) for c in prepared.classes])
        if len(s.y) == 0:
            raise DataError(f"{target}: split {split!r} is empty")
        return LabelledImages(s.x, remap[s.y], s.paths, f"{target} ({split})", [])
    if data is None:
        raise RunDirError(f"{target}: the run's prepared dataset is gone; pass --data")
    return _load_sources(run, str(data))


def _load_sources(run: LoadedRun, spec: str) -> LabelledImages:
    from liverscan.classmap import map_labels
    from liverscan.config import SourceSpec
    from liverscan.images import load_image
    from liverscan.sources import scan_sources

    candidates, _, _ = scan_sources([SourceSpec(spec)])
    class_map = dict(run.card.get("class_map") or {})
    class_map.update({c: c for c in run.classes})
    label_to_class = map_labels([c.source_label for c in candidates], class_map)
    xs, ys, paths, skipped = [], [], [], []
    for c in candidates:
        cls = label_to_class[c.source_label]
        if cls not in run.classes:
            raise DataError(f"{c.path}: class {cls!r} is not predicted by this model ({run.classes})")
        try:
            xs.append(load_image(c.path, size=run.image_size))
        except ImageDecodeError as exc:
            skipped.append((c.path, exc.reason))
            continue
        ys.append(run.classes.index(cls))
        paths.append(c.path)
    if not xs:
        raise DataError(f"{spec}: no readable labelled images")
    return LabelledImages(np.stack(xs), np.array(ys), paths, spec, skipped)


def parse_operating_point(spec: str, classes: list[str]) -> dict:
    """'balanced' or 'CLASS>=SENSITIVITY' (e.g. 'tumor>=0.95')."""
    spec = spec.strip()
    if spec == "balanced":
        return {"goal": "balanced"}
    m = re.fullmatch(r"(\w[\w\- ]*)\s*>=\s*([0-9.]+)", spec)
    if not m:
        raise LiverscanError(f"operating point {spec!r}: use 'balanced' or 'CLASS>=SENSITIVITY' like 'tumor>=0.95'")
    cls, target = m.group(1).strip(), float(m.group(2))
    if cls not in classes:
        raise LiverscanError(f"operating point {spec!r}: unknown class {cls!r} (classes: {', '.join(classes)})")
    if not 0 < target <= 1:
        raise LiverscanError(f"operating point {spec!r}: sensitivity must be in (0, 1]")
    return {"goal": "sensitivity", "class": cls, "target": target}


def fit_operating_point(run: LoadedRun, model, spec: str, data: str | Path | None = None) -> dict:
    """Fit temperature + decision rule on the validation split; returns the operating point."""
    goal = parse_operating_point(spec, run.classes)
    val = load_labelled(run, data, "val")
    probs = predict_probs(model, val.x)
    temperature = fit_temperature(val.y, probs)
    cal = apply_temperature(probs, temperature)
    if goal["goal"] == "balanced":
        rule = {"type": "weights", "weights": fit_balanced_weights(val.y, cal)}
        desc = "temperature-scaled probabilities x per-class weights maximising validation balanced accuracy"
    else:
        ci = run.classes.index(goal["class"])
        t = fit_sensitivity_threshold(val.y, cal, ci, goal["target"])
        rule = {"type": "threshold", "class_index": ci, "class": goal["class"], "threshold": t}
        desc = (f"predict {goal['class']} when its temperature-scaled probability >= {t:.4f} "
                f"(validation sensitivity target {goal['target']})")
    pred = predict_with_rule(cal, rule)
    return {
        "spec": spec,
        "temperature": temperature,
        "rule": rule,
        "description": desc,
        "fitted_on": {"data": val.source, "n": int(len(val.y)), "created": utc_now()},
        "validation": {
            "argmax": _brief(classification_metrics(val.y, probs, run.classes)),
            "tuned": _brief(classification_metrics(val.y, cal, run.classes, y_pred=pred)),
        },
    }


def _brief(m: dict) -> dict:
    return {
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "precision": {c: v["precision"] for c, v in m["per_class"].items()},
        "ece": m["calibration"]["ece"],
    }


def store_operating_point(run: LoadedRun, op: dict) -> None:
    if run.run_dir is None:
        raise RunDirError("operating points are stored in a run directory's model card")
    from liverscan.modelcard import render_card_markdown

    run.card["operating_point"] = op
    write_json_atomic(run.run_dir / "model_card.json", run.card)
    (run.run_dir / "model_card.md").write_text(render_card_markdown(run.card), encoding="utf-8")


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict


def evaluate(run_path: str | Path, data: str | Path | None = None, split: str = "test", out: str | Path | None = None,
             operating_point: str | None = None, bootstrap: int = 1000, seed: int = 0, ece_bins: int = 15,
             figures: bool = True) -> EvalResult:
    """Evaluate a trained model; optionally fit and store an operating point first."""
    from liverscan.model import load_model

    run = load_run(run_path)
    model = load_model(run.model_path)
    if operating_point:
        store_operating_point(run, fit_operating_point(run, model, operating_point, data))
    op = run.card.get("operating_point")
    ds = load_labelled(run, data, split)
    probs = predict_probs(model, ds.x)
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
    result["argmax"]["bootstrap"] = bootstrap_intervals(ds.y, probs, classes, n_resamples=bootstrap, seed=seed)
    tuned_pred = None
    cal = None
    if op:
        cal = apply_temperature(probs, op["temperature"])
        tuned_pred = predict_with_rule(cal, op["rule"])
        tuned = classification_metrics(ds.y, cal, classes, y_pred=tuned_pred, ece_bins=ece_bins)
        tuned["bootstrap"] = bootstrap_intervals(ds.y, cal, classes, y_pred=tuned_pred, n_resamples=bootstrap, seed=seed)
        result["tuned"] = tuned
        result["operating_point"] = {k: op[k] for k in ("spec", "temperature", "rule", "description")}

    out_dir = Path(out) if out else (run.run_dir / f"eval-{split}" if run.run_dir else Path(f"eval-{split}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["path", "true_class", "predicted_class"] + (["tuned_class"] if op else []) + [f"p_{c}" for c in classes]
    rows = []
    for i, path in enumerate(ds.paths):
        row = [path, classes[ds.y[i]], classes[int(probs[i].argmax())]]
        if op:
            row.append(classes[int(tuned_pred[i])])
        row += [f"{p:.6f}" for p in probs[i]]
        rows.append(row)
    write_csv_atomic(out_dir / PRED_FILE, header, rows)
    write_json_atomic(out_dir / METRICS_FILE, result)
    _effective_config(run, split, bootstrap, ece_bins).save(out_dir / "config.yaml")
    if figures:
        from liverscan.plots import confusion_figure, reliability_figure, roc_figure

        am = result["argmax"]
        confusion_figure(am["confusion_matrix"], classes, out_dir / "confusion.png", f"Confusion matrix ({split}, argmax)")
        if op:
            confusion_figure(result["tuned"]["confusion_matrix"], classes, out_dir / "confusion-tuned.png",
                             f"Confusion matrix ({split}, operating point {op['spec']})")
        roc_figure(ds.y, probs, classes, {c: v["roc_auc"] for c, v in am["per_class"].items()},
                   am["macro"]["roc_auc"], out_dir / "roc.png")
        curves = {"model": (probs, am["calibration"]["ece"])}
        if op:
            curves[f"temperature {op['temperature']:.2f}"] = (cal, result["tuned"]["calibration"]["ece"])
        reliability_figure(ds.y, curves, out_dir / "reliability.png", n_bins=ece_bins)
    return EvalResult(out_dir, result)


def _effective_config(run: LoadedRun, split: str, bootstrap: int, ece_bins: int):
    """The run's configuration with this evaluation's settings, as written beside the metrics."""
    from liverscan.config import Config, load_config

    cfg_path = run.run_dir / "config.yaml" if run.run_dir else None
    cfg = load_config(cfg_path) if cfg_path and cfg_path.is_file() else Config()
    cfg.eval.split, cfg.eval.bootstrap, cfg.eval.ece_bins = split, bootstrap, ece_bins
    return cfg
