"""Frames of one sweep share a group: look-alike thumbnails of one label and size are linked, others are not."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import noise_image
from liverscan.core.dedup import link_groups
from liverscan.core.sweeps import SWEEP_CORRELATION, sweep_pairs, thumbnail


def sweep(seed: int, n: int, size: int = 160) -> list[np.ndarray]:
    """``n`` frames of one made-up sweep: one scene seen through a window sliding 3 pixels a frame, with fresh
    speckle on each (a probe moving over the liver)."""
    rng = np.random.default_rng(seed)
    scene = np.asarray(noise_image(seed, size=size + 3 * n, mode="L"), np.float32)
    frames = []
    for k in range(n):
        view = scene[3 * k : 3 * k + size, 3 * k : 3 * k + size] + rng.normal(0, 30, (size, size))
        frames.append(np.repeat(np.clip(view, 0, 255).astype(np.uint8)[..., None], 3, -1))
    return frames


def test_frames_of_one_sweep_are_linked_and_other_scans_are_not():
    frames = sweep(1, 6) + sweep(2, 4)
    thumbs = [thumbnail(f) for f in frames]
    keys = [("src", "Malignant", 160, 160)] * len(frames)
    groups = link_groups(len(frames), sweep_pairs(thumbs, keys), [""] * len(frames))
    assert len(set(groups[:6])) == 1 and len(set(groups[6:])) == 1 and groups[0] != groups[6]


def test_look_alike_images_of_another_label_or_size_are_not_linked():
    frames = sweep(3, 2)
    thumbs = [thumbnail(f) for f in frames]
    assert sweep_pairs(thumbs, ["a", "a"]) == [(0, 1)]
    assert sweep_pairs(thumbs, ["a", "b"]) == []
    assert sweep_pairs(thumbs, ["a", "a"], min_correlation=1.5) == []  # above 1: off


def test_a_flat_image_correlates_with_nothing_and_chunks_give_the_same_pairs():
    frames = sweep(4, 5) + [np.full((160, 160, 3), 90, np.uint8), np.full((160, 160, 3), 90, np.uint8)]
    thumbs = [thumbnail(f) for f in frames]
    keys = ["k"] * len(frames)
    whole = sweep_pairs(thumbs, keys)
    assert all(j < 5 for _, j in whole) and whole == sweep_pairs(thumbs, keys, cells=7)
    assert thumbnail(frames[0]).shape == (256,) and thumbnail(frames[0]).dtype == np.uint8
    assert 0.8 < SWEEP_CORRELATION < 1


def test_prepare_puts_a_sweep_in_one_group_and_says_how_it_grouped(tmp_path):
    """``prepare`` on two classes of made-up sweeps: each sweep is one group (so one split), the rule and the group
    count are in summary.json; with the rule off every frame is its own group."""
    from liverscan.core.config import Config, SourceSpec
    from liverscan.preparation.prepare import prepare_dataset

    root = tmp_path / "data"
    for c, cls in enumerate(("normal", "tumor")):
        (root / cls).mkdir(parents=True)
        for s in range(4):
            for k, frame in enumerate(sweep(10 * c + s, 4)):
                Image.fromarray(frame).save(root / cls / f"s{s}_{k}.png")
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(root))]
    cfg.data.classes = ["normal", "tumor"]
    cfg.data.near_duplicate_distance = -1  # the sweep rule alone
    res = prepare_dataset(cfg, tmp_path / "prep")
    grouping = res.summary["audit"]["grouping"]
    assert grouping["groups"] == 8 and "thumbnails correlating at least 0.92" in grouping["rule"]
    assert res.summary["audit"]["sweeps"]["links"] >= 24 and res.summary["audit"]["groups_split_across"] == 0
    summary = json.loads((tmp_path / "prep" / "summary.json").read_text())
    assert summary["audit"]["grouping"] == grouping
    cfg.data.sweep_correlation = 2.0
    off = prepare_dataset(cfg, tmp_path / "prep-off")
    assert off.summary["audit"]["grouping"]["groups"] == 32 and "sweep" not in off.summary["audit"]["grouping"]["rule"]


def test_links_are_mutual_nearest_neighbours_so_alike_scans_do_not_chain():
    """Twelve scans all alike (one scene, fresh speckle each: every pair correlates above the threshold) would be one
    group by single linkage over every pair; mutual nearest neighbours link each to at most two others."""
    rng = np.random.default_rng(0)
    scene = np.asarray(noise_image(7, size=160, mode="L"), np.float32)
    frames = [np.clip(scene + rng.normal(0, 30, scene.shape), 0, 255).astype(np.uint8) for _ in range(12)]
    thumbs = [thumbnail(f) for f in frames]
    pairs = sweep_pairs(thumbs, ["k"] * 12)
    assert pairs and all(a < b for a, b in pairs)
    degree = np.bincount(np.array(pairs).ravel(), minlength=12)
    assert degree.max() <= 2
    assert sweep_pairs(thumbs, ["k"] * 12, neighbours=11) == [(a, b) for a in range(12) for b in range(a + 1, 12)]
