"""Fitting temperature scaling and decision rules (operating points) on held-out predictions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, log_loss, recall_score

from liverscan.core.decision import apply_temperature, predict_with_rule


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature minimising validation log-loss (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    labels = list(range(np.asarray(probs).shape[1]))

    def nll(log_t: float) -> float:
        return log_loss(y_true, np.clip(apply_temperature(probs, np.exp(log_t)), 1e-12, 1), labels=labels)

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def fit_balanced_weights(y_true: np.ndarray, probs: np.ndarray, grid: int = 41, rounds: int = 3) -> list[float]:
    """Per-class multipliers on probabilities maximising balanced accuracy (coordinate search)."""
    y = np.asarray(y_true)
    k = probs.shape[1]
    w = np.ones(k)
    candidates = np.exp(np.linspace(-3, 3, grid))

    def score(weights):
        return balanced_accuracy_score(y, (probs * weights).argmax(1))

    best = score(w)
    for _ in range(rounds):
        improved = False
        for c in range(1, k):  # class 0 fixed at 1: only ratios matter
            for v in candidates:
                trial = w.copy()
                trial[c] = v
                s = score(trial)
                # prefer the weight closest to 1 among equal scores (stable, least intrusive)
                if s > best + 1e-12 or (abs(s - best) <= 1e-12 and abs(np.log(v)) < abs(np.log(w[c]))):
                    best, w, improved = s, trial, improved or s > best + 1e-12
        if not improved:
            break
    return [float(x) for x in w]


def fit_sensitivity_threshold(y_true: np.ndarray, probs: np.ndarray, class_index: int, target: float) -> float:
    """The highest threshold on p(class) whose validation sensitivity reaches ``target``."""
    y = np.asarray(y_true)
    pos = probs[y == class_index, class_index]
    if len(pos) == 0:
        raise ValueError("no validation images of that class: cannot tune its sensitivity")
    candidates = np.unique(np.concatenate([pos, [0.0]]))[::-1]
    for t in candidates:
        rule = {"type": "threshold", "class_index": class_index, "threshold": float(t)}
        pred = predict_with_rule(probs, rule)
        rec = recall_score(y == class_index, pred == class_index, zero_division=0)
        if rec >= target:
            return float(t)
    return 0.0
