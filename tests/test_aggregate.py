"""Aggregation rules on known probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from liverscan.core.aggregate import aggregate, aggregate_groups, suspicion
from liverscan.core.errors import ConfigError

CLASSES = ["normal", "fatty", "tumor"]
FRAMES = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.2, 0.1, 0.7],  # the one suspicious frame
    ]
)


def test_mean_is_the_mean_of_frame_probabilities():
    np.testing.assert_allclose(aggregate(FRAMES, "mean", CLASSES), [0.5, 0.2, 0.3])


def test_max_takes_the_most_suspicious_frame_so_any_abnormal_frame_flags_the_study():
    np.testing.assert_allclose(suspicion(FRAMES, CLASSES), [0.3, 0.4, 0.8])
    got = aggregate(FRAMES, "max", CLASSES)
    np.testing.assert_allclose(got, FRAMES[2])
    assert got.argmax() == 2 and aggregate(FRAMES, "mean", CLASSES).argmax() == 0
    # without a 'normal' class the first class is the reference
    np.testing.assert_allclose(aggregate(FRAMES[:, ::-1], "max", ["tumor", "fatty", "other"]), FRAMES[0, ::-1])


def test_vote_is_the_share_of_frame_decisions_and_ties_follow_the_mean():
    np.testing.assert_allclose(aggregate(FRAMES, "vote", CLASSES), [2 / 3, 0, 1 / 3])
    tie = np.array([[0.9, 0.05, 0.05], [0.2, 0.0, 0.8]])
    got = aggregate(tie, "vote", CLASSES)
    assert got.argmax() == 0 and abs(got.sum() - 1) < 1e-9  # mean favours normal (0.55 vs 0.425)


def test_groups_get_majority_labels_and_mixed_groups_are_flagged():
    y = np.array([0, 0, 2, 2, 2, 0])
    probs = np.array([[0.9, 0.05, 0.05]] * 2 + [[0.1, 0.1, 0.8]] * 3 + [[0.5, 0.0, 0.5]])
    names, labels, agg, mixed = aggregate_groups(y, probs, ["a", "a", "b", "b", "c", "c"], "mean", CLASSES)
    assert names == ["a", "b", "c"] and labels.tolist() == [0, 2, 0]  # a tie goes to the first class
    assert mixed.tolist() == [False, False, True]
    np.testing.assert_allclose(agg[0], [0.9, 0.05, 0.05])


def test_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match="median"):
        aggregate(FRAMES, "median", CLASSES)
