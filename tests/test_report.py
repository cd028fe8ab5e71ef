from __future__ import annotations

import io
import json
import re
import shutil

import pytest
from rich.console import Console
from typer.testing import CliRunner

from liverscan.core.artifacts import METRICS_FILE
from liverscan.core.fileio import read_csv
from liverscan.evaluation import EvalMetrics, format_with_ci
from liverscan.evaluation.report import write_report
from liverscan.faces.cli import app
from liverscan.faces.terminal import print_evaluation

runner = CliRunner()
SECTIONS = ["Summary", "Dataset", "Training", "Results", "Calibration", "Operating point", "Published figures"]


@pytest.fixture(scope="module")
def evaluated_run(evaluated_tiny_run):
    """``tiny_run`` evaluated once on its test split with an operating point. Read-only: copy it to change it."""
    return evaluated_tiny_run["run"], evaluated_tiny_run["result"].out_dir.name  # shared with test_results


def _copy(evaluated_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run[0], run)
    return run, run / evaluated_run[1]


def test_report_has_every_section_and_is_self_contained(evaluated_run, tmp_path):
    run, _ = _copy(evaluated_run, tmp_path)
    html_path, md_path, _ = write_report(run)
    html = html_path.read_text()
    md = md_path.read_text()
    for s in SECTIONS:
        assert f"<h2>{s}" in html and f"## {s}" in md, s
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "Research use only" in html and "different dataset" in md
    assert "0.896" in md  # the paper's accuracy beside ours
    assert "| metric | argmax | operating point |" in md
    assert "fitted on validation" in md and "out of fold" not in md
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run / img).is_file()


def test_report_and_terminal_show_intervals_alike(evaluated_run, tmp_path):
    run, ev = _copy(evaluated_run, tmp_path)
    m = EvalMetrics.read(ev / METRICS_FILE)
    _, md_path, _ = write_report(run)
    md = md_path.read_text()
    buf = io.StringIO()
    print_evaluation(m, Console(file=buf, width=400, color_system=None))
    term = buf.getvalue()
    cells = [format_with_ci(s.value(k), s.ci(k)) for s in (m.argmax, m.tuned) for k in ("accuracy", "normal.recall")]
    assert any(m.argmax.ci(k) for k in ("accuracy", "normal.recall")), "no interval to compare"
    for cell in cells:
        assert cell in md and cell in term, cell
    intervals = re.findall(r"\d\.\d+–\d\.\d+", term)
    assert intervals and all(re.fullmatch(r"\d\.\d{3}–\d\.\d{3}", iv) for iv in intervals)
    assert not re.search(r"\[\d\.\d+–", term)


def test_cross_validated_temperature_is_described_as_nested(evaluated_run, tmp_path):
    run, ev = _copy(evaluated_run, tmp_path)
    raw = json.loads((ev / METRICS_FILE).read_text())
    raw["split"] = "cross-validation"
    (ev / METRICS_FILE).write_text(json.dumps(raw))
    _, md_path, _ = write_report(run, ev)
    md = md_path.read_text()
    assert "fitted nested, out of fold" in md and "fitted on validation" not in md


def test_report_of_older_metrics_without_later_sections(evaluated_run, tmp_path):
    run, ev = _copy(evaluated_run, tmp_path)
    raw = json.loads((ev / METRICS_FILE).read_text())
    old = {k: raw[k] for k in ("created", "model", "data", "split", "n", "classes", "argmax")}
    del old["argmax"]["n"], old["argmax"]["bootstrap"]["resampled"]
    (ev / METRICS_FILE).write_text(json.dumps(old))
    _, md_path, sections = write_report(run, ev)
    md = md_path.read_text()
    assert [s.title.split(" (")[0] for s in sections] == SECTIONS[:-1] + ["Published figures beside ours"]
    assert "| metric | argmax |\n" in md and "resamples of images" in md and "After temperature" not in md


def test_report_without_evaluation_says_how(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    shutil.rmtree(run / "eval-test", ignore_errors=True)
    _, md_path, _ = write_report(run)
    assert "liverscan evaluate" in md_path.read_text()


def test_cli_report_and_compare(evaluated_run, tiny_run, tmp_path):
    a, _ = _copy(evaluated_run, tmp_path)
    b = tmp_path / "b"
    shutil.copytree(tiny_run["run"], b)
    shutil.rmtree(b / "eval-test", ignore_errors=True)
    r = runner.invoke(app, ["report", str(a)])
    assert r.exit_code == 0, r.output
    assert (a / "report.html").is_file() and "Results" in r.stdout
    r = runner.invoke(app, ["report", "--compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    # each evaluated run is followed by its linear-probe baseline on the same images
    assert [(row["run"], row["model"].split(":")[0]) for row in rows] == [
        (str(a), "paper head (mlp)"),
        (str(a), "baseline"),
        (str(b), "paper head (mlp)"),
    ]
    m = EvalMetrics.read(a / evaluated_run[1] / METRICS_FILE)
    assert rows[0]["accuracy (95% CI)"] == format_with_ci(m.argmax.accuracy, m.argmax.ci("accuracy"))
    assert rows[1]["accuracy (95% CI)"] != "-"
    assert rows[2]["accuracy (95% CI)"] == "-"
