"""Reading a prepared directory: manifest rows, classes and decoded arrays."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import CACHE, MANIFEST, SUMMARY
from liverscan.core.errors import ImageDecodeError, RunDirError
from liverscan.core.fileio import read_csv
from liverscan.core.images import DECODER, DEFAULT_MAX_PIXELS, load_image


@dataclass
class Split:
    """Images of one split: uint8 arrays (N, S, S, 3), integer labels, paths."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    groups: np.ndarray | None = None  # group (near-duplicate cluster, patient) of each image


_PREPARE_AGAIN = "prepare the dataset again (liverscan prepare ... --overwrite)"


def _reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return (str(exc) or exc.__class__.__name__).splitlines()[0]


class PreparedData:
    """A ``prepare`` output directory."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not (self.dir / MANIFEST).is_file():
            raise RunDirError(f"{self.dir}: not a prepared dataset (no {MANIFEST}); prepare it first")
        try:
            self.rows = read_csv(self.dir / MANIFEST)
        except (UnicodeDecodeError, csv.Error, OSError) as exc:
            raise RunDirError(f"{self.dir / MANIFEST}: unreadable ({_reason(exc)}); {_PREPARE_AGAIN}") from None
        if self.rows and not {"path", "class", "split"} <= set(self.rows[0]):
            raise RunDirError(f"{self.dir / MANIFEST}: not a liverscan manifest (no path, class and split columns)")
        summary_path = self.dir / SUMMARY
        try:
            self.summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        except (UnicodeDecodeError, ValueError, OSError) as exc:
            raise RunDirError(f"{summary_path}: unreadable ({_reason(exc)}); {_PREPARE_AGAIN}") from None
        if not isinstance(self.summary, dict):
            raise RunDirError(f"{summary_path}: not a liverscan summary (not a JSON object); {_PREPARE_AGAIN}")
        self.classes: list[str] = self.summary.get("classes") or sorted({r["class"] for r in self.rows})
        self.manifest_hash: str = self.summary.get("manifest_hash", "")
        self._cache: np.ndarray | None = None

    def cache(self, size: int) -> np.ndarray | None:
        """The decoded-array cache, if present, made at ``size`` and by today's decoding rules (a cache written
        under other rules is passed over: the images are decoded again, so a model sees today's pixels)."""
        path = self.dir / CACHE
        if self._cache is None and path.is_file() and self.summary.get("decoder", 1) == DECODER:
            try:
                with open(path, "rb") as fh:
                    if fh.read(6) != b"\x93NUMPY":
                        raise ValueError("not a NumPy .npy file")
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise RunDirError(f"{path}: corrupt decoded-image cache ({_reason(exc)}); {_PREPARE_AGAIN}") from None
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
                raise RunDirError(f"{path}: not a decoded-image cache (no uint8 image array); {_PREPARE_AGAIN}")
            if arr.shape == (len(self.rows), size, size, 3):
                self._cache = arr
        return self._cache

    def split(self, name: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Split:
        """Load one split ("train", "val", "test", or "all" images) into memory at ``size``."""
        idx = [i for i, r in enumerate(self.rows) if name == "all" or r["split"] == name]
        cache = self.cache(size)
        if cache is not None:
            x = np.asarray(cache[idx])
        else:
            x = np.zeros((len(idx), size, size, 3), np.uint8)
            for k, i in enumerate(idx):
                try:
                    x[k] = load_image(self.rows[i]["path"], size=size, max_pixels=max_pixels)
                except ImageDecodeError as exc:
                    raise RunDirError(f"prepared image no longer readable: {exc}") from None
        lookup = {c: i for i, c in enumerate(self.classes)}
        y = np.array([lookup[self.rows[i]["class"]] for i in idx], dtype=np.int64)
        groups = np.array([self.rows[i].get("group") or self.rows[i]["path"] for i in idx], dtype=object)
        return Split(x, y, [self.rows[i]["path"] for i in idx], groups)


def class_weights(labels: list[str], classes: list[str]) -> dict[str, float]:
    """w_i = n_total / (n_classes * n_i) on the given labels (the paper's formula).

    This is scikit-learn's "balanced" weighting; classes absent from ``labels``
    get weight 0 and are left out of n_classes.
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = [c for c in classes if c in set(labels)]
    if not present:
        return {c: 0.0 for c in classes}
    weights = compute_class_weight("balanced", classes=np.array(present), y=np.array(labels))
    lookup = dict(zip(present, weights.tolist()))
    return {c: float(lookup.get(c, 0.0)) for c in classes}
