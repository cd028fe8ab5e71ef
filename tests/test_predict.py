from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import class_image, write_corrupt_files
from liverscan.core.errors import LiverscanError
from liverscan.faces.cli import app
from liverscan.serving import Classifier, Prediction, expand_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def clf(tiny_run):
    return Classifier.load(tiny_run["run"])


@pytest.fixture
def mixed_folder(tiny_run, tmp_path):
    """Good images in sub-folders plus corrupt files, a non-image and a huge image."""
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b" / "c").mkdir(parents=True)
    for i, p in enumerate(sorted((tiny_run["data"] / "tumor").glob("*.png"))[:5]):
        shutil.copy(p, folder / ("a" if i % 2 else "b/c") / p.name)
    write_corrupt_files(folder / "bad")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_python_api_paths_and_arrays(clf, tiny_run):
    paths = sorted(str(p) for p in (tiny_run["data"] / "fatty").glob("*.png"))[:3]
    arr = np.asarray(class_image(2, seed=5))
    recs = clf.predict(paths + [arr, np.zeros((5,), np.uint8)])
    assert [r.path for r in recs[:3]] == paths and recs[3].path == "<array 3>"
    for r in recs[:4]:
        assert isinstance(r, Prediction) and r.ok and r.predicted_class in clf.classes
        assert sum(r.probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert r.confidence == max(r.probabilities.values())
        assert r.decision_rule == "argmax"
    assert recs[4].error and "unsupported array shape" in recs[4].error
    # the API agrees with the model run directly
    from PIL import Image

    direct = clf.probabilities(
        np.stack([np.asarray(class_image(2, seed=5).resize((32, 32), Image.Resampling.BILINEAR))])
    )
    assert recs[3].probabilities["tumor"] == pytest.approx(float(direct[0, 2]), abs=1e-4)


def test_empty_and_non_finite_arrays_are_error_records_never_an_answer(clf):
    arrays = [np.zeros((0, 0)), np.zeros((0, 0), np.uint8), np.full((20, 20), np.nan), np.array([[1.0, np.inf]])]
    good = np.asarray(class_image(2, seed=5))
    recs = clf.predict([*arrays, good])
    for rec in recs[:4]:
        assert not rec.ok and rec.predicted_class is None and rec.confidence is None and rec.decision is None
    assert "empty array" in recs[0].error and "empty array" in recs[1].error
    assert "400 of 400 array values are not finite" in recs[2].error and "not finite" in recs[3].error
    assert recs[4].ok  # the good array of the same call is answered


def test_streaming_keeps_order_and_reports_bad_files(clf, mixed_folder):
    paths = list(expand_inputs([str(mixed_folder)]))
    assert not any(p.endswith(".txt") for p in paths)
    recs = list(clf.iter_predict(paths + [str(mixed_folder / "missing.png")], batch_size=2, workers=3))
    assert [r.path for r in recs] == paths + [str(mixed_folder / "missing.png")]
    bad = {r.path.rsplit("/", 1)[-1]: r.error for r in recs if r.error}
    assert set(bad) == {"truncated.jpg", "empty.png", "notes.jpg", "garbage.png", "missing.png"}
    assert bad["missing.png"] == "file not found" and "empty" in bad["empty.png"]
    assert sum(r.ok for r in recs) == 5


def test_decoding_processes_give_the_thread_records_with_checks_run_where_images_are_decoded(
    clf, mixed_folder, tmp_path
):
    """Processes and threads give the same records; image checks run in the decoders agree with the
    checks run after the model on the same arrays (a coloured image trips one)."""
    from PIL import Image

    coloured = tmp_path / "coloured.png"
    Image.fromarray(
        np.dstack([np.full((40, 40), 250, np.uint8), np.zeros((40, 40), np.uint8)[..., None].repeat(2, -1)])
    ).save(coloured)
    paths = list(expand_inputs([str(mixed_folder)])) + [str(coloured)]
    by_threads = list(clf.iter_predict(paths, batch_size=3, workers=2, decode="threads"))
    by_processes = list(clf.iter_predict(paths, batch_size=3, workers=2, decode="processes"))
    # the same records; numbers to float32 precision (the model may batch the arrays differently)
    for p, t in zip(by_processes, by_threads, strict=True):
        dp, dt = p.to_dict(), t.to_dict()
        assert dp.pop("probabilities") == pytest.approx(dt.pop("probabilities"), abs=1e-6)
        assert dp == pytest.approx(dt, abs=1e-6)
    assert by_threads[-1].in_distribution is False and by_threads[-1].ood_reason.startswith("colour image")
    from liverscan.core.images import load_image

    good = [r for r in by_threads if r.ok]
    arrays = clf.predict([load_image(r.path, clf.image_size) for r in good])  # checks run after the model
    for a, b in zip(arrays, good):
        assert (a.in_distribution, a.ood_reason, a.decision) == (b.in_distribution, b.ood_reason, b.decision)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    with pytest.raises(LiverscanError, match="unknown decoding"):
        list(clf.iter_predict(paths, decode="fibers"))


@pytest.mark.slow
def test_operating_point_and_review_flag(tiny_run, tmp_path):
    from liverscan.evaluation import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    with pytest.raises(LiverscanError, match="no operating point"):
        Classifier.load(run, use_operating_point=True)
    evaluate(run, operating_point="tumor>=0.9", bootstrap=20)
    tuned = Classifier.load(run, use_operating_point=True, review_confidence=1.0)
    rec = tuned.predict(str(next((tiny_run["data"] / "tumor").glob("*.png"))))[0]
    assert rec.decision_rule == "operating point tumor>=0.9" and rec.needs_review


def test_expand_inputs_globs_and_stdin(tiny_run):
    pattern = str(tiny_run["data"] / "normal" / "normal_0*.png")
    assert len(list(expand_inputs([pattern]))) == 10
    stdin = io.StringIO(f"{tiny_run['data'] / 'fatty' / 'fatty_00.png'}\n\n{tiny_run['data'] / 'normal'}\n")
    got = list(expand_inputs(["-"], stdin=stdin))
    assert len(got) == 21 and got[0].endswith("fatty_00.png")
    assert list(expand_inputs(["/no/such/*.png"])) == ["/no/such/*.png"]


@pytest.mark.slow
def test_cli_outputs_parse_back_and_exit_codes(tiny_run, mixed_folder, tmp_path):
    run = str(tiny_run["run"])
    for ext in ("csv", "json", "jsonl"):
        out = tmp_path / f"r.{ext}"
        r = runner.invoke(app, ["predict", str(mixed_folder), "--model", run, "--output", str(out), "-q"])
        assert r.exit_code == 4, r.output  # some files failed
        text = out.read_text()
        if ext == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        elif ext == "json":
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines()]
        assert len(rows) == 9
        assert sum(1 for row in rows if row["error"]) == 4
        assert {"path", "predicted_class", "decision_rule", "needs_review", "error"} <= set(rows[0])
    good = sorted(str(p) for p in (tiny_run["data"] / "normal").glob("*.png"))[:3]
    r = runner.invoke(app, ["predict", *good, "--model", run, "--format", "jsonl"])
    assert r.exit_code == 0
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in lines] == good
    r = runner.invoke(app, ["predict", *good, "--model", run])
    assert r.exit_code == 0 and "Predictions" in r.stdout and "Model:" in r.stderr
    r = runner.invoke(app, ["predict", good[0], "--model", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no such run directory" in r.stderr
    r = runner.invoke(app, ["predict", good[0], "--model", run, "--output", str(tmp_path / "x.txt")])
    assert r.exit_code == 2 and ".csv, .json or .jsonl" in r.stderr  # a usage error


def test_corrupt_model_file_is_one_line_error(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    (run / "model.keras").write_bytes(b"PK\x03\x04garbage")
    r = runner.invoke(app, ["predict", str(next((tiny_run["data"] / "tumor").glob("*.png"))), "--model", str(run)])
    # the card's sha256 of model.keras catches it before Keras reads it (a card without one: "cannot load model")
    said = " ".join(r.stderr.split())
    assert r.exit_code == 1 and "model.keras: not the file its model card records" in said
    assert len(r.stderr.strip().splitlines()) <= 3


@pytest.mark.slow
def test_explain_writes_overlays_and_returns_heatmaps(clf, tiny_run, tmp_path):
    paths = sorted(str(p) for p in (tiny_run["data"] / "tumor").glob("*.png"))[:2]
    out = tmp_path / "cams"
    recs = list(clf.iter_predict(paths, explain_dir=out))
    for r in recs:
        assert r.explanation and (out / r.explanation.rsplit("/", 1)[-1]).stat().st_size > 500
    ((rec, heat),) = clf.explain([paths[0]])
    assert heat.shape == (32, 32) and 0 <= heat.min() and heat.max() == pytest.approx(1.0)


@pytest.mark.slow
def test_cli_reads_paths_from_stdin(tiny_run):
    good = sorted(str(p) for p in (tiny_run["data"] / "fatty").glob("*.png"))[:4]
    r = runner.invoke(
        app,
        ["predict", "-", "--model", str(tiny_run["run"]), "--format", "csv"],
        input="\n".join(good + ["/no/such/file.png"]) + "\n",
    )
    assert r.exit_code == 4  # some files failed
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["path"] for row in rows] == good + ["/no/such/file.png"]
    assert rows[-1]["error"] == "file not found" and all(not row["error"] for row in rows[:4])


def test_error_records_need_review(tmp_path):
    """A file that gave no answer (0 bytes, truncated) always needs a person to look at it."""
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(open("examples/images/Normal/xu-92.jpg", "rb").read()[:300])
    r = CliRunner().invoke(app, ["predict", str(tmp_path), "-f", "csv", "--no-lesion"])
    assert r.exit_code == 4, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 2 and all(row["error"] and row["needs_review"] == "true" for row in rows)
    assert Prediction("x.png", error="unreadable").needs_review


@pytest.mark.slow
def test_a_missing_exported_lesion_head_is_said(tmp_path):
    """The card records lesion.tflite; without the file the head falls back to Keras (many times slower): said."""
    from liverscan.serving import default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    (model / "lesion.tflite").unlink()
    r = CliRunner().invoke(app, ["predict", "examples/images/Normal/xu-92.jpg", "--model", str(model), "-f", "csv"])
    assert r.exit_code == 0, r.output
    note = " ".join(r.stderr.split())
    assert "note: lesion.tflite recorded in the model card but missing beside the model" in note
    assert "the lesion head runs on Keras" in note
