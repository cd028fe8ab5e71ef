"""Where is the lesion? Scoring lesion probability maps against the outlines, beside baselines.

On images with a lesion outline (original resolution; maps are squashed back bilinearly, as the images were
squashed to the model input): mean and median Dice and mean IoU of the predicted mask (the card's
:class:`~liverscan.core.lesion.LesionRule` applied to the map, with the classifier's lesion probability of the image
for its gate),
the pointing game (the map's peak inside the lesion) and the share of the map's heat inside the lesion, to read
beside the lesion's share of the scan fan (the fan outline, else the whole image).  On images of lesion-free classes
(no image of the class has an outline, or the outline is explicitly empty): the false-lesion rate (any region kept).

Baselines in the same table: the image centre (pointing), a random point in the fan (its expected pointing - and a
uniform map's heat in the lesion - is the lesion's share of the fan) and saliency maps such as the classifier's
Grad-CAM for the lesion's class (pointing and heat only: a saliency map has no probability scale to threshold).

Every figure has a percentile bootstrap CI that resamples groups (patients, near-duplicate clusters) with all
their images.  :func:`score_localisation` is the one scoring function (``evaluate`` and
``benchmarks/localisation.py``); :meth:`LocalisationMetrics.table` the one table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core import lesion
from liverscan.core.annotations import has_lesion_outlines, lesion_free_classes
from liverscan.core.gradcam import GradCam

Interval = tuple[float, float]

FIGURE_FILE = "localisation.png"  # best / median / worst cases by Dice, in the evaluation directory
CSV_FILE = "localisation.csv"  # one row per scored image

HEAD = "lesion head"
CENTRE = "image centre"
RANDOM = "random point in the fan"
#: the figures of one map, in table order: (key, column label)
FIGURES: tuple[tuple[str, str], ...] = (
    ("pointing", "pointing"),
    ("dice_mean", "Dice mean"),
    ("dice_median", "Dice median"),
    ("iou_mean", "IoU mean"),
    ("heat_in_lesion", "heat in lesion"),
    ("false_lesion_rate", "false lesions"),
)


# ---------------------------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class MapScores:
    """The figures of one way of pointing at the lesion (the head or a baseline); None where it has none.

    ``kind``: ``probability`` (a lesion head's map: every figure), ``saliency`` (relative heat: pointing and heat
    in the lesion) or ``point`` (one point per image: pointing).
    """

    name: str
    kind: str
    pointing: float | None = None
    dice_mean: float | None = None
    dice_median: float | None = None
    iou_mean: float | None = None
    heat_in_lesion: float | None = None
    false_lesion_rate: float | None = None
    intervals: dict[str, Interval | None] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        return getattr(self, key)

    def ci(self, key: str) -> Interval | None:
        return self.intervals.get(key)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MapScores:
        iv = {k: None if v is None else (float(v[0]), float(v[1])) for k, v in (d.get("intervals") or {}).items()}
        values = {k: None if d.get(k) is None else float(d[k]) for k, _ in FIGURES}
        return cls(str(d["name"]), str(d.get("kind", "probability")), intervals=iv, **values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        out.update({k: self.value(k) for k, _ in FIGURES if self.value(k) is not None})
        out["intervals"] = {k: None if v is None else [v[0], v[1]] for k, v in self.intervals.items()}
        return out


@dataclass(frozen=True)
class LocalisationMetrics:
    """The ``localisation`` section of ``metrics.json``: the head's figures first, then the baselines'."""

    source: str  # where the maps come from
    n_outlined: int  # images with a lesion outline (scored for Dice, pointing, heat)
    n_lesion_free: int  # images of lesion-free classes (scored for false lesions)
    n_with_fan: int  # outlined images with a fan outline (the others: the whole image is the fan)
    threshold: float
    min_area: float
    maps: list[MapScores]
    rule: str = ""  # the mask rule in words (LesionRule.describe)
    lesion_share_of_fan: float | None = None
    lesion_share_of_fan_ci: Interval | None = None
    n_resamples: int = 0
    level: float = 0.95
    resampled: str = "images"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): annotations not read
    figure: str | None = None  # the cases figure's file name in the evaluation directory
    #: the head's pointing and mean Dice by lesion-size quartile (the outline's share of the image), smallest first
    by_size: list[dict[str, Any]] = field(default_factory=list)

    @property
    def head(self) -> MapScores:
        return self.maps[0]

    def table(self, digits: int = 3) -> tuple[list[str], list[list[str]]]:
        """Header and rows - one per map, each figure with its CI, ``-`` where a map has none."""
        from liverscan.evaluation.results import format_with_ci

        header = ["map"] + [label for _, label in FIGURES]
        rows = [
            [m.name] + ["-" if m.value(k) is None else format_with_ci(m.value(k), m.ci(k), digits) for k, _ in FIGURES]
            for m in self.maps
        ]
        return header, rows

    def size_table(self, digits: int = 3) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the head's figures by lesion-size quartile (none when too few outlines)."""
        header = ["lesion size (share of the image)", "images", "pointing", "Dice (mean)"]
        rows = [
            [
                f"Q{q['quartile']}: {q['size_from']:.2%}–{q['size_to']:.2%}",
                str(q["n"]),
                "-" if q["pointing"] is None else f"{q['pointing']:.{digits}f}",
                "-" if q["dice_mean"] is None else f"{q['dice_mean']:.{digits}f}",
            ]
            for q in self.by_size
        ]
        return header, rows

    def describe(self) -> str:
        """One sentence: what was scored, how, and the CI."""
        fan = f"{self.n_with_fan} with a fan outline" if self.n_with_fan else "no fan outlines: the whole image"
        rule = self.rule or f"map >= {self.threshold:g} without regions under {self.min_area:g} of the image"
        return (
            f"{self.source}: {self.n_outlined} images with a lesion outline ({fan}), {self.n_lesion_free} of "
            f"lesion-free classes; mask: {rule}; lesion's share of the fan "
            f"{_fmt(self.lesion_share_of_fan, self.lesion_share_of_fan_ci)}; "
            f"{self.level:.0%} bootstrap CIs over {self.resampled} ({self.n_resamples} resamples)."
        )

    def headline(self) -> dict[str, Any]:
        """What the model card quotes: the head's figures with their CIs, and the lesion's share of the fan."""

        def pair(v: float | None, ci: Interval | None) -> dict[str, Any]:
            return {
                "value": None if v is None else round(v, 4),
                "ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
            }

        out: dict[str, Any] = {k: pair(self.head.value(k), self.head.ci(k)) for k, _ in FIGURES}
        out["lesion_share_of_fan"] = pair(self.lesion_share_of_fan, self.lesion_share_of_fan_ci)
        out.update(n_outlined=self.n_outlined, n_lesion_free=self.n_lesion_free)
        out["ci"] = f"{self.level:.0%} bootstrap over {self.resampled}"
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LocalisationMetrics | None:
        if not d or not d.get("maps"):
            return None
        ci = d.get("lesion_share_of_fan_ci")
        return cls(
            source=str(d.get("source", "")),
            n_outlined=int(d.get("n_outlined", 0)),
            n_lesion_free=int(d.get("n_lesion_free", 0)),
            n_with_fan=int(d.get("n_with_fan", 0)),
            threshold=float(d.get("threshold", lesion.THRESHOLD)),
            min_area=float(d.get("min_area", lesion.MIN_AREA)),
            maps=[MapScores.from_dict(m) for m in d["maps"]],
            rule=str(d.get("rule") or ""),
            lesion_share_of_fan=d.get("lesion_share_of_fan"),
            lesion_share_of_fan_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            n_resamples=int(d.get("n_resamples", 0)),
            level=float(d.get("level", 0.95)),
            resampled=str(d.get("resampled", "images")),
            skipped=[(str(s["path"]), str(s["reason"])) for s in d.get("skipped") or []],
            figure=d.get("figure"),
            by_size=[dict(q) for q in d.get("by_size") or []],
        )

    def to_dict(self) -> dict[str, Any]:
        ci = self.lesion_share_of_fan_ci
        return {
            "source": self.source,
            "n_outlined": self.n_outlined,
            "n_lesion_free": self.n_lesion_free,
            "n_with_fan": self.n_with_fan,
            "threshold": self.threshold,
            "min_area": self.min_area,
            "rule": self.rule,
            "lesion_share_of_fan": self.lesion_share_of_fan,
            "lesion_share_of_fan_ci": None if ci is None else [ci[0], ci[1]],
            "maps": [m.to_dict() for m in self.maps],
            "n_resamples": self.n_resamples,
            "level": self.level,
            "resampled": self.resampled,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "figure": self.figure,
            "by_size": self.by_size,
        }


def _fmt(v: float | None, ci: Interval | None) -> str:
    from liverscan.evaluation.results import format_with_ci

    return format_with_ci(v, ci)


# ---------------------------------------------------------------------------------------------- scoring


def _heat_share(up: np.ndarray, mask: np.ndarray) -> float:
    total = float(up.sum())
    return float((up * mask).sum() / total) if total > 0 else 0.0


def per_image(
    maps: Iterable[np.ndarray],
    lesion_masks: Iterable[np.ndarray | None],
    fan_masks: Iterable[np.ndarray | None],
    lesion_free: Sequence[bool] | np.ndarray,
    rule: lesion.LesionRule | None = None,
    saliency: Mapping[str, Sequence[np.ndarray | None]] | None = None,
    lesion_probability: Sequence[float | None] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-image figures (NaN where one does not apply), streamed one image at a time.

    ``maps``: ``(h, w)`` probabilities (any size: squashed onto the mask); ``lesion_masks``: ``(H, W)`` bool at the
    original size, None without an outline (an empty mask: "nothing there", scored like a lesion-free image);
    ``fan_masks``: the scan fan at the same size, None for the whole image; ``lesion_free``: images of
    lesion-free classes; ``rule``: what the map shows (default ``p >= 0.5``); ``saliency``: name -> maps of other
    methods (pointing and heat only; None: not scored); ``lesion_probability``: the classifier's probability of the
    lesion classes for each image (the rule's gate; None: no gate).
    Columns: ``dice``, ``iou``, ``pointing``, ``heat``, ``share`` (lesion / fan), ``centre``, ``false``, ``size``
    (the outline's share of the image) and
    ``<name>:pointing`` / ``<name>:heat`` for each saliency method.
    """
    saliency = dict(saliency or {})
    rule = rule or lesion.LesionRule()
    free = np.asarray(lesion_free, bool)
    n = len(free)
    gates = [None] * n if lesion_probability is None else list(lesion_probability)
    keys = ["dice", "iou", "pointing", "heat", "share", "centre", "false", "fan", "size"]
    keys += [f"{s}:{k}" for s in saliency for k in ("pointing", "heat")]
    out = {k: np.full(n, np.nan) for k in keys}
    i = -1
    for i, (prob, mask, fan) in enumerate(zip(maps, lesion_masks, fan_masks)):
        if i >= n:
            raise ValueError(f"more maps than lesion_free flags ({n})")
        p = np.asarray(prob, dtype=np.float32)
        if mask is None or not np.asarray(mask).any():
            if free[i] or mask is not None:
                out["false"][i] = float(rule.mask(p, gates[i]).any())
            continue
        m = np.asarray(mask, bool)
        h, w = m.shape
        up = lesion.upsample(p, w, h)
        pred = rule.mask(up, gates[i])
        out["dice"][i], out["iou"][i] = lesion.dice(pred, m), lesion.iou(pred, m)
        out["pointing"][i] = float(lesion.pointing_hit(p, m))
        out["size"][i] = float(m.mean())
        out["heat"][i] = _heat_share(up, m)
        has_fan = fan is not None and np.asarray(fan).any()
        f = np.asarray(fan, bool) if has_fan else np.ones_like(m)
        out["share"][i] = float(np.logical_and(m, f).sum() / f.sum())
        out["fan"][i] = float(has_fan)
        out["centre"][i] = float(m[h // 2, w // 2])
        for s, cams in saliency.items():
            cam = cams[i]
            if cam is None:
                continue
            c = np.asarray(cam, dtype=np.float32)
            out[f"{s}:pointing"][i] = float(lesion.pointing_hit(c, m))
            out[f"{s}:heat"][i] = _heat_share(lesion.upsample(c, w, h), m)
    if i + 1 != n:
        raise ValueError(f"{i + 1} maps for {n} images")
    return out


def _members(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Group index of every image (each image its own group without ``groups``)."""
    if groups is None:
        return np.arange(n)
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return inverse.ravel()


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` each repeated ``weights`` times (NaN when all weights are 0)."""
    drawn = np.repeat(values, weights)
    return float(np.median(drawn)) if len(drawn) else float("nan")


def bootstrap_intervals(
    columns: Mapping[str, tuple[np.ndarray, bool]],
    groups: Sequence[Any] | np.ndarray | None,
    n_resamples: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval | None]:
    """Percentile CIs of the mean (or median: ``(values, True)``) of each column, resampling whole groups.

    NaN values do not take part; a CI needs at least ``max(10, n_resamples // 10)`` defined resamples.
    """
    if n_resamples <= 0 or not columns:
        return {k: None for k in columns}
    n = len(next(iter(columns.values()))[0])
    member = _members(groups, n)
    n_groups = int(member.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    counts = np.stack(
        [np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups) for _ in range(n_resamples)]
    )
    weights = counts[:, member]  # (resamples, images): how often each image is drawn
    alpha = (1 - level) / 2
    out: dict[str, Interval | None] = {}
    for key, (values, median) in columns.items():
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        if median:
            stats = np.array([_weighted_median(v[ok], w[ok]) for w in weights])
        else:
            den = weights[:, ok].sum(1)
            stats = np.divide(weights[:, ok] @ v[ok], den, out=np.full(n_resamples, np.nan), where=den > 0)
        stats = stats[np.isfinite(stats)]
        if len(stats) < max(10, n_resamples // 10):
            out[key] = None
            continue
        lo, hi = np.quantile(stats, [alpha, 1 - alpha])
        out[key] = (float(lo), float(hi))
    return out


def _point(v: np.ndarray, median: bool = False) -> float | None:
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    return float(np.median(v) if median else v.mean())


def size_quartiles(figures: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The head's pointing and mean Dice in each quartile of lesion size (the outline's share of the image; the
    smallest quarter is where heads fail), smallest first; empty with fewer than 8 outlined images."""
    size = np.asarray(figures.get("size", []), np.float64)
    outlined = np.isfinite(size)
    if outlined.sum() < 8:
        return []
    edges = np.quantile(size[outlined], [0.0, 0.25, 0.5, 0.75, 1.0])
    quarter = np.clip(np.searchsorted(edges[1:-1], size, side="right"), 0, 3)
    out = []
    for k in range(4):
        sel = outlined & (quarter == k)
        out.append(
            {
                "quartile": k + 1,
                "size_from": float(edges[k]),
                "size_to": float(edges[k + 1]),
                "n": int(sel.sum()),
                "pointing": _point(np.asarray(figures["pointing"], np.float64)[sel]),
                "dice_mean": _point(np.asarray(figures["dice"], np.float64)[sel]),
            }
        )
    return out


def summarise(
    figures: Mapping[str, np.ndarray],
    groups: Sequence[Any] | np.ndarray | None = None,
    rule: lesion.LesionRule | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    *,
    name: str = HEAD,
    source: str = "",
    level: float = 0.95,
) -> LocalisationMetrics:
    """:class:`LocalisationMetrics` from :func:`per_image` figures, with group-bootstrap CIs."""
    rule = rule or lesion.LesionRule()
    saliency = [k[: -len(":pointing")] for k in figures if k.endswith(":pointing")]
    # (map name, kind, {figure key: (per-image column, median)})
    spec: list[tuple[str, str, dict[str, tuple[np.ndarray, bool]]]] = [
        (
            name,
            "probability",
            {
                "pointing": (figures["pointing"], False),
                "dice_mean": (figures["dice"], False),
                "dice_median": (figures["dice"], True),
                "iou_mean": (figures["iou"], False),
                "heat_in_lesion": (figures["heat"], False),
                "false_lesion_rate": (figures["false"], False),
            },
        )
    ]
    spec += [
        (
            s,
            "saliency",
            {"pointing": (figures[f"{s}:pointing"], False), "heat_in_lesion": (figures[f"{s}:heat"], False)},
        )
        for s in saliency
    ]
    spec += [
        (CENTRE, "point", {"pointing": (figures["centre"], False)}),
        (RANDOM, "point", {"pointing": (figures["share"], False), "heat_in_lesion": (figures["share"], False)}),
    ]
    flat = {f"{i}/{k}": col for i, (_, _, cols) in enumerate(spec) for k, col in cols.items()}
    flat["share"] = (figures["share"], False)
    intervals = bootstrap_intervals(flat, groups, bootstrap, seed, level)
    maps = []
    for i, (map_name, kind, cols) in enumerate(spec):
        values = {k: _point(np.asarray(c, np.float64), median) for k, (c, median) in cols.items()}
        maps.append(MapScores(map_name, kind, intervals={k: intervals[f"{i}/{k}"] for k in cols}, **values))
    outlined = np.isfinite(figures["dice"])
    n = len(figures["dice"])
    resampled = "images" if groups is None or len(np.unique(_members(groups, n))) == n else "groups"
    return LocalisationMetrics(
        source=source,
        n_outlined=int(outlined.sum()),
        n_lesion_free=int(np.isfinite(figures["false"]).sum()),
        n_with_fan=int(np.nansum(figures["fan"])),
        threshold=float(rule.threshold),
        min_area=float(rule.min_area),
        maps=maps,
        rule=rule.describe(),
        lesion_share_of_fan=_point(np.asarray(figures["share"], np.float64)),
        lesion_share_of_fan_ci=intervals["share"],
        n_resamples=int(bootstrap),
        level=level,
        resampled=resampled,
        by_size=size_quartiles(figures),
    )


def score_localisation(
    maps: Iterable[np.ndarray],
    lesion_masks: Iterable[np.ndarray | None],
    fan_masks: Iterable[np.ndarray | None],
    lesion_free: Sequence[bool] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    rule: lesion.LesionRule | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    *,
    saliency: Mapping[str, Sequence[np.ndarray | None]] | None = None,
    lesion_probability: Sequence[float | None] | np.ndarray | None = None,
    name: str = HEAD,
    source: str = "",
) -> LocalisationMetrics:
    """Score lesion probability ``maps`` against the outlines, beside the baselines (see :func:`per_image` for
    the inputs); CIs from ``bootstrap`` resamples of ``groups``."""
    rule = rule or lesion.LesionRule()
    figures = per_image(maps, lesion_masks, fan_masks, lesion_free, rule, saliency, lesion_probability)
    return summarise(figures, groups, rule, bootstrap, seed, name=name, source=source)


# ---------------------------------------------------------------------------------------------- the cases figure


@dataclass
class Case:
    """One scored image for the cases figure."""

    label: str  # e.g. "best (Dice 0.91)"
    path: str  # the image file
    prob: np.ndarray  # (h, w) probability map
    mask: np.ndarray  # (H, W) bool true lesion at the original size
    rule: lesion.LesionRule = field(default_factory=lesion.LesionRule)
    lesion_probability: float | None = None  # the classifier's, for the rule's gate


def pick_cases(dice: np.ndarray) -> list[tuple[str, int]]:
    """(label, index) of the best, median and worst image by Dice (fewer when fewer are scored)."""
    d = np.asarray(dice, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(d))
    if not len(idx):
        return []
    order = idx[np.argsort(-d[idx], kind="stable")]
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    out, seen = [], set()
    for label, i in picks:
        if int(i) not in seen:
            seen.add(int(i))
            out.append((f"{label} (Dice {d[i]:.2f})", int(i)))
    return out


def cases_figure(
    cases: Sequence[Case], path: str | Path, title: str = "Lesion localisation: best, median and worst image by Dice"
) -> None:
    """One row per case: the image with the true outline, with the predicted outline, and the probability map."""
    from liverscan.core.images import display_image
    from liverscan.core.plots import new_figure, save_figure

    fig = new_figure((10.5, 3.4 * max(1, len(cases))))
    axes = np.atleast_2d(fig.subplots(max(1, len(cases)), 3, squeeze=False))
    for row, case in zip(axes, cases):
        h, w = case.mask.shape
        img = display_image(case.path)
        up = lesion.upsample(case.prob, w, h)
        pred = case.rule.mask(up, case.lesion_probability)
        extent = (0, w, h, 0)
        for ax, what in zip(row, ("true outline", "predicted outline", "lesion probability")):
            if what == "lesion probability":
                im = ax.imshow(up, cmap="magma", vmin=0, vmax=1, extent=extent)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax.imshow(img, extent=extent)
            for poly in lesion.outline(case.mask if what != "predicted outline" else pred):
                closed = np.vstack([poly, poly[:1]])
                colour = "#2ca02c" if what != "predicted outline" else "#d62728"
                ax.plot(closed[:, 0], closed[:, 1], color=colour, linewidth=1.5)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{what}" if what != "true outline" else f"{case.label}: {Path(case.path).name}", fontsize=9)
    fig.suptitle(f"{title} (green: true outline, red: predicted)")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- inputs


def read_masks(row: Mapping[str, str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(lesion mask, fan mask) of a manifest row at its original size (None: no such annotation)."""
    from liverscan.core.annotations import read_annotation

    w, h = int(row["width"]), int(row["height"])
    les, fan = row.get("lesion_annotation") or "", row.get("fan_annotation") or ""
    lesion_mask = read_annotation(les, w, h, "lesion").mask if les else None
    fan_mask = read_annotation(fan, w, h, "fan").mask if fan else None
    return lesion_mask, fan_mask


@dataclass
class Localised:
    """A scored evaluation: the section, the per-image table (``localisation.csv``) and the figure's cases."""

    metrics: LocalisationMetrics
    header: list[str]
    rows: list[list[Any]]
    cases: list[Case]


def localise(
    maps: np.ndarray,
    rows: Sequence[Mapping[str, str]],
    free_classes: set[str],
    groups: Sequence[Any] | np.ndarray | None,
    rule: lesion.LesionRule,
    bootstrap: int,
    seed: int,
    *,
    source: str,
    saliency: Mapping[str, Sequence[np.ndarray | None]] | None = None,
    lesion_probability: Sequence[float | None] | np.ndarray | None = None,
) -> Localised:
    """Score ``maps`` (one per manifest row) by ``rule`` against the rows' outlines (``lesion_probability``: the
    classifier's per row, for the rule's gate); an annotation that cannot be read leaves its image out (listed in
    ``skipped``), the rest is scored."""
    from liverscan.core.errors import AnnotationError

    skipped: list[tuple[str, str]] = []
    lesion_masks: list[np.ndarray | None] = []
    fans: list[np.ndarray | None] = []
    scored = np.ones(len(rows), bool)
    for i, r in enumerate(rows):
        try:
            les, fan = read_masks(r)
        except (AnnotationError, ValueError) as exc:
            skipped.append(
                (getattr(exc, "path", r.get("lesion_annotation") or r["path"]), getattr(exc, "reason", str(exc)))
            )
            les, fan, scored[i] = None, None, False
        lesion_masks.append(les)
        fans.append(fan)
    free = [bool(scored[i] and r["class"] in free_classes) for i, r in enumerate(rows)]
    gates = [None] * len(rows) if lesion_probability is None else list(lesion_probability)
    figures = per_image(maps, lesion_masks, fans, free, rule, saliency, gates)
    metrics = summarise(figures, groups, rule, bootstrap, seed, source=source)
    metrics = replace(metrics, skipped=skipped)
    names = [k[: -len(":pointing")] for k in figures if k.endswith(":pointing")]
    header = ["path", "class", "role", "dice", "iou", "pointing", "heat_in_lesion", "lesion_share_of_fan"]
    header += ["false_lesion", "centre_pointing"] + [f"{s} {k}" for s in names for k in ("pointing", "heat_in_lesion")]
    out_rows = []
    for i, r in enumerate(rows):
        role = (
            "outlined" if np.isfinite(figures["dice"][i]) else "lesion-free" if np.isfinite(figures["false"][i]) else ""
        )
        if not role:
            continue
        cells = [figures[k][i] for k in ("dice", "iou", "pointing", "heat", "share", "false", "centre")]
        cells += [figures[f"{s}:{k}"][i] for s in names for k in ("pointing", "heat")]
        out_rows.append([r["path"], r["class"], role] + ["" if not np.isfinite(v) else f"{v:.4f}" for v in cells])
    cases = [
        Case(label, rows[i]["path"], np.asarray(maps[i]), lesion_masks[i], rule, gates[i])  # type: ignore[arg-type]
        for label, i in pick_cases(figures["dice"])
    ]
    return Localised(metrics, header, out_rows, cases)


def write_outputs(found: Localised, out_dir: Path, figures: bool) -> LocalisationMetrics:
    """Write ``localisation.csv`` (and with ``figures`` the cases figure) into ``out_dir``; returns the section
    naming the figure when one was drawn (an image that cannot be read any more leaves the figure out)."""
    from liverscan.core.errors import ImageDecodeError
    from liverscan.core.fileio import write_csv_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out_dir / CSV_FILE, found.header, found.rows)
    if not figures or not found.cases:
        return found.metrics
    try:
        cases_figure(found.cases, out_dir / FIGURE_FILE)
    except ImageDecodeError:
        return found.metrics
    return replace(found.metrics, figure=FIGURE_FILE)


# ---------------------------------------------------------------------------------------------- runs


def _gates(rule: lesion.LesionRule, classes: Sequence[str], probs: Iterable[Any] | None) -> list[float | None] | None:
    """The classifier's lesion probability of each image (``probs``: one row per image, None where unknown) for
    the rule's gate."""
    if probs is None or rule.gate is None:
        return None
    return [None if p is None else rule.lesion_probability(dict(zip(classes, map(float, p)))) for p in probs]


def head_localisation(run, ds, model, bootstrap: int, seed: int, probs: np.ndarray | None = None) -> Localised | None:
    """Score the run's lesion head on evaluated images ``ds`` (:class:`~liverscan.evaluation.labelled.
    LabelledImages` of a prepared dataset) beside the classifier ``model``'s Grad-CAM for each outlined image's
    class; ``probs``: the classifier's probabilities of ``ds`` as ``predict`` shows them (the rule's gate); None
    when the run has no head or the images have no outlines."""
    from liverscan.core.artifacts import LESION_FILE
    from liverscan.core.model import load_model

    card_lesion = run.card.lesion
    if not card_lesion or run.run_dir is None or not ds.rows or not has_lesion_outlines(ds.rows):
        return None
    path = run.run_dir / (card_lesion.get("file") or LESION_FILE)
    if not path.is_file():
        return None
    maps = lesion.predict_maps(load_model(path), ds.x)
    outlined = np.flatnonzero([bool(r.get("lesion_annotation")) for r in ds.rows])
    lesion_classes = sorted({ds.rows[i]["class"] for i in outlined})
    saliency: dict[str, Sequence[np.ndarray | None]] = {}
    try:
        cams = GradCam(model)(ds.x[outlined], ds.y[outlined])
    except ValueError:  # not a liverscan classifier (no pooling layer or head): no Grad-CAM to compare with
        cams = None
    if cams is not None:
        per: list[np.ndarray | None] = [None] * len(ds.rows)
        for k, i in enumerate(outlined):
            per[i] = cams[k]
        saliency[f"Grad-CAM ({'/'.join(lesion_classes)})"] = per
    rule = lesion.LesionRule.from_entry(card_lesion)
    free = lesion_free_classes(ds.manifest or ds.rows)
    source = f"lesion head {path.name} on {ds.source}"
    gates = _gates(rule, run.classes, probs)
    return localise(
        maps,
        ds.rows,
        free,
        ds.groups,
        rule,
        bootstrap,
        seed,
        source=source,
        saliency=saliency,
        lesion_probability=gates,
    )


def oof_localisation(
    run, bootstrap: int, seed: int, probabilities: Mapping[str, np.ndarray] | None = None
) -> Localised | None:
    """Score the out-of-fold lesion maps a cross-validated run wrote (``lesion_oof.npz``: ``paths``, ``maps``)
    against its prepared dataset's outlines; ``probabilities``: path -> the classifier's out-of-fold
    probabilities (the rule's gate); None without that file, a head, or the prepared dataset."""
    from liverscan.core.artifacts import LESION_OOF_FILE
    from liverscan.core.dataset import PreparedData
    from liverscan.core.errors import LiverscanError, RunDirError

    card_lesion = run.card.lesion
    path = Path(run.run_dir or ".") / LESION_OOF_FILE
    if not card_lesion or run.run_dir is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            paths = [str(p) for p in z["paths"]]
            maps = np.asarray(z["maps"], np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable out-of-fold lesion maps ({exc.__class__.__name__}: {exc})") from None
    if maps.ndim != 3 or len(maps) != len(paths):
        raise RunDirError(f"{path}: expected maps (N, S, S) for N paths, got {maps.shape} for {len(paths)} paths")
    try:
        manifest = PreparedData(run.card.prepared_dir or "").rows
    except LiverscanError:
        return None  # the prepared dataset (and its outlines) is gone
    row_of = {r["path"]: r for r in manifest}
    keep = [i for i, p in enumerate(paths) if p in row_of]
    rows = [row_of[paths[i]] for i in keep]
    if not has_lesion_outlines(rows):
        return None
    groups = [r.get("group") or r["path"] for r in rows]
    rule = lesion.LesionRule.from_entry(card_lesion)
    held = None if probabilities is None else [probabilities.get(paths[i]) for i in keep]
    gates = _gates(rule, run.classes, held)
    return localise(
        maps[keep],
        rows,
        lesion_free_classes(manifest),
        groups,
        rule,
        bootstrap,
        seed,
        source=f"out-of-fold lesion maps ({LESION_OOF_FILE})",
        lesion_probability=gates,
    )
