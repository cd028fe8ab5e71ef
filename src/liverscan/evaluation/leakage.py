"""Evaluated images the run has seen: exact copies (the same file bytes, by the SHA-256 in the run's manifest)
and near duplicates (perceptual hashes within ``data.near_duplicate_distance`` bits, as ``prepare`` links
frames of one scan) of its training and validation images - every image of its prepared dataset for a
cross-validated run, which is refit on all of them.

``evaluate --data`` leaves them out of the metrics and records them in ``metrics.json`` (``leakage``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core.artifacts import LoadedRun
from liverscan.core.errors import DataError, LiverscanError
from liverscan.evaluation.labelled import LabelledImages

#: the run's images an evaluation must not contain, by split (a cross-validated run: every image)
SEEN_SPLITS = ("train", "val")


def needs_check(run: LoadedRun, data: str | Path | None, cross_validated: bool) -> bool:
    """Whether evaluating ``data`` can meet images the run has seen: any data but its own prepared dataset
    (whose splits prepare keeps apart), and any data for a cross-validated run."""
    if data is None:
        return cross_validated
    own = run.card.prepared_dir
    return cross_validated or not own or Path(data).resolve() != Path(own).resolve()


def find_seen(
    run: LoadedRun, ds: LabelledImages, max_distance: int, max_pixels: int, cross_validated: bool
) -> dict[str, Any]:
    """The ``leakage`` section: what was checked, the images of ``ds`` the run has seen (path, match, split,
    the run's image, hash distance), counts by match and split, and ``excluded`` (their number)."""
    from liverscan.core.dataset import PreparedData
    from liverscan.core.dedup import min_distances, perceptual_hash
    from liverscan.core.fileio import sha256_bytes

    try:
        prepared = PreparedData(run.card.prepared_dir or "")
    except LiverscanError:
        return {
            "checked": None,
            "excluded": 0,
            "note": "not checked for images the run has seen: its prepared dataset "
            f"({run.card.prepared_dir}) is not available",
        }
    seen = "every image of" if cross_validated else "the training and validation images of"
    splits = ("all",) if cross_validated else SEEN_SPLITS
    rows = [r for r in prepared.rows if cross_validated or r["split"] in SEEN_SPLITS]
    by_hash = {r["content_hash"]: r for r in reversed(rows)}  # the first row of a hash wins

    matches: dict[int, dict[str, Any]] = {}
    for i, path in enumerate(ds.paths):
        digest = ds.rows[i].get("content_hash") if ds.rows else None
        if not digest:
            try:
                digest = sha256_bytes(Path(path).read_bytes())
            except OSError:
                continue
        row = by_hash.get(digest)
        if row is not None:
            matches[i] = _match(path, "exact", row, 0, cross_validated)

    checked = f"exact copies (SHA-256) of {seen} {prepared.dir}"
    note = None
    rest = [i for i in range(len(ds.paths)) if i not in matches]
    if max_distance >= 0 and rest:
        try:
            ref_paths: list[str] = []
            ref_hashes: list[int] = []
            for split in splits:
                part = prepared.split(split, run.image_size, max_pixels)
                ref_paths += part.paths
                ref_hashes += [perceptual_hash(a) for a in part.x]
        except LiverscanError as exc:
            note = f"near duplicates not checked: {exc}"
        else:
            row_of = {r["path"]: r for r in prepared.rows}
            hashes = [perceptual_hash(ds.x[i]) for i in rest]
            dist, nearest = min_distances(hashes, ref_hashes)
            for i, d, j in zip(rest, dist.tolist(), nearest.tolist()):
                if d <= max_distance:
                    matches[i] = _match(ds.paths[i], "near", row_of[ref_paths[j]], int(d), cross_validated)
            checked += f" and near duplicates (perceptual hash within {max_distance} of 64 bits)"
    counts = Counter((m["match"], m["split"]) for m in matches.values())
    return {
        "checked": checked,
        "excluded": len(matches),
        "counts": {match: {split: counts[(match, split)] for split in ("train", "val")} for match in ("exact", "near")},
        "images": [matches[i] for i in sorted(matches)],
        "note": note,
    }


def _match(path: str, match: str, row: dict[str, str], distance: int, cross_validated: bool) -> dict[str, Any]:
    return {
        "path": path,
        "match": match,
        "split": "train" if cross_validated else row["split"],  # a cross-validated run is refit on every image
        "of": row["path"],
        "distance": distance,
    }


def leave_out_seen(ds: LabelledImages, leakage: dict[str, Any], data: str | Path) -> LabelledImages:
    """``ds`` without the images ``leakage`` found; none left is an error naming the data."""
    if not leakage["excluded"]:
        return ds
    seen = {m["path"] for m in leakage["images"]}
    keep = np.array([p not in seen for p in ds.paths], bool)
    if not keep.any():
        from liverscan.evaluation.results import Leakage

        found = Leakage.from_dict(leakage)
        assert found is not None
        raise DataError(
            f"{data}: every evaluated image is one the run has seen ({found.summary()}); "
            "nothing held out is left to evaluate"
        )
    return ds.subset(keep)
