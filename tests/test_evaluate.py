from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import one_line_error
from conftest import class_image, near_duplicate
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


@pytest.mark.slow
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
def test_evaluate_on_labelled_folders(run_copy, tmp_path):
    folder = tmp_path / "ext"
    for ci, cat in ((0, "normal"), (2, "tumor")):
        (folder / cat).mkdir(parents=True)
        for k in range(3):  # new images: copies of the run's own would be left out as seen
            class_image(ci, seed=6000 + 10 * ci + k).save(folder / cat / f"{cat}_{k}.png")
    (folder / "tumor" / "broken.png").write_bytes(b"nope")
    res = evaluate(run_copy, data=str(folder), out=tmp_path / "ev", bootstrap=50)
    assert res.metrics.n == 6
    assert res.metrics.skipped[0][0].endswith("broken.png")


@pytest.mark.slow
def test_cli_evaluate(run_copy):
    r = runner.invoke(app, ["evaluate", str(run_copy), "--bootstrap", "10", "--fit-operating-point", "balanced"])
    assert r.exit_code == 0, r.output
    assert "Overall" in r.stdout and "Per class" in r.stdout and "operating point" in r.stdout
    r = runner.invoke(app, ["evaluate", str(run_copy / "nope")])
    assert r.exit_code == 1 and "no such run directory" in r.stderr


def _manifest_by_split(prep) -> dict[str, list[dict[str, str]]]:
    rows = read_csv(prep / "manifest.csv")
    return {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}


@pytest.mark.slow
def test_external_folder_with_the_runs_own_images_is_warned_and_left_out(run_copy, probe_run, tmp_path):
    """A folder holding copies of training and validation images and a neighbouring frame of a training image:
    a warning with the counts, the metrics on the other images only, and the list in metrics.json."""
    from PIL import Image

    splits = _manifest_by_split(probe_run["prep"])
    folder = tmp_path / "ext"
    for cls in ("normal", "fatty", "tumor"):
        (folder / cls).mkdir(parents=True)
    copies = splits["train"][:2] + splits["val"][:1] + splits["test"][:1]  # the test image was never seen
    for r in copies:
        shutil.copy(r["path"], folder / r["class"] / f"copy_{Path(r['path']).name}")
    frame = splits["train"][2]
    near_duplicate(Image.open(frame["path"]).convert("RGB"), 5).save(folder / frame["class"] / "frame.png")
    for ci, cls in enumerate(("normal", "fatty", "tumor")):  # new images of each class
        class_image(ci, seed=7000 + ci).save(folder / cls / "new.png")

    r = runner.invoke(app, ["evaluate", str(run_copy), "--data", str(folder), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "4 evaluated images left out of the metrics" in err, err
    assert (
        "2 exact copies of training images, 1 exact copy of a validation image, 1 near duplicate of a training image"
        in err
    )
    out = " ".join(r.stdout.split())
    assert "Overall (external, n=4, 4 seen images left out;" in out, out
    m = json.loads((run_copy / "eval-external" / "metrics.json").read_text())
    assert m["split"] == "external" and m["n"] == 4  # three new images and the run's test image
    leak = m["leakage"]
    assert leak["excluded"] == 4 and leak["counts"] == {"exact": {"train": 2, "val": 1}, "near": {"train": 1, "val": 0}}
    near = [i for i in leak["images"] if i["match"] == "near"]
    assert [Path(i["path"]).name for i in near] == ["frame.png"] and near[0]["of"] == frame["path"]
    assert 0 < near[0]["distance"] <= 6
    predicted = {Path(row["path"]).name for row in read_csv(run_copy / "eval-external" / "predictions.csv")}
    assert predicted == {"new.png", f"copy_{Path(splits['test'][0]['path']).name}"}
    assert not (run_copy / "eval-test").exists()  # the run's own test evaluation is not overwritten

    # nothing but seen images: a one-line error naming the data
    only_seen = tmp_path / "seen"
    (only_seen / "normal").mkdir(parents=True)
    shutil.copy(splits["train"][0]["path"], only_seen / "normal" / "a.png")
    r = runner.invoke(app, ["evaluate", str(run_copy), "--data", str(only_seen), "--bootstrap", "0", "-q"])
    one_line_error(r, f"{only_seen}: every evaluated image is one the run has seen (1 exact copy of a training image)")


@pytest.mark.slow
def test_csv_patients_make_the_bootstrap_and_the_results_per_patient(run_copy, tmp_path):
    """A labels CSV with a patient column (found by its name, or named with --group-column): the bootstrap
    resamples patients and the results are also given per patient; the source is the CSV file."""
    import csv

    from liverscan.core.artifacts import load_run
    from liverscan.evaluation.labelled import load_labelled

    folder = tmp_path / "site" / "imgs"
    folder.mkdir(parents=True)
    rows = []
    for ci, cls in enumerate(("normal", "fatty", "tumor")):
        for k in range(6):  # two patients per class, three frames each
            name = f"{cls}_{k}.png"
            class_image(ci, seed=8000 + 100 * ci + k).save(folder / name)
            rows.append({"file": f"imgs/{name}", "label": cls, "patient": f"{cls}{k // 3}"})
    table = tmp_path / "site" / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "patient"])
        w.writeheader()
        w.writerows(rows)
    ds = load_labelled(load_run(run_copy), table, "test")  # the patient column found by its name
    assert ds.groups is not None and len(set(ds.groups)) == 6 and ds.sources == ["labels.csv"] * 18

    renamed = tmp_path / "site" / "cases.csv"
    renamed.write_text(table.read_text().replace(",patient", ",case_id"))
    r = runner.invoke(
        app,
        ["evaluate", str(run_copy), "--data", str(renamed), "--group-column", "case_id", "--bootstrap", "20", "-q"],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((run_copy / "eval-external" / "metrics.json").read_text())
    assert m["split"] == "external" and m["n"] == 18 and m["argmax"]["bootstrap"]["resampled"] == "groups"
    assert m["group_level"]["kind"] == "patients" and m["group_level"]["n_groups"] == 6
    assert [s["source"] for s in m["ood"]["per_source"]] == ["cases.csv"]
    assert m["leakage"]["excluded"] == 0


def test_out_folder_holding_a_file_evaluate_did_not_write_is_refused_before_any_work(run_copy, tmp_path):
    """--out into a folder of the user's: refused, naming the file, with nothing written (not even the operating
    point into the card)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("mine")
    (out / "config.yaml").write_text("# my settings\n")
    card = (run_copy / "model_card.json").read_bytes()
    args = ["evaluate", str(run_copy), "--out", str(out), "--bootstrap", "0", "-q"]
    refused = runner.invoke(app, [*args, "--fit-operating-point", "balanced"])
    one_line_error(refused, f"{out / 'thesis.docx'}: not written by liverscan evaluate")
    (out / "thesis.docx").unlink()
    # alone, a config.yaml is a configuration (the one given to --config, say), not an evaluation's
    one_line_error(runner.invoke(app, args), f"{out / 'config.yaml'}: not written by liverscan evaluate")
    assert (out / "config.yaml").read_text() == "# my settings\n"
    assert (run_copy / "model_card.json").read_bytes() == card
    assert [p.name for p in out.iterdir()] == ["config.yaml"] and not (run_copy / "eval-test").exists()


@pytest.mark.slow
def test_out_folder_of_an_earlier_evaluation_is_written_over_and_then_guarded(run_copy, tmp_path):
    """An empty --out folder, then the evaluation written there (replaced, as ever); a file added to it is
    refused, and kept."""
    out = tmp_path / "ev"
    out.mkdir()
    args = ["evaluate", str(run_copy), "--out", str(out), "--bootstrap", "0", "-q"]
    stamps = []
    for _ in range(2):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        stamps.append((out / "metrics.json").stat().st_mtime_ns)
    assert stamps[1] > stamps[0]
    assert {"predictions.csv", "metrics.json", "config.yaml", "roc.png"} <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    one_line_error(runner.invoke(app, args), "notes.txt: not written by liverscan evaluate")
    assert (out / "notes.txt").read_text() == "mine"


def test_an_operating_point_fitted_on_too_few_images_of_its_class_is_warned_and_recorded(run_copy):
    """The shared run's validation split holds 3 tumour images: far too few to show a sensitivity of 0.95."""
    args = ["evaluate", str(run_copy), "--fit-operating-point", "tumor>=0.95", "--bootstrap", "0", "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    [line] = [w for w in r.stderr.splitlines() if w.startswith("warning:") and "tumor>=0.95" in w]
    card = json.loads((run_copy / "model_card.json").read_text())["operating_point"]
    fitted = card["fitted_on"]
    assert fitted["positives"] == 3 and fitted["sensitivity"]["method"] == "wilson"
    lo, hi = fitted["sensitivity"]["ci95"]
    assert lo < 0.9 and hi == pytest.approx(1.0)
    warning = fitted["warning"]
    assert warning.startswith("operating point 'tumor>=0.95' was fitted on only 3 images of tumor")
    assert f"95% CI {lo:.3f}–{hi:.3f}" in warning and "liverscan train --folds K" in warning
    assert f"warning: {warning}" in err
    m = json.loads((run_copy / "eval-test" / "metrics.json").read_text())
    assert m["warnings"] == [warning] and m["operating_point"]["warning"] == warning
    # the decision rule is kept: the point is stored and applied as before
    assert card["rule"]["type"] == "threshold" and m["tuned"] is not None


def test_classes_absent_from_the_data_are_not_available_not_zero(run_copy, tmp_path):
    folder = tmp_path / "normals"
    (folder / "normal").mkdir(parents=True)
    for k in range(4):  # new images: copies of the run's own would be left out as seen
        class_image(0, seed=7000 + k).save(folder / "normal" / f"n{k}.png")
    args = ["evaluate", str(run_copy), "--data", str(folder), "--out", str(tmp_path / "ev"), "--bootstrap", "20"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    am = m["argmax"]
    assert am["absent_classes"] == ["fatty", "tumor"]
    for c in ("fatty", "tumor"):
        pc = am["per_class"][c]
        assert pc["support"] == 0 and pc["precision"] is pc["recall"] is pc["f1"] is pc["roc_auc"] is None
        assert pc["specificity"] is not None  # every image is a negative of it: defined
        assert am["bootstrap"]["intervals"][f"{c}.recall"] is am["bootstrap"]["intervals"][f"{c}.precision"] is None
    normal = am["per_class"]["normal"]
    assert am["macro"]["recall"] == pytest.approx(normal["recall"]) == pytest.approx(am["balanced_accuracy"])
    assert am["macro"]["classes"] == ["normal"] and "over the classes present" in am["macro"]["note"]
    assert am["macro"]["roc_auc"] is None and "at least two classes" in am["macro"]["roc_auc_note"]
    warnings = [w for w in r.stderr.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and m["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert "no images of fatty, tumor in the evaluated data" in warnings[0]
    table = r.stdout[r.stdout.index("Per class (argmax)") : r.stdout.index("Confusion matrix (argmax)")]
    rows = [line for line in table.splitlines() if line.split()[1:2] in (["fatty"], ["tumor"])]
    assert len(rows) == 2 and all(line.count("n/a") == 4 for line in rows), r.stdout  # all but specificity
