"""``train``: the published transfer-learning protocol, fast and resumable.

Two ways to run the same protocol (``train.mode``):

- ``cached`` (default): the frozen backbone's output for ``views`` augmented
  copies of every training image, and for the un-augmented validation images,
  is computed once; the head is then trained for every epoch on those features
  (each epoch draws one of the views of each image).  The backbone runs
  ``views`` times per image instead of once per image per epoch.
- ``fit``: the straightforward loop, augmenting images and running the whole
  model every epoch.

Both use the same stage runner (:mod:`liverscan.training.loop`): Adam,
class-weighted loss, early stopping on validation accuracy (restoring the best
weights, also when the epoch limit ends the run), learning rate x factor after
``lr_patience`` epochs without a lower validation loss, and checkpoints so a
killed run resumes.  An optional second stage fine-tunes the top backbone blocks.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liverscan.core import artifacts as art
from liverscan.core import guard
from liverscan.core.artifacts import ModelCard, write_card
from liverscan.core.config import Config, load_saved_config
from liverscan.core.dataset import PreparedData, Split, class_weights
from liverscan.core.errors import DataError, RunDirError
from liverscan.core.fileio import sha256_file
from liverscan.core.images import DECODER
from liverscan.core.keras_env import accelerator, backend_name, import_keras, seeded
from liverscan.core.runinfo import utc_now, versions
from liverscan.training.checkpoints import CheckpointStore
from liverscan.training.loop import Reporter, SilentReporter, Stage, epoch_dataset, run_stage


@dataclass
class TrainResult:
    """Where the run went, its model card and its epoch history."""

    run_dir: Path
    card: ModelCard
    history: list[dict] = field(default_factory=list)


def _one_hot(y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(y), n), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def _loss(cfg: Config):
    keras = import_keras()
    if cfg.train.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=cfg.train.focal_gamma, from_logits=True)
    return keras.losses.CategoricalCrossentropy(from_logits=True)


def _sample_weights(y: np.ndarray, weights: np.ndarray | None) -> np.ndarray | None:
    return None if weights is None else weights[y].astype(np.float32)


def compile_trainer(model, cfg: Config, learning_rate: float):
    """Compile a logits-output training view (see :func:`liverscan.core.model.logits_view`)."""
    keras = import_keras()
    opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=cfg.train.beta_1, beta_2=cfg.train.beta_2)
    model.compile(optimizer=opt, loss=_loss(cfg), metrics=["accuracy"])
    return model


# ----------------------------------------------------------------------------- the run directory


def _start_run_dir(run: Path, overwrite: bool) -> None:
    """An empty run directory; an earlier run there (with ``overwrite``, or a failed one) is replaced: only a
    liverscan run (its ``run.json`` or model card) holding nothing but what liverscan wrote, file by file."""
    if run.exists() and any(run.iterdir()):
        failed = (run / art.RUN_FILE).is_file() and art.read_run_info(run).get("status") == "failed"
        if not overwrite and not failed:
            raise RunDirError(f"{run}: run directory exists and is not empty; overwrite it or resume it")
        if not (run / art.RUN_FILE).is_file() and not (run / art.CARD_FILE).is_file():
            raise RunDirError(
                f"{run}: not a liverscan run directory (no {art.RUN_FILE} or {art.CARD_FILE}); refusing to overwrite it"
            )
        foreign = foreign_file(run)
        if foreign is not None:
            raise RunDirError(
                f"{foreign}: not written by liverscan; --overwrite replaces only a run's own files, "
                f"so move it out of {run} first"
            )
        for entry in sorted(run.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    run.mkdir(parents=True, exist_ok=True)


def foreign_file(run: Path) -> Path | None:
    """The first file or folder in run directory ``run`` that liverscan did not write, or None.

    liverscan's own: the run's files (:mod:`liverscan.core.artifacts`), what an interrupted atomic write left
    beside them, its working folders (checkpoints, cached features, cross-validation folds) holding only the
    kinds of file training writes there, and ``eval-*`` folders holding only what evaluate writes."""
    from liverscan.training.crossval import FOLDS_DIR

    for entry in sorted(run.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if entry.name in (art.CHECKPOINT_DIR, art.FEATURES_DIR, FOLDS_DIR):
                inside = (p for p in sorted(entry.rglob("*")) if not p.is_dir() or p.is_symlink())
                odd = next((p for p in inside if p.suffix not in _STATE_SUFFIXES), None)
            elif entry.name.startswith(art.eval_dir_name("")):
                odd = art.foreign_entry(entry, art.EVAL_FILES)
            else:
                odd = entry
            if odd is not None:
                return odd
        elif not art.own_name(entry, art.RUN_FILES):
            return entry
    return None


#: the kinds of file training keeps in its working folders (Keras models, arrays, JSON state, atomic writes)
_STATE_SUFFIXES = {".keras", ".npz", ".npy", ".json", ".tmp"}


def weights_source(spec: str, cfg: Config) -> dict:
    from liverscan.core.model import imagenet_weights_in_use

    s = spec.strip()
    if s.lower() == "none":
        return {
            "spec": "none",
            "description": "random initialisation, BatchNorm statistics calibrated on training images",
        }
    if s.lower() == "imagenet":
        f = imagenet_weights_in_use(cfg.model.alpha, cfg.preprocess.image_size)
        out = {"spec": "imagenet", "description": "ImageNet (Keras MobileNetV2 release, via the Keras cache)"}
        if f is not None:
            out.update(file=f.name, sha256=sha256_file(f))
        return out
    return {"spec": str(Path(s).resolve()), "description": "weights file", "sha256": sha256_file(s)}


def train_run(
    cfg: Config,
    data_dir: str | Path | None,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    reporter: Reporter | None = None,
    then: Sequence[str] = (),
) -> TrainResult:
    """Train a model on a prepared dataset into ``run_dir`` (or resume the interrupted run there); ``then``:
    the phases that follow (see :func:`run_in_directory`).  A dataset whose validation split is empty or lacks a
    class is refused before the run directory is touched (:func:`check_validation_split`)."""
    if not resume and data_dir is not None:
        check_validation_split(PreparedData(data_dir))
    return run_in_directory(
        _train, cfg, data_dir, run_dir, overwrite=overwrite, resume=resume, reporter=reporter, then=then
    )


def check_validation_split(data: PreparedData) -> None:
    """Refuse single-split training without validation images of every class it trains on: early stopping,
    the validation metrics, the out-of-distribution threshold and operating points are all chosen on them
    (cross-validation, ``train --folds K``, uses every image instead and needs no validation split)."""
    from collections import Counter

    counts = Counter((r["split"], r["class"]) for r in data.rows)
    n_train = sum(n for (s, _), n in counts.items() if s == "train")
    n_val = sum(n for (s, _), n in counts.items() if s == "val")
    how = (
        "prepare it again with more images or a larger validation ratio (--split-ratios), "
        "or cross-validate on all images instead (liverscan train --folds K)"
    )
    if n_train and not n_val:
        raise DataError(
            f"{data.dir}: the validation split is empty ({n_train} training images): training on one split "
            f"needs validation images of every class; {how}"
        )
    lacking = [c for c in data.classes if counts[("train", c)] and not counts[("val", c)]]
    if n_train and lacking:
        raise DataError(
            f"{data.dir}: the validation split has no images of {', '.join(lacking)} ({n_val} validation images): "
            f"training on one split needs validation images of every class; {how}"
        )


def run_in_directory(
    body,
    cfg: Config,
    data_dir: str | Path | None,
    run_dir: str | Path,
    *,
    overwrite: bool,
    resume: bool,
    reporter: Reporter | None,
    info_extra: dict | None = None,
    then: Sequence[str] = (),
) -> TrainResult:
    """Start (or resume) a run directory, run ``body(cfg, data, run, reporter)`` seeded, and keep ``run.json``
    true: ``running``, then ``complete``, or ``interrupted`` / ``failed`` so the run can be resumed or retried.

    ``run.json`` lists the run's ``phases`` (``train``, then ``then``: e.g. the out-of-fold evaluation and the
    fast runtime's export, which :func:`finish_run` runs) and those ``done``; with phases still to run, a
    trained run is ``trained``, not ``complete``.  Resuming a run whose training is done returns its result
    from the run directory at once: nothing is trained again."""
    reporter = reporter or SilentReporter()
    run = Path(run_dir)
    if resume:
        info = art.read_run_info(run)
        if info.get("status") == "complete":
            raise RunDirError(f"{run}: training already complete")
        if art.TRAIN_PHASE in info.get("done", []):
            return TrainResult(run, art.read_card(run), _history_of(run))
        cfg = load_saved_config(run / art.CONFIG_FILE)
        data = PreparedData(info["data_dir"])
    else:
        if data_dir is None:
            raise RunDirError("training needs a prepared dataset directory")
        data = PreparedData(data_dir)  # fails before the run directory is touched
        data.cache(cfg.preprocess.image_size)  # and so does a damaged decoded-image cache
        _start_run_dir(run, overwrite)
        info = {"data_dir": str(Path(data_dir).resolve()), "created": utc_now(), **(info_extra or {})}
        info.update(phases=[art.TRAIN_PHASE, *then], done=[])
        cfg.save(run / art.CONFIG_FILE)
    with _recorded(run, info):  # a stop while "running" is written still leaves the run marked interrupted
        info["status"] = "running"
        art.write_run_info(run, info)
        with seeded(cfg.train.seed):
            result = body(cfg, data, run, reporter)
    _phase_done(run, info, art.TRAIN_PHASE)
    return result


def finish_run(run_dir: str | Path, steps: Mapping[str, Callable[[], object]]) -> None:
    """Run the phases ``run.json`` lists after training that are not done yet, in order (``steps``: name ->
    what runs it), recording each as it ends; the run is ``complete`` after the last.  Stopped or failed, the
    run is ``interrupted`` / ``failed`` and ``train --resume`` runs the remaining phases (never training again)."""
    run = Path(run_dir)
    info = art.read_run_info(run)
    pending = art.pending_phases(info)
    if art.TRAIN_PHASE in pending:
        raise RunDirError(f"{run}: not trained yet; resume it with: liverscan train --resume {run}")
    missing = [name for name in pending if name not in steps]
    if missing:
        raise RunDirError(f"{run}: no way to run the phase(s) {', '.join(missing)} here")
    if not pending:
        return
    with _recorded(run, info):
        info["status"] = "running"
        art.write_run_info(run, info)
        for name in pending:
            steps[name]()
            _phase_done(run, info, name)


@contextlib.contextmanager
def _recorded(run: Path, info: dict) -> Iterator[None]:
    """A stop (``interrupted``) or an error (``failed``) inside is written to ``run.json``, then propagates."""
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        info.update(status="interrupted" if interrupted else "failed", error=None if interrupted else str(exc))
        art.write_run_info(run, info)
        raise


def _phase_done(run: Path, info: dict, name: str) -> None:
    """Record phase ``name`` as done: the run is ``complete`` when no phase is left, else ``trained``."""
    info["done"] = [*info.get("done", []), name]
    left = art.pending_phases(info)
    info.update(status="trained" if left else "complete", error=None)
    if not left:
        info["finished"] = utc_now()
    art.write_run_info(run, info)


def _history_of(run: Path) -> list[dict]:
    return art.read_history(run) if (run / art.HISTORY_FILE).is_file() else []


def _train(cfg: Config, data: PreparedData, run: Path, reporter: Reporter) -> TrainResult:
    from liverscan.core.model import (
        calibrate_batchnorm,
        count_params,
        head_of,
        save_keras_atomic,
        unfreeze_top_blocks,
    )

    t_start = time.perf_counter()
    classes = data.classes
    size = cfg.preprocess.image_size
    train = data.split("train", size, cfg.preprocess.max_pixels)
    val = data.split("val", size, cfg.preprocess.max_pixels)
    linear = cfg.model.head == "linear"
    if len(train.y) == 0 or (len(val.y) == 0 and not linear):
        raise DataError(
            f"{data.dir}: training needs non-empty train and val splits "
            f"(has {len(train.y)} train, {len(val.y)} val images)"
        )
    if linear and cfg.train.fine_tune_blocks > 0:
        raise DataError("fine-tuning the backbone needs the mlp head (model.head=mlp)")
    cw = class_weights([classes[i] for i in train.y], classes)
    model = model_from_config(cfg, len(classes))
    params = count_params(model)
    if cfg.model.weights.strip().lower() == "none":
        sample = np.random.default_rng(cfg.train.seed).permutation(len(train.y))[:256]
        calibrate_batchnorm(model, train.x[np.sort(sample)])

    if linear:
        fit = _train_linear_head(model, train, val, cfg, run, reporter)
    else:
        fit = _train_mlp_model(model, train, val, cfg, run, reporter, cw)

    # ---- outputs
    reporter.phase("Writing model and card", None)
    unfreeze_top_blocks(model, 0)  # the probability-output model; training only ever compiled views of it
    save_keras_atomic(model, run / art.MODEL_FILE)
    art.write_history(run, fit.history)
    if fit.history:
        from liverscan.core.plots import training_curves

        training_curves(fit.history, run / art.CURVES_FILE)
    val_metrics = None
    if len(val.y):
        if fit.val_features is not None:
            val_probs = np.asarray(head_of(model).predict(fit.val_features, batch_size=256, verbose=0))
        else:
            val_probs = np.asarray(model.predict(val.x.astype(np.float32), batch_size=64, verbose=0))
        val_metrics = _val_metrics(val_probs, val, classes)
    card = _model_card(cfg, data, run, params, cw, fit, val_metrics, time.perf_counter() - t_start)
    if cfg.ood.enabled:
        reporter.phase("Fitting the out-of-distribution reference", None)
        card.ood = fit_guard(model, train, val, cfg, run, fit.train_features, fit.val_features)
    card.lesion = _lesion_head(cfg, data, train, val, run, reporter, model)
    art.seal(card, run)
    write_card(run, card)
    return TrainResult(run, card, fit.history)


def _lesion_head(cfg: Config, data: PreparedData, train: Split, val: Split, run: Path, reporter: Reporter, model):
    """Fit the lesion localisation head on the training and validation images when the data has outlines
    (the head has no early stopping, so the validation images only add examples); its card section or None.
    A head on a frozen backbone reads classifier ``model``'s own backbone, so one pass can serve both."""
    from liverscan.core.model import backbone_of
    from liverscan.training import lesion as lesion_training

    rows = [r for r in data.rows if r["split"] in ("train", "val")]
    if not lesion_training.wanted(cfg, rows):
        return None
    by_path = {r["path"]: r for r in rows}
    ordered = [by_path[p] for p in [*train.paths, *val.paths]]
    images = np.concatenate([train.x, val.x]) if len(val.y) else train.x
    reporter.phase(f"Lesion localisation head ({cfg.lesion.epochs} epochs)", None)
    shared = None if cfg.lesion.fine_tune_from else backbone_of(model)
    return lesion_training.train_for_run(
        cfg, ordered, images, run, lambda msg: reporter.phase(msg, None), backbone=shared
    )


@dataclass
class HeadFit:
    """What training the head produced, for the card and the guard."""

    history: list[dict]
    best: dict
    stopped_early: bool
    details: dict = field(default_factory=dict)
    train_features: np.ndarray | None = None  # un-augmented, when computed with the final backbone
    val_features: np.ndarray | None = None


def _train_linear_head(model, train: Split, val: Split, cfg: Config, run: Path, reporter: Reporter) -> HeadFit:
    """The linear probe on un-augmented pooled features, C chosen by inner group cross-validation."""
    from liverscan.core.model import feature_extractor, set_linear_head
    from liverscan.core.probe import fit_linear_probe
    from liverscan.training.features import compute_features

    extractor = feature_extractor(model)
    reporter.phase(f"Backbone features of {len(train.y) + len(val.y)} images", None)
    ftrain = compute_features(extractor, train.x, reporter=reporter)
    fval = compute_features(extractor, val.x) if len(val.y) else None
    reporter.phase("Fitting the linear probe (C by inner group cross-validation)", None)
    assert train.groups is not None  # PreparedData.split gives every image a group
    probe = fit_linear_probe(ftrain, train.y, train.groups, model.output_shape[-1], seed=cfg.train.seed)
    set_linear_head(model, probe.weights, probe.bias)
    details = {
        "C": probe.c,
        "inner_folds": probe.inner_folds,
        "class_weight": "balanced",
        "features": "standardised (folded into the softmax layer)",
    }
    return HeadFit([], {"stage": "linear probe", "epoch": None, "val_accuracy": None}, False, details, ftrain, fval)


def _train_mlp_model(model, train: Split, val: Split, cfg: Config, run: Path, reporter: Reporter, cw) -> HeadFit:
    """The paper's head (cached or fit mode), then the optional fine-tuning stage."""
    from liverscan.core.model import copy_trained_weights, head_of, logits_view, unfreeze_top_blocks
    from liverscan.training.augment import build_augmenter

    t = cfg.train
    classes = list(cw)
    n_classes = len(classes)
    seed = t.seed
    weight_vec = np.array([cw[c] for c in classes], np.float32) if t.loss == "weighted" else None
    validation_y = _one_hot(val.y, n_classes)
    bs = t.batch_size
    augmenter = build_augmenter(cfg.augment, seed)
    ckpt = run / art.CHECKPOINT_DIR

    # ---- stage 1: the head on the frozen backbone (trained through logits-output views sharing its layers)
    feats = None
    if t.mode == "cached":
        from liverscan.training.features import cached_features

        feats = cached_features(model, train, val, augmenter, cfg, run / art.FEATURES_DIR, reporter)
        stage = Stage(
            "head",
            t.epochs,
            t.learning_rate,
            _cached_epoch_data(feats[0], train.y, n_classes, weight_vec, bs, seed),
            (feats[1], validation_y),
            "Training head on cached features",
        )
        trainer_of = head_of(model)
    else:
        stage = Stage(
            "head",
            t.epochs,
            t.learning_rate,
            _fit_epoch_data(train, n_classes, weight_vec, augmenter, bs, seed),
            (val.x.astype(np.float32), validation_y),
            "Training (augmenting every epoch)",
        )
        trainer_of = model
    trainer, state = run_stage(
        stage, lambda lr: compile_trainer(logits_view(trainer_of), cfg, lr), t, CheckpointStore(ckpt / "head"), reporter
    )
    copy_trained_weights(trainer, model)  # a no-op unless the trainer was reloaded from a checkpoint
    history = list(state.history)
    best = {"stage": "head", "epoch": state.best_epoch, "val_accuracy": state.best_val_accuracy}
    fine_tuned = t.fine_tune_blocks > 0 and t.fine_tune_epochs > 0

    # ---- stage 2: optional fine-tuning of the top blocks
    if fine_tuned:

        def make_fine_tuner(lr: float):
            unfreeze_top_blocks(model, t.fine_tune_blocks)
            return compile_trainer(logits_view(model), cfg, lr)

        ft = Stage(
            "fine_tune",
            t.fine_tune_epochs,
            t.fine_tune_learning_rate,
            _fit_epoch_data(train, n_classes, weight_vec, augmenter, bs, seed + 7919),
            (val.x.astype(np.float32), validation_y),
            f"Fine-tuning top {t.fine_tune_blocks} blocks",
        )
        trainer, ft_state = run_stage(
            ft, make_fine_tuner, t, CheckpointStore(ckpt / "fine_tune"), reporter, initial_best=state.best_val_accuracy
        )
        copy_trained_weights(trainer, model)
        history += [{**row, "epoch": len(history) + 1} for row in ft_state.history]
        if ft_state.best_epoch:
            best = {
                "stage": "fine_tune",
                "epoch": len(state.history) + ft_state.best_epoch,
                "val_accuracy": ft_state.best_val_accuracy,
            }
    val_features = None if fine_tuned or feats is None else feats[1]
    return HeadFit(history, best, state.stopped_early, {}, None, val_features)


def fit_guard(model, train: Split, val: Split, cfg: Config, run: Path, train_features=None, val_features=None) -> dict:
    """Fit the out-of-distribution reference on un-augmented training features, calibrate it on the
    validation images (or out-of-fold on the training images when there is no validation split),
    write it beside the model and return what the card records."""
    from liverscan.core.model import feature_extractor
    from liverscan.training.features import compute_features

    extractor = feature_extractor(model)
    ftrain = compute_features(extractor, train.x) if train_features is None else train_features
    ref = guard_reference(ftrain, train.y, cfg)
    if len(val.y):
        fval = compute_features(extractor, val.x) if val_features is None else val_features
        ref = guard.calibrate(ref, guard.scores(ref, fval), cfg.ood.retention, f"validation split (n={len(val.y)})")
    else:
        assert train.groups is not None  # PreparedData.split gives every image a group
        scores = out_of_fold_guard_scores(ftrain, train.y, train.groups, cfg)
        ref = guard.calibrate(ref, scores, cfg.ood.retention, f"training images, out of fold (n={len(train.y)})")
    ref.save(run / art.OOD_FILE)
    return ref.describe()


def guard_reference(features: np.ndarray, y: np.ndarray, cfg: Config) -> guard.Reference:
    return guard.fit(features, y, method=cfg.ood.method, k=cfg.ood.k)


def out_of_fold_guard_scores(
    features: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: Config, folds: int = 5
) -> np.ndarray:
    """Each image scored by a reference fitted without its group (group k-fold)."""
    from sklearn.model_selection import GroupKFold

    k = min(folds, len(set(groups)))
    out = np.zeros(len(y))
    for fit_idx, held in GroupKFold(k).split(features, y, groups):
        out[held] = guard.scores(guard_reference(features[fit_idx], y[fit_idx], cfg), features[held])
    return out


def _cached_epoch_data(ftrain: np.ndarray, y: np.ndarray, n_classes: int, weight_vec, bs: int, seed: int):
    """Each epoch: the training images in a seeded order, each as one of its cached augmented views."""
    views = ftrain.shape[0]

    def make_epoch(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(y))
        pick = rng.integers(0, views, size=len(order))
        x, ye = ftrain[pick, order], y[order]
        y1, sw = _one_hot(ye, n_classes), _sample_weights(ye, weight_vec)

        def get(i: int):
            sl = slice(i * bs, (i + 1) * bs)
            return (x[sl], y1[sl]) if sw is None else (x[sl], y1[sl], sw[sl])

        return get

    return epoch_dataset(len(y), bs, make_epoch)


def _fit_epoch_data(train: Split, n_classes: int, weight_vec, augmenter, bs: int, seed: int):
    """Freshly augmented image batches every epoch (the plain ``fit`` path and fine-tuning)."""
    from liverscan.training.augment import augment_batch

    y1 = _one_hot(train.y, n_classes)
    sw = _sample_weights(train.y, weight_vec)

    def make_epoch(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(train.y))

        def get(i: int):
            idx = order[i * bs : (i + 1) * bs]
            xb = augment_batch(augmenter, train.x[idx])
            return (xb, y1[idx]) if sw is None else (xb, y1[idx], sw[idx])

        return get

    return epoch_dataset(len(train.y), bs, make_epoch)


def _val_metrics(probs: np.ndarray, val: Split, classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

    pred = probs.argmax(1)
    labels = list(range(len(classes)))
    recalls = recall_score(val.y, pred, labels=labels, average=None, zero_division=0)
    return {
        "n": int(len(val.y)),
        "accuracy": round(float(accuracy_score(val.y, pred)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(val.y, pred)), 4),
        "recall": {c: round(float(r), 4) for c, r in zip(classes, recalls)},
    }


def model_from_config(cfg: Config, n_classes: int):
    """The run's classifier (backbone and head) as the configuration describes it."""
    from liverscan.core.model import build_model

    m = cfg.model
    return build_model(
        n_classes,
        cfg.preprocess.image_size,
        m.weights,
        m.alpha,
        m.dropout,
        m.dense_units,
        m.head,
        features=m.feature_set,
        flip_average=m.flip_average,
    )


def model_card_fields(cfg: Config, n_classes: int, params: dict) -> dict:
    """What a model card says of the model itself: its input, architecture, backbone weights and build options."""
    return {
        "input": {
            "pixels": "RGB 0..255 (greyscale replicated), bilinear resize; decoded by liverscan.core.images",
            "decoder": DECODER,
            "scaling": "inside the model: x / 127.5 - 1 (MobileNetV2 ImageNet convention)",
        },
        "architecture": {
            "backbone": f"MobileNetV2 alpha {cfg.model.alpha}, frozen, BatchNorm in inference mode",
            "head": head_description(cfg, n_classes),
            "features": cfg.model.feature_set,
            "flip_average": cfg.model.flip_average,
            "parameters": params,
        },
        "backbone_weights": weights_source(cfg.model.weights, cfg),
        "build": {
            "alpha": cfg.model.alpha,
            "dropout": cfg.model.dropout,
            "dense_units": cfg.model.dense_units,
            "head": cfg.model.head,
            "features": cfg.model.feature_set,
            "flip_average": cfg.model.flip_average,
        },
    }


def head_description(cfg: Config, n_classes: int) -> str:
    if cfg.model.head == "linear":
        return (
            f"GlobalAveragePooling2D -> Dense {n_classes} softmax (linear probe: L2 logistic regression on "
            "standardised features, balanced class weights, C by inner group cross-validation)"
        )
    return (
        f"GlobalAveragePooling2D -> Dropout {cfg.model.dropout} -> Dense {cfg.model.dense_units} ReLU "
        f"-> Dense {n_classes} softmax"
    )


def training_record(cfg: Config, cw: dict, fit: HeadFit, elapsed: float) -> dict:
    """The card's ``training`` entry."""
    t = cfg.train
    common = {
        "class_weights": cw,
        "seconds": round(elapsed, 1),
        "seed": t.seed,
        "backend": backend_name(),
        "device": accelerator(),
        "best": fit.best,
        "epochs_run": len(fit.history),
    }
    if cfg.model.head == "linear":
        return {
            "mode": "linear probe",
            "loss": "class-balanced logistic loss (scikit-learn, lbfgs)",
            **fit.details,
            **common,
        }
    return {
        "mode": t.mode,
        "views": t.views if t.mode == "cached" else None,
        "loss": t.loss,
        "optimizer": f"Adam(lr={t.learning_rate}, beta_1={t.beta_1}, beta_2={t.beta_2})",
        "batch_size": t.batch_size,
        "epoch_limit": t.epochs,
        "stopped_early": fit.stopped_early,
        "fine_tune_blocks": t.fine_tune_blocks,
        **fit.details,
        **common,
    }


def _model_card(
    cfg: Config, data: PreparedData, run: Path, params, cw, fit: HeadFit, val_metrics, elapsed: float
) -> ModelCard:
    prep_cfg = data.dir / art.CONFIG_FILE
    class_map = load_saved_config(prep_cfg).data.class_map if prep_cfg.is_file() else cfg.data.class_map
    return ModelCard(
        name=run.name,
        created=utc_now(),
        classes=data.classes,
        class_map={k: v for k, v in class_map.items() if v in data.classes},
        image_size=cfg.preprocess.image_size,
        **model_card_fields(cfg, len(data.classes), params),
        data={
            "prepared_dir": str(data.dir.resolve()),
            "manifest_hash": data.manifest_hash,
            "sources": data.summary.get("sources", []),
            "counts": data.summary.get("counts", {}),
        },
        training=training_record(cfg, cw, fit, elapsed),
        validation=val_metrics or {},
        versions=versions(),
    )
