"""Damaged models: a broken card, model file or packed weights is a one-line error; a model gone numerically
bad gives error records, never an answer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import one_line_error, runner
from conftest import class_image
from liverscan.faces.cli import app


def _edit_card(run, change) -> None:
    card = json.loads((run / "model_card.json").read_text())
    change(card)
    (run / "model_card.json").write_text(json.dumps(card))


def _foreign_reference(run) -> None:
    from liverscan.serving import default_model_dir

    shutil.copy(default_model_dir() / "ood_reference.npz", run / "ood_reference.npz")  # another model's


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda run: (run / "model_card.json").write_text("{not json"), "model_card.json"),
        (lambda run: (run / "model.keras").write_bytes(b"PK\x03\x04garbage"), "model.keras: not the file its"),
        (lambda run: (run / "model.keras").unlink(), "model.keras"),
        (lambda run: _edit_card(run, lambda c: c["classes"].reverse()), "are not the ones the model was trained"),
        (lambda run: _edit_card(run, lambda c: c["classes"].__setitem__(0, "cyst")), "classes cyst, fatty, tumor"),
        (_foreign_reference, "ood_reference.npz: not the file its model card records"),
        (lambda run: (run / "ood_reference.npz").unlink(), "ood_reference.npz: missing, though the model card"),
    ],
    ids=[
        "malformed-card",
        "corrupt-model",
        "missing-model",
        "swapped-classes",
        "renamed-class",
        "foreign-ood-reference",
        "missing-ood-reference",
    ],
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


def test_an_older_card_without_integrity_record_still_loads_and_a_corrupt_model_still_says_so(probe_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    _edit_card(run, lambda c: c.pop("integrity"))  # a card written before liverscan recorded file hashes
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    assert runner.invoke(app, ["predict", image, "--model", str(run), "-q"]).exit_code == 0
    (run / "model.keras").write_bytes(b"PK\x03\x04garbage")
    one_line_error(runner.invoke(app, ["predict", image, "--model", str(run)]), "cannot load model")


def test_a_fast_runtime_copied_from_another_model_is_refused_naming_it(tmp_path):
    from liverscan.serving import Classifier, default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    shutil.copy(model / "lesion.tflite", model / "model.tflite")  # a real TFLite file, but not this model's
    r = runner.invoke(app, ["predict", "examples/images", "--model", str(model), "--no-lesion"])
    text = one_line_error(r, "model.tflite: not the file its model card records")
    assert "export it again" in text and "--runtime keras" in text
    # with the lesion head on, predict runs lesion.tflite (the classifier and the head in one graph)
    shutil.copy(default_model_dir() / "model.tflite", model / "lesion.tflite")
    r = runner.invoke(app, ["predict", "examples/images", "--model", str(model)])
    one_line_error(r, "lesion.tflite: not the file its model card records")
    # the Keras model does not read model.tflite: it still loads
    assert Classifier.load(model, runtime="keras", lesion=False).runtime == "keras"


def test_a_missing_guard_reference_is_refused_unless_the_guard_is_off_and_old_cards_are_told_apart(probe_run, tmp_path):
    from liverscan.core.artifacts import read_card
    from liverscan.serving import Classifier, PredictJob, PredictOptions

    def notes() -> list[str]:  # what predict says before its records (the model itself is not needed for them)
        clf = Classifier(read_card(run), run, run / "model.keras", options=PredictOptions())
        return PredictJob([image], PredictOptions(), classifier=clf).notes()

    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    (run / "ood_reference.npz").unlink()
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    r = runner.invoke(app, ["predict", image, "--model", str(run), "--no-ood", "-q"])
    assert r.exit_code == 0, r.output
    # a card without a guard: "trained before 0.2" only when its versions say so
    _edit_card(run, lambda c: c.update(ood=None))
    assert "(ood.enabled: false)" in notes()[0]
    _edit_card(run, lambda c: c["versions"].update(liverscan="0.1.0"))
    assert "(trained before liverscan 0.2)" in notes()[0]


def test_a_model_trained_on_pixels_of_other_decoding_rules_is_told(probe_run, tmp_path):
    from liverscan.core.artifacts import read_card
    from liverscan.core.images import DECODER
    from liverscan.serving import Classifier, PredictJob, PredictOptions

    def notes() -> list[str]:
        clf = Classifier(read_card(run), run, run / "model.keras", options=PredictOptions())
        return PredictJob([image], PredictOptions(), classifier=clf).notes()

    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    image = str(next((probe_run["data"] / "tumor").glob("*.png")))
    assert read_card(run).input["decoder"] == DECODER
    assert not [n for n in notes() if "decoding rules" in n]
    _edit_card(run, lambda c: c["input"].update(decoder=DECODER + 1))
    (note,) = [n for n in notes() if "decoding rules" in n]
    assert f"version {DECODER + 1}; this liverscan decodes by version {DECODER}" in note
    assert "retrain" in note
