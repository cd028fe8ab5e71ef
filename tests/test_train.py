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
def tiny_prepared(tiny_data) -> Path:
    """The shared tiny prepared dataset (32x32 images, random backbone, one view); read-only here."""
    return tiny_data["prep"]


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


@pytest.mark.slow
def test_head_learns_separable_features(tmp_path):
    cfg, train, val = _head_loop(10)
    head, state = _run(cfg, lambda e: train, val, 10, 1e-3, tmp_path / "ck")
    acc = head.evaluate(*val, verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.9 and state.history[-1]["accuracy"] > 0.9


@pytest.mark.slow
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


def test_train_run_outputs_and_card(tiny_run):
    """The shared trained run is train_run's output (two epochs of the paper's head on the tiny dataset)."""
    run, prepared = tiny_run["run"], tiny_run["prep"]
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
    summary = json.loads((prepared / "summary.json").read_text())
    assert card["classes"] == ["normal", "fatty", "tumor"]
    assert card["data"]["manifest_hash"] == summary["manifest_hash"]
    assert card["training"]["class_weights"] == pytest.approx(summary["class_weights"], abs=1e-3)
    assert card["architecture"]["parameters"]["trainable"] == 1280 * 128 + 128 + 128 * 3 + 3
    assert card["input"]["size"] == [32, 32, 3] and "Research use only" in card["intended_use"]
    assert {"tensorflow", "keras", "numpy", "python"} <= set(card["versions"])
    hist = read_csv(run / "history.csv")
    assert len(hist) == 2 and set(hist[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    from liverscan.core.model import load_model

    model = load_model(run / "model.keras")
    assert model.output_shape == (None, 3)
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    with pytest.raises(RunDirError, match="overwrite"):
        train_run(_cfg(prepared, epochs=1), prepared, run)
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # untouched


def test_determinism_is_on_while_seeded_and_restored_after_training(tiny_prepared, tmp_path):
    from tensorflow.python.framework import config as tf_config

    from liverscan.core.keras_env import seeded

    assert not tf_config.is_op_determinism_enabled()
    with seeded(1):
        assert tf_config.is_op_determinism_enabled()
    assert not tf_config.is_op_determinism_enabled()
    cfg = _cfg(tiny_prepared, epochs=1)
    cfg.model.weights = str(tmp_path / "missing.h5")  # training stops inside the seeded block
    with pytest.raises(LiverscanError):
        train_run(cfg, tiny_prepared, tmp_path / "run")
    assert not tf_config.is_op_determinism_enabled()


@pytest.mark.slow
def test_failed_run_can_be_retried(tiny_prepared, tmp_path, short_c_grid):
    run = tmp_path / "run"
    cfg = _cfg(tiny_prepared, head="linear")
    cfg.ood.enabled = False
    cfg.model.weights = str(tmp_path / "missing.h5")
    with pytest.raises(LiverscanError, match="weights file not found"):
        train_run(cfg, tiny_prepared, run)
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    cfg.model.weights = "none"
    train_run(cfg, tiny_prepared, run)  # same command, no --overwrite
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    from liverscan.core.errors import TrainingError
    from liverscan.core.model import build_head, logits_view

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1280)).astype(np.float32)
    x[5, 7] = np.inf  # one broken feature row: the loss of that batch is not finite
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 64)]
    data = epoch_dataset(64, 32, lambda epoch: lambda i: (x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]))
    cfg = Config()
    with pytest.raises(TrainingError, match="loss became non-finite at epoch 1"):
        run_stage(
            Stage("head", 5, 1e-3, data, (x[:8], y[:8]), "test"),
            lambda rate: compile_trainer(logits_view(build_head(2)), cfg, rate),
            cfg.train,
            CheckpointStore(tmp_path),
            SilentReporter(),
        )


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


def test_cli_train_refuses_what_it_cannot_train_before_writing(tiny_prepared, tmp_path):
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "not a prepared dataset" in r.stderr
    r = CliRunner().invoke(
        app, ["train", "--data", str(tiny_prepared), "--out", str(tmp_path / "r3"), "--loss", "nope"]
    )
    assert r.exit_code == 2 and "train.loss must be one of" in r.stderr  # a usage error
    assert not (tmp_path / "r3").exists()


@pytest.mark.slow
def test_cli_train_writes_the_checked_fast_runtime(tiny_prepared, tmp_path):
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


@pytest.mark.slow
def test_failed_train_is_retried_by_the_same_command(tiny_prepared, tmp_path):
    from cli_helpers import one_line_error

    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_prepared), "--out", str(run), "--head", "mlp", "-q"]
    args += ["--set", "preprocess.image_size=32", "--set", "train.epochs=1", "--set", "train.views=1"]
    one_line_error(CliRunner().invoke(app, [*args, "--weights", str(tmp_path / "missing.h5")]), "missing.h5")
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    r = CliRunner().invoke(app, [*args, "--weights", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


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


def test_overwrite_never_deletes_a_file_liverscan_did_not_write(tiny_prepared, tmp_path):
    from cli_helpers import one_line_error

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "model.keras").touch()
    (proj / "thesis.docx").write_text("x")
    args = ["train", "--data", str(tiny_prepared), "--out", str(proj), "--overwrite", "-q"]
    one_line_error(CliRunner().invoke(app, args), "not a liverscan run directory")
    assert sorted(p.name for p in proj.iterdir()) == ["model.keras", "thesis.docx"]

    (proj / "run.json").write_text('{"status": "complete"}')  # a run of liverscan's, with a foreign file in it
    one_line_error(CliRunner().invoke(app, args), "thesis.docx: not written by liverscan")
    (proj / "thesis.docx").unlink()
    (proj / "eval-test").mkdir()
    (proj / "eval-test" / "notes.txt").write_text("mine")  # inside an evaluation folder too
    one_line_error(CliRunner().invoke(app, args), "notes.txt: not written by liverscan")
    (proj / "eval-test" / "notes.txt").unlink()
    (proj / "checkpoint").mkdir()
    (proj / "checkpoint" / "draft.docx").write_text("mine")  # and in a working folder
    one_line_error(CliRunner().invoke(app, args), "draft.docx: not written by liverscan")
    assert (proj / "checkpoint" / "draft.docx").read_text() == "mine" and (proj / "run.json").is_file()


def test_overwrite_replaces_everything_a_run_wrote(evaluated_tiny_run, tmp_path):
    """Training, evaluation, the report and what interrupted writes leave are liverscan's: all replaced."""
    import shutil

    from liverscan.evaluation import write_report
    from liverscan.training.train import _start_run_dir, foreign_file

    run = tmp_path / "run"
    shutil.copytree(evaluated_tiny_run["run"], run)
    write_report(run)
    (run / ".model_card.json.x1y2.tmp").write_text("{")  # a killed atomic write
    (run / "model.tmp.keras").write_bytes(b"")  # a killed Keras save
    (run / ".model.onnx.check").write_bytes(b"")  # a killed export check
    (run / "checkpoint" / "head").mkdir(parents=True, exist_ok=True)
    (run / "checkpoint" / "head" / ".tmp.current.keras").write_bytes(b"")
    assert {"eval-test", "report.html", "model.keras", "run.json"} <= {p.name for p in run.iterdir()}
    assert foreign_file(run) is None
    _start_run_dir(run, overwrite=True)
    assert run.is_dir() and list(run.iterdir()) == []


def test_damaged_prepared_files_are_one_line_errors_before_the_run_starts(tiny_prepared, tmp_path):
    import shutil

    from cli_helpers import one_line_error

    prep = tmp_path / "prep"
    shutil.copytree(tiny_prepared, prep)
    cache = prep / "images.npy"
    good = cache.read_bytes()
    args = ["train", "--data", str(prep), "--out", str(tmp_path / "run"), "-q"]
    for damaged, reason in (
        (good[: len(good) // 2], "mmap length is greater than file size"),  # truncated
        (b"garbage" * 40, "not a NumPy .npy file"),
        (good[:20], "reading array header"),
    ):
        cache.write_bytes(damaged)
        assert reason in one_line_error(CliRunner().invoke(app, args), "images.npy: corrupt decoded-image cache")
        assert not (tmp_path / "run").exists()
    cache.write_bytes(good)
    (prep / "manifest.csv").write_bytes(bytes(range(256)))
    one_line_error(CliRunner().invoke(app, args), "manifest.csv: unreadable (not UTF-8 text)")


def test_a_run_stopped_after_training_is_finished_by_resume_without_training_again(probe_run, tmp_path):
    """The state a stop in a phase after training leaves (here: the fast runtime's export, after the model was
    written): not complete, resumable, predict says so; --resume runs only what is left."""
    import shutil

    from liverscan.core import artifacts as art
    from liverscan.core.artifacts import read_run_info, write_run_info
    from liverscan.serving import Classifier, PredictJob, PredictOptions
    from liverscan.training import finish_run

    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    info = read_run_info(run)
    assert info["phases"] == ["train"] and info["done"] == ["train"] and info["status"] == "complete"
    write_run_info(run, {**info, "phases": ["train", "export"], "status": "interrupted"})
    assert art.pending_phases(read_run_info(run)) == ["export"]
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    clf = Classifier(art.read_card(run), run, run / "model.keras", options=PredictOptions())
    note = " ".join(PredictJob([image], PredictOptions(), classifier=clf).notes())
    assert f"stopped before its last steps (export): finish them with liverscan train --resume {run}" in note
    assert "predict runs on the Keras model" in note
    stamp = (run / "model.keras").stat().st_mtime_ns
    done = []
    with pytest.raises(RunDirError, match="no way to run the phase"):
        finish_run(run, {})
    res = train_run(Config(), None, run, resume=True)  # training is done: its result, from the run directory
    assert res.run_dir == run and res.card.classes == ["normal", "fatty", "tumor"]
    assert (run / "model.keras").stat().st_mtime_ns == stamp
    assert read_run_info(run)["status"] == "interrupted"  # not complete until the export phase has run
    finish_run(run, {"export": lambda: done.append("export")})
    assert done == ["export"] and read_run_info(run)["status"] == "complete"
    assert read_run_info(run)["done"] == ["train", "export"]
    with pytest.raises(RunDirError, match="already complete"):
        train_run(Config(), None, run, resume=True)
    # the command line: a stop in the last phase says that the model is trained and how to finish
    write_run_info(run, {**read_run_info(run), "done": ["train"], "status": "interrupted"})
    r = CliRunner().invoke(app, ["train", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert "Fitted the linear probe" in r.stdout and (run / "model.keras").stat().st_mtime_ns == stamp
    assert read_run_info(run)["status"] == "complete"


def test_a_stop_just_as_a_phase_starts_still_marks_the_run_interrupted(probe_run, tmp_path, monkeypatch):
    """A signal landing right after run.json says "running" (a slow fsync on a busy disk) leaves an interrupted
    run that --resume picks up, not one that looks as if it were still running."""
    import shutil

    from liverscan.core import artifacts as art
    from liverscan.training import finish_run

    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    info = art.read_run_info(run)
    art.write_run_info(run, {**info, "phases": ["train", "export"], "status": "trained"})
    real = art.write_run_info

    def stopped_after_writing(where, info):
        real(where, info)
        if info.get("status") == "running":
            raise KeyboardInterrupt

    monkeypatch.setattr(art, "write_run_info", stopped_after_writing)
    with pytest.raises(KeyboardInterrupt):
        finish_run(run, {"export": lambda: pytest.fail("the phase ran after the stop")})
    after = art.read_run_info(run)
    assert after["status"] == "interrupted" and after["done"] == ["train"]


def test_single_split_training_refuses_an_empty_or_incomplete_validation_split(tiny_data, tmp_path):
    """Before the run directory is made: a model fitted without validation images of every class would be
    reported as trained, and evaluate would fail later on an empty test split."""
    import shutil

    from cli_helpers import one_line_error
    from conftest import class_image, tiny_config

    three = tmp_path / "three"
    for ci, cls in enumerate(("normal", "fatty", "tumor")):  # one image per class: all of them go to train
        (three / cls).mkdir(parents=True)
        class_image(ci, ci).save(three / cls / "a.png")
    prepare_dataset(tiny_config(three), tmp_path / "p3")
    args = ["train", "--data", str(tmp_path / "p3"), "--out", str(tmp_path / "run"), "--head", "linear", "-q"]
    text = one_line_error(CliRunner().invoke(app, args), "p3: the validation split is empty (3 training images)")
    assert "liverscan train --folds K" in text and not (tmp_path / "run").exists()

    prep = tmp_path / "prep"  # the tiny dataset with its validation tumour images moved to train
    shutil.copytree(tiny_data["prep"], prep)
    manifest = (prep / "manifest.csv").read_text().splitlines()
    header = manifest[0].split(",")
    split, cls = header.index("split"), header.index("class")
    lines = [manifest[0]]
    for line in manifest[1:]:
        cells = line.split(",")
        if cells[split] == "val" and cells[cls] == "tumor":
            cells[split] = "train"
        lines.append(",".join(cells))
    (prep / "manifest.csv").write_text("\n".join(lines) + "\n")
    args = ["train", "--data", str(prep), "--out", str(tmp_path / "run"), "-q"]
    one_line_error(
        CliRunner().invoke(app, args), "prep: the validation split has no images of tumor (6 validation images)"
    )
    assert not (tmp_path / "run").exists()
