"""Output files: an unwritable or full output directory is a one-line error, whole records are kept, existing
results are never overwritten unasked, and two writers never share one output.

A full or read-only output directory is a small tmpfs where the machine allows mounting one, otherwise an
``OSError`` injected at the write call.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import OsProxy, assert_whole_records, csv_rows, one_line_error, runner, tmpfs
from conftest import class_image
from liverscan.faces.cli import app

EXAMPLE = "examples/images/Normal/xu-92.jpg"


@pytest.mark.parametrize("command", ["prepare", "evaluate", "report", "predict"])
def test_read_only_or_full_output_directory_is_one_line(probe_run, tmp_path, monkeypatch, command):
    target = tmp_path / "ro"
    args = {
        "prepare": ["prepare", str(probe_run["data"]), "-o", str(target / "prep")],
        "evaluate": ["evaluate", str(probe_run["run"]), "--out", str(target / "eval"), "--set", "eval.bootstrap=0"],
        "report": ["report", "--compare", str(probe_run["run"]), str(probe_run["run"]), "--out", str(target / "cmp")],
        "predict": ["predict", EXAMPLE, "-o", str(target / "x.csv")],
    }[command]
    with tmpfs(target, read_only=True) as mounted:
        if not mounted:  # no tmpfs here: liverscan's own file creation fails as on a read-only file system
            import tempfile

            import liverscan.core.fileio as fileio
            import liverscan.serving.outputs as outputs

            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", str(target))

            monkeypatch.setattr(fileio, "tempfile", OsProxy(tempfile, mkstemp=refuse))
            monkeypatch.setattr(outputs, "os", OsProxy(os, open=refuse))
        one_line_error(runner.invoke(app, args), "Read-only file system")
        monkeypatch.undo()
    assert not any(probe_run["run"].glob("eval-*/.*tmp"))


def test_full_disk_keeps_whole_records(tmp_path, monkeypatch):
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
        r = runner.invoke(app, ["predict", str(folder), "-o", str(out), "-q", "--batch-size", "4"])
        partial = out.with_name("out.csv.partial")
        text = one_line_error(r, f"{partial}: No space left on device")  # the file being written, named
        n = assert_whole_records(partial)
        assert 0 < n < 40 and f"{n} records so far kept" in text


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_existing_output_needs_overwrite_and_concurrent_writers_are_refused(tmp_path):
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
        assert holder.stdout.readline().strip() == "locked"  # its readiness line (EOF, not a hang, if it died)
        r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite"])
        said = one_line_error(r, "another liverscan process is writing")
        assert "kept in" not in said  # the .partial is the other run's: this one kept nothing there
    finally:
        holder.kill()
        holder.wait()
    assert out.read_text() == "precious results\n"
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "-o", str(out), "--overwrite", "-q"])
    assert r.exit_code == 0 and len(csv_rows(out)) == 2


DEV_FULL = Path("/dev/full")


def _on_dev_full(module, monkeypatch) -> None:
    """Files ``module`` opens for writing go to /dev/full, where every write fails with a real ENOSPC."""
    import builtins

    def open_full(file, mode="r", *args, **kwargs):
        return (
            builtins.open(DEV_FULL, mode, *args, **kwargs)
            if "w" in mode
            else builtins.open(file, mode, *args, **kwargs)
        )

    monkeypatch.setattr(module, "open", open_full, raising=False)


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")
def test_atomic_write_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import liverscan.core.fileio as fileio

    target = tmp_path / "out" / "metrics.json"
    _on_dev_full(fileio, monkeypatch)
    with pytest.raises(OSError) as info:
        fileio.write_json_atomic(target, {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert str(info.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{target}'"
    assert list(target.parent.iterdir()) == []  # no temporary file left behind
    # a writer that takes a file name (Keras, NumPy) gets the same: the file named, the temporary name removed
    with pytest.raises(OSError) as info, fileio.atomic_path(target, suffix=".tmp.npy") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.npy")
        raise OSError(errno.ENOSPC, "No space left on device")  # as np.save raises it: no file name
    assert info.value.filename == str(target) and list(target.parent.iterdir()) == []


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")
def test_full_disk_while_preparing_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import liverscan.core.fileio as fileio

    src = tmp_path / "src"
    for k in range(4):
        (src / ("normal" if k % 2 else "tumor")).mkdir(parents=True, exist_ok=True)
        class_image(k % 2, k).save(src / ("normal" if k % 2 else "tumor") / f"{k}.png")
    out = tmp_path / "prep"
    _on_dev_full(fileio, monkeypatch)
    r = runner.invoke(app, ["prepare", str(src), "-o", str(out), "-q", "--no-cache"])
    text = one_line_error(r, "No space left on device")
    assert f"{out}/" in text and ": No space left on device" in text  # e.g. "prep/manifest.csv: No space ..."
    assert not list(out.glob(".*tmp*"))


# ------------------------------------------------------------------ inputs are never outputs, nor overwritten


def test_a_file_name_at_the_file_systems_limit_keeps_its_record_and_overlay(tmp_path):
    """A legal 250-byte file name: its overlay's generated name still fits the file system, and the record is kept
    (the default batch: a failure would have lost every record)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    long_name = scans / ("x" * 246 + ".jpg")
    long_name.write_bytes(Path(EXAMPLE).read_bytes())
    out, cams = tmp_path / "r.csv", tmp_path / "cams"
    r = runner.invoke(app, ["predict", str(scans), "-o", str(out), "--explain", str(cams), "--no-lesion", "-q"])
    assert r.exit_code == 0, r.output
    (row,) = [dict(zip(csv_rows(out)[0], row)) for row in csv_rows(out)[1:]]
    assert row["path"] == str(long_name) and row["predicted_class"] and not row["error"]
    overlay = Path(row["explanation"])
    assert overlay.is_file() and overlay.parent == cams and len(overlay.name.encode()) <= 255


def test_an_overlay_that_cannot_be_written_is_that_records_error_not_the_runs(tmp_path, monkeypatch):
    """One overlay fails to write (a real OSError from the writer): that record says so and keeps its answer; the
    other images' records and overlays are written and the run ends with exit 4."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (scans / name).write_bytes(Path(EXAMPLE).read_bytes())
    import liverscan.core.fileio as fileio

    original = fileio.write_bytes_atomic

    def refuse_a(path, data):
        if Path(path).name.startswith("a-"):
            raise OSError(errno.EACCES, "Permission denied", str(path))
        original(path, data)

    monkeypatch.setattr(fileio, "write_bytes_atomic", refuse_a)
    out = tmp_path / "r.csv"
    r = runner.invoke(app, ["predict", str(scans), "-o", str(out), "--explain", str(tmp_path / "cams"), "--no-lesion"])
    assert r.exit_code == 4, r.output
    rows = {Path(row[0]).name: dict(zip(csv_rows(out)[0], row)) for row in csv_rows(out)[1:]}
    assert "overlay" in rows["a.jpg"]["error"] and "Permission denied" in rows["a.jpg"]["error"]
    assert rows["a.jpg"]["predicted_class"] and rows["a.jpg"]["needs_review"] == "true"
    assert not rows["b.jpg"]["error"] and Path(rows["b.jpg"]["explanation"]).is_file()


def test_an_input_is_never_an_output(tmp_path):
    class_image(0, 1).save(tmp_path / "a.png")
    listing = tmp_path / "list.csv"
    listing.write_text("path\na.png\n")
    before = listing.read_bytes()
    for flag in ("-o", "--study-output"):
        r = runner.invoke(app, ["predict", str(listing), flag, str(listing), "--overwrite", "--no-lesion"])
        one_line_error(r, "is an input of this run", code=2)
        assert listing.read_bytes() == before


def test_overlay_and_mask_folders_of_an_earlier_run_are_not_replaced_unasked(tmp_path):
    """A second run into the same --explain / --lesion-masks folder is refused (the first run's records point at
    those pictures); with --overwrite it goes ahead."""
    (tmp_path / "a.jpg").write_bytes(Path(EXAMPLE).read_bytes())  # a real scan: in distribution, so it has a mask
    cams, masks = tmp_path / "cams", tmp_path / "masks"
    first = ["predict", str(tmp_path / "a.jpg"), "--explain", str(cams), "--lesion-masks", str(masks), "-q"]
    assert runner.invoke(app, first).exit_code == 0
    written = {p: p.stat().st_mtime_ns for p in [*cams.iterdir(), *masks.iterdir()]}
    assert written
    for flag, folder in (("--explain", cams), ("--lesion-masks", masks)):
        r = runner.invoke(app, ["predict", str(tmp_path / "a.jpg"), flag, str(folder), "-q"])
        one_line_error(r, f"choose an empty folder for {flag} or pass --overwrite")
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert runner.invoke(app, [*first, "--overwrite"]).exit_code == 0


def test_output_folders_inside_an_input_folder_are_refused(tmp_path):
    """Overlays or masks written into the folder being predicted would be read as scans by the next run."""
    scans = tmp_path / "scans"
    scans.mkdir()
    class_image(0, 1).save(scans / "a.png")
    for flag in ("--explain", "--lesion-masks"):
        r = runner.invoke(app, ["predict", str(scans), flag, str(scans / "out"), "-q"])
        one_line_error(r, "is inside the input folder", code=2)
        assert not (scans / "out").exists() and [p.name for p in scans.iterdir()] == ["a.png"]


def test_an_existing_file_given_as_a_folder_is_one_clear_line(tmp_path):
    class_image(0, 1).save(tmp_path / "a.png")
    existing = tmp_path / "existing.csv"
    existing.write_text("keep me\n")
    for flag in ("--lesion-masks", "--explain", "--dicom-seg"):
        r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), flag, str(existing)])
        one_line_error(r, f"existing.csv: exists and is not a folder; {flag} needs a folder", code=2)
    assert existing.read_text() == "keep me\n"
