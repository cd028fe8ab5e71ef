"""Where is the lesion?  Out-of-fold localisation designs on the xu-liver outlines, side by side with baselines.

For every image of the xu layout (``<class>/image/<n>.jpg`` with ``<class>/segmentation/{mass,liver,outline}``)
the frozen ImageNet MobileNetV2's multi-scale features (``block_3/6/13_expand_relu``, ``out_relu``) are computed
once - for the image and its horizontal mirror - and cached in memory (float16); only a small decoder
(:func:`liverscan.core.lesion.build_decoder`) is trained, out of fold:

- folds: 5-fold ``StratifiedGroupKFold`` stratified by source class (Benign / Malignant / Normal); groups are
  near-duplicate frames linked by single linkage over the 64-bit perceptual hash (Hamming distance <= 6, as
  ``prepare`` does) plus exact size + class + consecutive file numbers (neighbouring frames of one scan);
- training: soft Dice (over the batch) + BCE from logits, targets the lesion's area coverage at the decoder's
  resolution (stride 4), normals as all-zero targets, augmentation = horizontal flip (each sample uses the cached
  features of the mirrored image with a mirrored target, with probability 0.5), Adam 1e-3, batch 16;
- designs: (a) 160 px input, (b) 224 px input, (c) 160 px with the liver region as a second target (multi-task);
- baselines: the image centre, a uniformly random point in the scan fan (its expected pointing = lesion share of
  the fan), and the class activation map of a linear probe (= its Grad-CAM: for a linear head on pooled features
  the gradient is the weight vector) for tumour vs normal.

Scores (tumour images, at the original resolution: maps are squashed back bilinearly): pointing game (peak inside
the lesion), Dice / IoU of the map thresholded at 0.5 (regions under 0.2 % of the map dropped), the share of the
map's total heat inside the lesion vs the lesion's share of the fan; normals: the share with any predicted lesion.
Finally the best design's lesion evidence (max probability, area fraction, top-1 % mean) is appended to the probe's
pooled features: out-of-fold tumour-vs-normal AUC / balanced accuracy with and without it.

    python benchmarks/localisation.py --data ../shared/data/xu-liver            # the full run
    python benchmarks/localisation.py --data ../shared/data/xu-liver --smoke    # a handful of images, for CI

Heavy work runs on one thread (``OMP_NUM_THREADS`` / ``TF_NUM_*_THREADS`` default to 1); pin the process to
one core with ``taskset -c N`` if the machine is shared.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from liverscan.core import lesion  # noqa: E402
from liverscan.core.annotations import image_size, load_annotation, mask_coverage  # noqa: E402
from liverscan.core.images import load_image  # noqa: E402
from liverscan.core.keras_env import import_keras  # noqa: E402
from liverscan.preparation.dedup import link_groups, near_duplicate_pairs, perceptual_hash  # noqa: E402

CLASSES = {"Benign": "tumour", "Malignant": "tumour", "Normal": "normal"}
LAYERS = lesion.DEFAULT_LAYERS
DEFAULT_DESIGNS = "a,c,b"


@dataclass
class Item:
    path: Path
    source: str  # Benign | Malignant | Normal
    tumour: bool
    width: int
    height: int
    lesion: np.ndarray | None  # (h, w) bool at original size; None for normals
    liver: np.ndarray | None
    fan: np.ndarray | None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def number(path: Path) -> int | None:
    m = re.fullmatch(r"\d+", path.stem)
    return int(m.group()) if m else None


def load_items(root: Path, smoke: bool, rng: np.random.Generator) -> list[Item]:
    items = []
    for source in CLASSES:
        paths = sorted((root / source / "image").glob("*.jpg"), key=lambda p: (number(p) or 0, p.name))
        if smoke:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), size=min(len(paths), 4), replace=False))]
        for p in paths:
            w, h = image_size(p)
            ann = {k: load_annotation(p, k, image_wh=(w, h)) for k in ("lesion", "liver", "fan")}
            tumour = CLASSES[source] == "tumour"
            if tumour and (ann["lesion"] is None or ann["lesion"].empty):
                continue  # a tumour image without its lesion outline cannot be scored
            items.append(
                Item(
                    p,
                    source,
                    tumour,
                    w,
                    h,
                    ann["lesion"].mask if tumour and ann["lesion"] is not None else None,
                    ann["liver"].mask if ann["liver"] is not None else None,
                    ann["fan"].mask if ann["fan"] is not None else None,
                )
            )
    return items


def groups_of(items: list[Item], images160: np.ndarray, distance: int = 6) -> np.ndarray:
    """Near-duplicate groups: pHash single linkage, plus same class + size + consecutive numbers."""
    hashes = [perceptual_hash(a) for a in images160]
    pairs = [(i, j) for i, j, _ in near_duplicate_pairs(hashes, distance)]
    order = sorted(range(len(items)), key=lambda i: (items[i].source, number(items[i].path) or -1))
    for a, b in zip(order, order[1:]):
        ia, ib = items[a], items[b]
        na, nb = number(ia.path), number(ib.path)
        if ia.source == ib.source and (ia.width, ia.height) == (ib.width, ib.height) and na is not None:
            if nb is not None and nb - na == 1:
                pairs.append((a, b))
    return np.asarray(link_groups(len(items), pairs, [""] * len(items)))


def folds_of(items: list[Item], groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test-fold index of every item."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([it.source for it in items])
    if n_folds == 1:  # smoke: one split, the first of three folds held out
        splitter = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
        return [next(iter(splitter.split(np.zeros(len(items)), y, groups)))[1]]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    tests = [test for _, test in splitter.split(np.zeros(len(items)), y, groups)]
    return tests


def backbone_at(size: int, imagenet160):
    keras = import_keras()
    if size == 160:
        return imagenet160
    bb = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    bb.set_weights(imagenet160.get_weights())  # the no-top weights do not depend on the input size
    return bb


def extract(items: list[Item], size: int, backbone, batch: int = 16) -> tuple[list[np.ndarray], np.ndarray]:
    """Features per layer ``(N, 2, h, w, c)`` float16 (axis 1: image, mirrored image) and pooled ``(N, 1280)``."""
    model = lesion.multiscale_backbone(backbone, LAYERS)
    feats: list[list[np.ndarray]] = [[] for _ in LAYERS]
    pooled = []
    for start in range(0, len(items), batch):
        imgs = np.stack([load_image(it.path, size) for it in items[start : start + batch]]).astype(np.float32)
        both = np.concatenate([imgs, imgs[:, :, ::-1]])
        outs = model.predict_on_batch(both / 127.5 - 1.0)
        n = len(imgs)
        for k, o in enumerate(outs):
            o = np.asarray(o)
            feats[k].append(np.stack([o[:n], o[n:]], axis=1).astype(np.float16))
        pooled.append(np.asarray(outs[-1])[:n].mean(axis=(1, 2)))
    return [np.concatenate(f) for f in feats], np.concatenate(pooled)


def targets(items: list[Item], side: int, kind: str) -> np.ndarray:
    """Area coverage ``(N, 2, side, side)`` (image, mirrored) of the lesion or liver region; zeros when absent."""
    out = np.zeros((len(items), 2, side, side), np.float32)
    for i, it in enumerate(items):
        m = it.lesion if kind == "lesion" else it.liver
        if m is not None:
            cov = mask_coverage(m, side)
            out[i, 0], out[i, 1] = cov, cov[:, ::-1]
    return out


def make_dataset(feats: list[np.ndarray], y: np.ndarray, idx: np.ndarray, batch: int, seed: int):
    keras: Any = import_keras()

    class FlipData(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(idx)

        def __len__(self):
            return int(np.ceil(len(idx) / batch))

        def __getitem__(self, k):
            sel = self.order[k * batch : (k + 1) * batch]
            flip = self.rng.integers(0, 2, size=len(sel))
            xs = tuple(f[sel, flip].astype(np.float32) for f in feats)
            return xs, y[sel, flip]

        def on_epoch_end(self):
            self.order = self.rng.permutation(idx)

    return FlipData()


def train_predict(
    feats: list[np.ndarray], y: np.ndarray, train: np.ndarray, test: np.ndarray, epochs: int, seed: int, width: int
) -> np.ndarray:
    """Lesion probability maps ``(len(test), side, side)`` of a decoder trained on ``train``."""
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    n_out = y.shape[-1]
    decoder = lesion.build_decoder([f.shape[2:] for f in feats], width=width, n_outputs=n_out)
    steps = int(np.ceil(len(train) / 16)) * epochs
    lr = keras.optimizers.schedules.CosineDecay(1e-3, steps, alpha=0.05)
    decoder.compile(optimizer=keras.optimizers.Adam(lr), loss=lesion.dice_bce_loss())
    decoder.fit(make_dataset(feats, y, train, 16, seed), epochs=epochs, verbose=0)
    probs = []
    for start in range(0, len(test), 32):
        sel = test[start : start + 32]
        logits = decoder.predict_on_batch(tuple(f[sel, 0].astype(np.float32) for f in feats))
        probs.append(1.0 / (1.0 + np.exp(-np.asarray(logits)[..., 0])))
    return np.concatenate(probs)


def score_maps(items: list[Item], maps: np.ndarray, threshold_relative: bool = False) -> dict[str, float]:
    """The table's figures for maps ``(N, side, side)`` (one per item)."""
    point, dices, ious, heat, share, false = [], [], [], [], [], []
    for it, p in zip(items, maps):
        if threshold_relative:  # a CAM has no probability scale: half its maximum
            p = p / max(float(p.max()), 1e-12)
        if not it.tumour:
            if not threshold_relative:  # a map scaled to its own maximum always has a region
                false.append(bool(lesion.regions(p)))
            continue
        assert it.lesion is not None
        point.append(lesion.pointing_hit(p, it.lesion))
        up = lesion.upsample(p, it.width, it.height)
        mask = lesion.predicted_mask(up)
        dices.append(lesion.dice(mask, it.lesion))
        ious.append(lesion.iou(mask, it.lesion))
        heat.append(float((up * it.lesion).sum() / max(float(up.sum()), 1e-12)))
        if it.fan is not None and it.fan.any():
            share.append(float(np.logical_and(it.lesion, it.fan).sum() / it.fan.sum()))
    return {
        "pointing": float(np.mean(point)),
        "dice": float(np.mean(dices)),
        "dice_median": float(np.median(dices)),
        "iou": float(np.mean(ious)),
        "heat": float(np.mean(heat)),
        "share": float(np.mean(share)) if share else float("nan"),
        "false": float(np.mean(false)) if false else float("nan"),
    }


def baselines(items: list[Item]) -> list[tuple[str, dict[str, float]]]:
    centre, fan_share = [], []
    for it in items:
        if not it.tumour or it.lesion is None:
            continue
        centre.append(bool(it.lesion[it.height // 2, it.width // 2]))
        if it.fan is not None and it.fan.any():
            fan_share.append(float(np.logical_and(it.lesion, it.fan).sum() / it.fan.sum()))
    nan = float("nan")
    row = dict(dice=nan, dice_median=nan, iou=nan, heat=nan, share=nan, false=nan)
    return [
        ("image centre", {**row, "pointing": float(np.mean(centre))}),
        ("random point in the fan", {**row, "pointing": float(np.mean(fan_share))}),
    ]


def probe_cams(
    pooled: np.ndarray, last: np.ndarray, labels: np.ndarray, tests: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold tumour CAMs ``(N, 5, 5)`` of a balanced logistic-regression probe, and its OOF probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cams = np.zeros(last.shape[:3], np.float32)
    prob = np.zeros(len(pooled))
    for test in tests:
        train = np.setdiff1d(np.arange(len(pooled)), test)
        sc = StandardScaler().fit(pooled[train])
        lr = LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000).fit(
            sc.transform(pooled[train]), labels[train]
        )
        w = lr.coef_[0] / sc.scale_  # weights on raw features
        cams[test] = np.maximum(np.einsum("nhwc,c->nhw", last[test].astype(np.float32), w), 0.0)
        prob[test] = lr.predict_proba(sc.transform(pooled[test]))[:, 1]
    return cams, prob


def classifier_check(
    pooled: np.ndarray, ev: np.ndarray, labels: np.ndarray, tests: list[np.ndarray]
) -> dict[str, tuple[float, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name, x in (("pooled features", pooled), ("+ lesion evidence", np.hstack([pooled, ev])), ("evidence only", ev)):
        prob = np.zeros(len(x))
        for test in tests:
            train = np.setdiff1d(np.arange(len(x)), test)
            sc = StandardScaler().fit(x[train])
            lr = LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000).fit(
                sc.transform(x[train]), labels[train]
            )
            prob[test] = lr.predict_proba(sc.transform(x[test]))[:, 1]
        out[name] = (float(roc_auc_score(labels, prob)), float(balanced_accuracy_score(labels, prob >= 0.5)))
    return out


def fmt(v: float) -> str:
    return "   -  " if v != v else f"{v:6.3f}"


def print_table(rows: list[tuple[str, dict[str, float]]], n_folds: int, args, n_t: int, n_eval: int) -> None:
    print()
    print(
        f"Lesion localisation, out of fold ({n_folds} group-aware folds, {args.epochs} epochs, decoder width "
        f"{args.width}): {n_t} tumour images, {n_eval - n_t} normals"
    )
    head = (
        f"{'design':34s} {'pointing':>8s} {'Dice':>6s} {'Dice~':>6s} {'IoU':>6s} "
        f"{'heat in':>7s} {'lesion/':>7s} {'false':>6s}"
    )
    print(head)
    print(f"{'':34s} {'':>8s} {'mean':>6s} {'median':>6s} {'mean':>6s} {'lesion':>7s} {'fan':>7s} {'normal':>6s}")
    print("-" * len(head))
    for name, r in rows:
        print(
            f"{name:34s} {fmt(r['pointing']):>8s} {fmt(r['dice'])} {fmt(r['dice_median'])} {fmt(r['iou'])} "
            f"{fmt(r['heat']):>7s} {fmt(r['share']):>7s} {fmt(r['false'])}"
        )
    print("targets: pointing >= 0.85, mean Dice >= 0.60, false lesions on <= 10 % of normals", flush=True)


def print_times(timings: dict[str, float], t0: float) -> None:
    print()
    for name, s in timings.items():
        print(f"wall time, {name}: {s:.0f} s")
    print(f"wall time, total: {time.perf_counter() - t0:.0f} s (threads: {os.environ.get('TF_NUM_INTRAOP_THREADS')})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the xu-liver folder (Benign/, Malignant/, Normal/)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=16, help="decoder channels on its fine half (twice on the coarse)")
    ap.add_argument("--designs", default=DEFAULT_DESIGNS, help="a: 160 px, b: 224 px, c: 160 px + liver target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a handful of images, one split, 2 epochs, design a")
    args = ap.parse_args()
    if args.smoke:
        args.folds, args.epochs = 1, 2
        args.designs = "a" if args.designs == DEFAULT_DESIGNS else args.designs
    t0 = time.perf_counter()
    keras = import_keras()
    rng = np.random.default_rng(args.seed)
    items = load_items(Path(args.data), args.smoke, rng)
    labels = np.array([it.tumour for it in items], dtype=int)
    log(f"{len(items)} images ({labels.sum()} tumour with an outline, {len(items) - labels.sum()} normal)")
    images160 = np.stack([load_image(it.path, 160) for it in items])
    groups = groups_of(items, images160)
    tests = folds_of(items, groups, args.folds, args.seed)
    evaluated = np.sort(np.concatenate(tests))
    log(f"{len(np.unique(groups))} near-duplicate groups; {len(tests)} test folds of {[len(t) for t in tests]}")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    bb160 = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights="imagenet")
    designs = [d for d in args.designs.split(",") if d]
    sizes = sorted({224 if d == "b" else 160 for d in designs} | {160})
    feats, pooled = {}, {}
    for size in sizes:
        feats[size], pooled[size] = extract(items, size, backbone_at(size, bb160))
        log(f"features at {size} px: {sum(f.nbytes for f in feats[size]) / 2**20:.0f} MiB")
    timings["features (all sizes, with mirrors)"] = time.perf_counter() - t

    rows: list[tuple[str, dict[str, float]]] = baselines([items[i] for i in evaluated])
    cams, _ = probe_cams(pooled[160], feats[160][-1][:, 0], labels, tests)
    rows.append(("linear-probe CAM (160 px)", score_maps([items[i] for i in evaluated], cams[evaluated], True)))

    names = {"a": "decoder, 160 px", "b": "decoder, 224 px", "c": "decoder, 160 px + liver target"}
    oof_maps: dict[str, np.ndarray] = {}
    for d in designs:
        size = 224 if d == "b" else 160
        f = feats[size]
        side = f[0].shape[2]
        y = targets(items, side, "lesion")[..., None]
        if d == "c":
            y = np.concatenate([y, targets(items, side, "liver")[..., None]], axis=-1)
        t = time.perf_counter()
        maps = np.zeros((len(items), side, side), np.float32)
        for k, test in enumerate(tests):
            train = np.setdiff1d(np.arange(len(items)), test)
            maps[test] = train_predict(f, y, train, test, args.epochs, args.seed + k, args.width)
            log(f"design {d}: fold {k + 1}/{len(tests)} done ({time.perf_counter() - t:.0f} s)")
        timings[f"train+predict ({d}) {names[d]}"] = time.perf_counter() - t
        oof_maps[d] = maps
        rows.append((names[d], score_maps([items[i] for i in evaluated], maps[evaluated])))
        if d != designs[-1]:
            print_table(rows, len(tests), args, int(labels[evaluated].sum()), len(evaluated))

    print_table(rows, len(tests), args, int(labels[evaluated].sum()), len(evaluated))
    scored = [(names[d], r) for d in designs for n, r in rows if n == names[d]]
    if scored:
        best_name, _ = max(scored, key=lambda nr: nr[1]["pointing"] + nr[1]["dice"] - nr[1]["false"])
        best = next(d for d in designs if names[d] == best_name)
        ev = np.array([list(lesion.evidence(m).values()) for m in oof_maps[best]])[:, [0, 1, 4]]
        sub = [np.searchsorted(evaluated, t) for t in tests]
        if len(sub) == 1:  # smoke: one held-out split; the classifier check splits it in two
            sub = [np.arange(0, len(evaluated), 2), np.arange(1, len(evaluated), 2)]
        lab = labels[evaluated]
        if any(len(np.unique(np.delete(lab, t))) < 2 for t in sub) or len(np.unique(lab)) < 2:
            print("\ntumour vs normal classifier check: too few images of one class (smoke run)")
            print_times(timings, t0)
            return 0
        res = classifier_check(pooled[160][evaluated], ev[evaluated], lab, sub)
        print()
        print(f"tumour vs normal, out of fold, balanced logistic regression; evidence from: {best_name}")
        for name, (auc, ba) in res.items():
            print(f"  {name:20s} AUC {auc:.3f}  balanced accuracy {ba:.3f}")
        gain_auc = res["+ lesion evidence"][0] - res["pooled features"][0]
        gain_ba = res["+ lesion evidence"][1] - res["pooled features"][1]
        adopt = gain_auc >= 0.005 and gain_ba >= 0.0
        print(f"  adopt into the classifier: {'yes' if adopt else 'no'} (AUC {gain_auc:+.3f}, BA {gain_ba:+.3f})")

    print_times(timings, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
