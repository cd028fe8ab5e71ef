"""Which pooled features the linear head should read: out-of-fold comparison of the feature options.

For each option set - features ``last`` or ``multistage`` x input size 160 or 224 x flip averaging off or on -
the product's classifier (``liverscan.core.model.build_model`` with those options) computes the pooled
features of every image of the prepared data once, then the product's linear probe
(``liverscan.core.probe.fit_linear_probe``, C by inner group cross-validation) is fitted on the product's
cross-validation folds (``liverscan.training.crossval.fold_splits``, 5 group-aware stratified folds, seed 42,
the same per-fold probe seeds as ``train --folds``) - what ``liverscan train --folds 5`` does with these
options, without the refit. Prints, per option set: out-of-fold ROC-AUC, balanced accuracy and accuracy with
95% bootstrap CIs over groups (the product's ``bootstrap_intervals``), the difference to the default
(``last``, 160, no flip) with a paired group bootstrap CI, the chosen C, and feature-extraction time per image.

    python benchmarks/classifier_features.py --data path/to/xu-liver --weights path/to/mobilenet_v2_1.0_160_no_top.h5
    python benchmarks/classifier_features.py --data path/to/xu-liver --smoke   # a handful of images, one option set

The same weights file serves every input size (no-top convolution weights do not depend on it).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from _smoke import subset

from liverscan.core.config import Config, SourceSpec
from liverscan.core.dataset import PreparedData
from liverscan.preparation.prepare import prepare_dataset

DEFAULT = ("last", 160, False)


def option_sets(sizes: list[int]) -> list[tuple[str, int, bool]]:
    """Every (features, size, flip) combination, the default first."""
    combos = list(itertools.product(("last", "multistage"), sizes, (False, True)))
    return sorted(combos, key=lambda c: c != DEFAULT)


def label(option: tuple[str, int, bool]) -> str:
    features, size, flip = option
    return f"{features} {size}{' flip' if flip else ''}"


def features_for(option, prepared: Path, n_classes: int, weights: str, seed: int):
    """(pooled features (N, F), labels, groups, seconds per image) of the product model with ``option``."""
    from liverscan.core.model import build_model, calibrate_batchnorm, feature_extractor
    from liverscan.training.features import compute_features

    features, size, flip = option
    images = PreparedData(prepared).split("all", size)  # a new one per size: it keeps the first array cache it reads
    model = build_model(n_classes, size, weights, head="linear", features=features, flip_average=flip)
    if weights.strip().lower() == "none":
        sample = np.random.default_rng(seed).permutation(len(images.y))[:256]
        calibrate_batchnorm(model, images.x[np.sort(sample)])
    extractor = feature_extractor(model)
    batch = 32
    compute_features(extractor, images.x[:batch], batch_size=batch)  # trace the graph outside the timing
    t0 = time.perf_counter()
    feats = compute_features(extractor, images.x, batch_size=batch)
    per_image = (time.perf_counter() - t0) / len(images.y)
    return feats, images.y, np.asarray(images.groups), per_image


def out_of_fold(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, folds: int, seed: int):
    """Out-of-fold probabilities of the linear probe on the product's folds, and the C each fold chose."""
    from liverscan.core.probe import fit_linear_probe
    from liverscan.training.crossval import fold_splits

    probs = np.zeros((len(y), n_classes))
    cs = []
    for k, (train_idx, test_idx) in enumerate(fold_splits(y, groups, folds, 1, seed)[0]):
        probe = fit_linear_probe(feats[train_idx], y[train_idx], groups[train_idx], n_classes, seed=seed + k)
        probs[test_idx] = probe.probabilities(feats[test_idx])
        cs.append(probe.c)
    return probs, cs


def _score(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    auc = roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2 else roc_auc_score(y, probs, multi_class="ovr")
    return float(auc), float(balanced_accuracy_score(y, probs.argmax(1)))


def paired_difference(y, probs, base, groups, n_resamples: int, seed: int) -> dict[str, list[float]]:
    """95% group-bootstrap CIs of (option - default) in ROC-AUC and balanced accuracy, on the same resamples."""
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if len(np.unique(y[idx])) < probs.shape[1]:
            continue
        a, b = _score(y[idx], probs[idx]), _score(y[idx], base[idx])
        diffs.append((a[0] - b[0], a[1] - b[1]))
    arr = np.asarray(diffs)
    return {
        key: [float(v) for v in np.quantile(arr[:, i], [0.025, 0.975])]
        for i, key in enumerate(("roc_auc", "balanced_accuracy"))
    }


def _ci(value: float, ci) -> str:
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the xu-liver folder (class folders)")
    ap.add_argument("--weights", default="imagenet", help="imagenet, none, or a MobileNetV2 no-top .h5 file")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="8 images per class, 2 folds, one option set")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"error: {args.data}: data folder not found", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="liverscan-features-"))
    options = option_sets(args.sizes)
    if args.smoke:
        args.data = subset(args.data, work / "subset", 8)
        args.folds, args.bootstrap = 2, 50
        options = [("multistage", min(args.sizes), True)]
    from liverscan.core.keras_env import import_keras
    from liverscan.evaluation.metrics import bootstrap_intervals, classification_metrics

    import_keras()
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(args.data), name=args.data.name)]
    prepared = work / "prepared"
    t0 = time.perf_counter()
    prepare_dataset(cfg, prepared, overwrite=True)
    data = PreparedData(prepared)
    classes = data.classes
    print(
        f"data: {args.data.name}, {len(data.rows)} images, classes {', '.join(classes)} (prepare "
        f"{time.perf_counter() - t0:.0f} s); weights: {Path(args.weights).name}; {args.folds} folds, seed "
        f"{args.seed}; {args.bootstrap} group-bootstrap resamples; cpus: {os.cpu_count()}",
        flush=True,
    )
    results, base = [], None
    for option in options:
        t0 = time.perf_counter()
        feats, y, groups, per_image = features_for(option, prepared, len(classes), args.weights, args.seed)
        probs, cs = out_of_fold(feats, y, groups, len(classes), args.folds, args.seed)
        m = classification_metrics(y, probs, classes)
        ci = bootstrap_intervals(y, probs, classes, n_resamples=args.bootstrap, seed=args.seed, groups=groups)
        row = {
            "option": label(option),
            "features": option[0],
            "size": option[1],
            "flip_average": option[2],
            "n_features": int(feats.shape[1]),
            "roc_auc": m["macro"]["roc_auc"],
            "balanced_accuracy": m["balanced_accuracy"],
            "accuracy": m["accuracy"],
            "ci": {k: ci["intervals"].get(k) for k in ("macro_roc_auc", "balanced_accuracy", "accuracy")},
            "C": cs,
            "seconds_per_image": per_image,
            "seconds": time.perf_counter() - t0,
        }
        if option == DEFAULT:
            base = probs
        elif base is not None:
            row["vs_default"] = paired_difference(y, probs, base, groups, args.bootstrap, args.seed)
        results.append(row)
        print(f"  {row['option']}: done in {row['seconds']:.0f} s", flush=True)
    print()
    print(
        f"{'option set':22s} {'feat':>5s} {'ROC-AUC (95% CI)':>22s} {'bal. accuracy (95% CI)':>22s} "
        f"{'accuracy (95% CI)':>22s} {'C (median)':>10s} {'ms/image':>8s}"
    )
    for r in results:
        c = r["ci"]
        print(
            f"{r['option']:22s} {r['n_features']:5d} {_ci(r['roc_auc'], c['macro_roc_auc']):>22s} "
            f"{_ci(r['balanced_accuracy'], c['balanced_accuracy']):>22s} {_ci(r['accuracy'], c['accuracy']):>22s} "
            f"{statistics.median(r['C']):10.3g} {1000 * r['seconds_per_image']:8.1f}"
        )
    paired = [r for r in results if "vs_default" in r]
    if paired:
        print(f"\ndifference to the default ({label(DEFAULT)}), 95% paired group-bootstrap CI:")
        for r in paired:
            d = r["vs_default"]
            auc = r["roc_auc"] - results[0]["roc_auc"]
            ba = r["balanced_accuracy"] - results[0]["balanced_accuracy"]
            print(
                f"  {r['option']:22s} ROC-AUC {auc:+.3f} ({d['roc_auc'][0]:+.3f} to {d['roc_auc'][1]:+.3f}), "
                f"balanced accuracy {ba:+.3f} ({d['balanced_accuracy'][0]:+.3f} to {d['balanced_accuracy'][1]:+.3f})"
            )
    if args.json:
        from liverscan.core.fileio import write_json_atomic

        write_json_atomic(
            args.json, {"data": args.data.name, "folds": args.folds, "seed": args.seed, "results": results}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
