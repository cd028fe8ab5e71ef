"""``train``: the published transfer-learning protocol, fast and resumable.

Two ways to run the same protocol (``train.mode``):

- ``cached`` (default): the frozen backbone's output for ``views`` augmented
  copies of every training image, and for the un-augmented validation images,
  is computed once; the head is then trained for every epoch on those features
  (each epoch draws one of the views of each image).  The backbone runs
  ``views`` times per image instead of once per image per epoch.
- ``fit``: the straightforward loop, augmenting images and running the whole
  model every epoch.

Both use the same epoch loop: Adam, class-weighted loss, early stopping on
validation accuracy (restoring the best weights, also when the epoch limit ends
the run), learning rate x factor after ``lr_patience`` epochs without a lower
validation loss, and a checkpoint after every epoch so a killed run resumes.
An optional second stage fine-tunes the top backbone blocks.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from liverscan.config import Config, load_config
from liverscan.dataset import PreparedData, Split
from liverscan.errors import LiverscanError, RunDirError
from liverscan.fileio import sha256_file, write_csv_atomic, write_json_atomic
from liverscan.keras_env import accelerator, backend_name, import_keras, seed_everything
from liverscan.runinfo import utc_now, versions
from liverscan.split import class_weights

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
HISTORY_FILE = "history.csv"
RUN_FILE = "run.json"
CURVES_FILE = "training-curves.png"
HISTORY_COLUMNS = ["epoch", "stage", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]


class Reporter(Protocol):
    """Receives progress events (the CLI shows them with Rich)."""

    def phase(self, name: str, total: int | None) -> None: ...

    def advance(self, done: int, total: int) -> None: ...

    def epoch(self, row: dict, state: dict, max_epochs: int) -> None: ...


class _Silent:
    def phase(self, name, total):
        pass

    def advance(self, done, total):
        pass

    def epoch(self, row, state, max_epochs):
        pass


@dataclass
class TrainResult:
    run_dir: Path
    card: dict
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _one_hot(y: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(y), n), np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def _loss(cfg: Config):
    keras = import_keras()
    if cfg.train.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=cfg.train.focal_gamma, from_logits=True)
    if cfg.train.loss in ("weighted", "unweighted"):
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    raise LiverscanError(f"unknown loss {cfg.train.loss!r} (weighted, unweighted, focal)")


def _sample_weights(y: np.ndarray, weights: np.ndarray | None) -> np.ndarray | None:
    return None if weights is None else weights[y].astype(np.float32)


def _compile(model, cfg: Config, learning_rate: float) -> None:
    """Compile a logits-output training view (see :func:`liverscan.model.logits_view`)."""
    keras = import_keras()
    opt = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=cfg.train.beta_1, beta_2=cfg.train.beta_2)
    model.compile(optimizer=opt, loss=_loss(cfg), metrics=["accuracy"])


def _save_keras_atomic(model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.replace(path)


def epoch_dataset(n_items: int, batch_size: int, make_epoch: Callable[[int], Callable[[int], tuple]]):
    """A Keras PyDataset whose batches depend on the epoch.

    ``make_epoch(epoch)`` returns ``get(batch_index) -> (x, y[, sample_weight])``;
    the training controller sets ``.epoch`` at the start of every epoch, so the
    content of an epoch is a pure function of (seed, epoch) and survives resuming.
    """
    keras = import_keras()

    class _EpochBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._made: tuple[int, Callable[[int], tuple]] | None = None

        def __len__(self):
            return math.ceil(n_items / batch_size)

        def __getitem__(self, i):
            if self._made is None or self._made[0] != self.epoch:
                self._made = (self.epoch, make_epoch(self.epoch))
            return self._made[1](i)

    return _EpochBatches()


# ----------------------------------------------------------------------------- features


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a short final batch so every call has one shape (no re-tracing of the graph)."""
    if len(x) >= size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def compute_features(extractor, images: np.ndarray, augmenter=None, views: int = 1, batch_size: int = 128,
                     reporter: Reporter | None = None) -> np.ndarray:
    """Pooled backbone features, shape (views, N, F) with augmentation or (N, F) without.

    ``extractor`` maps pixels to features (see :func:`liverscan.model.feature_extractor`);
    batches keep one shape so the backbone graph is traced once.
    """
    from liverscan.augment import augment_batch

    n = len(images)
    n_views = views if augmenter is not None else 1
    jobs = [(v, start) for v in range(n_views) for start in range(0, n, batch_size)]
    out = None
    for k, (v, start) in enumerate(jobs):
        batch = images[start : start + batch_size]
        xb = augment_batch(augmenter, batch) if augmenter is not None else np.asarray(batch, np.float32)
        feats = np.asarray(extractor.predict_on_batch(pad_batch(xb, batch_size)), dtype=np.float32)[: len(batch)]
        if out is None:
            out = np.zeros((n_views, n, feats.shape[-1]), np.float32)
        out[v, start : start + len(batch)] = feats
        if reporter:
            reporter.advance(k + 1, len(jobs))
    assert out is not None
    return out if augmenter is not None else out[0]


# ----------------------------------------------------------------------------- epoch loop


def _initial_state(lr: float) -> dict:
    return {
        "next_epoch": 0,
        "best_val_accuracy": -1.0,
        "best_epoch": 0,
        "es_wait": 0,
        "best_val_loss": float("inf"),
        "lr_wait": 0,
        "learning_rate": lr,
        "history": [],
        "complete": False,
        "stopped_early": False,
    }


def _save_best(weights: list[np.ndarray], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, *weights)
    tmp.replace(path)


def _load_best(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _controller(stage: str, state: dict, cfg: Config, ckpt: Path, reporter: Reporter, max_epochs: int, dataset):
    """Keras callback: history, early stopping, LR schedule, checkpoints.

    The best weights are kept in memory; a checkpoint (model with optimizer
    state, best weights, loop state) is written when ``train.checkpoint_seconds``
    have passed since the last one, and at the end, so a killed run loses at most
    that much work while fast epochs do not pay for a save each.
    """
    keras = import_keras()
    t = cfg.train

    class _Controller(keras.callbacks.Callback):
        best_weights: list | None = None
        last_save = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            dataset.epoch = epoch
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            model = self.model
            row = {
                "epoch": len(state["history"]) + 1,
                "stage": stage,
                "loss": float(logs["loss"]),
                "accuracy": float(logs["accuracy"]),
                "val_loss": float(logs["val_loss"]),
                "val_accuracy": float(logs["val_accuracy"]),
                "learning_rate": float(state["learning_rate"]),
                "seconds": round(time.perf_counter() - self.t0, 3),
            }
            state["history"].append(row)
            state["next_epoch"] = epoch + 1
            if row["val_accuracy"] > state["best_val_accuracy"]:
                state.update(best_val_accuracy=row["val_accuracy"], best_epoch=epoch + 1, es_wait=0)
                self.best_weights = model.get_weights()
            else:
                state["es_wait"] += 1
            if row["val_loss"] < state["best_val_loss"]:
                state.update(best_val_loss=row["val_loss"], lr_wait=0)
            else:
                state["lr_wait"] += 1
                if state["lr_wait"] >= t.lr_patience:
                    state["learning_rate"] = float(state["learning_rate"] * t.lr_factor)
                    model.optimizer.learning_rate = state["learning_rate"]
                    state["lr_wait"] = 0
            stop = state["es_wait"] >= t.early_stopping_patience
            state["stopped_early"] = bool(stop)
            state["complete"] = bool(stop or epoch + 1 >= max_epochs)
            if stop or state["complete"] or time.perf_counter() - self.last_save >= t.checkpoint_seconds:
                self.save()
            reporter.epoch(row, state, max_epochs)
            if stop:
                model.stop_training = True

        def save(self):
            if self.best_weights is not None:
                _save_best(self.best_weights, ckpt / "best.weights.npz")
            _save_keras_atomic(self.model, ckpt / "current.keras")
            write_json_atomic(ckpt / "state.json", state)
            self.last_save = time.perf_counter()

    return _Controller()


def _epoch_loop(model, stage: str, max_epochs: int, dataset, val: tuple, cfg: Config, ckpt: Path, state: dict,
                reporter: Reporter, batch_size: int) -> dict:
    """Fit from ``state['next_epoch']`` to ``max_epochs`` (or early stop); restore the best weights."""
    ckpt.mkdir(parents=True, exist_ok=True)
    model.optimizer.learning_rate = state["learning_rate"]
    controller = None
    if state["next_epoch"] < max_epochs and not state["complete"]:
        controller = _controller(stage, state, cfg, ckpt, reporter, max_epochs, dataset)
        model.fit(dataset, epochs=max_epochs, initial_epoch=state["next_epoch"], validation_data=val,
                  validation_batch_size=max(batch_size, 64), callbacks=[controller], verbose=0)
    state["complete"] = True
    write_json_atomic(ckpt / "state.json", state)
    if controller is not None and controller.best_weights is not None:
        model.set_weights(controller.best_weights)
    elif (ckpt / "best.weights.npz").is_file():
        model.set_weights(_load_best(ckpt / "best.weights.npz"))
    return state


def _load_stage(ckpt: Path):
    """(model with optimizer, state) from a stage checkpoint, or (None, None)."""
    keras = import_keras()
    state_path, model_path = ckpt / "state.json", ckpt / "current.keras"
    if not (state_path.is_file() and model_path.is_file()):
        return None, None
    model = keras.saving.load_model(model_path, compile=True, safe_mode=True)
    return model, json.loads(state_path.read_text())


# ----------------------------------------------------------------------------- the run


def _start_run_dir(run: Path, overwrite: bool) -> None:
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise RunDirError(f"{run}: run directory exists and is not empty; use --overwrite or --resume")
        if not (run / RUN_FILE).is_file() and not (run / MODEL_FILE).is_file():
            raise RunDirError(f"{run}: not a liverscan run directory; refusing to overwrite it")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def _weights_source(spec: str, cfg: Config) -> dict:
    from liverscan.model import imagenet_weights_file

    s = spec.strip()
    if s.lower() == "none":
        return {"spec": "none", "description": "random initialisation, BatchNorm statistics calibrated on training images"}
    if s.lower() == "imagenet":
        f = imagenet_weights_file(cfg.model.alpha, cfg.preprocess.image_size)
        out = {"spec": "imagenet", "description": "ImageNet (Keras MobileNetV2 release, via the Keras cache)"}
        if f.is_file():
            out["sha256"] = sha256_file(f)
        return out
    return {"spec": str(Path(s).resolve()), "description": "weights file", "sha256": sha256_file(s)}


def train_run(cfg: Config, data_dir: str | Path | None, run_dir: str | Path, *, overwrite: bool = False,
              resume: bool = False, reporter: Reporter | None = None) -> TrainResult:
    """Train a model on a prepared dataset into ``run_dir`` (or resume one)."""
    from liverscan.augment import build_augmenter
    from liverscan.model import (
        build_model,
        calibrate_batchnorm,
        copy_trained_weights,
        count_params,
        head_of,
        logits_view,
        unfreeze_top_blocks,
    )

    reporter = reporter or _Silent()
    run = Path(run_dir)
    if resume:
        if not (run / RUN_FILE).is_file():
            raise RunDirError(f"{run}: nothing to resume (no {RUN_FILE})")
        info = json.loads((run / RUN_FILE).read_text())
        if info.get("status") == "complete":
            raise RunDirError(f"{run}: training already complete")
        cfg = load_config(run / "config.yaml")
        data = PreparedData(info["data_dir"])
    else:
        if data_dir is None:
            raise RunDirError("--data PREPARED_DIR is required")
        _validate(cfg)
        data = PreparedData(data_dir)  # fails before the run directory is touched
        _start_run_dir(run, overwrite)
        info = {"data_dir": str(Path(data_dir).resolve()), "status": "running", "created": utc_now()}
        cfg.save(run / "config.yaml")
        write_json_atomic(run / RUN_FILE, info)

    t_start = time.perf_counter()
    classes = data.classes
    n_classes = len(classes)
    size = cfg.preprocess.image_size
    train = data.split("train", size)
    val = data.split("val", size)
    if len(train.y) == 0 or len(val.y) == 0:
        raise RunDirError(f"{data.dir}: training needs non-empty train and val splits")
    seed = cfg.train.seed
    seed_everything(seed)
    cw = class_weights([classes[i] for i in train.y], classes)
    weight_vec = np.array([cw[c] for c in classes], np.float32) if cfg.train.loss == "weighted" else None
    yv1 = _one_hot(val.y, n_classes)
    bs = cfg.train.batch_size

    model = build_model(n_classes, size, cfg.model.weights, cfg.model.alpha, cfg.model.dropout, cfg.model.dense_units)
    params = count_params(model)
    if cfg.model.weights.strip().lower() == "none":
        sample = np.random.default_rng(seed).permutation(len(train.y))[:256]
        calibrate_batchnorm(model, train.x[np.sort(sample)])
    augmenter = build_augmenter(cfg.augment, seed)
    ckpt_root = run / "checkpoint"

    # ---- stage 1: head on frozen backbone (trained through logits-output views sharing its layers)
    if cfg.train.mode == "cached":
        feats = _cached_features(model, train, val, augmenter, cfg, run / "features", reporter)
        trainer, state = _load_stage(ckpt_root / "head")
        if trainer is None:
            trainer = logits_view(head_of(model))
            _compile(trainer, cfg, cfg.train.learning_rate)
            state = _initial_state(cfg.train.learning_rate)
        ftrain, fval = feats
        views = ftrain.shape[0]

        def make_epoch(epoch: int):
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(train.y))
            pick = rng.integers(0, views, size=len(order))
            x, y = ftrain[pick, order], train.y[order]
            y1, sw = _one_hot(y, n_classes), _sample_weights(y, weight_vec)

            def get(i: int):
                sl = slice(i * bs, (i + 1) * bs)
                return (x[sl], y1[sl]) if sw is None else (x[sl], y1[sl], sw[sl])

            return get

        if not state["complete"]:
            reporter.phase("Training head on cached features", cfg.train.epochs)
            state = _epoch_loop(trainer, "head", cfg.train.epochs, epoch_dataset(len(train.y), bs, make_epoch),
                                (fval, yv1), cfg, ckpt_root / "head", state, reporter, bs)
        else:
            trainer.set_weights(_load_best(ckpt_root / "head" / "best.weights.npz"))
    elif cfg.train.mode == "fit":
        trainer, state = _load_stage(ckpt_root / "head")
        if trainer is None:
            trainer = logits_view(model)
            _compile(trainer, cfg, cfg.train.learning_rate)
            state = _initial_state(cfg.train.learning_rate)
        if not state["complete"]:
            reporter.phase("Training (augmenting every epoch)", cfg.train.epochs)
            state = _epoch_loop(trainer, "head", cfg.train.epochs, _fit_epoch_data(train, n_classes, weight_vec,
                                augmenter, bs, seed), (val.x.astype(np.float32), yv1), cfg,
                                ckpt_root / "head", state, reporter, bs)
        else:
            trainer.set_weights(_load_best(ckpt_root / "head" / "best.weights.npz"))
    else:
        raise LiverscanError(f"unknown train.mode {cfg.train.mode!r} (cached, fit)")
    copy_trained_weights(trainer, model)  # a no-op unless the trainer was reloaded from a checkpoint
    history = list(state["history"])
    best = {"stage": "head", "epoch": state["best_epoch"], "val_accuracy": state["best_val_accuracy"]}

    # ---- stage 2: optional fine-tuning of the top blocks
    if cfg.train.fine_tune_blocks > 0 and cfg.train.fine_tune_epochs > 0:
        ft_ckpt = ckpt_root / "fine_tune"
        trainer, ft_state = _load_stage(ft_ckpt)
        if trainer is None:
            unfreeze_top_blocks(model, cfg.train.fine_tune_blocks)
            trainer = logits_view(model)
            _compile(trainer, cfg, cfg.train.fine_tune_learning_rate)
            ft_state = _initial_state(cfg.train.fine_tune_learning_rate)
            # the head's best validation accuracy is the bar fine-tuning must beat
            ft_state["best_val_accuracy"] = state["best_val_accuracy"]
            ft_ckpt.mkdir(parents=True, exist_ok=True)
            _save_best(trainer.get_weights(), ft_ckpt / "best.weights.npz")
        if not ft_state["complete"]:
            reporter.phase(f"Fine-tuning top {cfg.train.fine_tune_blocks} blocks", cfg.train.fine_tune_epochs)
            ft_state = _epoch_loop(trainer, "fine_tune", cfg.train.fine_tune_epochs,
                                   _fit_epoch_data(train, n_classes, weight_vec, augmenter, bs, seed + 7919),
                                   (val.x.astype(np.float32), yv1), cfg, ft_ckpt, ft_state, reporter, bs)
        else:
            trainer.set_weights(_load_best(ft_ckpt / "best.weights.npz"))
        copy_trained_weights(trainer, model)
        for row in ft_state["history"]:
            history.append({**row, "epoch": len(history) + 1})
        if ft_state["best_epoch"]:
            best = {"stage": "fine_tune", "epoch": len(state["history"]) + ft_state["best_epoch"],
                    "val_accuracy": ft_state["best_val_accuracy"]}

    # ---- outputs
    reporter.phase("Writing model and card", None)
    final = model  # the probability-output model; training only ever compiled views of it
    unfreeze_top_blocks(final, 0)
    _save_keras_atomic(final, run / MODEL_FILE)
    write_csv_atomic(run / HISTORY_FILE, HISTORY_COLUMNS, [[r[c] for c in HISTORY_COLUMNS] for r in history])
    from liverscan.plots import training_curves

    training_curves(history, run / CURVES_FILE)
    if cfg.train.mode == "cached" and not (cfg.train.fine_tune_blocks > 0 and cfg.train.fine_tune_epochs > 0):
        val_probs = np.asarray(head_of(model).predict(feats[1], batch_size=256, verbose=0))
    else:
        val_probs = np.asarray(final.predict(val.x.astype(np.float32), batch_size=64, verbose=0))
    val_metrics = _val_metrics(val_probs, val, classes)
    elapsed = time.perf_counter() - t_start
    card = _model_card(cfg, data, run, params, cw, best, history, val_metrics, elapsed, state)
    write_json_atomic(run / CARD_FILE, card)
    from liverscan.modelcard import render_card_markdown

    (run / "model_card.md").write_text(render_card_markdown(card), encoding="utf-8")
    info.update(status="complete", finished=utc_now())
    write_json_atomic(run / RUN_FILE, info)
    return TrainResult(run, card, history)


def _validate(cfg: Config) -> None:
    t = cfg.train
    if t.mode not in ("cached", "fit"):
        raise LiverscanError(f"unknown train.mode {t.mode!r} (cached, fit)")
    if t.loss not in ("weighted", "unweighted", "focal"):
        raise LiverscanError(f"unknown train.loss {t.loss!r} (weighted, unweighted, focal)")
    if t.epochs < 1 or t.batch_size < 1 or t.views < 1:
        raise LiverscanError("train.epochs, train.batch_size and train.views must be >= 1")
    if not 0 <= cfg.model.dropout < 1:
        raise LiverscanError("model.dropout must be in [0, 1)")
    if cfg.preprocess.image_size < 32:
        raise LiverscanError("preprocess.image_size must be >= 32 for MobileNetV2")


def _fit_epoch_data(train: Split, n_classes: int, weight_vec, augmenter, bs: int, seed: int):
    """Dataset of freshly augmented image batches every epoch (the plain ``fit`` path)."""
    from liverscan.augment import augment_batch

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


def _cached_features(model, train: Split, val: Split, augmenter, cfg: Config, folder: Path, reporter: Reporter):
    """Compute (or reuse from a resumed run) train view features and val features."""
    folder.mkdir(parents=True, exist_ok=True)
    key = {
        "n_train": len(train.y), "n_val": len(val.y), "views": cfg.train.views, "seed": cfg.train.seed,
        "weights": cfg.model.weights, "size": cfg.preprocess.image_size, "augment": vars(cfg.augment),
    }
    meta = folder / "features.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        return np.load(folder / "train.npy"), np.load(folder / "val.npy")
    from liverscan.model import feature_extractor

    extractor = feature_extractor(model)
    reporter.phase(f"Backbone features: {cfg.train.views} augmented views of {len(train.y)} training images", None)
    ftrain = compute_features(extractor, train.x, augmenter, cfg.train.views, reporter=reporter)
    reporter.phase(f"Backbone features: {len(val.y)} validation images", None)
    fval = compute_features(extractor, val.x, None, reporter=reporter)
    for name, arr in (("train.npy", ftrain), ("val.npy", fval)):
        tmp = folder / f".{name}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(folder / name)
    write_json_atomic(meta, key)
    return ftrain, fval


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


def _model_card(cfg, data: PreparedData, run: Path, params, cw, best, history, val_metrics, elapsed, state) -> dict:
    prep_cfg = data.dir / "config.yaml"
    class_map = load_config(prep_cfg).data.class_map if prep_cfg.is_file() else cfg.data.class_map
    return {
        "name": run.name,
        "created": utc_now(),
        "intended_use": "Research use only - not a medical device. Not for diagnosis or treatment decisions.",
        "task": "liver B-mode ultrasound image classification",
        "classes": data.classes,
        "class_map": {k: v for k, v in class_map.items() if v in data.classes},
        "input": {
            "size": [cfg.preprocess.image_size, cfg.preprocess.image_size, 3],
            "pixels": "RGB 0..255 (greyscale replicated), bilinear resize; decoded by liverscan.images",
            "scaling": "inside the model: x / 127.5 - 1 (MobileNetV2 ImageNet convention)",
        },
        "architecture": {
            "backbone": f"MobileNetV2 alpha {cfg.model.alpha}, frozen, BatchNorm in inference mode",
            "head": f"GlobalAveragePooling2D -> Dropout {cfg.model.dropout} -> Dense {cfg.model.dense_units} ReLU "
                    f"-> Dense {len(data.classes)} softmax",
            "parameters": params,
        },
        "backbone_weights": _weights_source(cfg.model.weights, cfg),
        "build": {"n_classes": len(data.classes), "image_size": cfg.preprocess.image_size, "alpha": cfg.model.alpha,
                  "dropout": cfg.model.dropout, "dense_units": cfg.model.dense_units},
        "data": {
            "prepared_dir": str(data.dir.resolve()),
            "manifest_hash": data.manifest_hash,
            "sources": data.summary.get("sources", []),
            "counts": data.summary.get("counts", {}),
        },
        "training": {
            "mode": cfg.train.mode,
            "views": cfg.train.views if cfg.train.mode == "cached" else None,
            "loss": cfg.train.loss,
            "class_weights": cw,
            "optimizer": f"Adam(lr={cfg.train.learning_rate}, beta_1={cfg.train.beta_1}, beta_2={cfg.train.beta_2})",
            "batch_size": cfg.train.batch_size,
            "epochs_run": len(history),
            "epoch_limit": cfg.train.epochs,
            "stopped_early": bool(state.get("stopped_early")),
            "fine_tune_blocks": cfg.train.fine_tune_blocks,
            "best": best,
            "seconds": round(elapsed, 1),
            "seed": cfg.train.seed,
            "backend": backend_name(),
            "device": accelerator(),
        },
        "validation": val_metrics,
        "operating_point": None,
        "versions": versions(),
    }


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    from liverscan.fileio import read_csv

    rows = read_csv(Path(run_dir) / HISTORY_FILE)
    out = []
    for r in rows:
        out.append({k: (v if k == "stage" else float(v)) for k, v in r.items()})
    return out
