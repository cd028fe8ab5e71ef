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
    # the temperature: what it was really fitted on (the run's prepared validation split)
    fitted_on = json.loads((run / "model_card.json").read_text())["operating_point"]["fitted_on"]
    assert f"fitted on {fitted_on['data']} (n={fitted_on['n']})" in md and "(val)" in fitted_on["data"]
    assert "out of fold" not in md
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


def test_compare_out_folder_holding_a_file_it_did_not_write_is_refused(probe_run, tmp_path):
    """report --compare --out: an earlier comparison is written over, a folder holding any other file is refused
    (naming it), and a same-named file there is left as it was."""
    from cli_helpers import one_line_error

    out = tmp_path / "cmp"
    args = ["report", "--compare", str(probe_run["run"]), str(probe_run["run"]), "--out", str(out)]
    for _ in range(2):  # a new folder, then the earlier comparison in it
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md"]
    (out / "compare.csv").write_text("my,own,table\n")
    (out / "results.xlsx").write_bytes(b"mine")
    one_line_error(runner.invoke(app, args), f"{out / 'results.xlsx'}: not written by liverscan report --compare")
    assert (out / "compare.csv").read_text() == "my,own,table\n" and (out / "results.xlsx").read_bytes() == b"mine"
    (out / "plots").mkdir()  # a folder of the user's too
    (out / "results.xlsx").unlink()
    one_line_error(runner.invoke(app, args), f"{out / 'plots'}: not written by liverscan report --compare")
    (tmp_path / "a file").write_text("mine")
    one_line_error(runner.invoke(app, [*args[:-1], str(tmp_path / "a file")]), "a file: not a folder")


def test_intervals_say_which_they_are_and_do_not_collapse_at_one(evaluated_run, tmp_path):
    """Proportions get Wilson intervals: an accuracy or recall of 1 on a handful of images is not 1.000-1.000;
    report and terminal say which intervals they show; specificity has its interval too."""
    run, ev = _copy(evaluated_run, tmp_path)
    m = EvalMetrics.read(ev / METRICS_FILE)
    boot = m.argmax.bootstrap
    assert boot is not None and boot.methods["accuracy"] == "wilson" and boot.methods["macro_roc_auc"] == "bootstrap"
    for key, method in boot.methods.items():
        iv = boot.intervals[key]
        if method == "wilson" and iv is not None:
            assert iv[0] < iv[1], key  # never a point, also at 0 or 1
    perfect = [c for c, v in m.argmax.per_class.items() if v.recall == 1.0]
    assert perfect, "no recall of 1 to look at"
    assert m.argmax.ci(f"{perfect[0]}.recall")[0] < 0.9  # a few images cannot show a recall near 1 for sure
    _, md_path, _ = write_report(run)
    md = md_path.read_text()
    assert boot.describe() in md and "Wilson score intervals for the proportions" in md
    spec = m.argmax.per_class[perfect[0]].specificity
    assert format_with_ci(spec, m.argmax.ci(f"{perfect[0]}.specificity")) in md
    buf = io.StringIO()
    print_evaluation(m, Console(file=buf, width=400, color_system=None))
    assert f"n={m.n}; 95% CI: Wilson for proportions, bootstrap over images otherwise)" in buf.getvalue()


def test_ood_table_of_an_evaluation_without_sources_counts_every_image():
    """A cross-validated evaluation has no per-source rows: its "all" row gives every image's count and
    accuracy, not the in-distribution count beside a blank."""
    from liverscan.evaluation.results import OodResult
    from liverscan.faces.terminal import ood_table

    ood = OodResult.from_dict(
        {
            "n_out_of_distribution": 29,
            "in_distribution_rate": 0.95,
            "all": {"n": 583, "accuracy": 0.91, "balanced_accuracy": 0.9, "macro_roc_auc": 0.97},
            "in_distribution": {"n": 554, "accuracy": 0.93, "balanced_accuracy": 0.92, "macro_roc_auc": 0.98},
            "per_source": [],
        }
    )
    assert ood is not None
    buf = io.StringIO()
    Console(file=buf, width=300, color_system=None).print(ood_table(ood))
    row = next(line for line in buf.getvalue().splitlines() if line.strip("│ ").startswith("all"))
    assert [c.strip() for c in row.split("│")[1:-1]] == ["all", "583", "0.950", "0.910", "0.930", "0.970", "0.980"]


def test_external_evaluation_is_labelled_external(evaluated_run, tmp_path):
    """Labelled images given with --data are "external" in the report, not "test"."""
    run, ev = _copy(evaluated_run, tmp_path)
    raw = json.loads((ev / METRICS_FILE).read_text())
    raw.update(split="external", data="site/labels.csv")
    (ev / METRICS_FILE).write_text(json.dumps(raw))
    _, md_path, _ = write_report(run, ev)
    md = md_path.read_text()
    assert f"## Results (external, n={raw['n']})" in md
    assert "Data: site/labels.csv (external: labelled images, not a prepared split)." in md
