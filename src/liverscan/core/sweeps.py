"""Frames of one sweep: images of one scan that look alike must share a fold.

A probe swept over the liver gives frames that differ a little from one to the next: too much for a perceptual
hash to call them near-duplicates, too little for one to be unseen when its neighbour was trained on.  What
frames of one sweep share is their layout - the fan, the depth and gain, where the organs lie - which a small
greyscale thumbnail keeps.  Two images of one label and one size are linked (:func:`sweep_pairs`) when each is
among the other's ``NEIGHBOURS`` most alike (their ``THUMBNAIL`` x ``THUMBNAIL`` thumbnails correlating most) and
they correlate at ``min_correlation`` or more; single linkage (:func:`liverscan.core.dedup.link_groups`) then puts
a whole sweep - a chain of frames, each most like the ones before and after it - in one group.  The mutual
neighbours keep the chains to sweeps: about 1 % of unrelated scans of one label and size correlate above 0.92 in
xu-liver, so linking every such pair would chain a large dataset into one group.  Files that carry an explicit group (a
patient or study column, ``--group-regex``) are left to it: it is the better source.

The threshold is chosen by measurement (``benchmarks/grouping.py``): out-of-fold estimates fall as the folds
stop splitting sweeps, then level off; :data:`SWEEP_CORRELATION` is where they level.  Single linkage over every
pair above it closed the same leaks in xu-liver but chained its 76 normal frames into 20 groups (the largest of
24), which took the classifier's out-of-fold balanced accuracy from 0.83 to 0.74 with no leak closed beyond.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

#: the side of the thumbnail two frames are compared by
THUMBNAIL = 16
#: the default ``data.sweep_correlation``: the loosest threshold before the out-of-fold estimates level off
SWEEP_CORRELATION = 0.92
#: how many most alike images of each image may be linked to it (mutually)
NEIGHBOURS = 2


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The ``THUMBNAIL`` x ``THUMBNAIL`` greyscale thumbnail of an image ``(H, W[, 3])`` (block means), as
    ``THUMBNAIL**2`` uint8 values (what :func:`sweep_pairs` compares; 256 bytes an image)."""
    from PIL import Image

    a = np.asarray(image)
    grey = a.mean(-1) if a.ndim == 3 else a.astype(np.float32)
    small = Image.fromarray(grey.astype(np.float32)).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8).ravel()


def _standardised(thumbs: np.ndarray) -> np.ndarray:
    x = np.asarray(thumbs, dtype=np.float32)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)  # a flat image correlates with nothing


def sweep_pairs(
    thumbs: Sequence[np.ndarray] | np.ndarray,
    keys: Sequence[Hashable],
    min_correlation: float = SWEEP_CORRELATION,
    neighbours: int = NEIGHBOURS,
    cells: int = 1 << 24,
) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of images with the same ``keys`` entry (label and size), each among the other's
    ``neighbours`` most alike of that key (thumbnail correlation, :func:`thumbnail`), correlating at
    ``min_correlation`` or more (above 1: none).  Compared within each key, in blocks of at most ``cells``
    correlations (memory stays bounded)."""
    if min_correlation > 1 or len(keys) < 2 or neighbours < 1:
        return []
    z = _standardised(np.stack([np.asarray(t).ravel() for t in thumbs]))
    buckets: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        buckets.setdefault(key, []).append(i)
    pairs: list[tuple[int, int]] = []
    for members in buckets.values():
        idx = np.asarray(members)
        if len(idx) < 2:
            continue
        k = min(neighbours, len(idx) - 1)
        near = np.zeros((len(idx), k), np.int64)  # positions in idx of each member's k most alike
        corr_near = np.zeros((len(idx), k), np.float32)
        step = max(1, cells // len(idx))
        for start in range(0, len(idx), step):
            corr = z[idx[start : start + step]] @ z[idx].T
            corr[np.arange(len(corr)), np.arange(start, start + len(corr))] = -np.inf  # not itself
            top = np.argpartition(-corr, k - 1, axis=1)[:, :k]
            near[start : start + len(corr)] = top
            corr_near[start : start + len(corr)] = np.take_along_axis(corr, top, axis=1)
        chosen = {(a, int(b)) for a in range(len(idx)) for b, c in zip(near[a], corr_near[a]) if c >= min_correlation}
        pairs.extend((int(idx[a]), int(idx[b])) for a, b in chosen if a < b and (b, a) in chosen)
    return sorted(pairs)
