from __future__ import annotations

from collections import Counter

import pytest

from liverscan.core.dataset import class_weights
from liverscan.preparation.split import assign_splits


def test_ratios_within_rounding_and_deterministic():
    labels = ["normal"] * 198 + ["fatty"] * 557 + ["tumor"] * 1270
    groups = [f"g{i}" for i in range(len(labels))]
    splits = assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=42)
    assert splits == assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=42)
    for cls, n in Counter(labels).items():
        c = Counter(s for s, l in zip(splits, labels) if l == cls)
        assert abs(c["train"] - 0.7 * n) <= 1
        assert abs(c["val"] - 0.15 * n) <= 1
        assert abs(c["test"] - 0.15 * n) <= 1
    assert splits != assign_splits(groups, labels, (0.7, 0.15, 0.15), seed=43)


def test_groups_never_split():
    labels, groups = [], []
    for g in range(40):
        size = 1 + g % 5
        labels += ["a" if g % 2 else "b"] * size
        groups += [f"patient{g}"] * size
    splits = assign_splits(groups, labels, (0.6, 0.2, 0.2), seed=1)
    by_group = {}
    for g, s in zip(groups, splits):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert set(splits) == {"train", "val", "test"}


def test_zero_ratio_split_stays_empty():
    labels = ["a"] * 20 + ["b"] * 20
    splits = assign_splits([str(i) for i in range(40)], labels, (0.8, 0.2, 0.0), seed=0)
    assert "test" not in splits
    assert Counter(splits)["val"] == 8


def test_class_weights_paper_formula():
    # the paper's training split: 138 normal, 389 fatty, 888 tumor
    labels = ["normal"] * 138 + ["fatty"] * 389 + ["tumor"] * 888
    w = class_weights(labels, ["normal", "fatty", "tumor"])
    n = len(labels)
    for cls, count in (("normal", 138), ("fatty", 389), ("tumor", 888)):
        assert w[cls] == pytest.approx(n / (3 * count))
    assert w["normal"] == pytest.approx(3.418, abs=1e-3)
    assert w["fatty"] == pytest.approx(1.213, abs=1e-3)
    assert w["tumor"] == pytest.approx(0.531, abs=1e-3)


def test_bad_ratios():
    with pytest.raises(ValueError):
        assign_splits(["a"], ["x"], (0, 0, 0), seed=0)
