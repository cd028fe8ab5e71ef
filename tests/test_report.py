from __future__ import annotations

import re
import shutil

from typer.testing import CliRunner

from liverscan.core.fileio import read_csv
from liverscan.evaluation.evaluate import evaluate
from liverscan.evaluation.report import write_report
from liverscan.faces.cli import app

runner = CliRunner()
SECTIONS = ["Summary", "Dataset", "Training", "Results", "Calibration", "Operating point", "Published figures"]


def test_report_has_every_section_and_is_self_contained(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    evaluate(run, operating_point="balanced", bootstrap=50)
    html_path, md_path, _ = write_report(run)
    html = html_path.read_text()
    md = md_path.read_text()
    for s in SECTIONS:
        assert f"<h2>{s}" in html and f"## {s}" in md, s
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "Research use only" in html and "different dataset" in md
    assert "0.896" in md  # the paper's accuracy beside ours
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run / img).is_file()


def test_report_without_evaluation_says_how(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    shutil.rmtree(run / "eval-test", ignore_errors=True)
    _, md_path, _ = write_report(run)
    assert "liverscan evaluate" in md_path.read_text()


def test_cli_report_and_compare(tiny_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run["run"], a)
    shutil.copytree(tiny_run["run"], b)
    evaluate(a, bootstrap=30)
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
    assert rows[0]["accuracy (95% CI)"] != "-" and rows[1]["accuracy (95% CI)"] != "-"
    assert rows[2]["accuracy (95% CI)"] == "-"
