"""Group-aware stratified k-fold cross-validation, then a refit on all images.

Backbone features of every image are computed once and shared by all folds. Each
fold fits the head on the other folds (the linear probe with its inner group
cross-validation, or the paper's head with early stopping on an inner group
split) and predicts its own images, so every image gets one out-of-fold
prediction per repeat. No group (near-duplicate cluster, patient) spans folds.
With another head than the linear probe, the linear probe is cross-validated on
the same folds as the baseline.  The out-of-distribution guard is scored out of
fold too, so its threshold is chosen on images its reference never saw.

The run directory holds ``folds/r<R>f<K>/`` (fold results, head weights, history),
``oof_predictions.csv``, and - after the refit on all images with the chosen
settings - the usual ``model.keras`` and model card, so every other command
works on it.  A killed run resumes: finished folds are not fitted again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverscan.core import artifacts as art
from liverscan.core import guard
from liverscan.core.config import Config
from liverscan.core.dataset import PreparedData, Split, class_weights
from liverscan.core.errors import DataError
from liverscan.core.fileio import atomic_path, write_csv_atomic, write_json_atomic
from liverscan.core.probe import fit_linear_probe
from liverscan.training.checkpoints import CheckpointStore
from liverscan.training.loop import Reporter, SilentReporter, Stage, run_stage
from liverscan.training.train import (
    HeadFit,
    TrainResult,
    _cached_epoch_data,
    _model_card,
    _one_hot,
    compile_trainer,
    guard_reference,
    model_from_config,
    run_in_directory,
)

FOLDS_DIR = "folds"
INNER_VAL_FOLDS = 7  # the paper head's early-stopping split inside a fold: one of 7 group folds (~15 %)


def fold_splits(y: np.ndarray, groups: np.ndarray, folds: int, repeats: int, seed: int) -> list[list[tuple]]:
    """Per repeat, the (train, test) index pairs of a stratified group k-fold split."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = min(len(set(groups[y == c])) for c in np.unique(y))
    if per_class < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} groups per class (has {per_class})")
    out = []
    for r in range(repeats):
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r)
        out.append(list(splitter.split(np.zeros(len(y)), y, groups)))
    return out


def cross_validate(
    cfg: Config,
    data_dir: str | Path | None,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    reporter: Reporter | None = None,
    then: Sequence[str] = (),
) -> TrainResult:
    """Cross-validate ``cfg`` (``train.folds``, ``train.repeats``) on all images of a prepared dataset,
    then refit on all of them; writes out-of-fold predictions and the refitted model into ``run_dir``.
    ``then``: the phases that follow (e.g. the out-of-fold evaluation; see :func:`finish_run`)."""
    if not resume and cfg.train.folds < 2:
        raise DataError("cross-validation needs train.folds >= 2")
    extra = {"cross_validation": {"folds": cfg.train.folds, "repeats": cfg.train.repeats}}
    return run_in_directory(
        _cross_validate,
        cfg,
        data_dir,
        run_dir,
        overwrite=overwrite,
        resume=resume,
        reporter=reporter,
        info_extra=extra,
        then=then,
    )


def _cross_validate(cfg: Config, data: PreparedData, run: Path, reporter: Reporter) -> TrainResult:
    from liverscan.core.model import (
        calibrate_batchnorm,
        count_params,
        head_of,
        save_keras_atomic,
        set_linear_head,
    )

    t_start = time.perf_counter()
    t = cfg.train
    classes = data.classes
    n_classes = len(classes)
    images = data.split("all", cfg.preprocess.image_size, cfg.preprocess.max_pixels)
    y, groups = images.y, np.asarray(images.groups)
    splits = fold_splits(y, groups, t.folds, t.repeats, t.seed)
    model = model_from_config(cfg, n_classes)
    if cfg.model.weights.strip().lower() == "none":
        sample = np.random.default_rng(t.seed).permutation(len(y))[:256]
        calibrate_batchnorm(model, images.x[np.sort(sample)])
    plain, views = _features(model, images, cfg, run, reporter)

    # ---- folds
    results = []
    n_jobs = sum(len(s) for s in splits)
    for r, repeat in enumerate(splits):
        for k, (train_idx, test_idx) in enumerate(repeat):
            reporter.phase(f"Cross-validation: repeat {r + 1}/{t.repeats}, fold {k + 1}/{t.folds}", None)
            folder = run / FOLDS_DIR / f"r{r}f{k}"
            results.append(_fold(cfg, folder, r, k, train_idx, test_idx, y, groups, plain, views, n_classes))
            reporter.advance(len(results), n_jobs)
    _write_oof(run, images, classes, results, baseline=cfg.model.head != "linear")
    lesion_card = _lesion_cross_validated(cfg, data, images, splits, run, reporter)

    # ---- refit on all images with the settings cross-validation chose
    reporter.phase("Refit on all images", None)
    cw = class_weights([classes[i] for i in y], classes)
    if cfg.model.head == "linear":
        probe = fit_linear_probe(plain, y, groups, n_classes, seed=t.seed)
        set_linear_head(model, probe.weights, probe.bias)
        fit = HeadFit(
            [],
            {"stage": "linear probe (refit on all images)", "epoch": None, "val_accuracy": None},
            False,
            {"C": probe.c, "inner_folds": probe.inner_folds, "class_weight": "balanced"},
        )
    else:
        epochs = max(1, int(np.median([res["best_epoch"] for res in results])))
        head, state = _train_mlp_head(
            cfg,
            views,
            plain,
            y,
            np.arange(len(y)),
            None,
            n_classes,
            CheckpointStore(run / art.CHECKPOINT_DIR / "head"),
            SilentReporter(),
            fixed_epochs=epochs,
        )
        head_of(model).set_weights(head.get_weights())
        fit = HeadFit(
            state.history,
            {"stage": "head (refit on all images)", "epoch": epochs, "val_accuracy": None},
            False,
            {"epochs": f"{epochs} (median best epoch over the folds)"},
        )
    save_keras_atomic(model, run / art.MODEL_FILE)
    art.write_history(run, fit.history)
    card = _model_card(cfg, data, run, count_params(model), cw, fit, None, time.perf_counter() - t_start)
    card.extra["cross_validation"] = {
        "folds": t.folds,
        "repeats": t.repeats,
        "seed": t.seed,
        "groups": int(len(set(groups))),
        "images": int(len(y)),
        "final_model": "refit on all images with the cross-validated settings"
        + (" (C re-chosen by inner group cross-validation)" if cfg.model.head == "linear" else ""),
        "predictions": art.OOF_FILE,
        "metrics": None,  # filled in by evaluating the run
    }
    if cfg.ood.enabled:
        ref = guard_reference(plain, y, cfg)
        oof_scores = np.concatenate([res["ood"] for res in results])
        ref = guard.calibrate(ref, oof_scores, cfg.ood.retention, f"out-of-fold images (n={len(oof_scores)})")
        ref.save(run / art.OOD_FILE)
        card.ood = ref.describe()
    card.lesion = lesion_card
    art.seal(card, run)
    art.write_card(run, card)
    return TrainResult(run, card, fit.history)


def _lesion_cross_validated(cfg: Config, data: PreparedData, images: Split, splits, run: Path, reporter: Reporter):
    """When the data has lesion outlines: out-of-fold lesion maps (first repeat's folds) into ``lesion_oof.npz``,
    then the head refit on all images; its card section, or None."""
    from liverscan.training import lesion as lesion_training

    by_path = {r["path"]: r for r in data.rows}
    rows = [by_path[p] for p in images.paths]
    if not lesion_training.wanted(cfg, rows):
        return None

    def log(msg: str) -> None:
        reporter.phase(msg, None)

    log(f"Lesion localisation head: {len(splits[0])} folds, then a refit on all images")
    maps, done = lesion_training.out_of_fold_maps(cfg, rows, images.x, splits[0], run / FOLDS_DIR / "lesion", log)
    lesion_training.write_oof(run, images.paths, maps, done)
    entry = lesion_training.train_for_run(cfg, rows, images.x, run, log)
    entry["out_of_fold"] = {"file": art.LESION_OOF_FILE, "folds": len(splits[0]), "metrics": None}
    return entry


def _features(model, images: Split, cfg: Config, run: Path, reporter: Reporter):
    """Un-augmented features of every image (and augmented views for the paper's cached head), cached."""
    from liverscan.core.model import feature_extractor
    from liverscan.training.augment import build_augmenter
    from liverscan.training.features import cache_key, compute_features, save_cached

    folder = run / art.FEATURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    want_views = cfg.model.head == "mlp"
    key = cache_key(cfg, cfg.train.views if want_views else 0, n=len(images.y))
    meta = folder / "all.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        views = np.load(folder / "views.npy") if want_views else None
        return np.load(folder / "plain.npy"), views
    extractor = feature_extractor(model)
    reporter.phase(f"Backbone features of {len(images.y)} images (shared by every fold)", None)
    plain = compute_features(extractor, images.x, reporter=reporter)
    views = None
    if want_views:
        reporter.phase(f"Backbone features: {cfg.train.views} augmented views of {len(images.y)} images", None)
        augmenter = build_augmenter(cfg.augment, cfg.train.seed)
        views = compute_features(extractor, images.x, augmenter, cfg.train.views, reporter=reporter)
    save_cached(folder, {"plain.npy": plain, "views.npy": views}, meta, key)
    return plain, views


def _fold(cfg, folder: Path, r: int, k: int, train_idx, test_idx, y, groups, plain, views, n_classes) -> dict:
    """Fit one fold (or read it back when a resumed run already finished it)."""
    done = folder / "fold.json"
    if done.is_file():
        with np.load(folder / "oof.npz") as z:
            return {**json.loads(done.read_text()), **{key: z[key] for key in z.files}}
    folder.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    info: dict = {"repeat": r, "fold": k, "n_train": int(len(train_idx)), "n_test": int(len(test_idx))}
    arrays: dict = {"index": np.asarray(test_idx)}
    baseline = fit_linear_probe(plain[train_idx], y[train_idx], groups[train_idx], n_classes, seed=t.seed + 100 * r + k)
    arrays["baseline"] = baseline.probabilities(plain[test_idx])
    if cfg.model.head == "linear":
        arrays["probs"] = arrays["baseline"]
        info.update(C=baseline.c, inner_folds=baseline.inner_folds, best_epoch=None)
        np.savez(folder / "head.weights.npz", baseline.weights.astype(np.float32), baseline.bias.astype(np.float32))
    else:
        fit_idx, val_idx = _inner_split(y, groups, train_idx, t.seed + 100 * r + k)
        head, state = _train_mlp_head(
            cfg, views, plain, y, fit_idx, val_idx, n_classes, CheckpointStore(folder / "checkpoint"), SilentReporter()
        )
        arrays["probs"] = np.asarray(head.predict(plain[test_idx], batch_size=256, verbose=0), np.float64)
        info.update(best_epoch=int(state.best_epoch), baseline_C=baseline.c, epochs_run=len(state.history))
        np.savez(folder / "head.weights.npz", *head.get_weights())
        art.write_history(folder, state.history)
    if cfg.ood.enabled:
        ref = guard_reference(plain[train_idx], y[train_idx], cfg)
        arrays["ood"] = guard.scores(ref, plain[test_idx])
    else:
        arrays["ood"] = np.full(len(test_idx), np.nan)
    with atomic_path(folder / "oof.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    write_json_atomic(done, info)  # written last: its presence means the fold is finished
    return {**info, **arrays}


def _inner_split(y, groups, train_idx, seed: int):
    """An early-stopping split of a fold's training images: one group fold of ~15 %."""
    from sklearn.model_selection import StratifiedGroupKFold

    yt, gt = y[train_idx], groups[train_idx]
    per_class = min(len(set(gt[yt == c])) for c in np.unique(yt))
    n = max(2, min(INNER_VAL_FOLDS, per_class))
    fit, val = next(StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(np.zeros(len(yt)), yt, gt))
    return train_idx[fit], train_idx[val]


def _train_mlp_head(cfg, views, plain, y, fit_idx, val_idx, n_classes, store, reporter, fixed_epochs=None):
    """The paper's head on cached augmented views (early stopping on ``val_idx``, or ``fixed_epochs``)."""
    import dataclasses

    from liverscan.core.model import build_head, logits_view

    t = cfg.train
    cw = class_weights([str(c) for c in y[fit_idx]], [str(c) for c in range(n_classes)])
    weight_vec = np.array(list(cw.values()), np.float32) if t.loss == "weighted" else None
    if fixed_epochs is not None:  # no early stopping: train exactly this long (validation is only logged)
        t = dataclasses.replace(t, early_stopping_patience=fixed_epochs + 1, lr_patience=fixed_epochs + 1)
        val_idx = fit_idx
    epochs = fixed_epochs or t.epochs
    data = _cached_epoch_data(views[:, fit_idx], y[fit_idx], n_classes, weight_vec, t.batch_size, t.seed)
    stage = Stage("head", epochs, t.learning_rate, data, (plain[val_idx], _one_hot(y[val_idx], n_classes)), "head")
    n_features = plain.shape[1]

    def make(lr: float):
        head = build_head(n_classes, cfg.model.dropout, cfg.model.dense_units, n_features, "mlp")
        return compile_trainer(logits_view(head), cfg, lr)

    trainer, state = run_stage(stage, make, t, store, reporter)
    head = build_head(n_classes, cfg.model.dropout, cfg.model.dense_units, n_features, "mlp")
    head.set_weights(trainer.get_weights())
    return head, state


def _write_oof(run: Path, images: Split, classes: list[str], results: list[dict], baseline: bool) -> None:
    """``oof_predictions.csv``: one row per image and repeat."""
    header = ["path", "group", "true_class", "repeat", "fold"] + [f"p_{c}" for c in classes]
    header += [f"baseline_p_{c}" for c in classes] if baseline else []
    header += ["ood_score"]
    assert images.groups is not None  # PreparedData.split gives every image a group
    rows = []
    for res in results:
        for j, i in enumerate(res["index"]):
            row = [images.paths[i], images.groups[i], classes[images.y[i]], res["repeat"], res["fold"]]
            row += [f"{p:.6f}" for p in res["probs"][j]]
            row += [f"{p:.6f}" for p in res["baseline"][j]] if baseline else []
            row += ["" if np.isnan(res["ood"][j]) else f"{res['ood'][j]:.6f}"]
            rows.append(row)
    rows.sort(key=lambda row: (row[3], row[0]))
    write_csv_atomic(run / art.OOF_FILE, header, rows)
