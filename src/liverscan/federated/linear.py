"""The linear probe's loss as a sum over sites, minimised by the coordinator.

The same objective as the centralised probe (:mod:`liverscan.core.probe`, scikit-learn's
``LogisticRegression(class_weight="balanced", solver="lbfgs")``) on features standardised with the pooled
mean and standard deviation: the class-weighted multinomial logistic loss plus ``||W||^2 / (2 C)``, both
divided by the summed sample weights (the same minimiser).  Two classes use one weight column (the logistic
loss on ``[0, z]``), as scikit-learn does.  Each site returns the loss and its gradient on its own features;
the coordinator sums them, adds the penalty and takes L-BFGS steps: federated equals centralised to the
optimiser's tolerance.
"""

from __future__ import annotations

import numpy as np


def n_columns(n_classes: int) -> int:
    return 1 if n_classes == 2 else n_classes


def unpack(theta: np.ndarray, n_features: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights (F, K'), bias (K',)) from the flat parameter vector."""
    k = n_columns(n_classes)
    theta = np.asarray(theta, np.float64)
    return theta[: n_features * k].reshape(n_features, k), theta[n_features * k :]


def _logits(xs: np.ndarray, weights: np.ndarray, bias: np.ndarray, n_classes: int) -> np.ndarray:
    z = xs @ weights + bias
    return np.hstack([np.zeros((len(z), 1)), z]) if n_classes == 2 else z


def site_loss(
    features: np.ndarray,
    y: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    class_weights: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
) -> dict[str, np.ndarray]:
    """One site's summed class-weighted loss, its gradient and its summed weights (no penalty)."""
    n_classes = len(class_weights)
    xs = (np.asarray(features, np.float64) - mean) / scale
    z = _logits(xs, weights, bias, n_classes)
    z -= z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    sw = np.asarray(class_weights, np.float64)[y]
    residual = np.exp(log_p)
    residual[np.arange(len(y)), y] -= 1.0
    residual *= sw[:, None]
    if n_classes == 2:
        residual = residual[:, 1:]
    return {
        "loss": np.float64(-(sw * log_p[np.arange(len(y)), y]).sum()),
        "grad_weights": xs.T @ residual,
        "grad_bias": residual.sum(0),
        "weight_sum": np.float64(sw.sum()),
    }


def objective(parts: list[dict[str, np.ndarray]], weights: np.ndarray, c: float) -> tuple[float, np.ndarray]:
    """The penalised, normalised objective and its gradient from the sites' parts."""
    total = float(sum(p["weight_sum"] for p in parts))
    loss = float(sum(p["loss"] for p in parts)) / total + float((weights**2).sum()) / (2 * c * total)
    gw = sum(p["grad_weights"] for p in parts) / total + weights / (c * total)
    gb = sum(p["grad_bias"] for p in parts) / total
    return loss, np.concatenate([np.ravel(gw), np.ravel(gb)])


def site_log_loss(
    features: np.ndarray, y: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: np.ndarray
) -> dict[str, np.float64]:
    """Summed unweighted log-loss and image count (to choose C on the sites' validation splits)."""
    n_classes = int(weights.shape[1]) + 1 if weights.shape[1] == 1 else int(weights.shape[1])
    xs = (np.asarray(features, np.float64) - mean) / scale
    z = _logits(xs, weights, bias, n_classes)
    z -= z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return {"loss": np.float64(-log_p[np.arange(len(y)), y].sum()), "n": np.float64(len(y))}


def folded(weights: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax weights (F, K) and bias (K,) on raw features, standardisation folded in (as the probe's)."""
    if weights.shape[1] == 1:
        weights = np.hstack([np.zeros_like(weights), weights])
        bias = np.concatenate([[0.0], bias])
    w = weights / scale[:, None]
    return w, bias - mean @ w
