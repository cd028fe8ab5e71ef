"""Applying a model card's operating point: temperature scaling and a decision rule."""

from __future__ import annotations

import numpy as np

from liverscan.core.errors import ConfigError


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens over-confident probabilities."""
    z = _logits(probs) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict_with_rule(probs: np.ndarray, rule: dict | None) -> np.ndarray:
    """Class indices under a decision rule (None = argmax).

    Rules: ``{"type": "weights", "weights": [...]}`` -> argmax(p * w);
    ``{"type": "threshold", "class_index": c, "threshold": t}`` -> c when p_c >= t,
    otherwise the most probable other class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if not rule:
        return probs.argmax(1)
    if rule["type"] == "weights":
        return (probs * np.asarray(rule["weights"], dtype=np.float64)).argmax(1)
    if rule["type"] == "threshold":
        c = int(rule["class_index"])
        others = probs.copy()
        others[:, c] = -np.inf
        return np.where(probs[:, c] >= float(rule["threshold"]), c, others.argmax(1))
    raise ConfigError(f"unknown decision rule {rule['type']!r} in the model card")
