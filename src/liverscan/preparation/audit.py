"""Dataset audit: imbalance, duplicates, conflicts and shortcut risks."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

#: A trivial classifier beating the majority baseline by this much (balanced
#: accuracy) triggers the shortcut warning.
SHORTCUT_MARGIN = 0.15


@dataclass
class ShortcutCheck:
    features: list[str]
    balanced_accuracy: float
    baseline_balanced_accuracy: float
    accuracy: float
    baseline_accuracy: float
    folds: int
    warning: bool


def shortcut_check(
    widths: list[int], heights: list[int], means: list[float], labels: list[str], groups: list[str], seed: int = 0
) -> ShortcutCheck | None:
    """Cross-validate a depth-3 tree on geometry + mean intensity against the majority class.

    Folds are group-aware, so near-duplicates cannot inflate the score.
    Returns None when there are too few images or classes to cross-validate.
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.model_selection import StratifiedGroupKFold, cross_validate
    from sklearn.tree import DecisionTreeClassifier

    y = np.array(labels)
    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2 or len(set(groups)) < 4:
        return None
    w = np.array(widths, dtype=float)
    h = np.array(heights, dtype=float)
    x = np.column_stack([w, h, w / np.maximum(h, 1), np.array(means, dtype=float)])
    folds = int(min(5, min(counts.values()), len(set(groups))))
    folds = max(folds, 2)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scoring = ("balanced_accuracy", "accuracy")
    with warnings.catch_warnings():  # tiny folds holding one class make scikit-learn warn; the check still holds
        warnings.simplefilter("ignore", UserWarning)
        tree = cross_validate(
            DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=seed),
            x,
            y,
            groups=groups,
            cv=cv,
            scoring=scoring,
        )
        dummy = cross_validate(DummyClassifier(strategy="most_frequent"), x, y, groups=groups, cv=cv, scoring=scoring)
    bal = float(np.mean(tree["test_balanced_accuracy"]))
    base_bal = float(np.mean(dummy["test_balanced_accuracy"]))
    return ShortcutCheck(
        features=["width", "height", "aspect", "mean_intensity"],
        balanced_accuracy=round(bal, 4),
        baseline_balanced_accuracy=round(base_bal, 4),
        accuracy=round(float(np.mean(tree["test_accuracy"])), 4),
        baseline_accuracy=round(float(np.mean(dummy["test_accuracy"])), 4),
        folds=folds,
        warning=bal >= base_bal + SHORTCUT_MARGIN,
    )


def single_source_classes(sources: list[str], labels: list[str]) -> dict[str, str]:
    """Classes whose every image comes from one source, when several sources exist."""
    if len(set(sources)) < 2:
        return {}
    by_class: dict[str, set[str]] = defaultdict(set)
    for s, c in zip(sources, labels):
        by_class[c].add(s)
    return {c: next(iter(s)) for c, s in sorted(by_class.items()) if len(s) == 1}


def imbalance_ratio(labels: list[str]) -> float:
    counts = Counter(labels)
    return round(max(counts.values()) / min(counts.values()), 3) if counts else 0.0


def build_warnings(audit: dict) -> list[str]:
    """Human-readable warnings from the audit section of summary.json."""
    out = []
    if audit.get("imbalance_ratio", 0) >= 3:
        out.append(f"class imbalance: the largest class is {audit['imbalance_ratio']}x the smallest")
    nd = audit.get("near_duplicates", {})
    eg = audit.get("explicit_groups", {})
    if eg.get("groups"):
        out.append(
            f"groups: {eg['images']} images in {eg['groups']} groups from the data's group column or "
            "--group-regex (patients); each group is kept inside one split"
        )
    if nd.get("groups"):
        out.append(
            f"near-duplicates: {nd['images_in_groups']} images in {nd['groups']} groups of look-alike images "
            f"(largest {nd['largest']}); each group is kept inside one split"
        )
    if nd.get("cross_class_groups"):
        out.append(f"{nd['cross_class_groups']} near-duplicate group(s) span several classes")
    if audit.get("label_conflicts"):
        out.append(f"label conflicts: {len(audit['label_conflicts'])} image(s) carry different labels")
    for cls, src in audit.get("single_source_classes", {}).items():
        out.append(f"class {cls!r} comes only from source {src!r}: a model may learn the source (shortcut risk)")
    out.extend(split_warnings(audit.get("splits") or {}))
    sc = audit.get("shortcut")
    if sc and sc.get("warning"):
        out.append(
            "shortcut risk: image geometry and mean intensity alone predict the class "
            f"(balanced accuracy {sc['balanced_accuracy']:.2f} vs {sc['baseline_balanced_accuracy']:.2f} "
            "for the majority baseline); check whether this reflects acquisition (scanner, source, "
            "export size) rather than disease"
        )
    return out


#: how to train without a validation split: cross-validation uses every image of the prepared dataset
CROSS_VALIDATE = "or cross-validate on all images instead (liverscan train --folds K)"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def split_warnings(gaps: dict) -> list[str]:
    """Warnings for the splits the ratios ask for that are empty, and for classes missing from some of them
    (``audit.splits`` of summary.json)."""
    out = []
    empty = list(gaps.get("empty") or [])
    needs = {
        "train": "training needs training images",
        "val": "training on one split needs validation images",
        "test": "evaluate needs test images",
    }
    if empty:
        out.append(
            f"the {_and(empty)} split{'s are' if len(empty) > 1 else ' is'} empty ({gaps.get('n_images')} images, "
            f"ratios {gaps.get('ratios')}): {'; '.join(needs[s] for s in empty)}; add images, {CROSS_VALIDATE}"
        )
    for cls, splits in (gaps.get("classes_missing") or {}).items():
        why = []
        if "val" in splits:
            why.append("training on one split needs validation images of every class")
        if "test" in splits:
            why.append("its test metrics will not be available")
        if "train" in splits:
            why.append("the model will not learn it")
        out.append(
            f"class {cls!r} has no images in the {_and(splits)} split{'s' if len(splits) > 1 else ''}: "
            f"{'; '.join(why)}; add images of it, {CROSS_VALIDATE}"
        )
    return out
