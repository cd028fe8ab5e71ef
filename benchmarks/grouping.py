"""Which frames must share a fold?  Out-of-fold estimates against grouping strength on the xu-liver outlines.

Folds that split a sweep score a model on frames next to ones it was trained on.  This benchmark builds the
groups of the xu-liver images under rules of growing strength, makes 5-fold ``StratifiedGroupKFold`` folds of
each (several fold seeds), and measures out of fold, on the same images:

- **neighbour copy** (the leak meter): each test tumour image takes the lesion outline of its nearest training
  tumour image (cosine distance of the frozen ImageNet MobileNetV2's pooled features); its pointing and Dice are
  high exactly when a test frame's neighbour from the same sweep was in training;
- **lesion decoder**: the frozen-feature decoder of ``benchmarks/localisation.py`` (design ``a``: 160 px,
  ``--epochs``), pointing and mean Dice (first fold seed only, it is the costly part);
- **classifier**: a class-balanced logistic-regression probe on the pooled features (tumour vs normal), ROC-AUC
  and balanced accuracy, and a 1-nearest-neighbour classifier's balanced accuracy (another leak meter).

The rules: each image alone; near-duplicates by perceptual hash (Hamming distance <= 6: what ``prepare`` linked
before; <= 12); consecutive file numbers of one class and size (what this benchmark's sibling linked: in xu-liver
the numbering is not the sweep order - an image's most similar image is within 3 numbers for 9 of 583); and the
hash rule plus look-alike frames of one label and size (:func:`liverscan.core.sweeps.sweep_pairs`: 16 x 16
thumbnails correlating at 0.95 down to 0.88), linked when mutual nearest neighbours (each among the other's two
most alike: ``prepare``'s rule) or, for contrast, whenever they correlate so (single linkage over every pair).
Estimates fall as the rules close leaks, then level off: the loosest threshold at the level is what ``prepare``
uses by default.

    python benchmarks/grouping.py --data ../shared/data/xu-liver            # 3 fold seeds, decoder 15 epochs
    python benchmarks/grouping.py --data ../shared/data/xu-liver --smoke    # a few images and rules, for CI
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localisation as loc  # noqa: E402

from liverscan.core.dedup import link_groups, near_duplicate_pairs, perceptual_hash  # noqa: E402
from liverscan.core.images import load_image  # noqa: E402
from liverscan.core.keras_env import import_keras  # noqa: E402
from liverscan.core.sweeps import sweep_pairs, thumbnail  # noqa: E402

ALL = 10**6  # neighbours: every pair above the threshold (single linkage)
#: (name, pHash distance, consecutive numbers linked, thumbnail correlation, mutual neighbours), weakest first
RULES = [
    ("each image alone", -1, False, 2.0, 2),
    ("pHash <= 6 (prepare before)", 6, False, 2.0, 2),
    ("pHash <= 12", 12, False, 2.0, 2),
    ("pHash <= 6 + consecutive numbers", 6, True, 2.0, 2),
    ("pHash <= 6 + every look-alike pair >= 0.92", 6, False, 0.92, ALL),
    ("pHash <= 6 + mutual look-alike >= 0.95", 6, False, 0.95, 2),
    ("pHash <= 6 + mutual look-alike >= 0.92 (prepare now)", 6, False, 0.92, 2),
    ("pHash <= 6 + mutual look-alike >= 0.90", 6, False, 0.90, 2),
    ("pHash <= 6 + mutual look-alike >= 0.88", 6, False, 0.88, 2),
]


def groups_for(
    items: list[loc.Item],
    hashes: list[int],
    thumbs: np.ndarray,
    distance: int,
    consecutive: bool,
    corr: float,
    neighbours: int,
) -> np.ndarray:
    pairs = [(i, j) for i, j, _ in near_duplicate_pairs(hashes, distance)] if distance >= 0 else []
    pairs += sweep_pairs(thumbs, [(it.source, it.width, it.height) for it in items], corr, neighbours)
    if consecutive:
        order = sorted(range(len(items)), key=lambda i: (items[i].source, loc.number(items[i].path) or -1))
        for a, b in zip(order, order[1:]):
            ia, ib = items[a], items[b]
            na, nb = loc.number(ia.path), loc.number(ib.path)
            same = ia.source == ib.source and (ia.width, ia.height) == (ib.width, ib.height)
            if same and na is not None and nb is not None and nb - na == 1:
                pairs.append((a, b))
    return np.asarray(link_groups(len(items), pairs, [""] * len(items)))


def neighbour_copy(items: list[loc.Item], pooled: np.ndarray, tests: list[np.ndarray], side: int) -> np.ndarray:
    """Out-of-fold maps ``(N, side, side)``: a tumour test image gets its nearest training tumour image's lesion
    coverage; a normal one gets nothing."""
    z = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    cover = loc.targets(items, side, "lesion")[:, 0]
    tumour = np.array([it.tumour for it in items])
    maps = np.zeros((len(items), side, side), np.float32)
    for test in tests:
        train = np.setdiff1d(np.arange(len(items)), test)
        pool = train[tumour[train]]
        q = test[tumour[test]]
        nearest = pool[np.argmax(z[q] @ z[pool].T, axis=1)]
        maps[q] = cover[nearest]
    return maps


def classifier_scores(pooled: np.ndarray, labels: np.ndarray, tests: list[np.ndarray]) -> tuple[float, float, float]:
    """(probe ROC-AUC, probe balanced accuracy, 1-NN balanced accuracy), out of fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    prob, nn = np.zeros(len(labels)), np.zeros(len(labels))
    for test in tests:
        train = np.setdiff1d(np.arange(len(labels)), test)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.03, class_weight="balanced", max_iter=3000))
        prob[test] = probe.fit(pooled[train], labels[train]).predict_proba(pooled[test])[:, 1]
        knn = make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=1))
        nn[test] = knn.fit(pooled[train], labels[train]).predict(pooled[test])
    auc = float(roc_auc_score(labels, prob))
    return auc, float(balanced_accuracy_score(labels, prob >= 0.5)), float(balanced_accuracy_score(labels, nn))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the xu-liver folder (Benign/, Malignant/, Normal/)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="fold seeds (estimates are their mean)")
    ap.add_argument("--epochs", type=int, default=15, help="the lesion decoder's epochs (0: no decoder)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument(
        "--decoder-all",
        action="store_true",
        help="train the decoder for every rule (default: the rules prepare used before and uses now)",
    )
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a handful of images, three rules, one seed, 1 epoch")
    args = ap.parse_args()
    rules = RULES
    if args.smoke:
        args.folds, args.seeds, args.epochs, args.bootstrap = 2, 1, 1, 20
        rules = [RULES[0], RULES[1], RULES[6]]
    t0 = time.perf_counter()
    keras = import_keras()
    items = loc.load_items(Path(args.data), args.smoke, np.random.default_rng(args.seed))
    labels = np.array([it.tumour for it in items], dtype=int)
    loc.log(f"{len(items)} images ({labels.sum()} tumour with an outline, {len(items) - labels.sum()} normal)")
    images160 = np.stack([load_image(it.path, 160) for it in items])
    hashes = [perceptual_hash(a) for a in images160]
    thumbs = np.stack([thumbnail(a) for a in images160])
    bb = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights="imagenet")
    feats, pooled = loc.extract(items, 160, bb)
    loc.log(f"features ({time.perf_counter() - t0:.0f} s)")
    side = feats[0].shape[2]
    y = loc.targets(items, side, "lesion")[..., None]

    header = (
        "| rule | groups | copy pointing | copy Dice | decoder pointing | decoder Dice | probe AUC | probe BA | 1-NN BA |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = []
    for name, distance, consecutive, corr, neighbours in rules:
        t = time.perf_counter()
        groups = groups_for(items, hashes, thumbs, distance, consecutive, corr, neighbours)
        copy, clf, dec = [], [], []
        for s in range(args.seeds):
            tests = loc.folds_of(items, groups, args.folds, args.seed + s)
            evaluated = np.sort(np.concatenate(tests))
            ev_items = [items[i] for i in evaluated]
            m = loc.score(ev_items, neighbour_copy(items, pooled, tests, side)[evaluated], groups[evaluated], args)
            copy.append((m.head.pointing, m.head.dice_mean))
            clf.append(classifier_scores(pooled[evaluated], labels[evaluated], tests_within(tests, evaluated)))
            if s == 0 and args.epochs > 0 and (args.decoder_all or "prepare" in name):
                maps = np.zeros((len(items), side, side), np.float32)
                for k, test in enumerate(tests):
                    train = np.setdiff1d(np.arange(len(items)), test)
                    maps[test] = loc.train_predict(feats, y, train, test, args.epochs, args.seed + k, args.width)
                d = loc.score(ev_items, maps[evaluated], groups[evaluated], args)
                dec.append((d.head.pointing, d.head.dice_mean))
        c, k, dd = np.mean(copy, 0), np.mean(clf, 0), (np.mean(dec, 0) if dec else (np.nan, np.nan))
        line = (
            f"| {name} | {len(np.unique(groups))} | {c[0]:.3f} | {c[1]:.3f} | {dd[0]:.3f} | {dd[1]:.3f} | "
            f"{k[0]:.3f} | {k[1]:.3f} | {k[2]:.3f} |"
        )
        lines.append(line)
        loc.log(f"{name}: {len(np.unique(groups))} groups ({time.perf_counter() - t:.0f} s)")
        print(header + "\n" + "\n".join(lines), flush=True)
    print(
        f"\n{args.folds}-fold StratifiedGroupKFold by source class, {args.seeds} fold seed(s) (neighbour copy and "
        f"classifier: their mean; decoder: the first), {len(items)} images; {time.perf_counter() - t0:.0f} s in all"
    )
    return 0


def tests_within(tests: list[np.ndarray], evaluated: np.ndarray) -> list[np.ndarray]:
    """The test folds as positions in ``evaluated`` (the sorted union of the folds)."""
    where = {int(i): k for k, i in enumerate(evaluated)}
    return [np.array([where[int(i)] for i in test]) for test in tests]


if __name__ == "__main__":
    sys.exit(main())
