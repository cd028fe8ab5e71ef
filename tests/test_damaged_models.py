"""Damaged models: a broken card, model file or packed weights is a one-line error; a model gone numerically
bad gives error records, never an answer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cli_helpers import one_line_error, runner
from conftest import class_image
from liverscan.faces.cli import app


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda run: (run / "model_card.json").write_text("{not json"), "model_card.json"),
        (lambda run: (run / "model.keras").write_bytes(b"PK\x03\x04garbage"), "cannot load model"),
        (lambda run: (run / "model.keras").unlink(), "model.keras"),
    ],
    ids=["malformed-card", "corrupt-model", "missing-model"],
)
def test_damaged_model_files_are_one_line(probe_run, tmp_path, damage, fragment):
    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    damage(run)
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    one_line_error(runner.invoke(app, ["predict", image, "--model", str(run)]), fragment)
    one_line_error(runner.invoke(app, ["evaluate", str(run)]), fragment)


def test_corrupt_packed_weights_are_one_line(tmp_path):
    from liverscan.serving import default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    (model / "weights.npz").write_bytes(b"PK\x03\x04 not a zip")
    (model / "model.tflite").unlink()
    r = runner.invoke(app, ["predict", "examples/images", "--model", str(model), "--runtime", "keras"])
    one_line_error(r, "weights.npz")


def test_non_finite_probabilities_are_an_error_record_never_an_answer(probe_run):
    from liverscan.serving import Classifier

    clf = Classifier.load(probe_run["run"])  # its own model in memory: the files stay as they are
    weights = clf.model.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)  # a damaged model: its last bias is NaN
    clf.model.set_weights(weights)
    (rec,) = clf.predict([np.asarray(class_image(0, 1))])
    assert rec.error and "non-finite" in rec.error and rec.predicted_class is None and rec.confidence is None
