from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from liverscan.core.config import Config, SourceSpec, load_config
from liverscan.core.errors import LiverscanError, RunDirError
from liverscan.core.fileio import read_csv
from liverscan.faces.cli import app
from liverscan.preparation.prepare import prepare_dataset
from liverscan.training.checkpoints import CheckpointStore
from liverscan.training.loop import SilentReporter, Stage, epoch_dataset, run_stage
from liverscan.training.train import compile_trainer, train_run

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def tiny_prepared(tiny_run) -> Path:
    """The shared tiny prepared dataset (32x32 images, random backbone, 2 views); read-only here."""
    return tiny_run["prep"]


def _cfg(prep: Path, head: str = "mlp", **train) -> Config:
    cfg = load_config(prep / "config.yaml")
    cfg.model.head = head
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _blobs(n: int, seed: int, dim: int = 1280, classes: int = 3):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 1, size=(classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0, 1.5, size=(n, dim)).astype(np.float32)
    return x, y


def _ds(fn, n: int, bs: int = 32):
    """Epoch dataset from fn(epoch) -> (x, y_onehot, None)."""

    def make_epoch(e):
        x, y, _ = fn(e)
        return lambda i: (x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs])

    return epoch_dataset(n, bs, make_epoch)


def _head_loop(epochs: int, **train):
    from liverscan.core.keras_env import seed_everything

    seed_everything(0)
    cfg = Config()
    for k, v in train.items():
        setattr(cfg.train, k, v)
    xt, yt = _blobs(240, 1)
    xv, yv = _blobs(60, 2)
    eye = np.eye(3, dtype=np.float32)
    return cfg, (xt, eye[yt], None), (xv, eye[yv])


def _run(cfg, data, val, epochs: int, lr: float, folder):
    """Run one stage of a fresh head (3 classes) through the library's stage runner."""
    from liverscan.core.model import build_head, logits_view

    stage = Stage("head", epochs, lr, _ds(data, 240), val, "test")
    return run_stage(
        stage,
        lambda rate: compile_trainer(logits_view(build_head(3)), cfg, rate),
        cfg.train,
        CheckpointStore(folder),
        SilentReporter(),
    )


def test_head_learns_separable_features(tmp_path):
    cfg, train, val = _head_loop(10)
    head, state = _run(cfg, lambda e: train, val, 10, 1e-3, tmp_path / "ck")
    acc = head.evaluate(*val, verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.9 and state.history[-1]["accuracy"] > 0.9


def test_best_weights_restored_when_epoch_limit_ends_run(tmp_path):
    cfg, train, val = _head_loop(6, early_stopping_patience=20)
    # train on wrong labels (each class relabelled as the next) after epoch 2 so validation accuracy falls
    xt, yt, _ = train
    noisy = (xt, np.roll(yt, 1, axis=1), None)
    data = lambda e: train if e < 2 else noisy  # noqa: E731
    head, state = _run(cfg, data, val, 8, 1e-2, tmp_path / "ck")
    hist = state.history
    assert len(hist) == 8 and not state.stopped_early and state.complete
    best = max(r["val_accuracy"] for r in hist)
    assert state.best_val_accuracy == best
    assert hist[-1]["val_accuracy"] < best  # the last epoch was worse ...
    final = head.evaluate(*val, verbose=0, return_dict=True)["accuracy"]
    assert final == pytest.approx(best, abs=1e-6)  # ... but the best weights are back


def test_early_stopping_and_lr_schedule(tmp_path):
    cfg, train, val = _head_loop(30, early_stopping_patience=6, lr_patience=1, lr_factor=0.5)
    xt, yt, _ = train
    rng = np.random.default_rng(1)
    data = lambda e: (xt, yt[rng.permutation(len(yt))], None)  # noqa: E731 - nothing to learn
    _, state = _run(cfg, data, val, 30, 1e-3, tmp_path / "ck")
    hist = state.history
    assert state.stopped_early and len(hist) == state.best_epoch + 6
    lrs = [r["learning_rate"] for r in hist]
    assert lrs[0] == 1e-3 and min(lrs) < 1e-3 and all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_train_run_outputs_and_card(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    train_run(_cfg(tiny_prepared, epochs=3), tiny_prepared, run)
    for name in (
        "model.keras",
        "model_card.json",
        "model_card.md",
        "history.csv",
        "config.yaml",
        "training-curves.png",
        "run.json",
    ):
        assert (run / name).is_file(), name
    card = json.loads((run / "model_card.json").read_text())
    summary = json.loads((tiny_prepared / "summary.json").read_text())
    assert card["classes"] == ["normal", "fatty", "tumor"]
    assert card["data"]["manifest_hash"] == summary["manifest_hash"]
    assert card["training"]["class_weights"] == pytest.approx(summary["class_weights"], abs=1e-3)
    assert card["architecture"]["parameters"]["trainable"] == 1280 * 128 + 128 + 128 * 3 + 3
    assert card["input"]["size"] == [32, 32, 3] and "Research use only" in card["intended_use"]
    assert {"tensorflow", "keras", "numpy", "python"} <= set(card["versions"])
    hist = read_csv(run / "history.csv")
    assert len(hist) == 3 and set(hist[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    from liverscan.core.model import load_model

    model = load_model(run / "model.keras")
    assert model.output_shape == (None, 3)
    with pytest.raises(RunDirError, match="overwrite"):
        train_run(_cfg(tiny_prepared, epochs=1), tiny_prepared, run)


def test_determinism_is_restored_after_training(tiny_prepared, tmp_path):
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    train_run(_cfg(tiny_prepared, epochs=1), tiny_prepared, tmp_path / "run")
    assert not tf_config.is_op_determinism_enabled()


def test_failed_run_can_be_retried(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(tiny_prepared, epochs=1)
    cfg.model.weights = str(tmp_path / "missing.h5")
    with pytest.raises(LiverscanError, match="weights file not found"):
        train_run(cfg, tiny_prepared, run)
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    cfg.model.weights = "none"
    assert train_run(cfg, tiny_prepared, run).card.training["epochs_run"] == 1  # same command, no --overwrite


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_prepared, tmp_path):
    a = train_run(_cfg(tiny_prepared, epochs=3, seed=5), tiny_prepared, tmp_path / "a").history
    b = train_run(_cfg(tiny_prepared, epochs=3, seed=5), tiny_prepared, tmp_path / "b").history
    for ra, rb in zip(a, b):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert round(ra[k], 3) == round(rb[k], 3)


class _KillAfter(SilentReporter):
    def __init__(self, n: int):
        self.n = n

    def epoch(self, row, state, max_epochs):
        if state.next_epoch >= self.n:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint(tiny_prepared, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_run(
            _cfg(tiny_prepared, epochs=6, early_stopping_patience=50, checkpoint_seconds=0),
            tiny_prepared,
            run,
            reporter=_KillAfter(3),
        )
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not (run / "model.keras").exists()
    state = json.loads((run / "checkpoint" / "head" / "state.json").read_text())
    assert state["next_epoch"] == 3
    first = state["history"]
    res = train_run(Config(), None, run, resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5, 6]
    assert res.history[:3] == first
    assert (run / "model.keras").is_file()
    with pytest.raises(RunDirError, match="already complete"):
        train_run(Config(), None, run, resume=True)


@pytest.mark.slow
def test_fit_mode_and_fine_tune_stage(tiny_prepared, tmp_path):
    cfg = _cfg(tiny_prepared, epochs=2, mode="fit", fine_tune_blocks=1, fine_tune_epochs=1)
    res = train_run(cfg, tiny_prepared, tmp_path / "run")
    stages = [r["stage"] for r in res.history]
    assert stages == ["head", "head", "fine_tune"]
    assert res.card.training["mode"] == "fit"


def test_cli_train(tiny_prepared, tmp_path):
    from liverscan.serving import Classifier, runtime

    # the checked fast runtime is written with the model, so predict runs at full speed at once (ONNX here:
    # it converts in seconds; the default, TFLite, goes through the same export, tested in test_export)
    fmt = "onnx" if runtime.onnx_available() else "none"
    r = CliRunner().invoke(
        app,
        ["train", "--data", str(tiny_prepared), "--out", str(tmp_path / "r"), "--epochs", "2", "-q"]
        + ["--set", f"train.export_runtime={fmt}"],
    )
    assert r.exit_code == 0, r.output
    assert "Trained 2 epochs" in r.stdout
    if fmt == "onnx":
        assert "Wrote the onnx runtime" in " ".join(r.stdout.split())
        card = json.loads((tmp_path / "r" / "model_card.json").read_text())
        assert card["exports"]["onnx"]["max_abs_difference_vs_keras"] <= 1e-4
        assert Classifier.load(tmp_path / "r").runtime == "onnx"
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "not a prepared dataset" in r.stderr
    r = CliRunner().invoke(
        app, ["train", "--data", str(tiny_prepared), "--out", str(tmp_path / "r3"), "--loss", "nope"]
    )
    assert r.exit_code == 1 and "train.loss must be one of" in r.stderr
    assert not (tmp_path / "r3").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "weights").is_dir(), reason="offline backbone weights not available")
def test_pretrained_backbone_learns_synthetic_task(separable_dataset, tmp_path):
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(separable_dataset))]
    cfg.data.near_duplicate_distance = -1
    prepare_dataset(cfg, tmp_path / "prep")
    cfg.model.weights = str(SHARED / "weights" / "mobilenet_v2_1.0_160_no_top.h5")
    cfg.train.epochs = 10
    cfg.train.views = 2
    res = train_run(cfg, tmp_path / "prep", tmp_path / "run")
    assert res.card.validation["accuracy"] >= 0.9
