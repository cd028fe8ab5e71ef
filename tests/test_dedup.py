from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import near_duplicate, noise_image
from liverscan.core.dedup import link_groups, near_duplicate_pairs, perceptual_hash
from liverscan.core.images import load_image


def _hash(img: Image.Image, tmp_path, name: str) -> int:
    p = tmp_path / name
    img.save(p)
    return perceptual_hash(load_image(p))


def test_near_duplicates_close_unrelated_far(tmp_path):
    base = noise_image(10)
    h0 = _hash(base, tmp_path, "a.png")
    h1 = _hash(near_duplicate(base, 1), tmp_path, "b.png")
    h2 = _hash(noise_image(11), tmp_path, "c.png")
    assert bin(h0 ^ h1).count("1") <= 4
    assert bin(h0 ^ h2).count("1") > 12


def test_pairs_and_groups():
    hashes = [0b0, 0b1, 0b11, (1 << 40) - 1, 0b111 << 50]
    pairs = near_duplicate_pairs(hashes, 1)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 2)]
    roots = link_groups(5, [(i, j) for i, j, _ in pairs], ["", "", "", "p", "p"])
    assert roots[0] == roots[1] == roots[2]  # chained through 1
    assert roots[3] == roots[4] != roots[0]  # same explicit key
    assert near_duplicate_pairs(hashes, -1) == []


def test_chunking_gives_same_pairs():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**62, size=300, dtype=np.int64)]
    hashes += [h ^ 1 for h in hashes[:50]]
    assert sorted(near_duplicate_pairs(hashes, 3, chunk=7)) == sorted(near_duplicate_pairs(hashes, 3))
