"""Signals to real child processes: a stopped command keeps what it wrote whole and says so; servers stop too.

Every wait is for something the program shows (records in FILE.partial, a checkpoint, a listening port),
with an overall limit, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import (
    LIVERSCAN,
    as_from_a_terminal,
    assert_whole_records,
    finish,
    one_line_error,
    runner,
    start_predict,
    wait_for_records,
    wait_until,
)
from conftest import class_image
from liverscan.faces.cli import Stopped, app


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """4,000 inputs (links to 40 small ultrasound-like images): a predict run long enough to interrupt."""
    base = tmp_path_factory.mktemp("many")
    src = base / "src"
    src.mkdir()
    for k in range(40):
        class_image(k % 3, seed=k, size=96).save(src / f"s{k:02d}.png")
    folder = base / "in"
    folder.mkdir()
    for i in range(4000):
        os.symlink(src / f"s{i % 40:02d}.png", folder / f"img{i:05d}.png")
    return folder


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_keeps_whole_records_in_partial_and_says_so(many_images, tmp_path, sig, code):
    out = tmp_path / "out.csv"
    partial = out.with_name("out.csv.partial")
    proc = start_predict(many_images, out, "--no-lesion")  # the classifier alone: the signal is the point
    wait_for_records(partial, proc)
    proc.send_signal(sig)
    err = finish(proc)
    assert proc.returncode == code, err
    assert not out.exists() and partial.exists()
    n = assert_whole_records(partial)
    assert f"{n} records so far kept in {partial}" in " ".join(err.split()), err
    assert "Traceback" not in err
    assert partial.stat().st_mode & 0o044, "the partial file is readable like any output"


def test_sigkill_leaves_whole_records_and_a_rerun_never_clobbers_them(many_images, tmp_path):
    out = tmp_path / "out.csv"
    partial = out.with_name("out.csv.partial")
    proc = start_predict(many_images, out, "--no-lesion")  # the classifier alone: the signal is the point
    wait_for_records(partial, proc, n=50)
    proc.kill()
    proc.wait(timeout=60)
    n = assert_whole_records(partial)
    assert n >= 50
    one_line_error(runner.invoke(app, ["predict", str(many_images), "-o", str(out), "-q"]), "pass --overwrite")
    assert assert_whole_records(partial) == n  # untouched
    few = sorted(many_images.iterdir())[:3]
    r = runner.invoke(app, ["predict", *map(str, few), "-o", str(out), "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not partial.exists() and assert_whole_records(out) == 3


@pytest.mark.slow
def test_nohup_keeps_ignoring_hangups(many_images, tmp_path):
    out = tmp_path / "out.csv"
    partial = out.with_name("out.csv.partial")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(many_images.iterdir())[:120]:
        os.symlink(os.readlink(p), few / p.name)
    proc = start_predict(few, out, ignored=(signal.SIGHUP,))  # as nohup
    wait_for_records(partial, proc)
    proc.send_signal(signal.SIGHUP)  # mid-run: wait_for_records saw it running with records still to write
    err = finish(proc)
    assert proc.returncode == 0, err
    assert assert_whole_records(out) == 120


def test_stopped_train_marks_the_run_interrupted_and_says_why_nothing_was_kept(tiny_data, tmp_path, monkeypatch):
    """The CLI's side of a stopped training (the signal itself arrives in the slow test below)."""
    import liverscan.training.train as train

    def stopped(cfg, data, run, reporter):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(train, "_train", stopped)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(tiny_data["prep"]), "--out", str(run), "-q"])
    text = one_line_error(r, "stopped by SIGTERM", code=143)
    assert "no epoch had finished, so nothing was checkpointed" in text
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_of_train_marks_the_run_interrupted_and_says_how_to_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    cmd = [*LIVERSCAN, "train", "--data", str(tiny_data["prep"]), "--out", str(run), "--weights", "none"]
    cmd += ["--head", "mlp", "--set", "preprocess.image_size=32", "--set", "train.epochs=100000"]
    cmd += ["--set", "train.early_stopping_patience=100000", "--set", "train.lr_patience=100000", "-q"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal()
    )
    wait_until(lambda: any(run.glob("checkpoint/*/state.json")), proc, "checkpoint", timeout=300, every=0.1)
    proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert proc.returncode == 143, err
    assert f"liverscan train --resume {run}" in " ".join(err.split()) and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_after_the_refit_leaves_a_run_that_resume_finishes_without_training_again(tiny_data, tmp_path):
    from cli_helpers import run_cli
    from liverscan.serving import runtime

    run = tmp_path / "run"
    fmt = "onnx" if runtime.onnx_available() else "tflite"
    cmd = [*LIVERSCAN, "train", "--data", str(tiny_data["prep"]), "--out", str(run), "--weights", "none"]
    cmd += ["--folds", "3", "--set", f"train.export_runtime={fmt}", "--set", "eval.bootstrap=100", "-q"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal()
    )

    def trained() -> bool:  # the refit model is written: the out-of-fold evaluation and the export follow
        try:
            return "train" in json.loads((run / "run.json").read_text()).get("done", [])
        except (FileNotFoundError, ValueError):
            return False

    wait_until(trained, proc, "the end of training", timeout=300, every=0.02)
    proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert proc.returncode == 143, err
    info = json.loads((run / "run.json").read_text())
    # interrupted inside a phase; "trained" when the signal came between two (the model written, steps left)
    assert info["status"] in ("interrupted", "trained") and info["phases"] == ["train", "evaluate", "export"]
    left = [p for p in info["phases"] if p not in info["done"]]
    assert left and info["done"][0] == "train" and not (run / f"model.{fmt}").exists()
    said = " ".join(err.split())
    assert f"the model is trained; finish the rest ({', '.join(left)}) with: liverscan train --resume {run}" in said
    kept = [run / "model.keras", run / "ood_reference.npz", *run.glob("folds/*/fold.json")]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    done = run_cli("train", "--resume", str(run), "-q", timeout=300)
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps  # nothing was trained again
    assert (run / "eval-cv" / "metrics.json").is_file() and (run / f"model.{fmt}").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["done"] == info["phases"]
    one_line_error(run_cli("train", "--resume", str(run), "-q"), "training already complete")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("when", ["listening", "serving"])
@pytest.mark.parametrize(
    "sig, ignored",
    [(signal.SIGTERM, ()), (signal.SIGINT, ()), (signal.SIGHUP, (signal.SIGTERM,))],
    ids=["SIGTERM", "SIGINT", "SIGHUP-with-SIGTERM-ignored"],
)
def test_stopping_the_app_stops_its_server(sig, ignored, when):
    """Stopped as soon as its port listens (before Streamlit's own handlers are in place) or once it serves;
    SIGHUP (which the app turns into SIGTERM) also where it was started with SIGTERM ignored."""
    pytest.importorskip("streamlit")
    port = _free_port()
    proc = subprocess.Popen(
        [*LIVERSCAN, "app", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal(*ignored),
    )
    try:
        ready = _listening if when == "listening" else _serving
        wait_until(lambda: ready(port), proc, f"server on port {port}", timeout=180, every=0.02)
        proc.send_signal(sig)
        err = finish(proc, timeout=60)
        assert proc.returncode == 128 + sig, err
        deadline = time.monotonic() + 30  # the server may close its socket a moment after liverscan exits
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(port), "the Streamlit server outlived liverscan app"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
