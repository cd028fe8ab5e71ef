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
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "tflite"])
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


def test_unknown_format_and_missing_exports(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "coreml"])
    assert r.exit_code == 2 and "unknown export format" in r.stderr  # a usage error
    for name in ("tflite", "onnx"):
        r = CliRunner().invoke(
            app, ["predict", str(tiny_run["data"] / "tumor"), "--model", str(run), "--runtime", name]
        )
        assert r.exit_code == 1 and f"export it first: liverscan export RUN --runtime {name}" in " ".join(
            r.stderr.split()
        )


@pytest.mark.slow
@pytest.mark.skipif(not runtime.onnx_available(), reason="ONNX Runtime is not installed")
def test_export_onnx_agrees_with_keras_and_predicts_with_onnx_runtime(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "onnx"])
    assert r.exit_code == 0, r.output
    info = json.loads((run / "model_card.json").read_text())["exports"]["onnx"]
    assert (run / "model.onnx").stat().st_size == info["bytes"] and info["max_abs_difference_vs_keras"] <= 1e-4
    assert info["same_in_distribution_as_keras"] is True
    from test_guard import screenshot

    inputs = sorted(str(p) for p in (tiny_run["data"] / "fatty").glob("*.png"))[:5] + [screenshot(32)]
    onnx = Classifier.load(run, runtime="onnx")
    assert Classifier.load(run).runtime == "onnx"  # auto: no model.tflite here, so the ONNX model
    keras_side = Classifier.load(run, runtime="keras").predict(inputs)
    onnx_side = onnx.predict(inputs)
    a = np.array([list(p.probabilities.values()) for p in onnx_side])
    b = np.array([list(p.probabilities.values()) for p in keras_side])
    assert np.abs(a - b).max() <= 1e-4
    assert [p.in_distribution for p in onnx_side] == [p.in_distribution for p in keras_side]
    assert onnx_side[-1].in_distribution is False


@pytest.mark.slow
def test_an_export_that_disagrees_is_not_written(tiny_run, tmp_path):
    from liverscan.core.errors import ExportError
    from liverscan.core.model import load_model
    from liverscan.serving.export import _verified, write_onnx
    from liverscan.serving.runtime import OnnxRunner

    if not runtime.onnx_available():
        pytest.skip("ONNX Runtime is not installed")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    write_onnx(load_model(tiny_run["run"] / "model.keras"), tmp_path / "a.onnx", images)
    other = load_model(tiny_run["run"] / "model.keras")
    weights = other.get_weights()
    weights[-1] = weights[-1] + np.linspace(-2, 2, len(weights[-1]))  # another model: other biases
    other.set_weights(weights)
    staged = tmp_path / ".b.onnx.check"
    shutil.copy(tmp_path / "a.onnx", staged)
    with pytest.raises(ExportError, match="disagrees with Keras"):
        _verified(other, staged, tmp_path / "b.onnx", OnnxRunner, images, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]  # nothing written, staged file removed


def _keras_features(run_dir, images):
    from liverscan.core.model import load_model, predict_outputs, with_features

    return predict_outputs(with_features(load_model(run_dir / "model.keras")), images, batch_size=16)[1]


def test_guard_answers_within_float_noise_of_the_threshold_are_not_disagreements(probe_run):
    import dataclasses

    from liverscan.core.artifacts import load_run
    from liverscan.core.guard import Reference, scores
    from liverscan.serving.export import check_images, guard_agreement

    run = load_run(probe_run["run"])
    images = check_images(run)
    reference = Reference.load(probe_run["run"] / "ood_reference.npz")
    keras_f = _keras_features(probe_run["run"], images)
    # a runtime's features: the Keras ones with float32 rounding noise (what TFLite / ONNX Runtime give)
    runtime_f = keras_f * (1 + np.random.default_rng(0).normal(0, 3e-7, keras_f.shape)).astype(np.float32)
    ks, rs = scores(reference, keras_f), scores(reference, runtime_f)
    i = int(np.argmax(np.abs(ks - rs)))
    assert 0 < abs(ks[i] - rs[i]) < 1e-5
    # the threshold between the two scores of image i, within 1e-6 of each: the runtimes answer differently there
    on_edge = dataclasses.replace(reference, threshold=float((ks[i] + rs[i]) / 2))
    assert (ks[i] > on_edge.threshold) != (rs[i] > on_edge.threshold)
    agreement = guard_agreement(on_edge, images, keras_f, runtime_f)
    assert agreement["same_in_distribution_as_keras"] is True
    assert agreement["images_near_the_guard_threshold"] >= 1
    assert agreement["guard_score_max_abs_difference_vs_keras"] == pytest.approx(float(np.abs(ks - rs).max()))
    # a runtime whose scores are off is caught although no answer flips (the threshold is far from every score)
    far = dataclasses.replace(reference, threshold=float(ks.max() + 10))
    broken = runtime_f.copy()
    broken[0] = keras_f[1]
    bad = guard_agreement(far, images, keras_f, broken)
    assert bad["same_in_distribution_as_keras"] is False and bad["images_near_the_guard_threshold"] == 0
    assert bad["guard_score_max_abs_difference_vs_keras"] > bad["guard_score_tolerance"]
    assert guard_agreement(None, images, keras_f, runtime_f)["same_in_distribution_as_keras"] is None


@pytest.mark.slow
def test_export_succeeds_when_a_checked_image_scores_within_float_noise_of_the_threshold(probe_run, tmp_path):
    import dataclasses

    from liverscan.core import artifacts as art
    from liverscan.core.guard import Reference, scores
    from liverscan.serving.export import check_images

    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    loaded = art.load_run(run)
    images = check_images(loaded)
    reference = Reference.load(run / "ood_reference.npz")
    s = scores(reference, _keras_features(run, images))
    # a freshly trained run whose threshold is (within float noise) one checked image's score
    dataclasses.replace(reference, threshold=float(s[3]) + 5e-7).save(run / "ood_reference.npz")
    art.seal(loaded.card, run)  # the reference is the run's own, as training would have written it
    art.write_card(run, loaded.card)
    fmt = "onnx" if runtime.onnx_available() else "tflite"
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", fmt])
    assert r.exit_code == 0, r.output
    info = json.loads((run / "model_card.json").read_text())["exports"][fmt]
    assert info["same_in_distribution_as_keras"] is True and info["images_near_the_guard_threshold"] >= 1
    assert info["guard_score_max_abs_difference_vs_keras"] <= info["guard_score_tolerance"]
