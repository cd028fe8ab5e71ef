"""One configuration schema for every stage, with the published method's defaults.

The schema is a tree of dataclasses. It loads from YAML (unknown keys are
rejected with a message naming them), takes ``section.key=value`` overrides from
the command line, and is written as ``config.yaml`` into every output directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from liverscan.errors import ConfigError

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
    group_regex: str = ""  # regex on the path; first capture group (or whole match) = group
    keep_conflicts: bool = False
    cache_arrays: bool = True
    workers: int = 0  # decoding threads; 0 = number of CPUs


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

    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    dropout: float = 0.5
    dense_units: int = 128


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
    seed: int = 42


@dataclass
class EvalConfig:
    """Evaluation defaults."""

    split: str = "test"
    bootstrap: int = 1000
    ece_bins: int = 15
    review_confidence: float = 0.6


@dataclass
class Config:
    """The whole configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from liverscan.fileio import write_text_atomic

        write_text_atomic(path, self.to_yaml())


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
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
    """Build a Config from a (possibly partial) nested mapping."""
    return _from_dict(Config, data or {})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then a YAML file, then ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: configuration file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc.__class__.__name__})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        data = loaded or {}
    cfg = config_from_dict(data)
    return apply_overrides(cfg, overrides or [])


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
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return config_from_dict(data)


def set_value(cfg: Config, dotted: str, value: Any) -> Config:
    """Set one value (used by CLI flags) with the same validation as YAML."""
    data = cfg.to_dict()
    section, key = dotted.split(".", 1)
    data[section][key] = value
    return config_from_dict(data)
