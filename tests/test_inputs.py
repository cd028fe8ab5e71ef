"""Inputs of predict: what is left out is counted with its reason, what cannot be read never blocks, and bad
inputs or options fail before any work or output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import one_line_error, run_cli, runner
from conftest import class_image
from liverscan.faces.cli import app


def test_batch_size_zero_and_negative_are_refused_at_once(tmp_path):
    for bad in ("0", "-5"):
        r = runner.invoke(app, ["predict", str(tmp_path), "--batch-size", bad])
        assert r.exit_code == 2 and "batch-size" in r.output and "Traceback" not in r.output


def test_fifo_named_or_in_a_folder_never_blocks(tmp_path):
    """In a child process with a time limit: a FIFO that blocked would otherwise hang the test run."""
    folder = tmp_path / "in"
    folder.mkdir()
    class_image(1, 2).save(folder / "good.png")
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/urandom", folder / "random.png")
    r = run_cli("predict", str(folder / "pipe.png"), str(folder / "random.png"), "--format", "jsonl", timeout=120)
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 4, r.stderr  # some files failed
    assert [rec["error"] for rec in records] == [
        "not a regular file (a FIFO (named pipe))",
        "not a regular file (a character device)",
    ]
    r = run_cli("predict", str(folder), "--format", "csv", timeout=120)  # walked: counted, not opened
    assert r.returncode == 0, r.stderr
    note = " ".join(r.stderr.split())
    assert (
        "2 files in the given inputs left out" in note and "not a regular file (a FIFO (named pipe)) (pipe.png)" in note
    )
    assert "a character device) (random.png)" in note and len(r.stdout.strip().splitlines()) == 2


def test_left_out_files_are_counted_with_their_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    class_image(0, 1).save(folder / "good.png")
    class_image(0, 2).save(folder / "cine.gif")
    Image.new("RGB", (8, 8)).save(folder / "frame.webp")
    class_image(0, 3).save(folder / ".hidden.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    r = runner.invoke(app, ["predict", str(folder), "--format", "csv"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 2, r.output
    note = " ".join(r.stderr.split())
    assert "4 files in the given inputs left out" in note
    assert "2 not a supported file type (cine.gif, frame.webp)" in note
    assert "1 hidden (.hidden.png)" in note and "1 broken symbolic link (dangling.png)" in note
    r = runner.invoke(app, ["predict", str(folder / "dangling.png"), "--format", "jsonl"])
    assert r.exit_code == 4 and json.loads(r.stdout)["error"] == "broken symbolic link"

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


def test_misspelt_dicom_tag_is_refused_before_work(tmp_path):
    pytest.importorskip("pydicom")
    class_image(0, 1).save(tmp_path / "a.png")
    one_line_error(
        runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--dicom-tags", "PatientID,StudyDate,PatientNme"]),
        "did you mean PatientName?",
        code=2,  # a usage error: a bad --dicom-tags value
    )


def test_bad_path_lists_and_groupings_fail_before_any_output(tmp_path):
    class_image(0, 1).save(tmp_path / "a.png")
    latin1 = tmp_path / "list.csv"
    latin1.write_bytes("path,patient\na.png,Ren\xe9\n".encode("latin-1"))
    out = tmp_path / "out.csv"
    one_line_error(runner.invoke(app, ["predict", str(latin1), "-o", str(out)]), "not a readable CSV path list")
    good = tmp_path / "good.csv"
    good.write_text("path,patient\na.png,p1\n")
    one_line_error(
        runner.invoke(app, ["predict", str(good), "-o", str(out), "--group-by", "column:study"]),
        "no column 'study'",
        code=2,  # a usage error: the option asks for what the list does not have
    )
    one_line_error(
        runner.invoke(app, ["predict", str(good), "-o", str(out), "--study-output", str(out)]),
        "different files",
        code=2,
    )
    (tmp_path / "none").mkdir()
    one_line_error(runner.invoke(app, ["predict", str(tmp_path / "none"), "-o", str(out)]), "no input images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "good.csv", "list.csv", "none"]  # no output


def test_glob_through_link_loops_predicts_each_image_once(tmp_path):
    """In a child process with a time limit: before, two links back to their folder made the glob endless."""
    lab = tmp_path / "L"
    for k, cls in enumerate(("normal", "tumor")):
        (lab / cls).mkdir(parents=True)
        class_image(k, k).save(lab / cls / f"{cls}.jpg")
    os.symlink(".", lab / "normal" / "a")
    os.symlink(".", lab / "normal" / "b")
    r = run_cli("predict", f"{lab}/**/*.jpg", "--format", "csv", timeout=120)
    assert r.returncode == 0, r.stderr
    paths = [line.split(",")[0] for line in r.stdout.splitlines()[1:]]
    assert paths == [f"{lab}/normal/normal.jpg", f"{lab}/tumor/tumor.jpg"]
    note = " ".join(r.stderr.split())
    assert "2 files in the given inputs left out: 2 link to a folder containing it (a loop, not followed) (a, b)" in (
        note
    )


def test_unreadable_sub_folder_is_in_the_note(tmp_path, monkeypatch):
    from cli_helpers import OsProxy
    from liverscan.core import files

    folder = tmp_path / "in"
    (folder / "closed").mkdir(parents=True)
    class_image(0, 1).save(folder / "good.png")
    class_image(0, 2).save(folder / "closed" / "hidden-by-permissions.png")
    os.chmod(folder / "closed", 0)
    try:
        if os.access(folder / "closed", os.R_OK):  # as root: the walk's listing of the folder is refused instead

            def scandir(path):
                if Path(path) == folder / "closed":
                    raise PermissionError(13, "Permission denied", str(path))
                return os.scandir(path)

            monkeypatch.setattr(files, "os", OsProxy(os, scandir=scandir))
        r = runner.invoke(app, ["predict", str(folder), "--format", "csv"])
    finally:
        os.chmod(folder / "closed", 0o755)
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 2, r.output
    assert "1 unreadable folder: permission denied (closed)" in " ".join(r.stderr.split())


def test_multi_page_tiff_pages_are_frames(tmp_path):
    from liverscan.serving.inputs import load_input

    pages = [class_image(k % 3, k) for k in range(3)]
    pages[0].save(tmp_path / "cine.tif", save_all=True, append_images=pages[1:])
    got = load_input(str(tmp_path / "cine.tif"), 32)
    assert [rec.frame for rec, _ in got] == [1, 2, 3] and all(rec.ok for rec, _ in got)
    assert [rec.source_size for rec, _ in got] == [(48, 48)] * 3
    means = [float(arr.mean()) for _, arr in got]
    assert means[0] < means[2] < means[1]  # dark, bright, mid-grey: each page read, in order
    pages[0].save(tmp_path / "one.tif")
    assert [rec.frame for rec, _ in load_input(str(tmp_path / "one.tif"), 32)] == [None]
    r = runner.invoke(app, ["predict", str(tmp_path / "cine.tif"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert [line.split(",")[1] for line in r.stdout.splitlines()[1:]] == ["1", "2", "3"]


def test_a_file_given_twice_is_predicted_once_and_said(tmp_path):
    """``predict a.png a.png folder/`` (the folder holding a.png): one record for a.png, in its study once, and a
    note saying it was listed more than once."""
    folder = tmp_path / "in"
    folder.mkdir()
    class_image(0, 1).save(folder / "a.png")
    class_image(1, 2).save(folder / "b.png")
    a = str(folder / "a.png")
    r = runner.invoke(
        app, ["predict", a, a, str(folder), "./" + os.path.relpath(a), "-f", "jsonl", "--group-by", "folder"]
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(Path(rec["path"]).name for rec in records) == ["a.png", "b.png"]
    note = " ".join(r.stderr.split())
    assert "3 listed more than once (predicted once) (a.png, a.png, ...)" in note
    assert "1 study by folder" in note  # one study of two frames, and "1 study", not "1 studies"


def test_a_malformed_path_list_says_where_and_what(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text('path,patient\n"a.png,p1\n')
    r = runner.invoke(app, ["predict", str(listing), "-f", "csv", "--no-lesion"])
    one_line_error(r, "list.csv: not a readable CSV path list (line 2: unterminated quote)")
