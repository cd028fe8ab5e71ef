"""The out-of-distribution guard's Gaussian reference, fitted from summed per-class moments.

Sites send, on L2-normalised training features: per-class counts and sums, and the sum of outer products.
The coordinator forms the class means and the shared class-centred covariance, shrinks it with OAS (which
needs only the covariance and the count, so it is exact from aggregates), and writes an ordinary
``mahalanobis`` :class:`~liverscan.core.guard.Reference`: equal to the pooled
``guard.fit(..., method="mahalanobis", shrinkage="oas")``, and loaded by ``predict`` like any other.
"""

from __future__ import annotations

import numpy as np

from liverscan.core import guard


def site_moments(features: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Per-class counts (K,) and sums (K, F), and the sum of outer products (F, F), of L2-normalised features."""
    x = guard._l2(features)
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, np.asarray(y), x)
    return {"counts": counts, "sums": sums, "outer": x.T @ x}


def oas_shrinkage(cov: np.ndarray, n: float) -> float:
    """scikit-learn's OAS shrinkage of an empirical covariance of ``n`` samples."""
    d = cov.shape[0]
    alpha = float(np.mean(cov**2))
    mu = float(np.trace(cov)) / d
    den = (n + 1) * (alpha - mu**2 / d)
    return 1.0 if den == 0 else float(min((alpha + mu**2) / den, 1.0))


def fit_from_moments(parts: list[dict[str, np.ndarray]]) -> guard.Reference:
    """The Mahalanobis reference (shared OAS-shrunk covariance) from the sites' :func:`site_moments`."""
    counts: np.ndarray = np.sum([p["counts"] for p in parts], axis=0)
    sums: np.ndarray = np.sum([p["sums"] for p in parts], axis=0)
    outer: np.ndarray = np.sum([p["outer"] for p in parts], axis=0)
    present = np.asarray(counts > 0)
    if present.sum() == 0:
        raise guard.GuardError("no training images to fit the out-of-distribution reference on")
    n, d = float(counts.sum()), outer.shape[0]
    means = sums[present] / counts[present][:, None]
    cov = (outer - (means.T * counts[present]) @ means) / n
    cov = (cov + cov.T) / 2
    s = oas_shrinkage(cov, n)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = np.maximum(lam[::-1], 0.0), vec[:, ::-1]
    floor = s * float(lam.sum() / d)
    keep = lam > 1e-12 * max(lam.max(), 1e-30)
    return guard.Reference(
        method="mahalanobis",
        l2=True,
        means=means.astype(np.float32),
        basis=vec[:, keep].T.astype(np.float32),
        eig=((1 - s) * lam[keep] + floor).astype(np.float32),
        floor=floor,
        n_features=d,
        n_train=int(n),
        shrinkage=s,
    )
