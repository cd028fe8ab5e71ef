"""Stratified, group-aware train / val / test split.

Whole groups (near-duplicate clusters, patients, exact duplicates) are assigned
to one split.  Per class, groups are shuffled with the seed, ordered by size
(largest first) and each is given to the split furthest below its target count,
which keeps class ratios within one group of the requested proportions.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from liverscan.core.artifacts import SPLITS


def group_class(labels: list[str]) -> str:
    """Majority class of a group (ties: alphabetical)."""
    counts = Counter(labels)
    top = max(counts.values())
    return sorted(c for c, n in counts.items() if n == top)[0]


def assign_splits(groups: list[str], labels: list[str], ratios: tuple[float, float, float], seed: int) -> list[str]:
    """Return the split name of every item; items sharing a group share a split."""
    if len(groups) != len(labels):
        raise ValueError("groups and labels must have the same length")
    total = float(sum(ratios))
    if total <= 0 or any(r < 0 for r in ratios):
        raise ValueError(f"split ratios must be non-negative and not all zero, got {ratios}")
    fractions = [r / total for r in ratios]
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[str, list[str]] = defaultdict(list)
    for g in sorted(members):
        by_class[group_class([labels[i] for i in members[g]])].append(g)

    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    for cls in sorted(by_class):
        names = by_class[cls]
        order = rng.permutation(len(names))
        shuffled = [names[k] for k in order]
        shuffled.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
        n = sum(len(members[g]) for g in shuffled)
        targets = [f * n for f in fractions]
        current = [0.0, 0.0, 0.0]
        for g in shuffled:
            deficits = [targets[k] - current[k] if fractions[k] > 0 else -np.inf for k in range(3)]
            k = int(np.argmax(deficits))
            split_of_group[g] = SPLITS[k]
            current[k] += len(members[g])
    return [split_of_group[g] for g in groups]
