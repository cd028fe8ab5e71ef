"""Training the lesion localisation head (:mod:`liverscan.core.lesion`) on a prepared directory's outlines.

Targets: the share of each decoder pixel (stride 4) inside the lesion outline.  Images of classes in which no
image has a lesion outline (normal, fatty) teach "no lesion" (all-zero targets); an image of a lesion class
without an outline is left out (unknown, not "nothing there"); an explicit empty outline is "nothing there".

Training: the decoder and the backbone's blocks from ``lesion.fine_tune_from`` on (BatchNorm statistics stay
frozen) with soft Dice + BCE from logits, Adam with cosine decay, batch ``lesion.batch_size``, augmentation by
horizontal flip plus a small zoom / shift and brightness / contrast change applied to image and target alike.
With a frozen backbone (``lesion.fine_tune_from: ""``) the backbone's features of each image and of its mirror
image are computed once and only the decoder trains on them (flip the only augmentation): minutes instead of
tens of minutes, and a head that can share the classifier's backbone pass when exported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core import lesion
from liverscan.core.annotations import has_lesion_outlines, lesion_classes, lesion_free_classes
from liverscan.core.config import Config
from liverscan.core.fileio import npy_bytes, npz_bytes, write_bytes_atomic

STRIDE = 4  # the decoder's output stride with lesion.DEFAULT_LAYERS


@dataclass
class LesionTargets:
    """Training targets of one split: ``coverage`` ``(N, side, side)`` float32 and ``known`` ``(N,)`` bool."""

    coverage: np.ndarray
    known: np.ndarray

    @property
    def n_lesion(self) -> int:
        return int((self.coverage.reshape(len(self.coverage), -1).max(axis=1) > 0)[self.known].sum())

    @property
    def n_free(self) -> int:
        return int(self.known.sum()) - self.n_lesion


def lesion_targets(rows: Sequence[dict[str, str]], side: int, free: set[str] | None = None) -> LesionTargets:
    """Targets for manifest ``rows`` (with ``lesion_annotation``, ``width``, ``height``, ``class``)."""
    from liverscan.core.annotations import read_annotation

    free = lesion_free_classes(rows) if free is None else free
    cov = np.zeros((len(rows), side, side), np.float32)
    known = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        path = r.get("lesion_annotation") or ""
        if path:
            ann = read_annotation(path, int(r["width"]), int(r["height"]), "lesion")
            cov[i] = ann.coverage(side)
            known[i] = True
        elif r["class"] in free:
            known[i] = True
    return LesionTargets(cov, known)


def _augment(
    x: np.ndarray, t: np.ndarray, rng: np.random.Generator, full: bool, zoom: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One training view of image ``x`` (S, S, 3) and target ``t`` (side, side; ``zoom`` x that with a zoom)."""
    if zoom > 1:
        return zoomed_crop(x, t, rng, (1.0, zoom))
    if rng.random() < 0.5:
        x, t = x[:, ::-1], t[:, ::-1]
    x = x.astype(np.float32)
    if not full:
        return x, t
    from scipy import ndimage

    scale = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.08, 0.08, 2)

    def warp(a: np.ndarray) -> np.ndarray:
        n = a.shape[0]
        c = (n - 1) / 2
        mat = np.eye(2) / scale
        off = np.array([c, c]) - mat @ np.array([c, c]) - shift * n / scale
        if a.ndim == 3:
            return np.stack([ndimage.affine_transform(a[..., k], mat, off, order=1) for k in range(a.shape[2])], -1)
        return ndimage.affine_transform(a, mat, off, order=1)

    x, t = warp(x), warp(np.ascontiguousarray(t))
    x = np.clip(x * rng.uniform(0.8, 1.25) + rng.uniform(-20, 20), 0, 255)
    return x.astype(np.float32), t.astype(np.float32)


def zoomed_crop(
    x: np.ndarray,
    t: np.ndarray,
    rng: np.random.Generator,
    scales: tuple[float, float],
    crop: int | None = None,
    on_lesion: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop``-px view (default: ``x``'s side) of image ``x`` (B, B, 3) resized (bilinear) to a random side between
    ``scales`` x ``crop``, and its target cut alike from ``t`` (the lesion's coverage at ``B / 4`` a side; crops are
    stride-4 aligned); with probability ``on_lesion`` a lesion image's crop keeps the lesion's centre.  Then a
    horizontal flip and a brightness / contrast change.  ``lesion.zoom`` trains on these with ``B`` = ``crop`` and
    ``scales`` (1, zoom); ``benchmarks/localisation.py``'s design m with ``B`` its largest view."""
    from PIL import Image

    cell = STRIDE
    crop = crop or x.shape[0]
    side = cell * int(round(rng.uniform(*scales) * crop / cell))
    img = np.asarray(Image.fromarray(np.asarray(x, np.uint8)).resize((side, side), Image.Resampling.BILINEAR))
    cov = Image.fromarray(np.asarray(t, np.float32), mode="F").resize((side // cell,) * 2, Image.Resampling.BILINEAR)
    target = np.clip(np.asarray(cov, np.float32), 0, 1)
    room = (side - crop) // cell  # crop offsets in target cells
    ox, oy = (int(v) for v in rng.integers(0, room + 1, 2)) if room > 0 else (0, 0)
    if room > 0 and target.max() > 0 and rng.random() < on_lesion:
        rows, cols = np.nonzero(target > 0.5 * target.max())
        n, margin = crop // cell, crop // (4 * cell)  # the centre stays at least ``margin`` cells inside the crop

        def around(centre: int, offset: int) -> int:
            low, high = max(0, centre - n + margin + 1), min(room, centre - margin)
            return int(rng.integers(low, high + 1)) if low <= high else offset

        ox, oy = around(int(np.median(cols)), ox), around(int(np.median(rows)), oy)
    img = img[cell * oy : cell * oy + crop, cell * ox : cell * ox + crop].astype(np.float32)
    target = target[oy : oy + crop // cell, ox : ox + crop // cell]
    if rng.random() < 0.5:
        img, target = img[:, ::-1], target[:, ::-1]
    img = np.clip(img * rng.uniform(0.8, 1.25) + rng.uniform(-20, 20), 0, 255)
    return img.astype(np.float32), np.ascontiguousarray(target, np.float32)


def _dataset(
    images: np.ndarray, targets: np.ndarray, idx: np.ndarray, batch: int, seed: int, full: bool, zoom: int = 1
):
    from liverscan.core.keras_env import import_keras

    keras: Any = import_keras()

    class Views(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(idx)

        def __len__(self) -> int:
            return int(np.ceil(len(idx) / batch))

        def __getitem__(self, k: int):
            sel = self.order[k * batch : (k + 1) * batch]
            xs, ts = zip(*(_augment(images[i], targets[i], self.rng, full, zoom) for i in sel))
            return np.stack(xs), np.stack(ts)[..., None]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(idx)

    return Views()


def set_trainable(backbone, first: str) -> list[str]:
    """Make ``backbone``'s layers from ``first`` on trainable (BatchNorm stays frozen); ``""``: all frozen."""
    import keras

    names = [layer.name for layer in backbone.layers]
    if first and first not in names:
        from liverscan.core.errors import ConfigError

        raise ConfigError(f"lesion.fine_tune_from: the backbone has no layer {first!r}")
    on, tuned = False, []
    for layer in backbone.layers:
        on = on or (bool(first) and layer.name == first)
        layer.trainable = on and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable and layer.weights:
            tuned.append(layer.name)
    return tuned


def fit_lesion_model(
    images: np.ndarray,
    targets: LesionTargets,
    cfg: Config,
    seed: int | None = None,
    backbone=None,
    log: Callable[[str], None] | None = None,
    augment: bool = True,
):
    """Train the head on ``images`` (N, S, S, 3) uint8 with ``targets``; returns the serving model
    (pixels 0..255 -> lesion probability ``(N, S, S, 1)``).  ``backbone``: a MobileNetV2 no-top to start from
    (default: built from ``cfg.model``); it is changed in place when blocks are fine-tuned."""
    from liverscan.core.keras_env import import_keras
    from liverscan.core.model import build_backbone

    keras = import_keras()
    lc = cfg.lesion
    seed = cfg.train.seed if seed is None else seed
    keras.utils.set_random_seed(seed)
    size = int(images.shape[1])
    if backbone is None:
        backbone = build_backbone(size, cfg.model.weights, cfg.model.alpha)
        if cfg.model.weights.strip().lower() == "none":  # a random backbone needs usable BatchNorm statistics
            from liverscan.core.model import calibrate_backbone_batchnorm

            sample = np.random.default_rng(seed).permutation(len(images))[:256]
            calibrate_backbone_batchnorm(backbone, images[np.sort(sample)])
    set_trainable(backbone, lc.fine_tune_from)
    zoom = lc.zoom
    run = run_zoom(cfg)
    if not lc.fine_tune_from and zoom == 1:
        decoder = _fit_decoder_on_cached_features(images, targets, cfg, seed, backbone, log, augment)
        return lesion.build_lesion_model(backbone, decoder, lesion.DEFAULT_LAYERS, flip=lc.flip)
    features = lesion.multiscale_backbone(backbone, lesion.DEFAULT_LAYERS)
    shapes = [tuple(s[1:]) for s in lesion._as_list(features.output_shape)]
    if zoom > 1:  # the serving model also runs it on the upsampled image: any size
        shapes = [(None, None, s[-1]) for s in shapes]
    decoder = lesion.build_decoder(shapes, lc.width, 1)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")(inp)
    outs = features(x, training=False)
    trainer = keras.Model(inp, decoder(list(outs) if isinstance(outs, (list, tuple)) else [outs]))
    idx = np.flatnonzero(targets.known)
    side = size // STRIDE
    if zoom > 1 and targets.coverage.shape[1] != zoom * side:
        raise ValueError(f"a zoom of {zoom} needs targets {zoom * side} a side, not {targets.coverage.shape[1]}")
    _fit(trainer, _dataset(images, targets.coverage, idx, lc.batch_size, seed, augment, zoom), cfg, log)
    return lesion.build_lesion_model(backbone, decoder, lesion.DEFAULT_LAYERS, zoom=run, flip=lc.flip)


def multiscale_features(backbone, images: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    """The frozen ``backbone``'s :data:`~liverscan.core.lesion.DEFAULT_LAYERS` outputs for ``images``
    (N, S, S, 3) 0..255, as float16 arrays (finest first)."""
    features = lesion.multiscale_backbone(backbone, lesion.DEFAULT_LAYERS)
    shapes = [tuple(s[1:]) for s in lesion._as_list(features.output_shape)]
    out = [np.zeros((len(images), *shape), np.float16) for shape in shapes]
    from liverscan.core.model import pad_batch

    for start in range(0, len(images), batch):
        x = images[start : start + batch].astype(np.float32) / 127.5 - 1.0
        got = features.predict_on_batch(pad_batch(x, batch))  # one shape: no re-tracing for the last batch
        for array, part in zip(out, got if isinstance(got, (list, tuple)) else [got]):
            array[start : start + len(x)] = np.asarray(part[: len(x)], dtype=np.float16)
    return out


def _fit_decoder_on_cached_features(
    images: np.ndarray,
    targets: LesionTargets,
    cfg: Config,
    seed: int,
    backbone,
    log: Callable[[str], None] | None,
    augment: bool,
):
    """The decoder of a frozen backbone, trained on features computed once (of each image and, with
    ``augment``, of its mirror image: a random one of the two per image and epoch) - no backbone pass per step."""
    from liverscan.core.keras_env import import_keras

    keras: Any = import_keras()
    lc = cfg.lesion
    idx = np.flatnonzero(targets.known)
    known = images[idx]
    plain = multiscale_features(backbone, known)  # about 0.8 MB per image at 160 px (float16)
    mirrored = multiscale_features(backbone, known[:, :, ::-1]) if augment else None
    del known
    cover = targets.coverage[idx]
    decoder = lesion.build_decoder([a.shape[1:] for a in plain], lc.width, 1)

    class Cached(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(idx))

        def __len__(self) -> int:
            return int(np.ceil(len(idx) / lc.batch_size))

        def __getitem__(self, k: int):
            sel = np.sort(self.order[k * lc.batch_size : (k + 1) * lc.batch_size])
            t = cover[sel]
            xs = [a[sel].astype(np.float32) for a in plain]
            if mirrored is not None:
                flip = self.rng.random(len(sel)) < 0.5
                for x, m in zip(xs, mirrored):
                    x[flip] = m[sel[flip]]
                t = np.where(flip[:, None, None], t[:, :, ::-1], t)
            return tuple(xs), t[..., None]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(idx))

    inputs = [keras.Input(a.shape[1:]) for a in plain]
    _fit(keras.Model(inputs, decoder(inputs)), Cached(), cfg, log)  # the decoder itself stays uncompiled: it saves
    return decoder


def _fit(model, data, cfg: Config, log: Callable[[str], None] | None) -> None:
    """Train ``model`` on ``data`` (a PyDataset) with the head's loss, Adam and cosine decay, for ``lesion.epochs``."""
    from liverscan.core.keras_env import import_keras

    keras: Any = import_keras()
    lc = cfg.lesion
    steps = max(1, len(data) * lc.epochs)
    schedule = keras.optimizers.schedules.CosineDecay(lc.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=lesion.dice_bce_loss(dice=lc.dice))
    callbacks = []
    if log is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda e, logs: log(f"lesion head: epoch {e + 1}/{lc.epochs}, loss {logs['loss']:.3f}")
            )
        )
    model.fit(data, epochs=lc.epochs, verbose=0, callbacks=callbacks)


def run_zoom(cfg: Config) -> int:
    """The largest upsampling the head runs at: ``max(zoom, run_zoom)`` for a head trained on zoomed crops, else 1."""
    lc = cfg.lesion
    return max(lc.zoom, lc.run_zoom) if lc.zoom > 1 else 1


def rule_of(cfg: Config, classes: Sequence[str]) -> lesion.LesionRule:
    """The :class:`~liverscan.core.lesion.LesionRule` of ``cfg.lesion`` for a head whose outlined images are of
    ``classes`` (the classifier's probability of them is the gate's)."""
    lc = cfg.lesion
    gate = lc.gate if lc.gate > 0 and lc.extent > 0 and classes else None
    return lesion.LesionRule(
        lc.threshold, lc.min_area, lc.extent, lc.floor, gate, tuple(classes) if gate is not None else ()
    )


def card_entry(
    cfg: Config, targets: LesionTargets, seconds: float, file: str | Path, classes: Sequence[str] = ()
) -> dict[str, Any]:
    """The model card's ``lesion`` section for a head trained with ``cfg`` on ``targets`` (outlined images of
    ``classes``)."""
    lc = cfg.lesion
    return {
        "file": Path(file).name,
        "design": (
            f"decoder (width {lc.width}) on MobileNetV2 features {', '.join(lesion.DEFAULT_LAYERS)}; "
            + (f"backbone tuned from {lc.fine_tune_from}" if lc.fine_tune_from else "backbone frozen")
            + passes_text(run_zoom(cfg), lc.flip)
        ),
        "zoom": run_zoom(cfg),
        "flip": lc.flip,
        "layers": list(lesion.DEFAULT_LAYERS),
        "width": lc.width,
        "output": "lesion probability per input pixel",
        **rule_of(cfg, classes).to_entry(),
        "training": {
            "images_with_lesion": targets.n_lesion,
            "images_without_lesion": targets.n_free,
            "left_out": int((~targets.known).sum()),
            "epochs": lc.epochs,
            "batch_size": lc.batch_size,
            "learning_rate": lc.learning_rate,
            "loss": ("soft Dice per lesion image" if lc.dice == "image" else "soft Dice") + " + binary cross-entropy",
            "augmentation": (
                f"crops of the image upsampled 1-{lc.zoom}x (half the lesion crops kept on the lesion), horizontal "
                "flip, brightness / contrast"
                if lc.zoom > 1
                else "horizontal flip, zoom, shift, brightness / contrast"
                if lc.fine_tune_from
                else "horizontal flip (frozen-backbone features of each image and its mirror computed once)"
            ),
            "seconds": round(seconds, 1),
        },
    }


def passes_text(zoom: int, flip: bool) -> str:
    """How a head with ``zoom`` and ``flip`` runs, for its card ("" for one pass on the image)."""
    where = f"the image and on it upsampled up to {zoom}x" if zoom > 1 else "the image"
    mirror = ", each pass also on its mirror image" if flip else ""
    return f"; run on {where}{mirror}, probabilities averaged" if zoom > 1 or flip else ""


def wanted(cfg: Config, rows: Sequence[dict[str, str]]) -> bool:
    """Whether training fits the lesion head: ``lesion.head: auto`` and the data has lesion outlines."""
    return cfg.lesion.head == "auto" and has_lesion_outlines(rows)


def train_for_run(
    cfg: Config,
    rows: Sequence[dict[str, str]],
    images: np.ndarray,
    run: Path,
    log: Callable[[str], None] | None,
    backbone=None,
) -> dict[str, Any]:
    """Fit the head on ``images`` / manifest ``rows`` (the training images of a run), save it as the run's
    ``lesion.keras`` and return the card's ``lesion`` section.  ``backbone``: the one to start from (default: built
    from ``cfg.model``; the classifier's own, to share it)."""
    import time

    from liverscan.core.artifacts import LESION_FILE
    from liverscan.core.model import save_keras_atomic

    t0 = time.perf_counter()
    side = int(images.shape[1]) // STRIDE * cfg.lesion.zoom  # a zoom's views are cut from finer targets
    targets = lesion_targets(rows, side)
    model = fit_lesion_model(images, targets, cfg, log=log, backbone=backbone)
    save_keras_atomic(model, run / LESION_FILE)
    return card_entry(cfg, targets, time.perf_counter() - t0, LESION_FILE, lesion_classes(rows))


def out_of_fold_maps(
    cfg: Config,
    rows: Sequence[dict[str, str]],
    images: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    folder: Path,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold lesion maps ``(N, S, S)`` float16 of a head fitted on each fold's training images, and the
    mask of images that got one.  Each fold's maps are kept in ``folder/f<k>/lesion_maps.npy`` so a resumed run
    skips finished folds."""
    size = int(images.shape[1])
    side = size // STRIDE * cfg.lesion.zoom  # a zoom's views are cut from finer targets
    free = lesion_free_classes(rows)
    targets = lesion_targets(rows, side, free)
    maps = np.zeros((len(rows), size, size), np.float16)
    done = np.zeros(len(rows), bool)
    for k, (train_idx, test_idx) in enumerate(folds):
        path = folder / f"f{k}" / "lesion_maps.npy"
        if path.is_file():
            maps[test_idx] = np.load(path)
        else:
            sub = LesionTargets(targets.coverage[train_idx], targets.known[train_idx])
            model = fit_lesion_model(images[train_idx], sub, cfg, seed=cfg.train.seed + k, log=log)
            fold_maps = lesion.predict_maps(model, images[test_idx]).astype(np.float16)
            write_bytes_atomic(path, npy_bytes(fold_maps))
            maps[test_idx] = fold_maps
        done[test_idx] = True
        if log is not None:
            log(f"lesion head: fold {k + 1}/{len(folds)} done")
    return maps, done


def write_oof(run: Path, paths: Sequence[str], maps: np.ndarray, done: np.ndarray) -> None:
    """The run's ``lesion_oof.npz``: manifest ``paths`` and their out-of-fold ``maps`` (float16, input size)."""
    from liverscan.core.artifacts import LESION_OOF_FILE

    paths_done = np.asarray(list(paths), dtype=str)[done]
    write_bytes_atomic(run / LESION_OOF_FILE, npz_bytes(paths=paths_done, maps=maps[done]))
