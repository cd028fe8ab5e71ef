"""The Ray Data engine: same records as single-process predict, shards, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverscan.faces.cli import app
from liverscan.serving import Classifier, PredictOptions, expand_inputs, read_shard_rows, shard_files
from liverscan.serving.distributed import RUN_FILE, SUMMARY_FILE, _start_output, prepare_output
from liverscan.serving.records import record_columns

ray = pytest.importorskip("ray", reason='the Ray engine needs "liverscan[ray]"')
runner = CliRunner()


def _inputs(tiny_run: dict, tmp_path: Path) -> list[str]:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    return [str(tiny_run["data"] / "normal"), str(tiny_run["data"] / "tumor"), str(bad), str(tmp_path / "missing.png")]


def _by_index(out: Path) -> dict[int, dict]:
    rows = [r for shard in shard_files(out) for r in read_shard_rows(shard)]
    by_index = {r["index"]: r for r in rows}
    assert len(by_index) == len(rows), "an input has two records"
    return by_index


def _assert_same(rows: dict[int, dict], expected: list, clf: Classifier) -> None:
    """The Ray records equal single-process ``expected`` ones.  An image whose guard score is within float noise of
    the threshold (the threshold is one calibration image's score, and the tiny run's inputs are its own images) may
    fall either side on either path, as ``export``'s agreement check allows; its score must still agree."""
    classes = clf.classes
    threshold = clf.reference.threshold if clf.reference is not None else None
    assert sorted(rows) == list(range(len(expected)))
    for k, rec in enumerate(expected):
        row = rows[k]
        assert row["path"] == rec.path
        assert row["error"] == rec.error
        assert row["predicted_class"] == rec.predicted_class
        if rec.ood_score is not None:
            assert abs(row["ood_score"] - rec.ood_score) <= 1e-6
        if threshold is None or rec.ood_score is None or abs(rec.ood_score - threshold) > 1e-6:
            assert row["decision"] == rec.decision
            assert row["in_distribution"] == rec.in_distribution
        for c in classes:
            got = row["p_" + c] if "p_" + c in row else row["probabilities"].get(c)
            want = rec.probabilities.get(c)
            assert (got is None) == (want is None)
            if want is not None:
                assert abs(got - want) <= 1e-5


@pytest.mark.slow  # a local Ray cluster: seconds to start
def test_ray_engine_gives_the_single_process_records(tiny_run, tmp_path):
    """Parquet shards through the CLI on a local Ray (2 CPUs): same records as predict, bad files included."""
    inputs = _inputs(tiny_run, tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", *inputs, "--model", str(tiny_run["run"]), "--engine", "ray", "-o", str(out)]
        + ["--shard-size", "16", "--runtime", "keras", "--num-workers", "2"],
    )
    assert result.exit_code == 4, result.output  # two inputs fail, as records (some files failed)
    assert "broken.png: not a recognised image file" in result.output
    paths = list(expand_inputs(inputs))
    clf = Classifier.load(tiny_run["run"], runtime="keras")
    expected = clf.predict(paths)
    rows = _by_index(out)
    _assert_same(rows, expected, clf)
    shards = shard_files(out)
    assert len(shards) == -(-len(paths) // 16) and all(s.suffix == ".parquet" for s in shards)
    import pyarrow.parquet as pq

    names = pq.read_schema(shards[0]).names
    assert names == ["index"] + [c.name for c in record_columns(clf.classes)]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["records"] == len(paths) and summary["failed"] == 2
    # a finished folder is never overwritten by accident
    again = runner.invoke(app, ["predict", *inputs, "--model", str(tiny_run["run"]), "--engine", "ray", "-o", str(out)])
    assert again.exit_code == 1 and "--resume" in again.output


@pytest.mark.slow  # a local Ray cluster: seconds to start
def test_predict_dataset_over_bytes_keeps_columns_and_writes_jsonl(tiny_run, tmp_path):
    """The API over a user's Ray Dataset (bytes + path + own columns), and JSONL shards equal predict's JSONL."""
    from liverscan.serving import predict_dataset, run_ray_predict

    paths = list(expand_inputs(_inputs(tiny_run, tmp_path)))[::3]
    clf = Classifier.load(tiny_run["run"], runtime="keras")
    expected = clf.predict(paths)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        items = [
            {"path": p, "bytes": Path(p).read_bytes() if Path(p).is_file() else None, "patient": f"p{k % 3}", "i": k}
            for k, p in enumerate(paths)
        ]
        ds = ray.data.from_items(items)
        rows = predict_dataset(ds, tiny_run["run"], num_workers=1, rows_per_batch=8, runtime="keras").take_all()
        rows.sort(key=lambda r: r["i"])  # actors may finish batches out of order
        assert [r["patient"] for r in rows] == [it["patient"] for it in items]
        assert "bytes" not in rows[0]
        assert [r["predicted_class"] for r in rows] == [r.predicted_class for r in expected]
        assert all(abs(r["p_tumor"] - e.probabilities["tumor"]) <= 1e-5 for r, e in zip(rows, expected) if e.ok)
        assert [bool(r["error"]) for r in rows] == [not e.ok for e in expected]

        out = tmp_path / "jsonl"
        summary = run_ray_predict(
            paths, out, tiny_run["run"], shard_format="jsonl", shard_size=5, num_workers=1, runtime="keras"
        )
        assert summary.records == len(paths) and summary.shards == -(-len(paths) // 5)
        lines = [json.loads(x) for s in shard_files(out) for x in s.read_text().splitlines()]
        assert [x["index"] for x in lines] == list(range(len(paths)))
        for line, rec in zip(lines, expected):
            line.pop("index")
            want = rec.to_dict()
            assert line.keys() == want.keys()
            assert line["error"] == want["error"] and line["predicted_class"] == want["predicted_class"]
    finally:
        ray.shutdown()


def test_output_folder_is_checked_before_any_work(tmp_path):
    """Resume needs the same inputs, model files, options and format; a used folder needs --resume or --overwrite."""
    plan = {
        "inputs": 3,
        "inputs_sha256": "a",
        "model": "/m",
        "model_sha256": "m1",
        "options": {"runtime": "auto", "ood": True},
        "shard_format": "parquet",
        "liverscan_version": "x",
    }
    out = tmp_path / "out"
    with pytest.raises(Exception, match="nothing to resume"):
        prepare_output(out, plan, resume=True, overwrite=False)
    assert prepare_output(out, plan, resume=False, overwrite=False) == set()
    assert not out.exists(), "checking writes nothing"
    assert _start_output(out, plan, resume=False) is None
    assert json.loads((out / RUN_FILE).read_text()) == plan
    assert prepare_output(out, plan, resume=False, overwrite=False) == set(), "a run that never wrote a shard"
    (out / ".part-0000000000-0000000001.parquet.x.tmp").write_bytes(b"cut")
    (out / "notes.txt").write_text("the user's own file")
    (out / "part-0000000000-0000000001.parquet").write_bytes(b"old records")
    with pytest.raises(Exception, match="--resume to finish it or --overwrite"):
        prepare_output(out, plan, resume=False, overwrite=False)
    for changed, message in (
        ({"inputs": 4, "inputs_sha256": "b"}, r"input list differs .*\(3 then, 4 now\)"),
        ({"model": "/other"}, "model differs"),
        ({"model_sha256": "m2"}, "model's content differs from the stopped run's;"),
        (
            {"options": {"runtime": "onnx", "ood": True}},
            r"set of prediction options differs.*'runtime': 'auto'.*'onnx'",
        ),
    ):
        with pytest.raises(Exception, match=message):
            prepare_output(out, {**plan, **changed}, resume=True, overwrite=False)
    with pytest.raises(Exception, match="unreadable shard"):
        prepare_output(out, plan, resume=True, overwrite=False)
    previous = _start_output(out, plan, resume=False)  # --overwrite: old records kept aside until the run ends
    assert not list(out.glob(".part-*")), "a shard cut by a kill is removed"
    assert (previous / "part-0000000000-0000000001.parquet").read_bytes() == b"old records"
    assert sorted(p.name for p in out.iterdir()) == [".previous", RUN_FILE, "notes.txt"], "only liverscan's files move"
    (out / "part-0000000000-0000000001.jsonl").write_text('{"index": 0}\n{"index": 1}\n')
    with pytest.raises(Exception, match="jsonl shard in a parquet run"):
        prepare_output(out, plan, resume=True, overwrite=False)


def test_overwrite_removes_only_what_liverscan_put_in_previous(tmp_path):
    """--overwrite keeps the replaced shards in .previous/ and then removes them: a .previous/ holding anything
    else (or a link to a folder) is refused before any work, and files merely named part-* are the user's."""
    from liverscan.serving.distributed import PREVIOUS_DIR, _drop_previous

    plan = {
        "inputs": 1,
        "inputs_sha256": "a",
        "model": "/m",
        "model_sha256": "m",
        "options": {},
        "shard_format": "jsonl",
    }
    out = tmp_path / "out"
    _start_output(out, plan, resume=False)
    shard = out / "part-0000000000-0000000000.jsonl"
    shard.write_text('{"index": 0}\n')
    (out / "part-list.txt").write_text("the user's list")
    mine = out / PREVIOUS_DIR
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's own")
    with pytest.raises(Exception, match=rf"{mine / 'keep.txt'}: not written by liverscan; --overwrite keeps"):
        prepare_output(out, plan, resume=False, overwrite=True)
    (mine / "keep.txt").unlink()
    mine.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-0000000000-0000000000.jsonl").write_text("the user's records")
    mine.symlink_to(elsewhere)
    with pytest.raises(Exception, match=rf"{mine}: not written by liverscan"):
        prepare_output(out, plan, resume=False, overwrite=True)
    mine.unlink()
    (out / PREVIOUS_DIR).mkdir()
    (out / PREVIOUS_DIR / "part-0000000000-0000000009.jsonl").write_text("a failed overwrite's old records")
    assert prepare_output(out, plan, resume=False, overwrite=True) == set(), "liverscan's own .previous/"
    previous = _start_output(out, plan, resume=False)
    assert previous is not None and sorted(p.name for p in previous.iterdir()) == [shard.name]
    assert sorted(p.name for p in out.iterdir()) == [PREVIOUS_DIR, RUN_FILE, "part-list.txt"]
    _drop_previous(previous)  # the new run finished
    assert not previous.exists() and (out / "part-list.txt").read_text() == "the user's list"
    assert (elsewhere / "part-0000000000-0000000000.jsonl").read_text() == "the user's records"


@pytest.mark.slow  # two local Ray runs
def test_ray_overwrite_keeps_the_users_previous_folder_and_part_files(tiny_run, tmp_path):
    """Through the CLI: --overwrite refuses a .previous/ of the user's (naming the file, before Ray starts), and
    a rerun replaces only liverscan's records, leaving a file merely named part-* where it was."""
    from cli_helpers import one_line_error, run_cli

    out = tmp_path / "out"
    args = ["predict", str(tiny_run["data"] / "tumor"), "--model", str(tiny_run["run"]), "--engine", "ray"]
    args += ["-o", str(out), "--num-workers", "1", "--runtime", "keras", "--shard-format", "jsonl", "-q"]
    first = run_cli(*args, timeout=300)
    assert first.returncode == 0, first.stderr
    before = _by_index(out)
    (out / ".previous").mkdir()
    (out / ".previous" / "keep.txt").write_text("the user's own")
    one_line_error(run_cli(*args, "--overwrite", timeout=120), ".previous/keep.txt: not written by liverscan")
    assert (out / ".previous" / "keep.txt").read_text() == "the user's own"
    shutil.move(out / ".previous" / "keep.txt", tmp_path / "keep.txt")
    (out / "part-list.txt").write_text("the user's list")
    again = run_cli(*args, "--overwrite", timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-0")) == [
        ".lock",
        RUN_FILE,
        SUMMARY_FILE,
        "part-list.txt",
    ]
    assert (out / "part-list.txt").read_text() == "the user's list"
    assert _by_index(out).keys() == before.keys()


@pytest.mark.slow
def test_actor_reads_relative_paths_from_the_driver_folder_and_needs_the_output(tiny_run, tmp_path, monkeypatch):
    """Workers start elsewhere: relative paths are read from the driver's folder and recorded as given."""
    import pyarrow as pa

    from liverscan.serving.distributed import BatchPredictor

    options = PredictOptions(runtime="keras", batch_size=8, workers=1)
    with pytest.raises(Exception, match="not visible on this worker"):
        BatchPredictor(str(tiny_run["run"]), options, shard_dir=str(tmp_path / "nowhere"))
    predictor = BatchPredictor(str(tiny_run["run"]), options, base_dir=str(tiny_run["data"]))
    monkeypatch.chdir(tmp_path)  # the worker's own folder
    table = predictor(pa.table({"index": [0, 1], "path": ["normal/normal_00.png", "normal/none.png"]}))
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == ["normal/normal_00.png", "normal/none.png"]
    assert rows[0]["error"] is None and rows[0]["predicted_class"] is not None
    assert rows[1]["error"] == "file not found"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--explain", "heat"], "--explain cannot be used with --engine ray"),
        (["--group-by", "folder"], "--group-by cannot be used with --engine ray"),
        (["--format", "csv"], "--format cannot be used"),
        (["--decode", "processes", "-o", "out"], "--decode processes cannot be used"),
        ([], "needs --output FOLDER"),
    ],
)
def test_ray_engine_refuses_what_it_cannot_do(tiny_run, extra, message):
    result = runner.invoke(app, ["predict", str(tiny_run["data"]), "--engine", "ray", *extra])
    assert result.exit_code == 2 and message in result.output  # a usage error


def test_ray_output_must_be_a_folder_and_resume_needs_ray(tiny_run, tmp_path):
    r = runner.invoke(app, ["predict", str(tiny_run["data"]), "--engine", "ray", "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "folder of shards" in r.output
    r = runner.invoke(app, ["predict", str(tiny_run["data"]), "--resume-shards", "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "--engine ray" in r.output


def _session_alive(sid: int) -> list[int]:
    """Processes of session ``sid`` still running (zombies excluded): the run and every Ray process it started."""
    alive = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(proc.name))
    return alive


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_shards(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.monotonic() + 240
    while len(shard_files(out) if out.is_dir() else []) < n:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.2)


def _wait_until_gone(sid: int) -> None:
    deadline = time.monotonic() + 60
    while _session_alive(sid):
        assert time.monotonic() < deadline, "Ray processes outlived the run"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stopped_and_killed_ray_runs_resume_without_duplicates_or_gaps(tiny_run, tmp_path):
    """SIGTERM stops cleanly (143, shards kept); SIGKILL of the whole run midway loses only what was in flight;
    --resume predicts only inputs without a record; the union equals single-process predict."""
    folder = tmp_path / "many"
    folder.mkdir()
    sources = sorted((tiny_run["data"]).rglob("*.png"))
    for k in range(160):
        shutil.copy(sources[k % len(sources)], folder / f"img{k:03d}.png")
    (folder / "img_bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "liverscan", "predict", str(folder), "--model", str(tiny_run["run"])]
    cmd += ["--engine", "ray", "-o", str(out), "--shard-size", "4", "--num-workers", "1", "--runtime", "keras"]
    total = len(list(expand_inputs([str(folder)])))

    proc = _start(cmd)
    try:
        _wait_for_shards(proc, out, 1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if _session_alive(proc.pid) else None
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM; finished shards are kept" in err.replace("\n", " ")
    _wait_until_gone(proc.pid)

    proc = _start(cmd + ["--resume-shards"])
    try:
        _wait_for_shards(proc, out, len(shard_files(out)) + 3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_until_gone(proc.pid)  # no worker may add a shard after this point
    before = _by_index(out)
    assert 3 * 4 <= len(before) < total, "killed midway"
    assert not (out / SUMMARY_FILE).exists()

    done = subprocess.run(cmd + ["--resume-shards"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 4, done.stderr  # the broken file is a record, not a stop
    assert f"{total - len(before)} of {total} inputs by this run" in done.stderr.replace("\n", "")
    after = _by_index(out)
    for k, row in before.items():
        assert after[k] == row, "resume never rewrites a finished shard"
    assert not list(out.glob(".part-*"))
    clf = Classifier.load(tiny_run["run"], runtime="keras")
    _assert_same(after, clf.predict(list(expand_inputs([str(folder)]))), clf)


FILTER_CHILD = """
import os, sys
from liverscan.serving.distributed import RAY_NOISE, _without_lines
with _without_lines(RAY_NOISE):
    os.write(2, b"[E core_worker.cc] Actor X has constructor arguments in the object store and max_restarts > 0. See\\n")
    os.write(2, b"[E core_worker.cc] a real error\\n")
    print("liverscan line", file=sys.stderr, flush=True)
    os.write(2, b"no newline at the end")
print(" - after", file=sys.stderr, flush=True)
"""


def test_ray_noise_filter_drops_only_the_known_warning():
    """What reaches file descriptor 2 during a Ray run (the C++ core writes there directly) passes in order,
    real errors included; only Ray's false alarm about actor constructor arguments is dropped."""
    r = subprocess.run([sys.executable, "-c", FILTER_CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "[E core_worker.cc] a real error\nliverscan line\nno newline at the end - after\n"


@pytest.mark.slow  # a local Ray: seconds to start
def test_small_ray_run_prints_no_ray_warnings(tmp_path):
    """Two images with the default 2 workers (one shard): no C++ actor warning, no UserWarning about actors
    without work (the pool never has more actors than shards), only liverscan's lines."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("Normal/xu-92.jpg", "Malignant/xu-347.jpg"):
        shutil.copy(Path("examples/images") / name, folder / Path(name).name)
    r = subprocess.run(
        [sys.executable, "-m", "liverscan", "predict", str(folder), "--engine", "ray", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stderr.split())
    assert "2 of 2 images predicted" in flat and "2 inputs, 1 workers" in flat, r.stderr
    for noise in ("constructor arguments", "max_restarts", "Warning", "warnings.warn", "concurrent actors"):
        assert noise not in r.stderr, (noise, r.stderr)
