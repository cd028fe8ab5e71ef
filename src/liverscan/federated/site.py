"""A site: its own features and labels, answering the coordinator's requests with aggregates only."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liverscan.core import guard
from liverscan.federated import gaussian, linear, mlp, stats
from liverscan.federated.messages import SPLIT_NAMES, MessageError


@dataclass
class SiteData:
    """Pooled backbone features (N, F), labels and groups of one split at a site."""

    features: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> SiteData:
        return cls(np.zeros((0, n_features), np.float32), np.zeros(0, np.int64), np.zeros(0, object))


@dataclass
class Site:
    """What one site holds; :meth:`handle` answers one request (a mapping) with one reply (a mapping)."""

    name: str
    classes: list[str]
    fingerprint: str
    splits: dict[str, SiteData]
    seed: int = 0
    compare_alone: bool = True  # also fit the probe on this site's images alone, for the card's comparison
    _alone_probe: Any = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        return int(self.splits["train"].features.shape[1])

    def handle(self, request: dict) -> dict:
        kind = str(request.get("kind"))
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise MessageError(f"{self.name}: unknown request kind {kind!r}")
        return handler(request)

    def _hello(self, request: dict) -> dict:
        counts = np.stack([np.bincount(self.splits[s].y, minlength=len(self.classes)) for s in SPLIT_NAMES]).astype(
            np.int64
        )
        return {
            "name": self.name,
            "classes": np.array(self.classes),
            "fingerprint": self.fingerprint,
            "counts": counts,
            "n_features": self.n_features,
        }

    def _moments(self, request: dict) -> dict:
        m = stats.Moments.of(self.splits["train"].features)
        return {"n": m.n, "mean": m.mean, "m2": m.m2}

    def _loss(self, request: dict) -> dict:
        train = self.splits["train"]
        return linear.site_loss(
            train.features,
            train.y,
            request["mean"],
            request["scale"],
            request["class_weights"],
            request["weights"],
            request["bias"],
        )

    def _val_loss(self, request: dict) -> dict:
        val = self.splits["val"]
        return linear.site_log_loss(
            val.features, val.y, request["mean"], request["scale"], request["weights"], request["bias"]
        )

    def _mlp_train(self, request: dict) -> dict:
        train = self.splits["train"]
        params, loss = mlp.local_train(
            {k: np.asarray(request[k]) for k in mlp.NAMES},
            train.features,
            train.y,
            np.asarray(request["class_weights"]),
            **_mlp_settings(request),
            seed=int(request["seed"]) + zlib.crc32(self.name.encode()),
        )
        return {**params, "n": float(len(train.y)), "loss": loss}

    def _mlp_val(self, request: dict) -> dict:
        val = self.splits["val"]
        probs = mlp.probabilities({k: np.asarray(request[k]) for k in mlp.NAMES}, val.features)
        picked = probs[np.arange(len(val.y)), val.y]
        return {
            "loss": float(-np.log(np.maximum(picked, 1e-15)).sum()),
            "n": float(len(val.y)),
            "correct": float((probs.argmax(1) == val.y).sum()) if len(val.y) else 0.0,
        }

    def _guard_moments(self, request: dict) -> dict:
        train = self.splits["train"]
        return gaussian.site_moments(train.features, train.y, len(self.classes))

    def _guard_histogram(self, request: dict) -> dict:
        reference = _reference(request)
        held = "val" if len(self.splits["val"].y) else "train"
        scores = guard.scores(reference, self.splits[held].features) if len(self.splits[held].y) else np.zeros(0)
        return {"counts": stats.histogram(scores, stats.OOD_EDGES), "source": held}

    def _evaluate(self, request: dict) -> dict:
        test = self.splits["test"]
        if request.get("head") == "mlp":
            probs = mlp.probabilities({k: np.asarray(request[k]) for k in mlp.NAMES}, test.features)
        else:
            weights, bias = np.asarray(request["weights"]), np.asarray(request["bias"])
            probs = _softmax(np.asarray(test.features, np.float64) @ weights + bias)
        flagged = int(guard.scores(_reference(request), test.features).__gt__(float(request["threshold"])).sum())
        alone, c = self._alone(request)
        alone_probs = alone(test.features) if alone is not None else np.full_like(probs, np.nan)
        out = {**_counts(probs, test.y, len(self.classes)), "flagged": flagged}
        out.update({f"alone_{k}": v for k, v in _counts(alone_probs, test.y, len(self.classes)).items()})
        out["alone_c"] = c
        return out

    def _alone(self, request: dict):
        """The same head trained on this site's training images alone, for the comparison: (probabilities of
        features, its C or NaN), or (None, NaN) when a class is missing here."""
        from liverscan.core.dataset import class_weights
        from liverscan.core.probe import fit_linear_probe

        train = self.splits["train"]
        if not self.compare_alone or len(np.unique(train.y)) < len(self.classes):
            return None, float("nan")
        if request.get("head") == "mlp":
            cw = class_weights([self.classes[i] for i in train.y], self.classes)
            start = mlp.init(self.n_features, int(np.shape(request["w1"])[1]), len(self.classes), int(request["seed"]))
            settings = {**_mlp_settings(request), "epochs": int(request["alone_epochs"])}
            params, _ = mlp.local_train(
                start, train.features, train.y, np.array(list(cw.values())), **settings, seed=int(request["seed"])
            )
            return (lambda x: mlp.probabilities(params, x)), float("nan")
        if self._alone_probe is None:
            self._alone_probe = fit_linear_probe(
                train.features, train.y, train.groups, len(self.classes), seed=self.seed
            )
        probe = self._alone_probe
        return probe.probabilities, float(probe.c)


def _mlp_settings(request: dict) -> dict:
    return {
        "epochs": int(request["epochs"]),
        "learning_rate": float(request["learning_rate"]),
        "batch_size": int(request["batch_size"]),
        "dropout": float(request["dropout"]),
        "mu": float(request["mu"]),
    }


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _counts(probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Confusion matrix and per-class probability histograms (images of the class / of the others)."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    positive = np.zeros((n_classes, len(stats.PROBABILITY_EDGES) - 1), np.int64)
    negative = np.zeros_like(positive)
    if len(y) and np.isfinite(probs).all():
        np.add.at(confusion, (y, probs.argmax(1)), 1)
        for c in range(n_classes):
            positive[c] = stats.histogram(probs[y == c, c], stats.PROBABILITY_EDGES)
            negative[c] = stats.histogram(probs[y != c, c], stats.PROBABILITY_EDGES)
    return {"confusion": confusion, "positive": positive, "negative": negative}


def _reference(request: dict) -> guard.Reference:
    return guard.Reference(
        method="mahalanobis",
        l2=True,
        means=np.asarray(request["guard_means"]),
        basis=np.asarray(request["guard_basis"]),
        eig=np.asarray(request["guard_eig"]),
        floor=float(request["guard_floor"]),
        n_features=int(np.shape(request["guard_means"])[1]),
    )
