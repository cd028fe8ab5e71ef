from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from liverscan.evaluation.calibration import (
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
