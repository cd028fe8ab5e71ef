"""Fault injection: every bad input, bad option and fault gets a one-line answer, and nothing is lost.

One section per numbered finding of the hardening issue. Signals go to real child
processes; a full or read-only output directory is a small tmpfs where the machine
allows mounting one, otherwise an ``OSError`` injected at the write call.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import class_image
from liverscan.faces.cli import app

runner = CliRunner()
LIVERSCAN = [sys.executable, "-m", "liverscan"]


def one_line_error(result, fragment: str, code: int = 1) -> str:
    """The command failed with ``code`` and one 'error:' line holding ``fragment``, no traceback."""
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == code if hasattr(result, "exit_code") else result.returncode == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    joined = " ".join(err.split())  # Rich wraps long lines in narrow terminals
    assert fragment in joined, err
    return joined


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LIVERSCAN, *args], capture_output=True, text=True, timeout=timeout, **kw)


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_whole_records(path: Path) -> int:
    """Every row of a CSV output has the header's width (no record cut); returns the record count."""
    rows = csv_rows(path)
    assert rows and rows[0][0] == "path"
    assert {len(r) for r in rows} == {len(rows[0])}, "a record was cut"
    assert path.read_bytes().endswith(b"\n")
    return len(rows) - 1


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


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "32k", read_only: bool = False):
    """A small tmpfs at ``path`` (yields True), or nothing mounted (yields False) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


class OsProxy:
    """The ``os`` module as one module sees it, with some calls replaced (the rest of the process unaffected)."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def start_predict(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*LIVERSCAN, "predict", str(folder), "-o", str(out), "-q", "--batch-size", "8", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_records(partial: Path, proc: subprocess.Popen, n: int = 20, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_bytes().count(b"\n") > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail("predict wrote no records")


# 1. Rich markup eats text ------------------------------------------------------------------------


def test_1_brackets_in_help_names_and_paths_are_shown_literally(tmp_path):
    assert "liverscan[app]" in runner.invoke(app, ["app", "--help"], terminal_width=200).output
    folder = tmp_path / "[" / "sub]"  # the path holds '[/sub]'
    folder.mkdir(parents=True)
    class_image(0, 1).save(folder / "case[i]01.png")
    (folder / "broken[b].png").write_bytes(b"not an image")
    r = runner.invoke(app, ["predict", str(folder), "-o", str(folder / "out[x].csv"), "-q"], terminal_width=400)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "broken[b].png" in r.stderr and "out[x].csv" in r.stderr
    assert [row[0] for row in csv_rows(folder / "out[x].csv")[1:]] == [
        str(folder / "broken[b].png"),
        str(folder / "case[i]01.png"),
    ]


# 2. Hangs ----------------------------------------------------------------------------------------


def test_2_batch_size_zero_and_negative_are_refused_at_once(tmp_path):
    for bad in ("0", "-5"):
        r = runner.invoke(app, ["predict", str(tmp_path), "--batch-size", bad])
        assert r.exit_code == 2 and "batch-size" in r.output and "Traceback" not in r.output


def test_2_fifo_named_or_in_a_folder_never_blocks(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    class_image(1, 2).save(folder / "good.png")
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/urandom", folder / "random.png")
    r = run_cli("predict", str(folder / "pipe.png"), str(folder / "random.png"), "--format", "jsonl", timeout=60)
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 2, r.stderr
    assert [rec["error"] for rec in records] == [
        "not a regular file (a FIFO (named pipe))",
        "not a regular file (a character device)",
    ]
    r = run_cli("predict", str(folder), "--format", "csv", timeout=60)  # walked: counted, not opened
    assert r.returncode == 0, r.stderr
    note = " ".join(r.stderr.split())
    assert (
        "2 files in the given folders left out" in note
        and "not a regular file (a FIFO (named pipe)) (pipe.png)" in note
    )
    assert "a character device) (random.png)" in note and len(r.stdout.strip().splitlines()) == 2


# 3. Tracebacks instead of one-line errors --------------------------------------------------------


def test_3_read_only_or_full_output_directory_is_one_line(tiny_run, tmp_path, monkeypatch):
    image = str(next((tiny_run["data"] / "tumor").glob("*.png")))
    target = tmp_path / "ro"
    with tmpfs(target, read_only=True) as mounted:
        if not mounted:  # no tmpfs here: liverscan's own file creation fails as on a read-only file system
            import tempfile

            import liverscan.core.fileio as fileio
            import liverscan.serving.outputs as outputs

            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", str(target))

            monkeypatch.setattr(fileio, "tempfile", OsProxy(tempfile, mkstemp=refuse))
            monkeypatch.setattr(outputs, "os", OsProxy(os, open=refuse))
        for args in (
            ["prepare", str(tiny_run["data"]), "-o", str(target / "prep")],
            ["evaluate", str(tiny_run["run"]), "--out", str(target / "eval"), "--set", "eval.bootstrap=20"],
            ["report", "--compare", str(tiny_run["run"]), str(tiny_run["run"]), "--out", str(target / "cmp")],
            ["predict", image, "--model", str(tiny_run["run"]), "-o", str(target / "x.csv")],
        ):
            one_line_error(runner.invoke(app, args), "Read-only file system")
        monkeypatch.undo()
    assert not any(tiny_run["run"].glob("eval-*/.*tmp"))


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda run: (run / "model_card.json").write_text("{not json"), "model_card.json"),
        (lambda run: (run / "model.keras").write_bytes(b"PK\x03\x04garbage"), "cannot load model"),
        (lambda run: (run / "model.keras").unlink(), "model.keras"),
    ],
    ids=["malformed-card", "corrupt-model", "missing-model"],
)
def test_3_damaged_model_files_are_one_line(tiny_run, tmp_path, damage, fragment):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    damage(run)
    image = str(next((tiny_run["data"] / "tumor").glob("*.png")))
    one_line_error(runner.invoke(app, ["predict", image, "--model", str(run)]), fragment)
    one_line_error(runner.invoke(app, ["evaluate", str(run)]), fragment)


def test_3_corrupt_packed_weights_are_one_line(tmp_path):
    from liverscan.serving import default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    (model / "weights.npz").write_bytes(b"PK\x03\x04 not a zip")
    (model / "model.tflite").unlink()
    r = runner.invoke(app, ["predict", "examples/images", "--model", str(model), "--runtime", "keras"])
    one_line_error(r, "weights.npz")


def test_3_bad_configuration_values_are_one_line(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  seed: 1 # caf\xe9\n".encode("latin-1"))
    cases = [
        (["config", "--set", "data.classes=[a, b"], "not valid YAML"),
        (["config", "--config", str(latin1)], "UTF-8"),
        (["config", "--config", str(tmp_path)], "is a directory"),
        (["config", "--set", "data.workers=-3"], "data.workers"),
    ]
    for args, fragment in cases:
        one_line_error(runner.invoke(app, args), fragment)


# 4. Silent nonsense ------------------------------------------------------------------------------


def test_4_non_finite_and_negative_learning_rates_and_empty_splits_are_refused(tmp_path):
    for value in ("nan", "-0.001", "inf"):
        one_line_error(runner.invoke(app, ["config", "--set", f"train.learning_rate={value}"]), "learning_rate")
    data = tmp_path / "d"
    for cls in ("normal", "tumor"):
        (data / cls).mkdir(parents=True)
        class_image(0, 1).save(data / cls / "a.png")
    for split in ("0/0/100", "0/100/0"):
        one_line_error(runner.invoke(app, ["prepare", str(data), "-o", str(tmp_path / "p"), "--split", split]), "ratio")
    assert not (tmp_path / "p").exists()


def test_4_non_finite_probabilities_are_an_error_record_never_an_answer(tiny_run):
    from liverscan.serving import Classifier

    clf = Classifier.load(tiny_run["run"])
    weights = clf.model.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)  # a damaged model: its last bias is NaN
    clf.model.set_weights(weights)
    (rec,) = clf.predict([np.asarray(class_image(0, 1))])
    assert rec.error and "non-finite" in rec.error and rec.predicted_class is None and rec.confidence is None


def test_4_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    from liverscan.core.config import Config
    from liverscan.core.errors import TrainingError
    from liverscan.core.model import build_head, logits_view
    from liverscan.training.checkpoints import CheckpointStore
    from liverscan.training.loop import SilentReporter, Stage, epoch_dataset, run_stage
    from liverscan.training.train import compile_trainer

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


# 5. Interrupted output is kept -------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_5_signal_keeps_whole_records_in_partial_and_says_so(many_images, tmp_path, sig, code):
    out = tmp_path / "out.csv"
    proc = start_predict(many_images, out)
    wait_for_records(out.with_name("out.csv.partial"), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    partial = out.with_name("out.csv.partial")
    assert proc.returncode == code, err
    assert not out.exists() and partial.exists()
    n = assert_whole_records(partial)
    assert f"{n} records so far kept in {partial}" in " ".join(err.split()), err
    assert "Traceback" not in err
    assert partial.stat().st_mode & 0o044, "the partial file is readable like any output"


def test_5_sigkill_leaves_whole_records_and_a_rerun_never_clobbers_them(many_images, tmp_path):
    out = tmp_path / "out.csv"
    partial = out.with_name("out.csv.partial")
    proc = start_predict(many_images, out)
    wait_for_records(partial, proc, n=50)
    proc.kill()
    proc.wait(timeout=30)
    n = assert_whole_records(partial)
    assert n >= 50
    one_line_error(run_cli("predict", str(many_images), "-o", str(out), "-q"), "pass --overwrite")
    assert assert_whole_records(partial) == n  # untouched
    few = sorted(many_images.iterdir())[:3]
    r = run_cli("predict", *map(str, few), "-o", str(out), "-q", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not partial.exists() and assert_whole_records(out) == 3


def test_5_full_disk_keeps_whole_records(tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(40):
        class_image(k % 3, k).save(folder / f"img{k:02d}_{'x' * 60}.png")
    target = tmp_path / "full"
    with tmpfs(target, size="4k") as mounted:
        if not mounted:  # inject ENOSPC at the write call after a few records
            import liverscan.serving.outputs as outputs

            real_write, calls = os.write, {"n": 0}

            def write(fd, data):
                calls["n"] += 1
                if calls["n"] > 12:
                    return real_write(fd, bytes(data)[: len(data) // 2]) and (_ for _ in ()).throw(
                        OSError(errno.ENOSPC, "No space left on device")
                    )
                return real_write(fd, data)

            monkeypatch.setattr(outputs, "os", OsProxy(os, write=write))
        out = target / "out.csv"
        r = runner.invoke(app, ["predict", str(folder), "--model", str(tiny_run["run"]), "-o", str(out), "-q"])
        text = one_line_error(r, "No space left on device")
        partial = out.with_name("out.csv.partial")
        n = assert_whole_records(partial)
        assert 0 < n < 40 and f"{n} records so far kept" in text


def test_5_sigterm_of_train_marks_the_run_interrupted_and_says_how_to_resume(tiny_run, tmp_path):
    run = tmp_path / "run"
    cmd = [*LIVERSCAN, "train", "--data", str(tiny_run["prep"]), "--out", str(run), "--weights", "none"]
    cmd += ["--head", "mlp", "--set", "preprocess.image_size=32", "--set", "train.epochs=100000"]
    cmd += ["--set", "train.early_stopping_patience=100000", "--set", "train.lr_patience=100000", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not any(run.glob("checkpoint/*/state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert f"liverscan train --resume {run}" in " ".join(err.split()) and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


# 6. Processes left running -----------------------------------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_6_stopping_the_app_stops_its_server(sig):
    pytest.importorskip("streamlit")
    port = _free_port()
    proc = subprocess.Popen(
        [*LIVERSCAN, "app", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        time.sleep(0.5)
        assert not _listening(port), "the Streamlit server outlived liverscan app"
    finally:
        if proc.poll() is None:
            proc.kill()


# 7. A failed train can be retried by the same command -------------------------------------------


def test_7_failed_train_is_retried_by_the_same_command(tiny_run, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_run["prep"]), "--out", str(run), "--head", "mlp", "-q"]
    args += ["--set", "preprocess.image_size=32", "--set", "train.epochs=1", "--set", "train.views=1"]
    one_line_error(runner.invoke(app, [*args, "--weights", str(tmp_path / "missing.h5")]), "missing.h5")
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    r = runner.invoke(app, [*args, "--weights", "none"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


# 8. Silent skips and wrong reasons ---------------------------------------------------------------


def test_8_left_out_files_are_counted_with_their_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    class_image(0, 1).save(folder / "good.png")
    class_image(0, 2).save(folder / "cine.gif")
    Image.new("RGB", (8, 8)).save(folder / "frame.webp")
    class_image(0, 3).save(folder / ".hidden.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    r = run_cli("predict", str(folder), "--format", "csv", timeout=60)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stderr
    note = " ".join(r.stderr.split())
    assert "4 files in the given folders left out" in note
    assert "2 not a supported file type (cine.gif, frame.webp)" in note
    assert "1 hidden (.hidden.png)" in note and "1 broken symbolic link (dangling.png)" in note
    r = runner.invoke(app, ["predict", str(folder / "dangling.png"), "--format", "jsonl"])
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "broken symbolic link"

    data = tmp_path / "data"
    for cls in ("normal", "tumor"):
        (data / cls).mkdir(parents=True)
        for k in range(6):
            class_image(0 if cls == "normal" else 1, k + (10 if cls == "tumor" else 0)).save(data / cls / f"{k}.png")
    class_image(0, 99).save(data / "normal" / "x.webp")
    r = runner.invoke(app, ["prepare", str(data), "-o", str(tmp_path / "prep"), "--split", "50/25/25"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "prep" / "summary.json").read_text())
    assert summary["ignored_files"] == {"not a supported file type": 1}
    assert "1 file in the sources left out" in " ".join(r.stderr.split())


def test_8_misspelt_dicom_tag_is_refused_before_work(tmp_path):
    pytest.importorskip("pydicom")
    class_image(0, 1).save(tmp_path / "a.png")
    one_line_error(
        runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--dicom-tags", "PatientID,StudyDate,PatientNme"]),
        "did you mean PatientName?",
    )


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_8_existing_output_needs_overwrite_and_concurrent_writers_are_refused(tmp_path):
    pytest.importorskip("fcntl")
    class_image(0, 1).save(tmp_path / "a.png")
    out = tmp_path / "out.csv"
    out.write_text("precious results\n")
    one_line_error(runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-o", str(out)]), "--overwrite")
    assert out.read_text() == "precious results\n"
    holder = subprocess.Popen(  # another process holds the output's lock, as a running predict does
        [sys.executable, "-c", HOLD_LOCK, str(out.with_name("out.csv.partial"))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite"])
        one_line_error(r, "another liverscan process is writing")
    finally:
        holder.kill()
        holder.wait()
    assert out.read_text() == "precious results\n"
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite", "-q"])
    assert r.exit_code == 0 and len(csv_rows(out)) == 2


# 9. Wrong advice ---------------------------------------------------------------------------------


def test_9_advice_names_commands_that_work(tiny_run, tmp_path):
    text = one_line_error(runner.invoke(app, ["predict", "examples/images", "--operating-point"]), "default model")
    assert "site-packages" not in text and "liverscan evaluate RUN --operating-point" in text

    folders = tmp_path / "folders"
    (folders / "doppler").mkdir(parents=True)
    class_image(2, 1).save(folders / "doppler" / "a.png")
    text = one_line_error(runner.invoke(app, ["evaluate", str(tiny_run["run"]), "--data", str(folders)]), "'doppler'")
    assert "liverscan prepare --map" in text and "Map them with --map" not in text

    rows = ["path,label,patient"]
    for p in range(4):
        for f in range(3):
            name = f"p{p}_{f}.png"
            class_image(p % 2, 10 * p + f).save(tmp_path / name)
            rows.append(f"{name},{'normal' if p % 2 == 0 else 'tumor'},patient{p}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    r = runner.invoke(app, ["prepare", str(tmp_path / "labels.csv"), "-o", str(tmp_path / "prep")])
    assert r.exit_code == 0, r.output
    warnings = json.loads((tmp_path / "prep" / "summary.json").read_text())["warnings"]
    assert any(w.startswith("groups: 12 images in 4 groups") and "patients" in w for w in warnings), warnings
    assert not any(w.startswith("near-duplicates: 12") for w in warnings), warnings


# 10. The operating point is never fitted on the images it is evaluated on -----------------------


def test_10_operating_point_with_unprepared_data_is_fitted_on_the_runs_validation_split(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = runner.invoke(
        app,
        ["evaluate", str(run), "--data", str(tiny_run["data"]), "--operating-point", "tumor>=0.9", "-q"]
        + ["--set", "eval.bootstrap=20"],
    )
    assert r.exit_code == 0, r.output
    fitted_on = json.loads((run / "model_card.json").read_text())["operating_point"]["fitted_on"]
    assert str(tiny_run["data"]) not in fitted_on["data"] and "val" in fitted_on["data"]


# 11. Noise ---------------------------------------------------------------------------------------


def test_11_no_library_chatter_on_commands(tiny_run, tmp_path):
    image = str(next((tiny_run["data"] / "tumor").glob("*.png")))
    for args in (["predict", "examples/images", "-q"], ["predict", image, "--model", str(tiny_run["run"]), "-q"]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        for noise in ("absl", "oneDNN", "cuda", "XNNPACK", "INFO:", "TensorSpec", "WARNING"):
            assert noise not in r.stderr + r.stdout, (noise, r.stderr)


@pytest.mark.slow
def test_11_export_prints_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = run_cli("export", str(run), timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    assert "TensorSpec" not in r.stdout + r.stderr and len((r.stdout + r.stderr).strip().splitlines()) == 1


# 12. Memory: large images are reduced right after decoding --------------------------------------


def test_12_large_images_decode_close_to_the_full_path_one_at_a_time(tmp_path, monkeypatch):
    from liverscan.core import images

    y, x = np.mgrid[0:2600, 0:2000]
    grey = ((x // 9 + y // 7) % 256).astype(np.uint8)
    sources = {
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "palette.png": Image.fromarray(grey).convert("P"),
        "rgba.png": Image.fromarray(np.stack([grey, grey, grey, grey], -1)),
    }
    for name, im in sources.items():
        im.save(tmp_path / name)
    active, peak = {"n": 0}, {"n": 0}
    real_reduced = images._reduced

    def counting(im, size):
        active["n"] += 1
        peak["n"] = max(peak["n"], active["n"])
        try:
            out = real_reduced(im, size)
            assert max(out.size) <= 1000, "a large image was not reduced"
            return out
        finally:
            active["n"] -= 1

    monkeypatch.setattr(images, "_reduced", counting)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        reduced = list(pool.map(lambda n: images.load_image(tmp_path / n), sources))
    assert peak["n"] == 1
    monkeypatch.setattr(images, "_reduced", real_reduced)
    monkeypatch.setattr(images, "REDUCE_ABOVE_PIXELS", 10**12)
    for name, got in zip(sources, reduced):
        full = images.load_image(tmp_path / name).astype(int)
        assert np.abs(got.astype(int) - full).mean() < 1.0, name


# 13. The rebuild chain stops where data is missing -----------------------------------------------


def test_13_reproduction_without_data_fails_and_stops_the_chain(tmp_path):
    chain = (
        f"{sys.executable} examples/reproduce.py --shared {tmp_path} --out {tmp_path / 'r'} && "
        f"{sys.executable} examples/ship_default_model.py {tmp_path / 'r' / 'xu-tumor-vs-normal' / 'run'}"
    )
    r = subprocess.run(chain, shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "nothing reproduced" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "examples/ship_default_model.py", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# The README's promises ---------------------------------------------------------------------------


def test_readme_config_round_trip_reaches_every_command(tiny_run, tmp_path):
    r = runner.invoke(app, ["config"])
    assert r.exit_code == 0 and "review_confidence: 0.6" in r.stdout
    image = str(next((tiny_run["data"] / "normal").glob("*.png")))
    args = ["predict", image, "--model", str(tiny_run["run"]), "--format", "jsonl", "--no-ood"]
    flags = {}
    for value in ("0.0", "1.0"):
        (tmp_path / f"{value}.yaml").write_text(
            r.stdout.replace("review_confidence: 0.6", f"review_confidence: {value}")
        )
        flags[value] = json.loads(runner.invoke(app, [*args, "--config", str(tmp_path / f"{value}.yaml")]).stdout)
    assert flags["0.0"]["needs_review"] is False and flags["1.0"]["needs_review"] is True
    r = runner.invoke(
        app, ["prepare", str(tiny_run["data"]), "-o", str(tmp_path / "p"), "-c", str(tmp_path / "1.0.yaml")]
    )
    assert r.exit_code == 0, r.output
    assert "review_confidence: 1.0" in (tmp_path / "p" / "config.yaml").read_text()


def test_5_nohup_keeps_ignoring_hangups(many_images, tmp_path):
    out = tmp_path / "out.csv"
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(many_images.iterdir())[:400]:
        os.symlink(os.readlink(p), few / p.name)
    proc = subprocess.Popen(
        [*LIVERSCAN, "predict", str(few), "-o", str(out), "-q", "--batch-size", "8"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )
    wait_for_records(out.with_name("out.csv.partial"), proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert assert_whole_records(out) == 400


def test_8_bad_path_lists_and_groupings_fail_before_any_output(tmp_path):
    class_image(0, 1).save(tmp_path / "a.png")
    latin1 = tmp_path / "list.csv"
    latin1.write_bytes("path,patient\na.png,Ren\xe9\n".encode("latin-1"))
    out = tmp_path / "out.csv"
    one_line_error(runner.invoke(app, ["predict", str(latin1), "-o", str(out)]), "not a readable CSV path list")
    good = tmp_path / "good.csv"
    good.write_text("path,patient\na.png,p1\n")
    one_line_error(
        runner.invoke(app, ["predict", str(good), "-o", str(out), "--group-by", "column:study"]), "no column 'study'"
    )
    one_line_error(
        runner.invoke(app, ["predict", str(good), "-o", str(out), "--study-output", str(out)]), "different files"
    )
    (tmp_path / "none").mkdir()
    one_line_error(runner.invoke(app, ["predict", str(tmp_path / "none"), "-o", str(out)]), "no input images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "good.csv", "list.csv", "none"]  # no output


def test_12_large_images_keep_their_exif_orientation(tmp_path):
    from liverscan.core import images

    y, x = np.mgrid[0:2400, 0:2000]
    grey = ((x // 9 + y // 5) % 200).astype(np.uint8)
    grey[:600, :500] = 255  # a bright corner shows where "up" is
    im = Image.fromarray(grey)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    im.save(tmp_path / "rotated.png", exif=exif.tobytes())
    reduced = images.load_image(tmp_path / "rotated.png").astype(int)
    images_full = images.REDUCE_ABOVE_PIXELS
    try:
        images.REDUCE_ABOVE_PIXELS = 10**12
        full = images.load_image(tmp_path / "rotated.png").astype(int)
    finally:
        images.REDUCE_ABOVE_PIXELS = images_full
    assert np.abs(reduced - full).mean() < 1.0
    assert reduced[:30, -30:].mean() > 240  # the bright corner is now top right, as the viewer shows it
