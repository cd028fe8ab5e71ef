"""The mlp head (Dropout -> Dense ReLU -> Dense softmax) trained by FedAvg, or FedProx with ``mu > 0``.

Each round a site trains the coordinator's head for a few local epochs (Adam, the class-weighted
cross-entropy, dropout, and FedProx's ``mu / 2 * ||theta - theta_global||^2``) on its own features and sends
the weights back with its image count; the coordinator averages them weighted by the counts.  NumPy only: the
head is small and the same arithmetic runs at every site.
"""

from __future__ import annotations

import numpy as np

NAMES = ("w1", "b1", "w2", "b2")


def init(n_features: int, hidden: int, n_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform weights and zero biases (Keras's Dense defaults)."""
    rng = np.random.default_rng(seed)

    def glorot(a: int, b: int) -> np.ndarray:
        limit = np.sqrt(6.0 / (a + b))
        return rng.uniform(-limit, limit, (a, b))

    return {
        "w1": glorot(n_features, hidden),
        "b1": np.zeros(hidden),
        "w2": glorot(hidden, n_classes),
        "b2": np.zeros(n_classes),
    }


def probabilities(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(np.asarray(x, np.float64) @ params["w1"] + params["b1"], 0.0)
    z = h @ params["w2"] + params["b2"]
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def local_train(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    class_weights: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    dropout: float,
    mu: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], float]:
    """``epochs`` of Adam on this site's features from ``params``; the new weights and the last epoch's loss."""
    rng = np.random.default_rng(seed)
    start = {k: np.array(v, np.float64) for k, v in params.items()}
    p = {k: v.copy() for k, v in start.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    sw = np.asarray(class_weights, np.float64)[y]
    step, loss = 0, float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(y))
        losses = []
        for s in range(0, len(y), batch_size):
            idx = order[s : s + batch_size]
            xb, yb, wb = x[idx], y[idx], sw[idx]
            keep = (rng.random(xb.shape) >= dropout) / (1.0 - dropout) if dropout > 0 else 1.0
            xd = xb * keep
            pre = xd @ p["w1"] + p["b1"]
            h = np.maximum(pre, 0.0)
            z = h @ p["w2"] + p["b2"]
            z -= z.max(1, keepdims=True)
            log_q = z - np.log(np.exp(z).sum(1, keepdims=True))
            losses.append(float(-(wb * log_q[np.arange(len(yb)), yb]).sum() / len(yb)))
            dz = np.exp(log_q)
            dz[np.arange(len(yb)), yb] -= 1.0
            dz *= wb[:, None] / len(yb)
            dh = (dz @ p["w2"].T) * (pre > 0)
            grads = {"w2": h.T @ dz, "b2": dz.sum(0), "w1": xd.T @ dh, "b1": dh.sum(0)}
            step += 1
            for k in NAMES:
                g = grads[k] + mu * (p[k] - start[k])
                m[k] = 0.9 * m[k] + 0.1 * g
                v2[k] = 0.999 * v2[k] + 0.001 * g * g
                mhat, vhat = m[k] / (1 - 0.9**step), v2[k] / (1 - 0.999**step)
                p[k] -= learning_rate * mhat / (np.sqrt(vhat) + 1e-7)
        loss = float(np.mean(losses)) if losses else float("nan")
    return p, loss


def average(parts: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """FedAvg: the sites' weights averaged by their image counts."""
    total = sum(n for _, n in parts)
    return {k: np.sum([params[k] * (n / total) for params, n in parts], axis=0) for k in NAMES}
