"""Pooled backbone features, computed once per image (and augmented view) and cached in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from liverscan.core.config import Config
from liverscan.core.dataset import Split
from liverscan.core.fileio import atomic_path, write_json_atomic
from liverscan.core.images import DECODER
from liverscan.core.model import pad_batch
from liverscan.training.loop import Reporter


def compute_features(
    extractor,
    images: np.ndarray,
    augmenter=None,
    views: int = 1,
    batch_size: int = 128,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Pooled backbone features, shape (views, N, F) with augmentation or (N, F) without.

    ``extractor`` maps pixels to features (see :func:`liverscan.core.model.feature_extractor`);
    batches keep one shape so the backbone graph is traced once.
    """
    from liverscan.training.augment import augment_batch

    n = len(images)
    n_views = views if augmenter is not None else 1
    jobs = [(v, start) for v in range(n_views) for start in range(0, n, batch_size)]
    out = None
    for k, (v, start) in enumerate(jobs):
        batch = images[start : start + batch_size]
        xb = augment_batch(augmenter, batch) if augmenter is not None else np.asarray(batch, np.float32)
        feats = np.asarray(extractor.predict_on_batch(pad_batch(xb, batch_size)), dtype=np.float32)[: len(batch)]
        if out is None:
            out = np.zeros((n_views, n, feats.shape[-1]), np.float32)
        out[v, start : start + len(batch)] = feats
        if reporter:
            reporter.advance(k + 1, len(jobs))
    assert out is not None
    return out if augmenter is not None else out[0]


def cached_features(model, train: Split, val: Split, augmenter, cfg: Config, folder: Path, reporter: Reporter):
    """Train view features and validation features, computed or reused from an interrupted run."""
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(cfg, cfg.train.views, n_train=len(train.y), n_val=len(val.y))
    meta = folder / "features.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        return np.load(folder / "train.npy"), np.load(folder / "val.npy")
    from liverscan.core.model import feature_extractor

    extractor = feature_extractor(model)
    reporter.phase(f"Backbone features: {cfg.train.views} augmented views of {len(train.y)} training images", None)
    ftrain = compute_features(extractor, train.x, augmenter, cfg.train.views, reporter=reporter)
    reporter.phase(f"Backbone features: {len(val.y)} validation images", None)
    fval = compute_features(extractor, val.x, None, reporter=reporter)
    save_cached(folder, {"train.npy": ftrain, "val.npy": fval}, meta, key)
    return ftrain, fval


def cache_key(cfg: Config, views: int, **counts: int) -> dict:
    """What cached features were computed from; a resumed run reuses them only when this is unchanged."""
    return {
        **counts,
        "views": views,
        "seed": cfg.train.seed,
        "weights": cfg.model.weights,
        "size": cfg.preprocess.image_size,
        "decoder": DECODER,
        "features": cfg.model.feature_set,
        "flip_average": cfg.model.flip_average,
        "augment": vars(cfg.augment),
    }


def save_cached(folder: Path, arrays: dict[str, np.ndarray | None], meta: Path, key: dict) -> None:
    """Write feature arrays atomically, then the key that says what they were computed from."""
    for name, arr in arrays.items():
        if arr is not None:
            with atomic_path(folder / name, suffix=".tmp.npy") as tmp:  # NumPy adds .npy when missing
                np.save(tmp, arr)
    write_json_atomic(meta, key)
