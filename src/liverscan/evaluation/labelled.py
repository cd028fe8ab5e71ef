"""Labelled images to evaluate: a prepared dataset's split, or labelled folders / a ``{label}`` glob / a CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import (
    MANIFEST,
    LoadedRun,
)
from liverscan.core.errors import DataError, ImageDecodeError, RunDirError
from liverscan.core.images import DEFAULT_MAX_PIXELS


@dataclass
class LabelledImages:
    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    source: str
    skipped: list[tuple[str, str]]
    sources: list[str] | None = None  # per image: the name of the source it came from
    groups: np.ndarray | None = None  # per image: its group from prepare (patient, near-duplicate cluster)
    rows: list[dict[str, str]] | None = None  # per image: its manifest row (a prepared dataset; annotations)
    manifest: list[dict[str, str]] | None = None  # every row of that manifest (which classes have outlines)


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
        row_of = {r["path"]: r for r in prepared.rows}
        return LabelledImages(
            s.x,
            remap[s.y],
            s.paths,
            f"{target} ({split})",
            [],
            [row_of[p].get("source", "") for p in s.paths],
            s.groups,
            [row_of[p] for p in s.paths],
            prepared.rows,
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
