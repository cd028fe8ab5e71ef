from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from liverscan.faces.cli import app
from liverscan.serving import Classifier, runtime

pytestmark = pytest.mark.skipif(not runtime.available(), reason="no TFLite runtime installed")


@pytest.mark.slow
def test_export_tflite_agrees_with_keras(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert r.exit_code == 0, r.output
    card = json.loads((run / "model_card.json").read_text())
    info = card["exports"]["tflite"]
    assert (run / "model.tflite").stat().st_size == info["bytes"]
    assert info["max_abs_difference_vs_keras"] <= 1e-4
    paths = sorted(str(p) for p in (tiny_run["data"] / "tumor").glob("*.png"))[:7]
    fast = Classifier.load(run)  # auto picks the exported model
    slow = Classifier.load(run, runtime="keras")
    assert fast.runtime == "tflite" and slow.runtime == "keras"
    from test_guard import screenshot

    inputs = paths + [screenshot(32)]
    fr, sr = fast.predict(inputs), slow.predict(inputs)
    a = np.array([list(p.probabilities.values()) for p in fr])
    b = np.array([list(p.probabilities.values()) for p in sr])
    assert np.abs(a - b).max() <= 1e-4
    # the exported graph gives the features too: the guard answers the same on both runtimes
    assert fast.runner.has_features and info["same_in_distribution_as_keras"] is True
    assert [p.in_distribution for p in fr] == [p.in_distribution for p in sr] and fr[-1].in_distribution is False
    np.testing.assert_allclose([p.ood_score for p in fr], [p.ood_score for p in sr], atol=1e-3)
    # Grad-CAM still works: the Keras model is loaded on demand
    ((_, heat),) = fast.explain([paths[0]])
    assert heat.shape == (32, 32)


def test_unknown_format_and_missing_tflite(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert r.exit_code == 1 and "unknown export format" in r.stderr
    r = CliRunner().invoke(
        app, ["predict", str(tiny_run["data"] / "tumor"), "--model", str(run), "--runtime", "tflite"]
    )
    assert r.exit_code == 1 and "export the run to TFLite" in r.stderr
