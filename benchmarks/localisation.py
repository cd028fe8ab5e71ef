"""Where is the lesion?  Out-of-fold localisation designs on the xu-liver outlines, side by side with baselines.

Design ``t`` is the head ``liverscan train`` fits (:func:`liverscan.training.lesion.fit_lesion_model` with the
default ``lesion`` settings: backbone tuned from ``block_6``, 40 epochs, ``lesion.zoom`` 2: trained on 1-2x upsampled
crops and run at 160 px and on the image upsampled to 320 and 480 px, ``lesion.run_zoom`` 3, each pass also on the
mirror image, ``lesion.flip``),
trained on each fold's training images and run on its test images (``--lesion-epochs`` changes its epochs,
``--lesion-zoom 1`` gives the single-pass head at 160 px of the tables before the zoom); with ``--flip`` the same
models are also scored without the passes on the mirror image (``t-single``).

Design ``m`` is the same head (same layers, loss, optimiser, epochs, training cost per step) trained on 160-px
crops of each image shown at a random size between ``--crop-scales`` x 160 px (1-2 by default; with probability
``--on-lesion`` a tumour crop keeps the lesion's centre; flip and brightness / contrast as for ``t``) and run fully
convolutionally on the whole image at every multiple of 160 px up to the largest scale, each size scored on its own
and their mean (``m-mean``): it asks whether the head's input resolution is what limits it.  Its larger views come
from the file decoded at that size, or with ``--big-from upsampled`` from the 160-px decode upsampled (what
``lesion.zoom`` does in ``train`` and ``predict``): whether it is the scale or the extra pixels that help.

For the frozen-feature designs, for every image of the xu layout (``<class>/image/<n>.jpg`` with
``<class>/segmentation/{mass,liver,outline}``) the frozen ImageNet MobileNetV2's multi-scale features (``block_3/6/13_expand_relu``, ``out_relu``) are computed
once - for the image and its horizontal mirror - and cached in memory (float16); only a small decoder
(:func:`liverscan.core.lesion.build_decoder`) is trained, out of fold:

- folds: 5-fold ``StratifiedGroupKFold`` stratified by source class (Benign / Malignant / Normal); groups are
  what ``prepare`` links: near-duplicate frames (64-bit perceptual hash within 6 bits) and frames of one sweep
  (16 x 16 thumbnails of one class and size correlating at ``data.sweep_correlation``, see
  ``benchmarks/grouping.py``), by single linkage;
- training: soft Dice (over the batch) + BCE from logits, targets the lesion's area coverage at the decoder's
  resolution (stride 4), normals as all-zero targets, augmentation = horizontal flip (each sample uses the cached
  features of the mirrored image with a mirrored target, with probability 0.5), Adam 1e-3, batch 16;
- frozen-feature designs: (a) 160 px input, (b) 224 px input, (c) 160 px with the liver region as a second target
  (multi-task);
- baselines: the image centre, a uniformly random point in the scan fan (its expected pointing = lesion share of
  the fan), and the class activation map of a linear probe (= its Grad-CAM: for a linear head on pooled features
  the gradient is the weight vector) for tumour vs normal.

Scores (:func:`liverscan.evaluation.localisation.score_localisation`, the function ``liverscan evaluate`` uses, and
its table): on tumour images at the original resolution (maps are squashed back bilinearly) the pointing game (peak
inside the lesion), Dice / IoU of the map thresholded at 0.5 (regions under 0.2 % of the image dropped), the share of
the map's total heat inside the lesion vs the lesion's share of the fan; on normals the share with any predicted
lesion; 95 % CIs from a bootstrap over the groups (``--bootstrap``).

Finally the best design's lesion evidence (max probability, area fraction, top-1 % mean) is appended to the probe's
pooled features: out-of-fold tumour-vs-normal AUC / balanced accuracy with and without it.

    python benchmarks/localisation.py --data ../shared/data/xu-liver            # the full run
    python benchmarks/localisation.py --data ../shared/data/xu-liver --smoke    # a handful of images, for CI
    python benchmarks/localisation.py --data ../shared/data/xu-liver --designs m,t --save-maps maps.npz

Heavy work runs on one thread (``OMP_NUM_THREADS`` / ``TF_NUM_*_THREADS`` default to 1); pin the process to
one core with ``taskset -c N`` if the machine is shared, or set them to 2 for design ``t`` (about 45 minutes for
five folds on 2 CPU cores).
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
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from liverscan.core import lesion  # noqa: E402
from liverscan.core.annotations import image_size, load_annotation, mask_coverage  # noqa: E402
from liverscan.core.dedup import link_groups, near_duplicate_pairs, perceptual_hash  # noqa: E402
from liverscan.core.images import load_image  # noqa: E402
from liverscan.core.keras_env import import_keras  # noqa: E402
from liverscan.core.sweeps import SWEEP_CORRELATION, sweep_pairs, thumbnail  # noqa: E402
from liverscan.evaluation.localisation import LocalisationMetrics, MapScores, score_localisation  # noqa: E402
from liverscan.evaluation.results import format_with_ci  # noqa: E402

CLASSES = {"Benign": "tumour", "Malignant": "tumour", "Normal": "normal"}
LAYERS = lesion.DEFAULT_LAYERS
DEFAULT_DESIGNS = "t,a"


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
    """The groups ``prepare`` makes: near-duplicates (pHash single linkage) and frames of one sweep (look-alike
    thumbnails of one class and size, :func:`liverscan.core.sweeps.sweep_pairs`)."""
    hashes = [perceptual_hash(a) for a in images160]
    pairs = [(i, j) for i, j, _ in near_duplicate_pairs(hashes, distance)]
    thumbs = [thumbnail(a) for a in images160]
    pairs += sweep_pairs(thumbs, [(it.source, it.width, it.height) for it in items], SWEEP_CORRELATION)
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


def score(
    items: list[Item], maps: np.ndarray, groups: np.ndarray, args, cams: np.ndarray | None = None
) -> LocalisationMetrics:
    """The figures of maps ``(N, side, side)`` (one per item), with the image centre, a random point in the fan
    and (``cams``) the linear probe's CAM beside them - ``liverscan evaluate``'s scoring function."""
    return score_localisation(
        maps,
        [it.lesion for it in items],
        [it.fan for it in items],
        [not it.tumour for it in items],
        groups,
        bootstrap=args.bootstrap,
        seed=args.seed,
        saliency=None if cams is None else {"linear-probe CAM (160 px)": list(cams)},
    )


def product_head_maps(items: list[Item], images: np.ndarray, tests: list[np.ndarray], args) -> dict[str, np.ndarray]:
    """Out-of-fold maps ``(N, S, S)`` of the head ``liverscan train`` fits (``training.lesion.fit_lesion_model``
    with the default ``lesion`` settings, ``--lesion-epochs`` and ``--lesion-zoom`` aside), one per test fold: ``t``
    (with ``lesion.flip``, the mean of the image's map and its mirror's, mirrored back), and with ``--flip`` the
    same models the other way too: ``t-single`` without the mirror pass (``t-flip`` with it, when ``lesion.flip``
    is off).  The mirror pass changes no weight: one training gives both."""
    from liverscan.core.config import Config
    from liverscan.training.lesion import LesionTargets, fit_lesion_model

    cfg = Config()
    cfg.model.weights = args.weights
    if args.lesion_epochs:
        cfg.lesion.epochs = args.lesion_epochs
    if args.lesion_zoom:
        cfg.lesion.zoom = args.lesion_zoom
    mirror_on = cfg.lesion.flip
    cfg.lesion = replace(cfg.lesion, flip=False)  # the passes on the mirror image are averaged in below
    other = "t-single" if mirror_on else "t-flip"
    coverage = targets(items, images.shape[1] // 4 * cfg.lesion.zoom, "lesion")[:, 0]  # a zoom cuts finer targets
    out = {key: np.zeros(images.shape[:3], np.float32) for key in (["t", other] if args.flip else ["t"])}
    t = time.perf_counter()
    for k, test in enumerate(tests):
        train = np.setdiff1d(np.arange(len(items)), test)
        model = fit_lesion_model(
            images[train], LesionTargets(coverage[train], np.ones(len(train), bool)), cfg, seed=args.seed + k
        )
        single = lesion.predict_maps(model, images[test])
        both = single
        if args.flip or mirror_on:
            both = (single + lesion.predict_maps(model, images[test][:, :, ::-1])[:, :, ::-1]) / 2
        out["t"][test] = both if mirror_on else single
        if args.flip:
            out[other][test] = single if mirror_on else both
        log(f"design t: fold {k + 1}/{len(tests)} done ({time.perf_counter() - t:.0f} s)")
    return out


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BILINEAR)) for a in images])


def _resized_map(m: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(m, mode="F").resize((side, side), Image.Resampling.BILINEAR), np.float32)


def multiscale_head_maps(
    items: list[Item], images: np.ndarray, big: np.ndarray, cover_big: np.ndarray, tests: list[np.ndarray], args
) -> dict[str, np.ndarray]:
    """Design m: train's head (backbone tuned from ``lesion.fine_tune_from``, the same decoder, loss, optimiser and
    epochs) trained on 160-px crops of each image shown at ``--crop-scales`` x 160 px (``big``: the images at the
    largest), then run fully convolutionally on whole images at every multiple of 160 px up to the largest.
    Out-of-fold maps per inference: ``m160``, ``m320``, ... (at their size) and ``m-mean`` (their mean, at the
    largest size)."""
    from liverscan.core.config import Config
    from liverscan.core.model import build_backbone
    from liverscan.training.lesion import _fit, set_trainable, zoomed_crop

    keras: Any = import_keras()
    cfg = Config()
    cfg.model.weights = args.weights
    if args.lesion_epochs:
        cfg.lesion.epochs = args.lesion_epochs
    lc = cfg.lesion
    crop, full = images.shape[1], big.shape[1]
    scales = tuple(float(v) for v in args.crop_scales.split(","))
    sizes = list(range(crop, full + 1, crop))
    out = {f"m{n}": np.zeros((len(items), n, n), np.float32) for n in sizes}
    out["m-mean"] = np.zeros((len(items), full, full), np.float32)
    t = time.perf_counter()
    for k, test in enumerate(tests):
        seed = args.seed + k
        keras.utils.set_random_seed(seed)
        train = np.setdiff1d(np.arange(len(items)), test)
        backbone = build_backbone(crop, cfg.model.weights, cfg.model.alpha)
        set_trainable(backbone, lc.fine_tune_from)
        features = lesion.multiscale_backbone(backbone, LAYERS)
        channels = [int(s[-1]) for s in lesion._as_list(features.output_shape)]
        decoder = lesion.build_decoder([(None, None, c) for c in channels], lc.width, 1)
        inp = keras.Input((crop, crop, 3))
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
        trainer = keras.Model(inp, decoder(list(features(x, training=False))))

        class Views(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.order = self.rng.permutation(train)

            def __len__(self) -> int:
                return int(np.ceil(len(train) / lc.batch_size))

            def __getitem__(self, j: int):
                sel = self.order[j * lc.batch_size : (j + 1) * lc.batch_size]
                xs, ts = zip(*(zoomed_crop(big[i], cover_big[i], self.rng, scales, crop, args.on_lesion) for i in sel))
                return np.stack(xs), np.stack(ts)[..., None]

            def on_epoch_end(self) -> None:
                self.order = self.rng.permutation(train)

        _fit(trainer, Views(), cfg, None)
        runner = keras.applications.MobileNetV2(input_shape=(None, None, 3), include_top=False, weights=None)
        runner.set_weights(backbone.get_weights())
        feats = lesion.multiscale_backbone(runner, LAYERS)
        rin = keras.Input((None, None, 3))
        logits = decoder(list(feats(keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(rin), training=False)))
        up = keras.layers.UpSampling2D(4, interpolation="bilinear")(logits)
        model = keras.Model(rin, keras.layers.Activation("sigmoid")(up))

        for n in sizes:
            shown = images[test] if n == crop else big[test] if n == full else _resized(big[test], n)
            out[f"m{n}"][test] = got = lesion.predict_maps(model, shown)
            at_full = got if n == full else np.stack([_resized_map(g, full) for g in got])
            out["m-mean"][test] += at_full / len(sizes)
        log(f"design m: fold {k + 1}/{len(tests)} done ({time.perf_counter() - t:.0f} s)")
    return out


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


def print_table(rows: list[MapScores], base: LocalisationMetrics, n_folds: int, args) -> None:
    """The table ``liverscan evaluate`` prints (:meth:`LocalisationMetrics.table`), one row per design."""
    from rich.console import Console
    from rich.table import Table

    header, cells = replace(base, maps=rows).table()
    table = Table(
        title=f"Lesion localisation, out of fold ({n_folds} group-aware folds, {args.epochs} epochs, decoder width "
        f"{args.width}): {base.n_outlined} tumour images, {base.n_lesion_free} normals; {base.level:.0%} CI over "
        f"{base.resampled}"
    )
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=200).print(table)
    print(
        f"lesion's share of the fan {format_with_ci(base.lesion_share_of_fan, base.lesion_share_of_fan_ci)}; "
        "targets: pointing >= 0.85, mean Dice >= 0.60, false lesions on <= 10 % of normals",
        flush=True,
    )


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
    ap.add_argument(
        "--designs",
        default=DEFAULT_DESIGNS,
        help="t: the head liverscan train fits (default settings); m: that head trained on crops at 1-2x scale and "
        "run at 160 and 320 px; frozen-feature decoders: a: 160 px, b: 224 px, c: 160 px + liver target",
    )
    ap.add_argument("--weights", default="imagenet", help="backbone weights for design t (imagenet or a .h5 file)")
    ap.add_argument(
        "--lesion-epochs", type=int, default=0, help="designs t and m: epochs (0: the default lesion.epochs)"
    )
    ap.add_argument(
        "--lesion-zoom", type=int, default=0, help="design t: lesion.zoom (0: the default; 1: one pass at 160 px)"
    )
    ap.add_argument("--crop-scales", default="1,2", help="design m: the image's side, as multiples of the crop's")
    ap.add_argument("--on-lesion", type=float, default=0.5, help="design m: share of lesion crops kept on the lesion")
    ap.add_argument(
        "--big-from",
        choices=("pixels", "upsampled"),
        default="pixels",
        help="design m: its larger views decoded from the file at that size (pixels), or the 160-px decode upsampled "
        "(upsampled: all a 160-px pipeline has), for training and running alike",
    )
    ap.add_argument(
        "--flip",
        action="store_true",
        help="design t: also score its models without the mirror passes (t-single; t-flip: with them, if lesion.flip is off)",
    )
    ap.add_argument("--save-maps", default="", help="write every design's out-of-fold maps to this .npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the groups for the CIs")
    ap.add_argument("--smoke", action="store_true", help="a handful of images, one split, 1-2 epochs")
    args = ap.parse_args()
    if args.smoke:
        args.folds, args.epochs, args.lesion_epochs = 1, 2, 1
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
    log(
        f"{len(np.unique(groups))} groups (near-duplicates and sweeps); {len(tests)} test folds of {[len(t) for t in tests]}"
    )
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

    ev_items = [items[i] for i in evaluated]
    ev_groups = groups[evaluated]
    cams, _ = probe_cams(pooled[160], feats[160][-1][:, 0], labels, tests)
    names = {
        "t": "liverscan's head (train's default)",
        "a": "decoder, 160 px",
        "b": "decoder, 224 px",
        "c": "decoder, 160 px + liver target",
    }
    oof_maps: dict[str, np.ndarray] = {}
    results: dict[str, LocalisationMetrics] = {}
    base: LocalisationMetrics | None = None
    for d in designs:
        size = 224 if d == "b" else 160
        f = feats[size]
        side = f[0].shape[2]
        y = targets(items, side, "lesion")[..., None]
        if d == "c":
            y = np.concatenate([y, targets(items, side, "liver")[..., None]], axis=-1)
        t = time.perf_counter()
        if d == "m":
            top = max(float(v) for v in args.crop_scales.split(","))
            full = 160 * max(1, int(round(top)))
            if args.big_from == "upsampled":
                big = _resized(images160, full)
            else:
                big = np.stack([load_image(it.path, full) for it in items])
            cover_big = targets(items, full // 4, "lesion")[:, 0]
            got = multiscale_head_maps(items, images160, big, cover_big, tests, args)
            scales = args.crop_scales.replace(",", "-") + ("x upsampled" if args.big_from == "upsampled" else "x")
            for key in got:
                names[key] = f"head on {scales} crops, " + (
                    "mean of the sizes" if key == "m-mean" else f"run at {key[1:]} px"
                )
            timings[f"train+predict ({d}) multi-scale crops"] = time.perf_counter() - t
        elif d == "t":
            got = product_head_maps(items, images160, tests, args)
            names.setdefault("t-flip", names["t"] + ", mean with its mirror's map")
            names.setdefault("t-single", names["t"] + ", without the pass on the mirror image")
            timings[f"train+predict ({d}) {names[d]}"] = time.perf_counter() - t
        else:
            maps = np.zeros((len(items), side, side), np.float32)
            for k, test in enumerate(tests):
                train = np.setdiff1d(np.arange(len(items)), test)
                maps[test] = train_predict(f, y, train, test, args.epochs, args.seed + k, args.width)
                log(f"design {d}: fold {k + 1}/{len(tests)} done ({time.perf_counter() - t:.0f} s)")
            got = {d: maps}
            timings[f"train+predict ({d}) {names[d]}"] = time.perf_counter() - t
        for key, maps in got.items():
            oof_maps[key] = maps
            results[key] = score(ev_items, maps[evaluated], ev_groups, args, cams[evaluated] if base is None else None)
            base = base or results[key]  # the first design's scores carry the baselines
        if args.save_maps:
            np.savez_compressed(args.save_maps, **{k: v.astype(np.float16) for k, v in oof_maps.items()})
        rows = [replace(results[k].head, name=names[k]) for k in results] + base.maps[1:]
        print_table(rows, base, len(tests), args)
        for k in results:  # the smallest quarter of lesions is where heads fail
            sizes = "; ".join(
                f"Q{q['quartile']} ({q['size_from']:.2%}–{q['size_to']:.2%}) {q['pointing'] or 0:.3f} / "
                f"{q['dice_mean'] or 0:.3f}"
                for q in results[k].by_size
            )
            print(f"{names[k]}: pointing / mean Dice by lesion-size quartile: {sizes}", flush=True)

    if results:

        def merit(m: MapScores) -> float:
            return (m.pointing or 0.0) + (m.dice_mean or 0.0) - (m.false_lesion_rate or 0.0)

        best = max(results, key=lambda d: merit(results[d].head))
        best_name = names[best]
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
