"""Mapping source categories onto final classes (case-insensitive)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from liverscan.core.errors import ConfigError, DataError


def normalise_map(mapping: dict[str, str]) -> dict[str, str]:
    """Lower-case, strip keys; values kept as written (class names)."""
    return {str(k).strip().lower(): str(v).strip() for k, v in mapping.items()}


def load_class_map(path: str | Path) -> dict[str, str]:
    """Read a YAML mapping ``category: class`` (or ``class: [categories]``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: class map file not found") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: class map must be a mapping of category: class")
    out: dict[str, str] = {}
    for k, v in data.items():
        if isinstance(v, list):  # class: [category, ...]
            for cat in v:
                out[str(cat)] = str(k)
        else:
            out[str(k)] = str(v)
    return out


def parse_map_options(items: Iterable[str]) -> dict[str, str]:
    """Parse ``category=class`` command-line items."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--map {item!r} must look like category=class")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def map_labels(labels: Iterable[str], mapping: dict[str, str], how_to_map: str | None = None) -> dict[str, str]:
    """Map every distinct label; raise DataError listing unmapped ones (``how_to_map`` replaces the advice)."""
    norm = normalise_map(mapping)
    result, missing = {}, []
    for label in sorted(set(labels)):
        key = label.strip().lower()
        if key in norm:
            result[label] = norm[key]
        else:
            missing.append(label)
    if missing and how_to_map:
        raise DataError("unmapped source categories: " + ", ".join(repr(m) for m in missing) + ". " + how_to_map)
    if missing:
        raise DataError(
            "unmapped source categories: "
            + ", ".join(repr(m) for m in missing)
            + ". Map them with --map CATEGORY=CLASS (e.g. --map "
            + f"{missing[0]}=tumor) or a --class-map YAML file of 'category: class' lines."
        )
    return result


def ordered_classes(present: Iterable[str], preferred: list[str]) -> list[str]:
    """Classes present in the data: configured order first, then the rest sorted."""
    present = set(present)
    return [c for c in preferred if c in present] + sorted(present - set(preferred))
