"""One configuration schema for every stage, with the published method's defaults.

The schema is a tree of dataclasses. It loads from YAML (unknown keys are
rejected with a message naming them), takes ``section.key=value`` overrides from
the command line, and is written as ``config.yaml`` into every output directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from liverscan.core.defaults import REVIEW_CONFIDENCE as REVIEW_CONFIDENCE  # defined there: cheap for --help
from liverscan.core.errors import ConfigError
from liverscan.core.sweeps import SWEEP_CORRELATION

#: Source category -> final class, matched case-insensitively.  Consolidates the
#: usual dataset category names into the three-class scheme of the paper.
DEFAULT_CLASS_MAP: dict[str, str] = {
    "normal": "normal",
    "healthy": "normal",
    "fatty": "fatty",
    "steatosis": "fatty",
    "nafld": "fatty",
    "benign": "tumor",
    "malignant": "tumor",
    "hcc": "tumor",
    "hemangioma": "tumor",
    "cyst": "tumor",
    "metastasis": "tumor",
    "mass": "tumor",
    "tumor": "tumor",
    "tumour": "tumor",
}

DEFAULT_CLASSES: list[str] = ["normal", "fatty", "tumor"]


@dataclass
class SourceSpec:
    """One input source for ``prepare``: a folder, a ``{label}`` glob or a CSV."""

    path: str
    name: str = ""
    kind: str = "auto"  # auto | folder | glob | csv
    path_column: str = ""  # CSV only; auto-detected when empty
    label_column: str = ""
    group_column: str = ""


@dataclass
class DataConfig:
    """Dataset consolidation, de-duplication and splitting."""

    sources: list[SourceSpec] = field(default_factory=list)
    class_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASS_MAP))
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    train_ratio: float = 0.70
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    seed: int = 42
    near_duplicate_distance: int = 6  # perceptual-hash Hamming distance (of 64 bits)
    # frames of one sweep share a group: images of one label and size whose 16 x 16 thumbnails correlate at least
    # this much (above 1: off); chosen by benchmarks/grouping.py (see liverscan.core.sweeps)
    sweep_correlation: float = SWEEP_CORRELATION
    group_regex: str = ""  # regex on the path; first capture group (or whole match) = group
    keep_conflicts: bool = False
    cache_arrays: bool = True
    workers: int = 0  # decoding threads; 0 = number of CPUs
    # the lesion annotation of each image, e.g. "masks/{stem}.png" (polygon JSON or mask image; placeholders
    # {stem} {name} {parent} {kind}; relative to the image's folder); "": the xu layout is found automatically
    masks: str = ""


@dataclass
class PreprocessConfig:
    """How files become model inputs."""

    image_size: int = 160
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb limit
    # Pixel scaling inside the model: MobileNetV2's ImageNet weights were trained
    # on inputs scaled to [-1, 1] (x / 127.5 - 1), so that is what the model uses.
    scaling: str = "mobilenet_v2"


@dataclass
class ModelConfig:
    """The published architecture: frozen MobileNetV2 + small dense head."""

    backbone: str = "mobilenet_v2"  # the only backbone implemented; validated
    # linear: logistic regression on the pooled features (the linear probe, C by inner group CV) - chosen by
    # cross-validation on the shared data; mlp: the paper's Dropout -> Dense 128 ReLU -> Dense head
    head: str = "linear"
    alpha: float = 1.0
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    dropout: float = 0.5
    dense_units: int = 128
    # the pooled features the head reads: last (the last stage, 1280) | multistage (three stages' pooled outputs
    # concatenated: block_6_expand_relu, block_13_expand_relu, out_relu; 2048) | auto: multistage for the linear
    # head (chosen by cross-validation on the shared data), last for the paper's mlp head (as published)
    features: str = "auto"
    flip_average: bool = False  # features = mean of the image's and its horizontal mirror's

    @property
    def feature_set(self) -> str:
        """``features`` with ``auto`` resolved for this head."""
        if self.features != "auto":
            return self.features
        return "multistage" if self.head == "linear" else "last"


@dataclass
class AugmentConfig:
    """Training-only augmentation (the paper's settings)."""

    zoom: float = 0.10
    brightness: float = 0.20
    horizontal_flip: bool = True
    rotation_degrees: float = 15.0


@dataclass
class TrainConfig:
    """Optimisation, loss, early stopping and the fast cached-feature path."""

    mode: str = "cached"  # cached (backbone features computed once) | fit (plain per-epoch Keras fit)
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    loss: str = "weighted"  # weighted | unweighted | focal
    focal_gamma: float = 2.0
    early_stopping_patience: int = 20
    lr_factor: float = 0.5
    lr_patience: int = 10
    views: int = 4  # augmented views per training image in cached mode
    fine_tune_blocks: int = 0  # >0: second stage unfreezing the top N inverted-residual blocks
    fine_tune_learning_rate: float = 1e-5
    fine_tune_epochs: int = 10
    checkpoint_seconds: float = 2.0  # write a resumable checkpoint at most this often (and at the end)
    export_runtime: str = "tflite"  # liverscan train then writes the checked fast runtime: tflite | onnx | none
    seed: int = 42
    folds: int = 0  # >= 2: group-aware stratified k-fold cross-validation (then a refit on all images)
    repeats: int = 1  # cross-validation repeats with different fold assignments


@dataclass
class EvalConfig:
    """Evaluation defaults."""

    split: str = "test"
    bootstrap: int = 1000
    ece_bins: int = 15
    review_confidence: float = REVIEW_CONFIDENCE
    group_rule: str = "mean"  # frames -> one answer per patient / study: mean | max | vote
    operating_point_level: str = "image"  # fit evaluate --fit-operating-point on images or on patients (group)


@dataclass
class OODConfig:
    """The out-of-distribution guard fitted with every model and applied to every prediction."""

    enabled: bool = True
    method: str = "knn"  # knn (k-th nearest training image, L2-normalised features) | mahalanobis
    k: int = 10
    retention: float = 0.95  # share of held-back in-distribution images that must pass


@dataclass
class LesionConfig:
    """The lesion localisation head, trained whenever the prepared data has lesion outlines.

    A decoder on the backbone's multi-scale features (:mod:`liverscan.core.lesion`); the backbone's blocks from
    ``fine_tune_from`` on are tuned with it (``""``: the backbone stays frozen). Normals and other lesion-free
    classes teach "no lesion"; tumour images without an outline are left out of this head's training.
    """

    head: str = "auto"  # auto: train it when the data has lesion outlines | off
    # 40 chosen by cross-validation on the shared outlines over 20 (pointing 0.748 vs 0.696, Dice 0.460 vs 0.417,
    # false lesions 7.9 vs 3.9 %; benchmarks/localisation.py): the head was undertrained at 20
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 3e-4
    width: int = 32  # decoder channels on its fine half (twice that on the coarse half)
    # first backbone layer tuned with the decoder ("" keeps it frozen); block_6_expand chosen by cross-validation on
    # the shared outlines over block_3_expand (pointing 0.700 vs 0.680, Dice 0.424 vs 0.412, false lesions 1.3 vs 6.6 %)
    fine_tune_from: str = "block_6_expand"
    # > 1: trained on crops of the image upsampled 1 to zoom times, and run on the image and on it upsampled to every
    # multiple up to zoom times (maps averaged): small lesions cover more feature cells, at zoom**2 times the head's
    # compute in each extra pass. 2 chosen by cross-validation on the shared outlines over 1 (the reproduction's
    # folds: pointing 0.787 vs 0.700, Dice 0.486 vs 0.453, false lesions 1.3 vs 7.9 %)
    zoom: int = 2
    # with zoom > 1: the head runs on the image upsampled to every multiple up to max(zoom, run_zoom) (training is
    # unchanged: crops at 1 to zoom times). 3 chosen by nested cross-validation on the shared outlines over 2 (the
    # same fold models, with flip, each under its rule: pointing 0.852 vs 0.830, mean Dice 0.625 vs 0.631, false
    # lesions 3.9 vs 3.9 %; the 3x pass costs 9 times the head's compute at 1x)
    run_zoom: int = 3
    # the loss's soft Dice: image (each lesion image's own, averaged: a small lesion weighs as much as a large one) |
    # batch (one Dice over the whole batch). image chosen by cross-validation on the shared outlines over batch (the
    # reproduction's folds: pointing 0.811 vs 0.787, Dice 0.615 vs 0.562 under each head's rule, false lesions 5.3 vs
    # 2.6 %)
    dice: str = "image"
    # every pass also runs on the mirror image, its map mirrored back into the mean (training is unchanged; the head's
    # compute in predict doubles). On chosen by cross-validation on the shared outlines (the reproduction's folds, the
    # same models, run_zoom 2: pointing 0.830 vs 0.811, mean Dice 0.631 vs 0.615, false lesions 3.9 vs 5.3 %)
    flip: bool = True
    # what the map shows (liverscan.core.lesion.LesionRule): a lesion is found when the map's peak reaches threshold,
    # or when the classifier gives the lesion classes at least gate (0: never); its pixels are
    # p >= max(floor, extent x peak) (extent 0: p >= threshold). Chosen by nested cross-validation on the
    # reproduction's out-of-fold maps (picked on four folds, scored on the fifth, false lesions <= 5 % there): with
    # zoom 2, run_zoom 3 and flip, threshold 0.7 in every fold (gate 0.9, extent 0.5, floor 0.2): mean Dice 0.625,
    # false lesions on 3.9 % of normals (0.6 on the maps of zoom 2 alone, without flip)
    threshold: float = 0.7
    min_area: float = 0.002  # regions smaller than this share of the image are dropped (the peak's own is kept)
    extent: float = 0.5
    floor: float = 0.2
    gate: float = 0.9


@dataclass
class Config:
    """The whole configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ood: OODConfig = field(default_factory=OODConfig)
    lesion: LesionConfig = field(default_factory=LesionConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from liverscan.core.fileio import write_text_atomic

        write_text_atomic(path, self.to_yaml())


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown configuration key(s): {names} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, hints[key], sub)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build a Config from a (possibly partial) nested mapping, validated."""
    return validate(_from_dict(Config, data or {}))


BACKBONES = ("mobilenet_v2",)
SCALINGS = ("mobilenet_v2",)
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MODES = ("cached", "fit")
LOSSES = ("weighted", "unweighted", "focal")
LESION_HEADS = ("auto", "off")
#: upper bounds of the counts that size work or memory: a value past them is a typo, not a setting
LIMITS: dict[str, int] = {
    "data.workers": 1024,
    "model.dense_units": 65_536,
    "train.epochs": 1_000_000,
    "train.fine_tune_epochs": 1_000_000,
    "train.batch_size": 4096,
    "train.views": 64,
    "eval.bootstrap": 100_000,
    "eval.ece_bins": 1000,
    "ood.k": 1000,
    "lesion.epochs": 100_000,
    "lesion.batch_size": 1024,
    "lesion.width": 1024,
}


def validate(cfg: Config) -> Config:
    """Check every value's range once, when the configuration is built; raises ConfigError naming the key.

    Choices are owned by the modules that use them (imported here, when a configuration is built)."""
    from liverscan.core.aggregate import RULES
    from liverscan.core.artifacts import EXPORT_FORMATS, SPLITS
    from liverscan.core.guard import METHODS
    from liverscan.core.model import FEATURE_SETS, HEADS
    from liverscan.core.operating_point import LEVELS

    problems: list[str] = []

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            problems.append(f"{key} must be {what} (got {value!r})")

    def finite(v: float) -> bool:
        return math.isfinite(v)

    d, p, m, a, t, e = cfg.data, cfg.preprocess, cfg.model, cfg.augment, cfg.train, cfg.eval
    ratios = (d.train_ratio, d.val_ratio, d.test_ratio)
    for key, v in zip(("data.train_ratio", "data.val_ratio", "data.test_ratio"), ratios):
        need(finite(v) and v >= 0, key, "a finite number >= 0", v)
    if all(finite(v) and v >= 0 for v in ratios):
        need(d.train_ratio > 0, "data.train_ratio", "> 0 (training needs images)", d.train_ratio)
    need(-1 <= d.near_duplicate_distance <= 64, "data.near_duplicate_distance", "in -1..64", d.near_duplicate_distance)
    need(
        finite(d.sweep_correlation) and d.sweep_correlation > 0,
        "data.sweep_correlation",
        "a number > 0 (above 1: off)",
        d.sweep_correlation,
    )
    need(d.workers >= 0, "data.workers", ">= 0 (0 = one per CPU)", d.workers)
    need(
        len(d.classes) >= 2 and len(set(d.classes)) == len(d.classes),
        "data.classes",
        "at least two distinct class names",
        d.classes,
    )
    if d.group_regex:
        try:
            re.compile(d.group_regex)
        except re.error as exc:
            problems.append(f"data.group_regex is not a valid regular expression ({exc})")
    if d.masks:
        from liverscan.core.annotations import pattern_problem

        problem = pattern_problem(d.masks)
        if problem:
            problems.append(f"data.masks {problem}")
    need(32 <= p.image_size <= 1024, "preprocess.image_size", "in 32..1024", p.image_size)
    need(
        p.max_pixels >= p.image_size * p.image_size,
        "preprocess.max_pixels",
        "at least image_size squared",
        p.max_pixels,
    )
    need(p.scaling in SCALINGS, "preprocess.scaling", f"one of {', '.join(SCALINGS)}", p.scaling)
    need(m.backbone in BACKBONES, "model.backbone", f"one of {', '.join(BACKBONES)}", m.backbone)
    need(m.head in HEADS, "model.head", f"one of {', '.join(HEADS)}", m.head)
    need(
        m.features in ("auto", *FEATURE_SETS), "model.features", f"auto or one of {', '.join(FEATURE_SETS)}", m.features
    )
    need(t.folds == 0 or 2 <= t.folds <= 20, "train.folds", "0 (one split) or 2..20", t.folds)
    need(1 <= t.repeats <= 20, "train.repeats", "in 1..20", t.repeats)
    need(m.alpha in ALPHAS, "model.alpha", f"one of {', '.join(map(str, ALPHAS))}", m.alpha)
    need(bool(m.weights.strip()), "model.weights", "imagenet, none or a weights file path", m.weights)
    need(finite(m.dropout) and 0 <= m.dropout < 1, "model.dropout", "in [0, 1)", m.dropout)
    need(m.dense_units >= 1, "model.dense_units", ">= 1", m.dense_units)
    need(finite(a.zoom) and 0 <= a.zoom < 1, "augment.zoom", "in [0, 1)", a.zoom)
    need(finite(a.brightness) and 0 <= a.brightness < 1, "augment.brightness", "in [0, 1)", a.brightness)
    need(
        finite(a.rotation_degrees) and 0 <= a.rotation_degrees <= 180,
        "augment.rotation_degrees",
        "in 0..180",
        a.rotation_degrees,
    )
    need(t.mode in MODES, "train.mode", f"one of {', '.join(MODES)}", t.mode)
    need(
        t.export_runtime in (*EXPORT_FORMATS, "none"),
        "train.export_runtime",
        f"one of {', '.join(EXPORT_FORMATS)} or none",
        t.export_runtime,
    )
    need(t.loss in LOSSES, "train.loss", f"one of {', '.join(LOSSES)}", t.loss)
    for key in ("epochs", "batch_size", "views", "early_stopping_patience", "lr_patience"):
        v = getattr(t, key)
        need(v >= 1, f"train.{key}", ">= 1", v)
    for key in ("learning_rate", "fine_tune_learning_rate"):
        v = getattr(t, key)
        need(finite(v) and 0 < v <= 1, f"train.{key}", "a finite number in (0, 1]", v)
    need(finite(t.beta_1) and 0 <= t.beta_1 < 1, "train.beta_1", "in [0, 1)", t.beta_1)
    need(finite(t.beta_2) and 0 <= t.beta_2 < 1, "train.beta_2", "in [0, 1)", t.beta_2)
    need(finite(t.focal_gamma) and t.focal_gamma >= 0, "train.focal_gamma", ">= 0", t.focal_gamma)
    need(finite(t.lr_factor) and 0 < t.lr_factor <= 1, "train.lr_factor", "in (0, 1]", t.lr_factor)
    need(0 <= t.fine_tune_blocks <= 16, "train.fine_tune_blocks", "in 0..16", t.fine_tune_blocks)
    need(t.fine_tune_epochs >= 0, "train.fine_tune_epochs", ">= 0", t.fine_tune_epochs)
    need(
        finite(t.checkpoint_seconds) and t.checkpoint_seconds >= 0,
        "train.checkpoint_seconds",
        ">= 0",
        t.checkpoint_seconds,
    )
    les = cfg.lesion
    need(les.head in LESION_HEADS, "lesion.head", f"one of {', '.join(LESION_HEADS)}", les.head)
    for key in ("epochs", "batch_size", "width"):
        v = getattr(les, key)
        need(v >= 1, f"lesion.{key}", ">= 1", v)
    need(
        finite(les.learning_rate) and 0 < les.learning_rate <= 1, "lesion.learning_rate", "in (0, 1]", les.learning_rate
    )
    need(les.zoom in (1, 2, 3, 4), "lesion.zoom", "1, 2, 3 or 4", les.zoom)
    need(les.run_zoom in (0, 1, 2, 3, 4), "lesion.run_zoom", "0 (zoom), 1, 2, 3 or 4", les.run_zoom)
    need(les.dice in ("batch", "image"), "lesion.dice", "batch or image", les.dice)
    need(finite(les.extent) and 0 <= les.extent < 1, "lesion.extent", "in [0, 1)", les.extent)
    need(finite(les.floor) and 0 <= les.floor < 1, "lesion.floor", "in [0, 1)", les.floor)
    need(finite(les.gate) and 0 <= les.gate <= 1, "lesion.gate", "in [0, 1] (0: off)", les.gate)
    need(finite(les.threshold) and 0 < les.threshold < 1, "lesion.threshold", "in (0, 1)", les.threshold)
    need(finite(les.min_area) and 0 <= les.min_area < 1, "lesion.min_area", "in [0, 1)", les.min_area)
    need(
        e.split in (*SPLITS, "cv"), "eval.split", f"one of {', '.join(SPLITS)}, cv (out of fold: cross-validated runs)",
        e.split,
    )  # fmt: skip
    need(e.bootstrap >= 0, "eval.bootstrap", ">= 0", e.bootstrap)
    need(e.ece_bins >= 1, "eval.ece_bins", ">= 1", e.ece_bins)
    need(e.group_rule in RULES, "eval.group_rule", f"one of {', '.join(RULES)}", e.group_rule)
    need(
        not (e.operating_point_level == "group" and e.group_rule == "vote"),
        "eval.group_rule",
        "mean or max for a patient-level operating point (a vote has no threshold to fit)",
        e.group_rule,
    )
    need(
        e.operating_point_level in LEVELS,
        "eval.operating_point_level",
        f"one of {', '.join(LEVELS)}",
        e.operating_point_level,
    )
    need(
        finite(e.review_confidence) and 0 <= e.review_confidence <= 1,
        "eval.review_confidence",
        "in [0, 1]",
        e.review_confidence,
    )
    o = cfg.ood
    need(o.method in METHODS, "ood.method", f"one of {', '.join(METHODS)}", o.method)
    need(o.k >= 1, "ood.k", ">= 1", o.k)
    need(finite(o.retention) and 0.5 <= o.retention <= 1, "ood.retention", "in [0.5, 1]", o.retention)
    for dotted, most in LIMITS.items():
        section, key = dotted.split(".")
        v = getattr(getattr(cfg, section), key)
        need(v <= most, dotted, f"at most {most:,}", v)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then a YAML file, then ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: configuration file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{p}: is a directory, not a configuration file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file (not UTF-8)") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}: not valid YAML{where} ({exc.__class__.__name__})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data = loaded or {}
    cfg = config_from_dict(data)
    return apply_overrides(cfg, overrides or [])


def load_saved_config(path: str | Path) -> Config:
    """The configuration a run or a prepared dataset saved.  A damaged one is a damaged run directory (exit code
    1), not a usage error as a bad ``--config`` or ``--set`` is."""
    from liverscan.core.errors import RunDirError

    try:
        return load_config(path)
    except ConfigError as exc:
        message = str(exc)
        where = "" if message.startswith(str(path)) else f"{path}: "
        raise RunDirError(f"{where}{message} (the saved configuration of this run is damaged)") from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown configuration key(s): {dotted}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"unknown configuration key(s): {dotted}")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return config_from_dict(data)


def set_value(cfg: Config, dotted: str, value: Any) -> Config:
    """Set one value (used by CLI flags) with the same validation as YAML."""
    data = cfg.to_dict()
    section, key = dotted.split(".", 1)
    if section not in data or key not in data[section]:
        raise ConfigError(f"unknown configuration key(s): {dotted}")
    data[section][key] = value
    return config_from_dict(data)
