"""The decision rule, in one place: an operating point is parsed, fitted, applied, described and stored.

An operating point turns a model's probabilities into decisions: temperature scaling
(``softmax(log p / T)``), then a rule — argmax, per-class weights (``balanced``), or a threshold on one
class's probability (``CLASS>=SENSITIVITY``).  It is fitted on held-out predictions, at the image level,
or at the patient level (``level="group"``: the temperature on the frames, the rule on the groups'
aggregated calibrated probabilities, with the aggregation rule ``group_rule`` it was fitted with).
Without a fitted point the model's own argmax decides (:data:`ARGMAX`).

The review threshold (:data:`REVIEW_CONFIDENCE`, the configuration's default) applies with it: an answer
whose confidence is below it is flagged for review, by ``predict``, study aggregation and the app alike.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liverscan.core.aggregate import aggregate, aggregate_groups, group_indices
from liverscan.core.config import REVIEW_CONFIDENCE as REVIEW_CONFIDENCE  # the review threshold, defined once
from liverscan.core.errors import ConfigError, ModelError

#: where an operating point is fitted: on single images, or on patients (groups of images)
LEVELS = ("image", "group")


@dataclass(frozen=True)
class Goal:
    """What an operating point is fitted for: ``balanced`` accuracy, or a class's sensitivity."""

    kind: str  # "balanced" | "sensitivity"
    class_name: str | None = None
    target: float | None = None

    @classmethod
    def parse(cls, spec: str, classes: Sequence[str]) -> Goal:
        """``'balanced'`` or ``'CLASS>=SENSITIVITY'`` (e.g. ``'tumor>=0.95'``)."""
        spec = spec.strip()
        if spec == "balanced":
            return cls("balanced")
        m = re.fullmatch(r"(\w[\w\- ]*)\s*>=\s*([0-9.]+)", spec)
        if not m:
            raise ConfigError(f"operating point {spec!r}: use 'balanced' or 'CLASS>=SENSITIVITY' like 'tumor>=0.95'")
        name, target = m.group(1).strip(), float(m.group(2))
        if name not in classes:
            raise ConfigError(f"operating point {spec!r}: unknown class {name!r} (classes: {', '.join(classes)})")
        if not 0 < target <= 1:
            raise ConfigError(f"operating point {spec!r}: sensitivity must be in (0, 1]")
        return cls("sensitivity", name, target)


@dataclass
class OperatingPoint:
    """Temperature + decision rule, with where it was fitted (as stored in the model card).

    ``rule``: ``None`` (argmax), ``{"type": "weights", "weights": [...]}`` (argmax of p * w) or
    ``{"type": "threshold", "class_index": c, "class": name, "threshold": t}`` (c when p_c >= t,
    otherwise the most probable other class).
    """

    spec: str = "argmax"
    temperature: float = 1.0
    rule: dict[str, Any] | None = None
    description: str = "the most probable class"
    level: str = "image"
    group_rule: str | None = None  # the aggregation a patient-level point was fitted with
    fitted_on: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    cross_validated: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # card keys this version does not know, kept

    # -- fitting --------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        y: np.ndarray,
        probs: np.ndarray,
        goal: Goal | str,
        classes: Sequence[str],
        where: str = "validation",
        temperature: float | None = None,
    ) -> OperatingPoint:
        """Fit the temperature (unless given) and the rule for ``goal`` on held-out (y, probs)."""
        given = goal if isinstance(goal, str) else None
        goal = Goal.parse(goal, classes) if isinstance(goal, str) else goal
        temperature = fit_temperature(y, probs) if temperature is None else temperature
        cal = apply_temperature(probs, temperature)
        rule: dict[str, Any]
        if goal.kind == "balanced":
            rule = {"type": "weights", "weights": fit_balanced_weights(y, cal)}
            desc = f"temperature-scaled probabilities x per-class weights maximising {where} balanced accuracy"
            spec = "balanced"
        else:
            assert goal.class_name is not None and goal.target is not None
            ci = list(classes).index(goal.class_name)
            t = fit_sensitivity_threshold(y, cal, ci, goal.target)
            rule = {"type": "threshold", "class_index": ci, "class": goal.class_name, "threshold": t}
            desc = (
                f"predict {goal.class_name} when its temperature-scaled probability >= {t:.4f} "
                f"({where} sensitivity target {goal.target})"
            )
            spec = f"{goal.class_name}>={goal.target:g}"
        return cls(spec=given or spec, temperature=float(temperature), rule=rule, description=desc)

    @classmethod
    def fit_groups(
        cls,
        y: np.ndarray,
        probs: np.ndarray,
        keys: Sequence[Hashable],
        goal: Goal | str,
        classes: Sequence[str],
        group_rule: str,
        where: str,
    ) -> OperatingPoint:
        """A patient-level point, fitted the way it is applied: the temperature on the frames, then the
        rule on the groups' aggregated calibrated probabilities."""
        temperature = fit_temperature(y, probs)
        _, yg, pg, _ = aggregate_groups(y, apply_temperature(probs, temperature), keys, group_rule, classes)
        point = cls.fit(yg, pg, goal, classes, f"{where}, per patient ({group_rule} of its images)", temperature=1.0)
        point.temperature, point.level, point.group_rule = temperature, "group", group_rule
        return point

    # -- applying -------------------------------------------------------------------------------------

    @property
    def is_argmax(self) -> bool:
        """True for the model's own argmax (no fitted point)."""
        return self.spec == "argmax" and self.rule is None and self.temperature == 1.0

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The probabilities as records show them: temperature-scaled (unchanged without a fitted point)."""
        return np.asarray(probs) if self.is_argmax else apply_temperature(probs, self.temperature)

    def decide(self, calibrated: np.ndarray) -> np.ndarray:
        """Class indices for calibrated probabilities (N x classes)."""
        return predict_with_rule(calibrated, self.rule)

    def apply(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, calibrated probabilities) for raw model probabilities."""
        cal = self.calibrate(probs)
        return self.decide(cal), cal

    def decide_group(self, calibrated: np.ndarray, group_rule: str, classes: Sequence[str]) -> tuple[np.ndarray, int]:
        """(the group's probabilities, its class index) from its frames' calibrated probabilities.

        ``vote``: each frame decided by this rule, the group is the majority; ``mean``/``max``: the
        frames aggregated, then this rule decides the group."""
        cal = np.asarray(calibrated, dtype=np.float64)
        if group_rule == "vote":
            agg = aggregate(cal, "vote", classes, self.decide(cal))
            return agg, int(np.argmax(agg))
        agg = aggregate(cal, group_rule, classes)
        return agg, int(self.decide(agg[None])[0])

    def decide_groups(
        self, probs: np.ndarray, keys: Sequence[Hashable], group_rule: str, classes: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class indices) per group, groups in order of first appearance, from raw frame
        probabilities — as ``predict --group-by`` answers studies."""
        cal = self.calibrate(probs)
        decided = [self.decide_group(cal[idx], group_rule, classes) for idx in group_indices(keys).values()]
        return np.array([p for p, _ in decided]), np.array([k for _, k in decided], dtype=int)

    # -- describing and storing -----------------------------------------------------------------------

    def describe(self) -> str:
        """How records name this rule (``decision_rule``)."""
        return "argmax" if self.is_argmax else f"operating point {self.spec}"

    def to_card(self) -> dict[str, Any] | None:
        """The model card's ``operating_point`` entry (None for argmax)."""
        if self.is_argmax:
            return None
        out: dict[str, Any] = {"spec": self.spec, "level": self.level}
        if self.level == "group":
            out["group_rule"] = self.group_rule
        out.update(temperature=self.temperature, rule=self.rule, description=self.description)
        for key in ("fitted_on", "validation", "cross_validated"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out

    @classmethod
    def from_card(cls, entry: dict[str, Any] | None) -> OperatingPoint | None:
        """The point stored in a model card (None when the card has none)."""
        if not entry:
            return None
        known = {"spec", "level", "group_rule", "temperature", "rule", "description"}
        known |= {"fitted_on", "validation", "cross_validated"}
        try:
            level = entry.get("level") or "image"
            if level not in LEVELS:
                raise ModelError(f"the model card's operating point has an unknown level {level!r}")
            return cls(
                spec=str(entry["spec"]),
                temperature=float(entry["temperature"]),
                rule=entry.get("rule"),
                description=str(entry.get("description", "")),
                level=level,
                group_rule=entry.get("group_rule"),
                fitted_on=entry.get("fitted_on"),
                validation=entry.get("validation"),
                cross_validated=entry.get("cross_validated"),
                extra={k: v for k, v in entry.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"the model card's operating point is malformed ({exc.__class__.__name__}: {exc})"
            ) from None


#: the model's own answer: no temperature, argmax
ARGMAX = OperatingPoint()


# -- the arithmetic ---------------------------------------------------------------------------------------


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens over-confident probabilities."""
    z = _logits(probs) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict_with_rule(probs: np.ndarray, rule: dict[str, Any] | None) -> np.ndarray:
    """Class indices under a decision rule (None = argmax); see :class:`OperatingPoint`."""
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
    raise ModelError(f"unknown decision rule {rule['type']!r} in the model card")


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The temperature minimising held-out log-loss (bounded scalar search)."""
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    labels = list(range(np.asarray(probs).shape[1]))

    def nll(log_t: float) -> float:
        return float(log_loss(y_true, np.clip(apply_temperature(probs, np.exp(log_t)), 1e-12, 1), labels=labels))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def fit_balanced_weights(y_true: np.ndarray, probs: np.ndarray, grid: int = 41, rounds: int = 3) -> list[float]:
    """Per-class multipliers on probabilities maximising balanced accuracy (coordinate search)."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y_true)
    k = probs.shape[1]
    w = np.ones(k)
    candidates = np.exp(np.linspace(-3, 3, grid))

    def score(weights: np.ndarray) -> float:
        return float(balanced_accuracy_score(y, (probs * weights).argmax(1)))

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
    """The highest threshold on p(class) whose held-out sensitivity reaches ``target``."""
    from sklearn.metrics import recall_score

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
