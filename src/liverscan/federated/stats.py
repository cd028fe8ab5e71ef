"""Aggregates a site sends and how the coordinator combines them exactly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: score histogram edges for thresholds and AUC: fixed, so sites never send their own extremes
PROBABILITY_EDGES = np.linspace(0.0, 1.0, 1001)
OOD_EDGES = np.concatenate([[0.0], np.geomspace(1e-3, 1e6, 3000)])


@dataclass
class Moments:
    """Count, mean and centred sum of squares (M2) per feature; combined exactly (Chan et al.)."""

    n: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, np.float64)
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
        return cls(float(len(x)), mean, ((x - mean) ** 2).sum(0))

    def __add__(self, other: Moments) -> Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return Moments(n, mean, self.m2 + other.m2 + delta**2 * (self.n * other.n / n))

    @property
    def scale(self) -> np.ndarray:
        """Population standard deviation (as scikit-learn's StandardScaler), 1 where it is 0."""
        sd = np.sqrt(self.m2 / max(self.n, 1.0))
        return np.where(sd > 0, sd, 1.0)


def combine(moments: list[Moments]) -> Moments:
    total = moments[0]
    for m in moments[1:]:
        total = total + m
    return total


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" class weights n / (classes present * n_c) from summed counts (0: absent)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    out = np.zeros_like(counts)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return out


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins of ``edges`` (values beyond the ends go to the end bins)."""
    v = np.clip(np.asarray(values, np.float64), edges[0], edges[-1])
    return np.histogram(v, bins=edges)[0].astype(np.int64)


def quantile_from_histogram(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The upper edge of the bin holding the ``q`` quantile: at least ``q`` of the values lie at or below it."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise ValueError("empty histogram")
    need = q * counts.sum()
    k = int(np.searchsorted(np.cumsum(counts), need - 1e-9))
    return float(edges[min(k + 1, len(edges) - 1)])


def pseudo_scores(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Every counted value stood for by the upper edge of its bin: what a reference keeps instead of scores."""
    return np.repeat(np.asarray(edges[1:], np.float64), np.asarray(counts, np.int64))


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC from binned scores of positives and negatives (ties within a bin count one half)."""
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def metrics_from_counts(confusion: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, per-class recall and macro one-vs-rest AUC from a confusion matrix
    (true x predicted) and per-class probability histograms (classes x bins) of the images of that class
    (``positive``) and of the others (``negative``)."""
    cm = np.asarray(confusion, np.float64)
    n = cm.sum()
    support = cm.sum(1)
    recall = np.divide(np.diag(cm), support, out=np.full(len(cm), np.nan), where=support > 0)
    aucs = [auc_from_histograms(p, q) for p, q in zip(positive, negative)]
    finite = [a for a in aucs if np.isfinite(a)]
    return {
        "n": int(n),
        "accuracy": round(float(np.trace(cm) / n), 4) if n else None,
        "balanced_accuracy": round(float(np.nanmean(recall)), 4) if np.isfinite(recall).any() else None,
        "auc": round(float(np.mean(finite)), 4) if finite else None,
        "recall": [None if not np.isfinite(r) else round(float(r), 4) for r in recall],
    }
