"""What commands show in the terminal: names and paths literally (no markup eaten), and no library chatter."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cli_helpers import csv_rows, run_cli, runner
from conftest import class_image
from liverscan.faces.cli import app

NOISE = ("absl", "oneDNN", "cuda", "XNNPACK", "INFO:", "TensorSpec", "WARNING")


def test_brackets_in_help_names_and_paths_are_shown_literally(tmp_path):
    assert "liverscan[app]" in runner.invoke(app, ["app", "--help"], terminal_width=200).output
    folder = tmp_path / "[" / "sub]"  # the path holds '[/sub]'
    folder.mkdir(parents=True)
    class_image(0, 1).save(folder / "case[i]01.png")
    (folder / "broken[b].png").write_bytes(b"not an image")
    r = runner.invoke(app, ["predict", str(folder), "-o", str(folder / "out[x].csv"), "-q"], terminal_width=400)
    assert r.exit_code == 4 and "Traceback" not in r.output, r.output  # some files failed
    assert "broken[b].png" in r.stderr and "out[x].csv" in r.stderr
    assert [row[0] for row in csv_rows(folder / "out[x].csv")[1:]] == [
        str(folder / "broken[b].png"),
        str(folder / "case[i]01.png"),
    ]


def test_no_library_chatter_with_the_default_model():
    """A child process: what the libraries print to the terminal's file descriptors shows only there."""
    r = run_cli("predict", "examples/images", "-q")
    assert r.returncode == 0, r.stderr
    for noise in NOISE:
        assert noise not in r.stderr + r.stdout, (noise, r.stderr)


@pytest.mark.slow
def test_no_library_chatter_with_a_keras_model(probe_run):
    """The Keras runtime imports TensorFlow in the child process (seconds): the slow tier."""
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    r = run_cli("predict", image, "--model", str(probe_run["run"]), "-q")
    assert r.returncode == 0, r.stderr
    for noise in NOISE:
        assert noise not in r.stderr + r.stdout, (noise, r.stderr)


@pytest.mark.slow
def test_export_prints_one_line(probe_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    r = run_cli("export", str(run), timeout=600, env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    assert "TensorSpec" not in r.stdout + r.stderr and len((r.stdout + r.stderr).strip().splitlines()) == 1


def test_prediction_table_in_80_columns_shows_file_names_whole(tmp_path):
    """A child process in an 80-column terminal: the folders of a long path are shortened from the left
    ("…/image/scan-0012.jpg"), never the file name, and no line is wider than the terminal."""
    folder = tmp_path / "a-rather-long-archive-folder" / "2024-ultrasound-export" / "image"
    folder.mkdir(parents=True)
    names = ["scan-0012.jpg", "scan-0013-left-lobe.jpg"]
    for name in names:
        shutil.copy("examples/images/Normal/xu-92.jpg", folder / name)
    r = run_cli("predict", str(folder), env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, r.stdout
    for name in names:
        assert any(f"…/image/{name}" in line for line in lines), (name, r.stdout)
    wide = run_cli("predict", str(folder), env={**os.environ, "COLUMNS": "300"})
    assert all(str(folder / name) in wide.stdout for name in names), wide.stdout  # room: the whole path


def test_fit_path_keeps_the_name_and_the_nearest_folders():
    from liverscan.faces.terminal import fit_path

    path = "/data/xu-liver/Benign/image/12.jpg"
    assert fit_path(path, 80) == path
    assert fit_path(path, 21) == "…/Benign/image/12.jpg"  # as many folders as fit
    assert fit_path(path, 20) == fit_path(path, 14) == "…/image/12.jpg"
    assert fit_path(path, 3) == "…/12.jpg"  # narrower than the name: the name stays whole
    assert fit_path(path, 3, folders=1) == "…/image/12.jpg"
    assert fit_path("12.jpg", 2) == "12.jpg"
    assert fit_path("C:\\scans\\image\\12.jpg", 16) == "…\\image\\12.jpg"


def test_an_80_column_table_cuts_no_header_and_keeps_each_lesion_cell_whole():
    """At 80 columns no header is cut ("decis…", "confiden…") and a lesion cell never wraps over lines; the
    per-class probabilities give way to the confidence beside the decision (the output files keep them)."""
    from rich.console import Console

    from liverscan.core.lesion import LesionRule
    from liverscan.faces.terminal import lesion_cell, predictions_table
    from liverscan.serving import Prediction
    from liverscan.serving.lesion import find_lesion

    prob = np.zeros((32, 32), np.float32)
    prob[5:12, 20:28] = 0.97
    found = find_lesion(prob, 640, 480, LesionRule())
    records = []
    for k in range(3):
        rec = Prediction(f"/archive/2024/export/patient-{k:04d}/frame-{k:03d}.jpg", "tumor", 0.92)
        rec.probabilities, rec.decision, rec.lesion = {"normal": 0.08, "tumor": 0.92}, "tumor", found
        records.append(rec)
    console = Console(width=80, record=True)
    console.print(predictions_table(records, ["normal", "tumor"], 3, width=80))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "file" in line)
    assert "…" not in header and "decision" in header and "lesion" in header and "review" in header
    rows = [line for line in lines if "frame-" in line]
    assert len(rows) == 3 and all(lesion_cell(found) in row and "tumor 0.920" in row for row in rows)
    assert max(len(line) for line in lines) <= 80
    wide = Console(width=200, record=True)
    wide.print(predictions_table(records, ["normal", "tumor"], 3, width=200))
    text = wide.export_text()
    assert "p(normal)" in text and "confidence" in text
