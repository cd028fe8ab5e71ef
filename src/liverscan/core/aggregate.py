"""Frames to one answer per study or patient: the aggregation rules shared by predict and evaluate.

Rules (``probs`` are one group's frame probabilities, rows summing to 1):

- ``mean`` (default): the mean of the frames' probabilities;
- ``max``: "flag if any frame" — the probabilities of the group's most suspicious frame, the one
  with the lowest probability of the reference class (``normal`` when the model has it, else its
  first class); a group is normal only when every frame is;
- ``vote``: the share of frames decided as each class — by argmax, or by the model's decision rule
  when ``decisions`` are given (a majority vote; ties are broken by the mean probabilities).

Every rule returns a probability vector over the classes, so the model's decision rule (argmax or
a stored operating point) applies to a group as it does to a frame.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from liverscan.core.errors import ConfigError

RULES = ("mean", "max", "vote")


def reference_class(classes: Sequence[str]) -> int:
    """Index of the class a screening rule treats as 'nothing found'."""
    return list(classes).index("normal") if "normal" in classes else 0


def suspicion(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Per frame: 1 - the probability of the reference class."""
    return 1.0 - np.asarray(probs, dtype=np.float64)[:, reference_class(classes)]


def aggregate(probs: np.ndarray, rule: str, classes: Sequence[str], decisions: np.ndarray | None = None) -> np.ndarray:
    """One probability vector for a group of frames (``probs``: frames x classes; ``decisions``: the
    frames' decided class indices, used by ``vote`` instead of the argmax)."""
    if rule not in RULES:
        raise ConfigError(f"unknown aggregation rule {rule!r} (one of {', '.join(RULES)})")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError("aggregate needs at least one frame")
    if rule == "mean":
        return p.mean(0)
    if rule == "max":
        return p[int(np.argmax(suspicion(p, classes)))]
    decided = p.argmax(1) if decisions is None else np.asarray(decisions, dtype=int)
    votes = np.bincount(decided, minlength=p.shape[1]).astype(np.float64)
    share = votes / votes.sum()
    tied = share == share.max()
    if tied.sum() > 1:  # ties broken by the mean probabilities, kept a distribution
        winner = int(np.flatnonzero(tied)[np.argmax(p.mean(0)[tied])])
        share = share * (1 - 1e-6)
        share[winner] += 1e-6
    return share


def group_indices(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Row indices of each group, groups in order of first appearance."""
    out: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def aggregate_groups(
    y: np.ndarray,
    probs: np.ndarray,
    keys: Sequence[Hashable],
    rule: str,
    classes: Sequence[str],
    decisions: np.ndarray | None = None,
) -> tuple[list[Hashable], np.ndarray, np.ndarray, np.ndarray]:
    """(group keys, group labels, group probabilities, number of mixed-label groups per group flag).

    A group's label is the most common label of its rows (groups from ``prepare`` hold one class;
    a group holding several is flagged in the last array).
    """
    groups = group_indices(keys)
    names = list(groups)
    labels = np.zeros(len(names), int)
    mixed = np.zeros(len(names), bool)
    agg = np.zeros((len(names), np.asarray(probs).shape[1]))
    for g, name in enumerate(names):
        idx = groups[name]
        counts = np.bincount(np.asarray(y)[idx], minlength=len(classes))
        labels[g] = int(counts.argmax())
        mixed[g] = (counts > 0).sum() > 1
        agg[g] = aggregate(np.asarray(probs)[idx], rule, classes, None if decisions is None else decisions[idx])
    return names, labels, agg, mixed
