from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from liverscan.core.aggregate import aggregate_groups
from liverscan.core.errors import ConfigError, ModelError
from liverscan.core.operating_point import (
    ARGMAX,
    Goal,
    OperatingPoint,
    apply_temperature,
    fit_balanced_weights,
    fit_sensitivity_threshold,
    fit_temperature,
    predict_with_rule,
)
from liverscan.evaluation.metrics import expected_calibration_error


def _calibrated_sample(n: int, seed: int, k: int = 3):
    """Labels drawn from softmax(logits): these probabilities are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return y, logits


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_temperature_scaling_fixes_overconfidence():
    y, logits = _calibrated_sample(3000, 0)
    over = _softmax(3.0 * logits)  # deliberately over-confident model
    t = fit_temperature(y, over)
    assert t == pytest.approx(3.0, rel=0.15)
    y2, logits2 = _calibrated_sample(3000, 1)
    over2 = _softmax(3.0 * logits2)
    before = expected_calibration_error(y2, over2)
    after = expected_calibration_error(y2, apply_temperature(over2, t))
    assert after < before / 2
    # argmax unchanged by temperature
    assert (apply_temperature(over2, t).argmax(1) == over2.argmax(1)).all()


def test_sensitivity_threshold_reaches_target():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    probs = rng.dirichlet([1, 1, 1], 400)
    probs[np.arange(400), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    base = recall_score(y == 2, probs.argmax(1) == 2)
    t = fit_sensitivity_threshold(y, probs, 2, 0.95)
    pred = predict_with_rule(probs, {"type": "threshold", "class_index": 2, "threshold": t})
    assert recall_score(y == 2, pred == 2) >= 0.95 > base
    # the threshold is the highest that does it: a little higher misses the target
    higher = predict_with_rule(probs, {"type": "threshold", "class_index": 2, "threshold": t + 1e-9})
    assert recall_score(y == 2, higher == 2) < 0.95


def test_balanced_weights_improve_balanced_accuracy():
    rng = np.random.default_rng(4)
    y = np.array([0] * 40 + [1] * 400)
    p0 = np.concatenate([rng.uniform(0.3, 0.48, 40), rng.uniform(0.0, 0.28, 400)])
    probs = np.column_stack([p0, 1 - p0])  # minority ranks higher but never wins the argmax
    w = fit_balanced_weights(y, probs)
    before = balanced_accuracy_score(y, probs.argmax(1))
    after = balanced_accuracy_score(y, predict_with_rule(probs, {"type": "weights", "weights": w}))
    assert before == 0.5 and after == 1.0


def test_goals_parse_or_say_what_is_wrong():
    assert Goal.parse("balanced", ["a", "b"]) == Goal("balanced")
    assert Goal.parse("tumor>=0.95", ["normal", "tumor"]) == Goal("sensitivity", "tumor", 0.95)
    with pytest.raises(ConfigError, match="unknown class"):
        Goal.parse("cyst>=0.9", ["normal", "tumor"])
    with pytest.raises(ConfigError, match="use 'balanced'"):
        Goal.parse("whatever", ["normal", "tumor"])
    with pytest.raises(ConfigError, match="sensitivity must be"):
        Goal.parse("tumor>=1.5", ["normal", "tumor"])


def _overconfident(seed: int, n: int = 600):
    y, logits = _calibrated_sample(n, seed)
    return y, _softmax(2.5 * logits)


def test_a_fitted_point_applies_what_it_was_fitted_for_and_survives_the_card():
    y, probs = _overconfident(5)
    point = OperatingPoint.fit(y, probs, "c2>=0.9", ["c0", "c1", "c2"])
    assert point.spec == "c2>=0.9" and point.level == "image" and point.temperature > 1.5
    pred, cal = point.apply(probs)
    assert np.allclose(cal, apply_temperature(probs, point.temperature))
    assert recall_score(y == 2, pred == 2) >= 0.9
    assert point.describe() == "operating point c2>=0.9"
    point.fitted_on = {"data": "validation", "n": len(y)}
    again = OperatingPoint.from_card(point.to_card())
    assert again == point and np.array_equal(again.apply(probs)[0], pred)


def test_argmax_is_the_models_own_answer_and_is_not_stored():
    _, probs = _overconfident(6, 50)
    pred, cal = ARGMAX.apply(probs)
    assert cal is probs or np.array_equal(cal, probs)
    assert np.array_equal(pred, probs.argmax(1))
    assert ARGMAX.to_card() is None and OperatingPoint.from_card(None) is None
    assert ARGMAX.describe() == "argmax"


def test_malformed_card_entry_is_one_clear_error():
    with pytest.raises(ModelError, match="operating point is malformed"):  # the model's card, not the user's request
        OperatingPoint.from_card({"spec": "tumor>=0.9"})
    with pytest.raises(ModelError, match="unknown level"):
        OperatingPoint.from_card({"spec": "x", "temperature": 1, "level": "ward"})


def test_patient_point_decides_groups_as_it_was_fitted():
    """Temperature on frames, rule on the groups' aggregated probabilities; vote counts frame decisions."""
    rng = np.random.default_rng(7)
    keys = np.repeat(np.arange(60), 5)
    y = np.repeat(rng.integers(0, 2, 60), 5)
    p1 = np.clip(0.25 + 0.3 * y + rng.normal(0, 0.2, len(y)), 0.01, 0.99)
    probs = np.column_stack([1 - p1, p1])
    point = OperatingPoint.fit_groups(y, probs, keys, "b>=0.95", ["a", "b"], "mean", "validation")
    assert point.level == "group" and point.group_rule == "mean" and "per patient" in point.description
    agg, pred = point.decide_groups(probs, keys, "mean", ["a", "b"])
    _, yg, pg, _ = aggregate_groups(y, apply_temperature(probs, point.temperature), keys, "mean", ["a", "b"])
    assert np.allclose(agg, pg) and recall_score(yg == 1, pred == 1) >= 0.95
    # vote: each frame decided by the rule, the group is the majority of those decisions
    low = OperatingPoint(spec="b>=0.2", rule={"type": "threshold", "class_index": 1, "threshold": 0.2})
    frames = np.array([[0.7, 0.3], [0.9, 0.1], [0.9, 0.1]])
    share, k = low.decide_group(frames, "vote", ["a", "b"])
    assert k == 0 and share[1] == pytest.approx(1 / 3)
    share, k = low.decide_group(frames, "mean", ["a", "b"])  # mean p(b) = 0.167 < 0.2
    assert k == 0 and share[1] == pytest.approx(0.5 / 3)
