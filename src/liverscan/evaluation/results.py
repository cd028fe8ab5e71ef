"""The evaluation result, typed: what ``metrics.json`` holds, read by attribute.

``evaluate`` writes ``metrics.json`` (its JSON is the contract between runs and versions); report, the
terminal, the CLI and the app read it through :class:`EvalMetrics`, so a renamed key is one edit here and
a missing section is ``None``, never a ``KeyError`` three modules away.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from liverscan.evaluation.localisation import LocalisationMetrics

Interval = tuple[float, float]
_T = TypeVar("_T")


def _build(cls: type[_T], d: dict[str, Any]) -> _T:
    """``cls`` from a JSON mapping written by any version: unknown keys are left out, missing ones are None."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in d:
            kwargs[f.name] = d[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            kwargs[f.name] = None
    return cls(**kwargs)


@dataclass(frozen=True)
class ClassScores:
    """One class's metrics; precision, recall, F1 and ROC-AUC are None (not available) for a class without
    images in the evaluated data (``note`` says why)."""

    precision: float | None
    recall: float | None
    specificity: float | None
    f1: float | None
    support: int
    roc_auc: float | None
    note: str | None = None


@dataclass(frozen=True)
class Averages:
    """Macro (or weighted) averages; the macro ones are over the classes present in the data (``classes``, given
    when some are absent, with a ``note``)."""

    precision: float
    recall: float
    f1: float
    roc_auc: float | None = None
    classes: list[str] | None = None
    note: str | None = None
    roc_auc_note: str | None = None


@dataclass(frozen=True)
class Calibration:
    ece: float
    ece_bins: int
    brier: float
    log_loss: float


@dataclass(frozen=True)
class Bootstrap:
    """Confidence intervals by metric key (``accuracy``, ``tumor.recall``, ``macro_roc_auc``, ...) and the method
    of each: ``wilson`` (Wilson score, proportions of independent images), ``wilson over groups`` (a
    proportion of 0 or 1 with groups: over the groups behind it) or ``bootstrap`` (percentile, over
    ``resampled``); older metrics have no methods: all percentile bootstrap."""

    intervals: dict[str, Interval | None]
    level: float = 0.95
    n_resamples: int = 0
    resampled: str = "images"  # or "groups"
    methods: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Bootstrap | None:
        if not d:
            return None
        iv = {k: (None if v is None else (float(v[0]), float(v[1]))) for k, v in d.get("intervals", {}).items()}
        return cls(
            iv,
            float(d.get("level", 0.95)),
            int(d.get("n_resamples", 0)),
            str(d.get("resampled", "images")),
            dict(d.get("methods") or {}),
        )

    def describe(self, short: bool = False, unit: str = "images") -> str:
        """Which intervals these are, for people: the report's sentence, or (``short``) a table title's part.
        ``unit``: what one row is (``patients`` for results with one case per patient)."""
        level = f"{self.level:.0%}"
        resampled = unit if self.resampled == "images" else self.resampled
        used = set(self.methods.values())
        if not used:  # written before intervals had methods
            if short:
                return f"{level} bootstrap CI over {resampled}"
            return f"Intervals are {level} bootstrap CIs ({self.n_resamples} resamples of {resampled})."
        if "wilson" in used:
            if short:
                return f"{level} CI: Wilson for proportions, bootstrap over {unit} otherwise"
            rest = (
                f"percentile bootstrap ({self.n_resamples} resamples of {unit}) for balanced accuracy and ROC-AUC"
                if self.n_resamples
                else "none for balanced accuracy and ROC-AUC (no bootstrap resamples)"
            )
            return (
                f"Intervals are {level} CIs: Wilson score intervals for the proportions (accuracy, precision, "
                f"recall, specificity), {rest}."
            )
        wilson = "wilson over groups" in used
        if short:
            return f"{level} CI: bootstrap over {resampled}" + (", Wilson over groups at 0 or 1" if wilson else "")
        return (
            f"Intervals are {level} percentile bootstrap CIs ({self.n_resamples} resamples of {resampled}, "
            "all images of a group together)"
            + (
                "; a proportion of 0 or 1 (every resample the same) gets the Wilson score interval over the "
                f"{resampled} behind it instead."
                if wilson
                else "."
            )
        )


@dataclass(frozen=True)
class Scores:
    """The metrics of one set of decisions (argmax, an operating point, the baseline) on one set of images."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro: Averages
    weighted: Averages
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]
    confusion_matrix_normalized: list[list[float]]
    calibration: Calibration
    bootstrap: Bootstrap | None = None
    per_fold: dict[str, dict[str, float]] | None = None  # mean, sd, n_folds by metric (cross-validated)
    name: str | None = None  # what made these decisions, for a baseline
    absent_classes: list[str] = field(default_factory=list)  # classes without images in the data: metrics n/a

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Scores | None:
        if not d:
            return None
        return cls(
            n=int(d.get("n", sum(v["support"] for v in d["per_class"].values()))),
            accuracy=float(d["accuracy"]),
            balanced_accuracy=float(d["balanced_accuracy"]),
            macro=_build(Averages, d["macro"]),
            weighted=_build(Averages, d["weighted"]),
            per_class={c: _build(ClassScores, v) for c, v in d["per_class"].items()},
            confusion_matrix=d["confusion_matrix"],
            confusion_matrix_normalized=d["confusion_matrix_normalized"],
            calibration=_build(Calibration, d["calibration"]),
            bootstrap=Bootstrap.from_dict(d.get("bootstrap")),
            per_fold=d.get("per_fold"),
            name=d.get("name"),
            absent_classes=list(d.get("absent_classes") or []),
        )

    @property
    def macro_roc_auc(self) -> float | None:
        return self.macro.roc_auc

    def ci(self, key: str) -> Interval | None:
        """The 95 % interval of a metric key, or None (no bootstrap, or too few resamples defined it)."""
        return None if self.bootstrap is None else self.bootstrap.intervals.get(key)

    def value(self, key: str) -> float | None:
        """A metric by its interval key: ``accuracy``, ``balanced_accuracy``, ``macro_roc_auc``, ``CLASS.recall``."""
        if "." in key:
            cls, metric = key.split(".", 1)
            return getattr(self.per_class[cls], metric)
        return getattr(self, key)


@dataclass(frozen=True)
class GroupLevel:
    """Metrics with one case per group (patient): frames aggregated by ``rule``."""

    kind: str  # "patients" or "near-duplicate groups"
    rule: str
    n_groups: int
    mixed_label_groups: int
    argmax: Scores
    tuned: Scores | None = None
    operating_point: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GroupLevel | None:
        if not d:
            return None
        argmax = Scores.from_dict(d["argmax"])
        assert argmax is not None
        return cls(
            str(d["kind"]),
            str(d["rule"]),
            int(d["n_groups"]),
            int(d.get("mixed_label_groups", 0)),
            argmax,
            Scores.from_dict(d.get("tuned")),
            d.get("operating_point"),
        )


@dataclass(frozen=True)
class OodBrief:
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_roc_auc: float | None


@dataclass(frozen=True)
class OodSource:
    source: str
    n: int
    in_distribution_rate: float
    all: OodBrief | None
    in_distribution: OodBrief | None


@dataclass(frozen=True)
class OodResult:
    """What the out-of-distribution guard did on the evaluated images."""

    guard: Any  # the card's description (a mapping), or a sentence
    n_out_of_distribution: int
    in_distribution_rate: float | None
    all: OodBrief | None
    in_distribution: OodBrief | None
    per_source: list[OodSource] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OodResult | None:
        if not d:
            return None

        def brief(b: dict[str, Any] | None) -> OodBrief | None:
            return None if not b else _build(OodBrief, b)

        return cls(
            d.get("guard"),
            int(d["n_out_of_distribution"]),
            d.get("in_distribution_rate"),
            brief(d.get("all")),
            brief(d.get("in_distribution")),
            [
                OodSource(
                    str(s["source"]),
                    int(s["n"]),
                    float(s["in_distribution_rate"]),
                    brief(s.get("all")),
                    brief(s.get("in_distribution")),
                )
                for s in d.get("per_source") or []
            ],
        )


@dataclass(frozen=True)
class Leakage:
    """Evaluated images the run had seen - exact copies or near duplicates of its training or validation
    images - left out of the metrics (``evaluate --data``)."""

    checked: str | None  # what was compared with what; None: not checked (``note`` says why)
    excluded: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "exact" / "near" -> split -> images
    images: list[dict[str, Any]] = field(default_factory=list)  # path, match, split, of, distance
    note: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Leakage | None:
        return None if not d else _build(cls, d)

    def summary(self) -> str:
        """``3 exact copies of training images, 1 near duplicate of a validation image`` (or ``none``)."""
        words = {"train": ("training image", "training images"), "val": ("validation image", "validation images")}
        parts = []
        for match, what in (("exact", ("exact copy", "exact copies")), ("near", ("near duplicate", "near duplicates"))):
            for split, n in (self.counts.get(match) or {}).items():
                if n:
                    of = words.get(split, (f"{split} image", f"{split} images"))
                    parts.append(f"{n} {what[n != 1]} of {'a ' + of[0] if n == 1 else of[1]}")
        return ", ".join(parts) or "none"

    def warning(self, n_left: int) -> str | None:
        """What a person must know (images left out, or what could not be checked), or None."""
        if self.excluded:
            return (
                f"{self.excluded} evaluated image{'s' if self.excluded != 1 else ''} left out of the metrics, the "
                f"run has seen them: {self.summary()}; the metrics are on the other {n_left} "
                "(metrics.json lists them under leakage)"
            )
        return self.note


@dataclass(frozen=True)
class PointApplied:
    """The operating point an evaluation applied (or fitted)."""

    spec: str
    temperature: float | None = None
    rule: dict[str, Any] | None = None
    description: str | None = None
    fitted: str | None = None  # how it was fitted: nested (cross-validated), or on what data
    level: str = "image"
    note: str | None = None
    warning: str | None = None  # fitted on too few images of its goal's class to show the goal is met


@dataclass(frozen=True)
class EvalMetrics:
    """One evaluation (``metrics.json``), typed."""

    created: str
    model: str
    data: str
    split: str
    n: int
    classes: list[str]
    argmax: Scores
    tuned: Scores | None = None
    baseline: Scores | None = None
    group_level: GroupLevel | None = None
    ood: OodResult | None = None
    operating_point: PointApplied | None = None
    temperature_nested: Calibration | None = None
    rows: int | None = None  # out-of-fold predictions (every image once per repeat)
    localisation: LocalisationMetrics | None = None  # lesion maps vs outlines (a run with a lesion head)
    leakage: Leakage | None = None  # evaluated images the run had seen, left out (evaluate --data)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable images
    warnings: list[str] = field(default_factory=list)  # what a person must know about these results
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the JSON as written

    @property
    def cross_validated(self) -> bool:
        return self.split == "cross-validation"

    @property
    def external(self) -> bool:
        """Evaluated on labelled images given with ``--data`` (folders, a glob, a CSV), not a prepared split."""
        return self.split == "external"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalMetrics:
        argmax = Scores.from_dict(d["argmax"])
        assert argmax is not None, "metrics without argmax results"
        op = d.get("operating_point")
        return cls(
            created=str(d.get("created", "")),
            model=str(d.get("model", "")),
            data=str(d.get("data", "")),
            split=str(d.get("split", "")),
            n=int(d["n"]),
            classes=list(d["classes"]),
            argmax=argmax,
            tuned=Scores.from_dict(d.get("tuned")),
            baseline=Scores.from_dict(d.get("baseline")),
            group_level=GroupLevel.from_dict(d.get("group_level")),
            ood=OodResult.from_dict(d.get("ood")),
            operating_point=_build(PointApplied, op) if op else None,
            temperature_nested=_build(Calibration, d["temperature_nested"]) if d.get("temperature_nested") else None,
            rows=d.get("rows"),
            localisation=LocalisationMetrics.from_dict(d.get("localisation")),
            leakage=Leakage.from_dict(d.get("leakage")),
            skipped=[(s["path"], s["reason"]) for s in d.get("skipped") or []],
            warnings=[str(w) for w in d.get("warnings") or []],
            raw=d,
        )

    @classmethod
    def read(cls, path: str | Path) -> EvalMetrics:
        """Read a ``metrics.json``."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        """The JSON as written by ``evaluate``."""
        return self.raw


def format_value(v: float | None, digits: int = 3) -> str:
    """A metric for people: fixed decimals, ``n/a`` when undefined."""
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_with_ci(v: float | None, ci: Interval | None, digits: int = 3) -> str:
    """A metric with its interval, the one style of reports and the terminal: ``0.912 (0.880–0.940)``."""
    return format_value(v, digits) + (f" ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})" if ci else "")
