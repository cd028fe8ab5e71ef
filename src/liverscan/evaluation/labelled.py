"""Labelled images to evaluate: a prepared dataset's split, or labelled folders / a ``{label}`` glob / a CSV.

Labelled images given directly are *external*: not a split of a prepared dataset.  A CSV's group column
(found as ``prepare`` finds it, or named by ``group_column``) or ``group_regex`` makes their patients, so the
bootstrap resamples patients and the results are also given per patient, as for prepared data.
"""

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

    def subset(self, keep: np.ndarray) -> LabelledImages:
        """The images where ``keep`` is true (a boolean mask), every per-image field alike."""
        idx = np.flatnonzero(keep)
        return LabelledImages(
            self.x[idx],
            self.y[idx],
            [self.paths[i] for i in idx],
            self.source,
            self.skipped,
            None if self.sources is None else [self.sources[i] for i in idx],
            None if self.groups is None else self.groups[idx],
            None if self.rows is None else [self.rows[i] for i in idx],
            self.manifest,
        )


def load_labelled(
    run: LoadedRun,
    data: str | Path | None,
    split: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    group_column: str = "",
    group_regex: str = "",
) -> LabelledImages:
    """Images + labels from a prepared split, or from labelled folders / a glob / a CSV (patients from the CSV's
    ``group_column``, found by its name when empty, or from ``group_regex`` on the path, as in ``prepare``)."""
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
    return _load_sources(run, str(data), max_pixels, group_column, group_regex)


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _load_sources(run: LoadedRun, spec: str, max_pixels: int, group_column: str, group_regex: str) -> LabelledImages:
    import re

    from liverscan.core.classmap import map_labels
    from liverscan.core.config import SourceSpec
    from liverscan.core.images import load_image
    from liverscan.core.sources import detect_kind, explicit_group, scan_sources

    source = SourceSpec(spec, group_column=group_column)
    if detect_kind(source) == "csv":
        source.name = Path(spec).name  # the CSV names the source, not the folder it lies in
    try:
        regex = re.compile(group_regex) if group_regex else None
    except re.error as exc:
        raise DataError(f"invalid group regex {group_regex!r}: {exc}") from None
    candidates, _, _ = scan_sources([source])
    class_map = dict(run.card.class_map or {})
    class_map.update({c: c for c in run.classes})
    label_to_class = map_labels(
        [c.source_label for c in candidates],
        class_map,
        how_to_map=f"This model knows the classes {', '.join(run.classes)} and its card's class map; rename the "
        "folders (or CSV labels) to those names, or map them with liverscan prepare --map CATEGORY=CLASS and "
        "evaluate the prepared folder.",
    )
    xs, ys, paths, groups, skipped = [], [], [], [], []
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
        groups.append(explicit_group(c, regex))
    if not xs:
        raise DataError(f"{spec}: no readable labelled images")
    source_of = {c.path: c.source for c in candidates}
    # patients as prepare names them (source/value, re/value); an image without one is a case of its own
    by_patient = np.array([g or f"image {i}" for i, g in enumerate(groups)], dtype=object) if any(groups) else None
    return LabelledImages(np.stack(xs), np.array(ys), paths, spec, skipped, [source_of[p] for p in paths], by_patient)
