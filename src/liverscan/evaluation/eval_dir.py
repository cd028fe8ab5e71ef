"""The evaluation directory, written one way for single-split and cross-validated evaluations.

``predictions.csv`` (one row per evaluated image), ``metrics.json``, ``config.yaml`` (the run's
configuration with this evaluation's settings) and the figures: ``confusion.png`` (argmax),
``confusion-tuned.png`` (with an operating point), ``roc.png`` and ``reliability.png``; with a lesion head,
``localisation.csv`` and ``localisation.png`` (:mod:`~liverscan.evaluation.localisation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liverscan.core.artifacts import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE, LoadedRun
from liverscan.core.config import Config
from liverscan.core.fileio import write_csv_atomic, write_json_atomic
from liverscan.evaluation.results import EvalMetrics

if TYPE_CHECKING:
    from liverscan.evaluation.localisation import Localised


@dataclass
class EvalResult:
    """Where an evaluation was written, and its metrics (``metrics.json``, typed)."""

    out_dir: Path
    metrics: EvalMetrics


@dataclass
class Figures:
    """What the figures show: the labels and probabilities, where they come from (a title part) and the curves
    of the reliability diagram (name -> (probabilities, ECE))."""

    y: np.ndarray
    probs: np.ndarray
    where: str  # e.g. "test" or "out of fold"
    tuned_title: str | None = None  # the operating point's part of the tuned confusion matrix title
    curves: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)


def effective_config(run: LoadedRun, split: str, bootstrap: int, ece_bins: int) -> Config:
    """The run's configuration with this evaluation's settings, as written beside the metrics."""
    from liverscan.core.config import load_saved_config

    cfg_path = run.run_dir / CONFIG_FILE if run.run_dir else None
    cfg = load_saved_config(cfg_path) if cfg_path and cfg_path.is_file() else Config()
    cfg.eval.split, cfg.eval.bootstrap, cfg.eval.ece_bins = split, bootstrap, ece_bins
    return cfg


def write_eval_dir(
    out_dir: Path,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    metrics: dict[str, Any],
    config: Config,
    classes: list[str],
    figures: Figures | None,
    ece_bins: int,
    localised: Localised | None = None,
) -> None:
    """Write an evaluation directory (each file atomically); ``figures`` None: no figures.  ``localised``: the
    lesion maps' scores, added to ``metrics`` as its ``localisation`` section."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if localised is not None:
        from liverscan.evaluation.localisation import write_outputs

        metrics["localisation"] = write_outputs(localised, out_dir, figures is not None).to_dict()
    write_csv_atomic(out_dir / PREDICTIONS_FILE, header, rows)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    config.save(out_dir / CONFIG_FILE)
    if figures is None:
        return
    from liverscan.core.plots import confusion_figure, reliability_figure, roc_figure

    am = metrics["argmax"]
    confusion_figure(
        am["confusion_matrix"], classes, out_dir / "confusion.png", f"Confusion matrix ({figures.where}, argmax)"
    )
    if figures.tuned_title and "tuned" in metrics:
        confusion_figure(
            metrics["tuned"]["confusion_matrix"],
            classes,
            out_dir / "confusion-tuned.png",
            f"Confusion matrix ({figures.where}, {figures.tuned_title})",
        )
    roc_figure(
        figures.y,
        figures.probs,
        classes,
        {c: v["roc_auc"] for c, v in am["per_class"].items()},
        am["macro"]["roc_auc"],
        out_dir / "roc.png",
    )
    curves = {"model": (figures.probs, am["calibration"]["ece"]), **figures.curves}
    reliability_figure(figures.y, curves, out_dir / "reliability.png", n_bins=ece_bins)
