"""Exact and near-duplicate detection.

Exact duplicates share a SHA-256 of the file bytes.  Near-duplicates are found
with a 64-bit perceptual hash (DCT pHash from ``imagehash``) and grouped by
single linkage: two images whose hashes differ in at most ``max_distance`` bits
end up in the same group (so consecutive frames of one scan stay together).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def perceptual_hash(array: np.ndarray) -> int:
    """64-bit pHash of a decoded (S, S, 3) uint8 image."""
    import imagehash

    gray = Image.fromarray(array).convert("L")
    return int(str(imagehash.phash(gray, hash_size=8)), 16)


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(hashes: list[int], max_distance: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j and Hamming distance <= max_distance."""
    if max_distance < 0 or len(hashes) < 2:
        return []
    h = np.array(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        for a, b in zip(ii.tolist(), jj.tolist()):
            i = start + a
            if i < b:
                pairs.append((i, b, int(dist[a, b])))
    return pairs


def min_distances(queries: list[int], reference: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash: the Hamming distance to its nearest ``reference`` hash, and that hash's index
    (distance 65 and index -1 with no reference)."""
    if not reference:
        return np.full(len(queries), 65), np.full(len(queries), -1)
    q, r = np.array(queries, dtype=np.uint64), np.array(reference, dtype=np.uint64)
    dist, nearest = np.zeros(len(q), np.int64), np.zeros(len(q), np.int64)
    chunk = max(1, (1 << 22) // len(r))  # queries per block: at most ~4M distances (32 MiB) at a time
    for start in range(0, len(q), chunk):
        d = np.bitwise_count(q[start : start + chunk, None] ^ r[None, :])
        nearest[start : start + chunk] = d.argmin(1)
        dist[start : start + chunk] = d.min(1)
    return dist, nearest


def link_groups(n: int, pairs: list[tuple[int, int]], keys: list[str]) -> list[int]:
    """Connected components over pairs and equal non-empty keys; returns root index per item."""
    uf = UnionFind(n)
    for i, j in pairs:
        uf.union(i, j)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return [uf.find(i) for i in range(n)]
