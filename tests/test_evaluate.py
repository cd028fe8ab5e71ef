from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from liverscan.core.fileio import read_csv
from liverscan.evaluation import evaluate
from liverscan.faces.cli import app

runner = CliRunner()


@pytest.fixture
def run_copy(probe_run, tmp_path):
    """A private copy of the shared probe run (evaluate writes into the run directory; same data as tiny_run)."""
    dst = tmp_path / "run"
    shutil.copytree(probe_run["run"], dst)
    return dst


def test_evaluate_writes_predictions_metrics_figures(run_copy, tiny_run):
    res = evaluate(run_copy, bootstrap=50)
    out = run_copy / "eval-test"
    assert res.out_dir == out
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == [
        "path",
        "true_class",
        "predicted_class",
        "p_normal",
        "p_fatty",
        "p_tumor",
        "in_distribution",
        "ood_score",
        "ood_reason",
    ]
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in ("normal", "fatty", "tumor")) - 1) < 1e-4
        assert r["in_distribution"] in ("true", "false") and float(r["ood_score"]) >= 0
    m = json.loads((out / "metrics.json").read_text())
    ood = m["ood"]
    flagged = sum(r["in_distribution"] == "false" for r in rows)
    assert ood["n_out_of_distribution"] == flagged and ood["in_distribution_rate"] == round(1 - flagged / len(rows), 4)
    assert ood["all"]["n"] == len(rows) and ood["per_source"][0]["n"] == len(rows)
    manifest = read_csv(tiny_run["prep"] / "manifest.csv")
    assert m["n"] == len(rows) == sum(r["split"] == "test" for r in manifest)
    am = m["argmax"]
    assert {
        "accuracy",
        "balanced_accuracy",
        "per_class",
        "macro",
        "weighted",
        "confusion_matrix",
        "confusion_matrix_normalized",
        "calibration",
        "bootstrap",
    } <= set(am)
    assert sum(map(sum, am["confusion_matrix"])) == m["n"]
    acc = sum(r["true_class"] == r["predicted_class"] for r in rows) / len(rows)
    assert am["accuracy"] == pytest.approx(acc)
    for name in ("confusion.png", "roc.png", "reliability.png"):
        assert (out / name).stat().st_size > 1000
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["eval"]["bootstrap"] == 50 and saved["eval"]["split"] == "test"


@pytest.mark.slow
def test_operating_point_stored_and_applied(run_copy):
    res = evaluate(run_copy, operating_point="tumor>=0.9", bootstrap=100)
    card = json.loads((run_copy / "model_card.json").read_text())
    op = card["operating_point"]
    assert op["rule"]["type"] == "threshold" and op["rule"]["class"] == "tumor"
    assert op["validation"]["tuned"]["recall"]["tumor"] >= 0.9
    assert op["temperature"] > 0
    assert res.metrics.tuned is not None and "tuned_class" in read_csv(res.out_dir / "predictions.csv")[0]
    # later evaluations reuse the stored operating point without refitting
    again = evaluate(run_copy, split="val", bootstrap=50)
    assert again.metrics.operating_point is not None and again.metrics.operating_point.spec == "tumor>=0.9"
    assert (run_copy / "eval-val" / "confusion-tuned.png").is_file()


@pytest.mark.slow
def test_evaluate_on_labelled_folders(run_copy, tiny_run, tmp_path):
    folder = tmp_path / "ext"
    for cat in ("normal", "tumor"):
        (folder / cat).mkdir(parents=True)
        for p in sorted((tiny_run["data"] / cat).glob("*.png"))[:3]:
            shutil.copy(p, folder / cat / p.name)
    (folder / "tumor" / "broken.png").write_bytes(b"nope")
    res = evaluate(run_copy, data=str(folder), out=tmp_path / "ev", bootstrap=50)
    assert res.metrics.n == 6
    assert res.metrics.skipped[0][0].endswith("broken.png")


def test_cli_evaluate(run_copy):
    r = runner.invoke(app, ["evaluate", str(run_copy), "--bootstrap", "10", "--fit-operating-point", "balanced"])
    assert r.exit_code == 0, r.output
    assert "Overall" in r.stdout and "Per class" in r.stdout and "operating point" in r.stdout
    r = runner.invoke(app, ["evaluate", str(run_copy / "nope")])
    assert r.exit_code == 1 and "no such run directory" in r.stderr
