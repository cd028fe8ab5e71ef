"""The out-of-distribution guard: is this input like the images the model was trained on?

Two layers, both cheap and both applied to every prediction:

1. :func:`image_checks` - rules on the decoded RGB array the model sees that catch inputs
   which are plainly not a B-mode frame: clearly coloured content, a blank picture, a bright
   flat page or window background (screenshots, documents, figures, collages).
2. :func:`scores` - the distance of the pooled backbone features to the training images'
   features: by default the distance to the k-th nearest training image on L2-normalised
   features (Sun et al. 2022, k = 10), or the Mahalanobis distance to the class means under a
   shared shrunk covariance (Lee et al. 2018).  Higher = more unusual.

The reference is fitted on in-distribution training images only; its threshold keeps a stated
share (``retention``, default 95 %) of held-back in-distribution images (the validation split or
out-of-fold images).  Those held-back scores are stored with the reference, so the threshold can
be recomputed for another retention without refitting.  Nothing is ever tuned on
out-of-distribution images: future scanners are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import OOD_FILE
from liverscan.core.errors import ConfigError, LiverscanError

FORMAT_VERSION = 1
METHODS = ("knn", "mahalanobis")


class GuardError(LiverscanError):
    """An out-of-distribution reference cannot be fitted, read or applied."""


# =============================================================================== reference


@dataclass
class Reference:
    """Everything needed to score new features; saved as a plain .npz (no pickle).

    knn:          ``bank`` = L2-normalised training features (n, d), float16 by default; ``k``.
    mahalanobis:  ``means`` (C, d) class means; the shrunk shared covariance is kept in low-rank form
                  Sigma = U diag(eig) U^T + floor * (I - U U^T): ``basis`` = U^T (r, d), ``eig`` (r,), ``floor``.
                  ``l2`` says whether features are L2-normalised first.
    """

    method: str
    threshold: float = float("nan")
    retention: float = float("nan")
    k: int = 10
    l2: bool = True
    bank: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    basis: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    eig: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    floor: float = 0.0
    n_features: int = 0
    n_train: int = 0
    shrinkage: float = float("nan")
    heldout_scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    heldout: str = ""  # what the held-out scores came from, e.g. "validation split (n=88)"

    # ---- persistence (allow_pickle=False both ways)
    def save(self, path: str | Path) -> Path:
        """Write the reference atomically as a plain ``.npz``."""
        from liverscan.core.fileio import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            self._savez(fh)
        return path

    def _savez(self, fh) -> None:
        np.savez_compressed(
            fh,
            format_version=np.int64(FORMAT_VERSION),
            method=np.array(self.method),
            threshold=np.float64(self.threshold),
            retention=np.float64(self.retention),
            k=np.int64(self.k),
            l2=np.bool_(self.l2),
            bank=self.bank,
            means=self.means,
            basis=self.basis,
            eig=self.eig,
            floor=np.float64(self.floor),
            n_features=np.int64(self.n_features),
            n_train=np.int64(self.n_train),
            shrinkage=np.float64(self.shrinkage),
            heldout_scores=np.asarray(self.heldout_scores, np.float64),
            heldout=np.array(self.heldout),
        )

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by :meth:`save`; a damaged file is a :class:`GuardError`."""
        import zipfile

        try:
            return cls._load(path)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise GuardError(
                f"{path}: cannot read the out-of-distribution reference ({exc.__class__.__name__})"
            ) from None

    @classmethod
    def _load(cls, path: str | Path) -> Reference:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != FORMAT_VERSION:
                raise GuardError(f"{path}: OOD reference format {version}, expected {FORMAT_VERSION}")
            method = str(z["method"])
            if method not in METHODS:
                raise GuardError(f"{path}: unknown OOD method {method!r}")
            return cls(
                method=method,
                threshold=float(z["threshold"]),
                retention=float(z["retention"]),
                k=int(z["k"]),
                l2=bool(z["l2"]),
                bank=z["bank"],
                means=z["means"],
                basis=z["basis"],
                eig=z["eig"],
                floor=float(z["floor"]),
                n_features=int(z["n_features"]),
                n_train=int(z["n_train"]),
                shrinkage=float(z["shrinkage"]),
                heldout_scores=z["heldout_scores"],
                heldout=str(z["heldout"]),
            )

    def with_retention(self, retention: float) -> Reference:
        """The same reference with its threshold recomputed from the stored held-out scores."""
        import dataclasses

        if not len(self.heldout_scores):
            raise GuardError("this reference stores no held-out scores; its retention cannot be changed")
        return dataclasses.replace(
            self, threshold=calibrate_threshold(self.heldout_scores, retention), retention=float(retention)
        )

    @classmethod
    def for_model(
        cls,
        path: str | Path,
        retention: float | None = None,
        *,
        required: bool = False,
        k: int | None = None,
        method: str | None = None,
    ) -> Reference | None:
        """The reference stored with a model (None when it was trained without one) — the one rule that predict,
        evaluate and the app share: its own threshold, or one recomputed for ``retention`` when that is given
        and differs from the stored retention.

        ``required``: the model card records a reference, so a missing file is an error (the guard is never
        weakened to the image checks in silence).  ``k`` / ``method`` (None: the model's own) are fixed when
        the model is trained — the threshold is calibrated for them — so a different value is a
        :class:`ConfigError`."""
        path = Path(path)
        if not path.is_file():
            if required:
                raise GuardError(
                    f"{path}: missing, though the model card records an out-of-distribution reference; restore "
                    "the file, or turn the guard off (predict --no-ood, or --set ood.enabled=false)"
                )
            return None
        ref = cls.load(path)
        asked = {"ood.method": (method, ref.method), "ood.k": (k, ref.k if ref.method == "knn" else None)}
        for key, (want, have) in asked.items():
            if want is not None and have is not None and want != have:
                raise ConfigError(
                    f"{key}={want} cannot be applied when predicting: this model's out-of-distribution guard was "
                    f"fitted and calibrated with {key}={have}; set {key} when training"
                )
        return ref if retention is None or retention == ref.retention else ref.with_retention(retention)

    def describe(self) -> dict:
        """What the model card records about the guard (``warning``: too few images to calibrate it on)."""
        out = {
            "method": self.method,
            "k": self.k if self.method == "knn" else None,
            "l2_normalised": self.l2,
            "threshold": round(float(self.threshold), 6),
            "retention": self.retention,
            "calibrated_on": self.heldout,
            "n_calibration_images": int(len(self.heldout_scores)),
            "n_reference_images": self.n_train,
            "image_checks": "colour, blank, bright uniform border, bright flat area with sharp edges",
            "file": OOD_FILE,
        }
        warning = calibration_warning(len(self.heldout_scores), self.retention)
        if warning:
            out["warning"] = warning
        return out

    @property
    def nbytes(self) -> int:
        return int(self.bank.nbytes + self.means.nbytes + self.basis.nbytes + self.eig.nbytes)

    def flag(self, features: np.ndarray) -> np.ndarray:
        """Boolean mask: feature score above the calibrated threshold."""
        if not np.isfinite(self.threshold):
            raise GuardError("reference has no threshold: run calibrate_threshold on held-out scores first")
        return scores(self, features) > self.threshold


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit(
    train_features: np.ndarray,
    train_labels: np.ndarray | None = None,
    method: str = "knn",
    k: int = 10,
    l2: bool = True,
    shrinkage: str = "ledoit_wolf",
    max_bank: int = 4000,
    bank_dtype=np.float16,
    seed: int = 0,
) -> Reference:
    """Fit a reference on in-distribution training features (N, d) (labels: class ids or names).

    knn: stores at most ``max_bank`` L2-normalised rows (random subset beyond that) as ``bank_dtype``.
    mahalanobis: class means + shared covariance of class-centred features, shrunk with Ledoit-Wolf
    (``shrinkage="ledoit_wolf"``) or OAS (``"oas"``), or a fixed float in [0, 1].
    """
    x = np.asarray(train_features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise GuardError(f"train_features must be (N>=2, d), got {x.shape}")
    if method not in METHODS:
        raise GuardError(f"method must be one of {METHODS}, got {method!r}")
    n, d = x.shape
    if method == "knn":
        if not l2:
            raise GuardError("knn uses L2-normalised features (l2=True)")
        bank = _l2(x)
        if len(bank) > max_bank:
            bank = bank[np.random.default_rng(seed).choice(len(bank), max_bank, replace=False)]
        k = int(min(k, len(bank)))
        return Reference(method="knn", k=k, l2=True, bank=bank.astype(bank_dtype), n_features=d, n_train=n)

    # ---- Mahalanobis
    xf = _l2(x) if l2 else x
    labels = np.zeros(n, int) if train_labels is None else np.unique(np.asarray(train_labels), return_inverse=True)[1]
    means = np.stack([xf[labels == c].mean(0) for c in range(labels.max() + 1)])
    z = xf - means[labels]  # class-centred
    z = z - z.mean(0)  # already ~0
    if isinstance(shrinkage, str):
        from sklearn.covariance import OAS, LedoitWolf

        est = (LedoitWolf if shrinkage == "ledoit_wolf" else OAS)(assume_centered=True, store_precision=False).fit(z)
        s = float(est.shrinkage_)
    else:
        s = float(shrinkage)
    # shrunk covariance = (1-s) S + s * mu I with S = z^T z / n, mu = trace(S)/d; keep it low rank via SVD of z
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    lam = sv**2 / n  # eigenvalues of S (rank <= n)
    mu = float(lam.sum() / d)
    floor = s * mu
    eig = (1 - s) * lam + floor
    keep = lam > 1e-12 * max(lam.max(), 1e-30)
    return Reference(
        method="mahalanobis",
        l2=l2,
        means=means.astype(np.float32),
        basis=vt[keep].astype(np.float32),
        eig=eig[keep].astype(np.float32),
        floor=floor,
        n_features=d,
        n_train=n,
        shrinkage=s,
    )


def _float64(reference: Reference, name: str) -> np.ndarray:
    """``reference.<name>`` as float64, converted once per array (not once per batch)."""
    cache = reference.__dict__.setdefault("_float64", {})
    array = getattr(reference, name)
    hit = cache.get(name)
    if hit is None or hit[0] is not array:
        hit = cache[name] = (array, np.asarray(array, np.float64))
    return hit[1]


def scores(reference: Reference, features: np.ndarray, batch: int = 1024) -> np.ndarray:
    """OOD score per row of ``features`` (N, d); higher = more unusual. float64 maths throughout."""
    f = np.asarray(features, np.float64)
    if f.ndim == 1:
        f = f[None]
    if f.shape[1] != reference.n_features:
        raise GuardError(f"features have {f.shape[1]} dims, reference expects {reference.n_features}")
    if reference.method == "knn":
        bank = _float64(reference, "bank")
        q = _l2(f)
        out = np.empty(len(q))
        k = reference.k
        for s in range(0, len(q), batch):
            sim = q[s : s + batch] @ bank.T  # cosine similarity
            d2 = np.maximum(2.0 - 2.0 * sim, 0.0)  # squared euclidean distance of unit vectors
            kth = np.partition(d2, k - 1, axis=1)[:, k - 1]
            out[s : s + batch] = np.sqrt(kth)
        return out
    # mahalanobis, min over classes
    x = _l2(f) if reference.l2 else f
    u = reference.basis.astype(np.float64)
    eig = reference.eig.astype(np.float64)
    best = np.full(len(x), np.inf)
    for m in reference.means.astype(np.float64):
        z = x - m
        proj = z @ u.T
        sq = (z * z).sum(1)
        d2 = (proj**2 / eig).sum(1) + np.maximum(sq - (proj**2).sum(1), 0.0) / reference.floor
        best = np.minimum(best, d2)
    return np.sqrt(best)


#: fewer held-out images than this and the threshold is one of a handful of scores: it is still set (the guard
#: stays on), but the card, ``train`` and every ``predict`` run say loudly that it is unreliable
MIN_CALIBRATION_IMAGES = 20


def calibration_warning(n: int, retention: float) -> str | None:
    """The warning a guard calibrated on ``n`` held-out images carries (None from MIN_CALIBRATION_IMAGES on)."""
    if n >= MIN_CALIBRATION_IMAGES:
        return None
    return (
        f"the out-of-distribution threshold was calibrated on only {n} images (fewer than "
        f"{MIN_CALIBRATION_IMAGES}): its {retention:.0%} retention is a guess; train on more images"
    )


def calibrate_threshold(scores_heldout: np.ndarray, retention: float = 0.95) -> float:
    """Score threshold keeping ``retention`` of held-out in-distribution images (flag: score > threshold).

    Uses the empirical ``retention`` quantile with the conservative 'higher' rule, so at least
    ``retention`` of the held-out scores are <= threshold.
    """
    s = np.asarray(scores_heldout, np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise GuardError("no held-out scores")
    if not 0 < retention <= 1:
        raise GuardError("retention must be in (0, 1]")
    return float(np.quantile(s, retention, method="higher"))


def fit_calibrated(
    train_features: np.ndarray,
    train_labels: np.ndarray | None,
    heldout_features: np.ndarray,
    retention: float = 0.95,
    **kw,
) -> Reference:
    """fit() on train, then set threshold/retention from the held-out in-distribution features."""
    ref = fit(train_features, train_labels, **kw)
    return calibrate(ref, scores(ref, heldout_features), retention, f"held-out images (n={len(heldout_features)})")


def calibrate(reference: Reference, heldout_scores: np.ndarray, retention: float, heldout: str) -> Reference:
    """Set the threshold from held-out in-distribution scores and keep them for later retentions."""
    import dataclasses

    s = np.asarray(heldout_scores, np.float64)
    return dataclasses.replace(
        reference,
        threshold=calibrate_threshold(s, retention),
        retention=float(retention),
        heldout_scores=s,
        heldout=heldout,
    )


# =============================================================================== image-level checks

#: thresholds (measured on xu-liver: all 583 images, byra-rois: 550 patches -> none fire)
COLOUR_CHROMA = 60  # a pixel is "clearly coloured" when max(R,G,B) - min(R,G,B) >= this
COLOUR_SHARE = 0.05  # ... and the image is flagged when >= 5% of pixels are (xu max 0.04%; ECG traces ~1-2%)
BLANK_STD = 4.0  # grey-level standard deviation below this: blank / uniform image
BLANK_NONBLACK = 0.02  # or fewer than 2% of pixels brighter than 20 (xu min 10%)
FLAT_WINDOW = 5  # local window for "flat" (zero-variance) regions
FLAT_STD = 0.5  # a pixel is in a flat region when its 5x5 grey-level std < this
FLAT_BRIGHT = 180  # ... and bright when its grey level >= this
BORDER_PX_FRAC = 0.025  # border ring width = 2.5% of the shorter side (4 px at 160)
BORDER_FLAT_BRIGHT = 0.5  # flat bright share of the border ring (xu 0, byra max 0.33, screenshots >= 0.54)
AREA_FLAT_BRIGHT = 0.10  # flat bright share of the whole image (xu max 0.3%) ...
AREA_EDGE_DENSITY = 0.005  # ... together with sharp edges (text/lines; xu-up-to 0.9%, byra 0)
SHARP_EDGE = 80  # grey-level step between neighbouring pixels counted as a sharp edge


def _box_sum(a: np.ndarray, w: int) -> np.ndarray:
    """Sum over a w x w window (edge-padded) of an integer (H, W) array (exact; shifted slices, separable)."""
    h, wd = a.shape
    r = w // 2
    rows = np.clip(np.arange(-r, h + r), 0, h - 1)
    cols = np.clip(np.arange(-r, wd + r), 0, wd - 1)
    p = a[rows][:, cols]
    v = p[:h].copy()
    for k in range(1, w):
        v += p[k : k + h]
    out = v[:, :wd].copy()
    for k in range(1, w):
        out += v[:, k : k + wd]
    return out


def image_stats(image: np.ndarray) -> dict[str, float]:
    """The statistics the checks use, for one (H, W, 3) or (H, W) uint8 image.

    Integer arithmetic on the channel sum ``3 x grey`` (so every threshold comparison is exact and cheap):
    grey >= 180 is sum >= 540, a 5 x 5 grey-level std < 0.5 is ``25 * S2 - S1**2 < 0.25 * 9 * 625`` with the
    window's sums S1, S2 of the channel sum and of its square.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise GuardError(f"expected (H, W, 3) image, got {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:  # the checks are defined on 8-bit grey levels
        a = np.clip(np.round(a.astype(np.float64)), 0, 255).astype(np.uint8)
    s = a[..., 0].astype(np.int32) + a[..., 1] + a[..., 2]  # 3 x grey, exact (window sums fit in int32)
    red, green, blue = a[..., 0], a[..., 1], a[..., 2]
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    s1 = _box_sum(s, FLAT_WINDOW)
    s2 = _box_sum(s * s, FLAT_WINDOW)
    n = FLAT_WINDOW * FLAT_WINDOW
    flat = n * s2 - s1 * s1 < (FLAT_STD**2) * 9 * n * n  # the window's grey-level variance below FLAT_STD**2
    flat_bright = flat & (s >= 3 * FLAT_BRIGHT)
    h, w = s.shape
    b = max(1, int(round(BORDER_PX_FRAC * min(h, w))))
    ring = np.zeros((h, w), bool)
    ring[:b] = ring[-b:] = True
    ring[:, :b] = ring[:, -b:] = True
    step = np.maximum(np.abs(np.diff(s, axis=1))[:-1, :], np.abs(np.diff(s, axis=0))[:, :-1])
    return {
        "colour_share": float((chroma >= COLOUR_CHROMA).mean()),
        "grey_std": float(s.std() / 3.0),
        "nonblack_share": float((s > 3 * 20).mean()),
        "border_flat_bright": float(flat_bright[ring].mean()),
        "area_flat_bright": float(flat_bright.mean()),
        "edge_density": float((step > 3 * SHARP_EDGE).mean()),
    }


def image_reason(image: np.ndarray) -> str | None:
    """First image-level check that fires for one image, as a short reason; None when all pass."""
    s = image_stats(image)
    if s["colour_share"] >= COLOUR_SHARE:
        return f"colour image ({100 * s['colour_share']:.0f}% clearly coloured pixels; B-mode is greyscale)"
    if s["grey_std"] < BLANK_STD or s["nonblack_share"] < BLANK_NONBLACK:
        return "blank or uniform image"
    if s["border_flat_bright"] >= BORDER_FLAT_BRIGHT:
        return "bright uniform border (looks like a screenshot, document or figure, not a scanner frame)"
    if s["area_flat_bright"] >= AREA_FLAT_BRIGHT and s["edge_density"] >= AREA_EDGE_DENSITY:
        return "large bright uniform area with sharp edges (looks like a page, screenshot or collage)"
    return None


def image_checks(images_uint8_nhw3: np.ndarray) -> list[str | None]:
    """Reasons (or None) for each image of an (N, H, W, 3) uint8 batch (a single (H, W, 3) image works too)."""
    a = np.asarray(images_uint8_nhw3)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[None]
    return [image_reason(im) for im in a]


@dataclass
class Verdict:
    """The guard's answer for one image."""

    score: float | None  # feature-space score (None when no reference)
    in_distribution: bool | None  # None: no reference and no image check fired
    reason: str | None  # why it is out of distribution


def distinct(a: float, b: float, digits: int = 3, most: int = 9) -> tuple[str, str]:
    """``a`` and ``b`` with as few decimals (``digits`` at least, ``most`` at most) as show them apart:
    ``0.6243 > 0.6241``, never ``0.624 > 0.624``."""
    for k in range(digits, most + 1):
        left, right = f"{a:.{k}f}", f"{b:.{k}f}"
        if left != right:
            return left, right
    return f"{a:.{most}f}", f"{b:.{most}f}"


def assess(
    reference: Reference | None,
    images: np.ndarray,
    features: np.ndarray | None,
    reasons: list[str | None] | None = None,
) -> list[Verdict]:
    """Image checks first, then the feature score against the reference's threshold.

    Without a reference only the image checks run: an image they flag is out of
    distribution, any other gets ``in_distribution=None`` (unknown).  ``reasons``:
    the image checks' results when they already ran (where the images were decoded).
    """
    reasons = image_checks(images) if reasons is None else list(reasons)
    values = scores(reference, features) if reference is not None and features is not None else [None] * len(reasons)
    out = []
    for r, v in zip(reasons, values):
        score = None if v is None else float(v)
        if r is None and score is not None and not np.isfinite(score):
            r = "features are not finite"
        if r is None and score is not None and reference is not None and score > reference.threshold:
            shown, limit = distinct(score, reference.threshold)
            r = f"unlike the training images (score {shown} > threshold {limit})"
        inside = False if r is not None else (None if score is None else True)
        out.append(Verdict(score, inside, r))
    return out
