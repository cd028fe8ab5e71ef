"""Federated vs centralised vs each site alone, on three sites made from the xu-liver data.

The images are prepared once (the product's ``prepare``: near-duplicate groups, group-aware train / val / test
splits) and their pooled features computed once with the product's classifier (the default linear head's
backbone; cached in the working directory).  The groups are then dealt to three sites, per class: a large
site, a skewed one (mostly tumours) and a small one; each keeps its images' prepared splits.  Compared on the
pooled test splits of all three sites:

- federated: the product's coordinator and sites (``liverscan.federated``, the protocol ``liverscan federate``
  runs; in-process transport), rounds and bytes as the coordinator counts them;
- centralised: the product's linear probe (``liverscan.core.probe.fit_linear_probe``, C by inner group
  cross-validation, what ``liverscan train`` fits) on all training images pooled, and the same probe at the C
  the federation chose (the optimiser check: the two models should agree);
- each site alone: the product's probe on that site's training images.

Prints ROC-AUC, balanced accuracy, rounds, megabytes and wall time per method.

    python benchmarks/federated.py --data path/to/xu-liver --weights path/to/mobilenet_v2_1.0_160_no_top.h5
    python benchmarks/federated.py --data path/to/xu-liver --smoke   # 30 images per class, random backbone
"""

from __future__ import annotations

import argparse
import os
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

#: share of each class's groups dealt to the sites (large, skewed: mostly tumours, small)
SITES = {"large": {"normal": 0.60, "tumor": 0.50}, "skewed": {"normal": 0.12, "tumor": 0.42}}  # small: the rest


def features(prepared: Path, weights: str, work: Path) -> tuple[np.ndarray, float]:
    """Pooled features of every prepared image with the product's default classifier (cached in ``work``)."""
    cache = work / "features.npy"
    if cache.is_file():
        return np.load(cache), 0.0
    from liverscan.core.model import build_model, calibrate_batchnorm, feature_extractor
    from liverscan.training.features import compute_features

    cfg = Config()
    data = PreparedData(prepared)
    images = data.split("all", cfg.preprocess.image_size)
    model = build_model(
        len(data.classes), cfg.preprocess.image_size, weights, head="linear", features=cfg.model.feature_set
    )
    if weights == "none":
        calibrate_batchnorm(model, images.x[:64])
    t0 = time.perf_counter()
    feats = compute_features(feature_extractor(model), images.x, batch_size=32)
    np.save(cache, feats)
    return feats, time.perf_counter() - t0


def deal(rows: list[dict], classes: list[str], seed: int) -> np.ndarray:
    """The site (0 large, 1 skewed, 2 small) of each image: its group's, groups dealt per class by SITES."""
    groups = np.array([r.get("group") or r["path"] for r in rows])
    site_of_group: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    for cls in classes:
        members = sorted({g for g, r in zip(groups, rows) if r["class"] == cls} - set(site_of_group))
        members = [members[i] for i in rng.permutation(len(members))]
        cuts = np.cumsum([SITES["large"].get(cls, 0.5), SITES["skewed"].get(cls, 0.3)]) * len(members)
        for i, g in enumerate(members):
            site_of_group[g] = int(np.searchsorted(cuts, i, side="right"))
    return np.array([site_of_group[g] for g in groups])


def score(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    auc = roc_auc_score(y, probs[:, 1]) if probs.shape[1] == 2 else roc_auc_score(y, probs, multi_class="ovr")
    return float(auc), float(balanced_accuracy_score(y, probs.argmax(1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the xu-liver folder (class folders)")
    ap.add_argument("--weights", default="imagenet", help="imagenet, none, or a MobileNetV2 no-top .h5 file")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--work", type=Path, default=None, help="working directory, keeps the features (default: temporary)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="30 images per class, random backbone weights")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"error: {args.data}: data folder not found", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="liverscan-federated-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.data, args.weights = subset(args.data, work / "subset", 30), "none"
    from liverscan.core.keras_env import import_keras
    from liverscan.core.probe import LinearProbe, fit_linear_probe
    from liverscan.federated.coordinator import Coordinator, Expectation
    from liverscan.federated.simulate import LocalTransport
    from liverscan.federated.site import Site, SiteData

    import_keras()
    prepared = work / "prepared"
    if not (prepared / "manifest.csv").is_file():
        cfg = Config()
        cfg.data.sources = [SourceSpec(str(args.data), name=args.data.name)]
        prepare_dataset(cfg, prepared, overwrite=True)
    data = PreparedData(prepared)
    classes = data.classes
    feats, feature_seconds = features(prepared, args.weights, work)
    y = np.array([classes.index(r["class"]) for r in data.rows])
    groups = np.array([r.get("group") or r["path"] for r in data.rows], dtype=object)
    split = np.array([r["split"] for r in data.rows])
    site = deal(data.rows, classes, args.seed)
    names = ["large", "skewed", "small"]
    print(
        f"data: {args.data.name}, {len(y)} images, classes {', '.join(classes)}; features {feats.shape[1]} "
        f"({feature_seconds:.0f} s, once); cpus: {os.cpu_count()}"
    )
    for k, name in enumerate(names):
        counts = {c: int(((site == k) & (y == i)).sum()) for i, c in enumerate(classes)}
        print(f"  site {name}: {int((site == k).sum())} images {counts}")

    def part(mask: np.ndarray) -> SiteData:
        return SiteData(feats[mask], y[mask], groups[mask])

    test = split == "test"
    results = []

    def add(method: str, probs: np.ndarray, seconds: float, **extra) -> None:
        auc, ba = score(y[test], probs)
        results.append({"method": method, "roc_auc": auc, "balanced_accuracy": ba, "seconds": seconds, **extra})

    # ---- federated
    sites = [
        Site(
            n,
            classes,
            "benchmark",
            {s: part((site == k) & (split == s)) for s in ("train", "val", "test")},
            seed=args.seed,
        )
        for k, n in enumerate(names)
    ]
    t0 = time.perf_counter()
    result = Coordinator(LocalTransport(sites), Expectation(classes, "benchmark")).run()
    fed_seconds = time.perf_counter() - t0
    fed = LinearProbe(result.weights, result.bias, result.c, 0)
    megabytes = sum(r["bytes_to_sites"] + r["bytes_from_sites"] for r in result.rounds) / 1e6
    add(
        "federated",
        fed.probabilities(feats[test]),
        fed_seconds,
        rounds=len(result.rounds),
        megabytes=megabytes,
        C=result.c,
    )

    # ---- centralised
    train = split == "train"
    t0 = time.perf_counter()
    central = fit_linear_probe(feats[train], y[train], groups[train], len(classes), seed=args.seed)
    add("centralised", central.probabilities(feats[test]), time.perf_counter() - t0, C=central.c)
    from liverscan.core import probe as probe_module

    saved = probe_module.FALLBACK_C
    probe_module.FALLBACK_C = result.c  # no inner cross-validation: the probe at exactly this C
    try:
        same_c = fit_linear_probe(feats[train], y[train], groups[train], len(classes), seed=args.seed, inner_folds=0)
    finally:
        probe_module.FALLBACK_C = saved
    add(f"centralised at C={result.c:g}", same_c.probabilities(feats[test]), 0.0, C=result.c)
    agree = float(np.abs(same_c.probabilities(feats[test]) - fed.probabilities(feats[test])).max())

    # ---- each site alone
    for k, name in enumerate(names):
        mask = train & (site == k)
        if len(np.unique(y[mask])) < len(classes):
            print(f"  {name} site alone: not every class among its training images; left out")
            continue
        t0 = time.perf_counter()
        alone = fit_linear_probe(feats[mask], y[mask], groups[mask], len(classes), seed=args.seed)
        add(f"{name} site alone", alone.probabilities(feats[test]), time.perf_counter() - t0, C=alone.c)

    print(
        f"\npooled test splits of the three sites: {int(test.sum())} images "
        f"{ {c: int((y[test] == i).sum()) for i, c in enumerate(classes)} }"
    )
    print(f"{'method':24s} {'ROC-AUC':>8s} {'bal. acc':>8s} {'C':>7s} {'rounds':>6s} {'MB':>8s} {'seconds':>8s}")
    for r in results:
        print(
            f"{r['method']:24s} {r['roc_auc']:8.3f} {r['balanced_accuracy']:8.3f} {r['C']:7.3g} "
            f"{r.get('rounds', ''):>6} {r.get('megabytes', float('nan')):8.1f} {r['seconds']:8.1f}"
        )
    print(f"\nfederated vs centralised at the same C: max probability difference {agree:.1e}")
    if args.json:
        from liverscan.core.fileio import write_json_atomic

        write_json_atomic(
            args.json, {"data": args.data.name, "seed": args.seed, "results": results, "agreement": agree}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
