"""Exporting the lesion head to the fast runtimes (``lesion.tflite`` / ``lesion.onnx``) and running it there."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from lesion_helpers import attach_head, bright_head, disc_image
from liverscan.core.errors import ExportError, ModelError
from liverscan.core.lesion import predict_maps
from liverscan.faces.cli import app
from liverscan.serving import export, runtime
from liverscan.serving.runtime import MapRunner

pytestmark = pytest.mark.skipif(not runtime.available(), reason="no TFLite runtime installed")

FORMATS = [
    "tflite",
    pytest.param("onnx", marks=pytest.mark.skipif(not runtime.onnx_available(), reason="no ONNX Runtime")),
]


def disc_images(n: int = 7, size: int = 32) -> np.ndarray:
    """``n`` speckled images, each with one bright disc (the bright head's lesion) at its own place."""
    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        r = float(rng.uniform(3, 6))
        centre = (float(rng.uniform(r + 1, size - r - 1)), float(rng.uniform(r + 1, size - r - 1)))
        out.append(np.asarray(disc_image(size, centre, r, seed=k)))
    return np.stack(out)


def lesion_pixels(images: np.ndarray) -> np.ndarray:
    """The bright head's known answer: pixels whose mean grey is at least 190."""
    return images.astype(np.float32).mean(-1) >= 190


def shifted(model, bias: float):
    """A copy of ``model`` whose last bias is moved by ``bias`` (another head with the same design)."""
    from liverscan.core.keras_env import import_keras

    other = import_keras().models.clone_model(model)
    weights = model.get_weights()
    weights[-1] = weights[-1] + np.float32(bias)
    other.set_weights(weights)
    return other


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_bright_head_gives_the_keras_maps(tmp_path, fmt):
    images = disc_images()
    head = bright_head(32)
    target = tmp_path / f"lesion.{fmt}"
    info = export.write_lesion(head, target, fmt, images.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no staged file left
    assert info["file"] == target.name and info["bytes"] == target.stat().st_size and len(info["sha256"]) == 64
    assert info["max_abs_difference_vs_keras"] <= 1e-5 and info["checked_images"] == 7
    assert info["mask_pixels_differing"] == 0.0 and info["mask_dice_vs_keras"] == 1.0

    runner = MapRunner(target, batch_size=4, threads=1)  # one full batch of 4, then one image at a time
    assert runner.input_shape == (32, 32, 3) and runner.kind == fmt
    maps = runner.maps(images)  # uint8 in
    assert maps.shape == (7, 32, 32) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, predict_maps(head, images.astype(np.float32)), atol=1e-5)
    truth = lesion_pixels(images)
    assert truth.sum(axis=(1, 2)).min() >= 20  # every image has a disc
    np.testing.assert_array_equal(maps >= 0.5, truth)  # the known answer: the discs
    assert maps[~truth].max() < 0.2 and maps[truth].min() > 0.99
    np.testing.assert_array_equal(runner.maps(images[2:3]), maps[2:3])
    assert runner.maps(images[:0]).shape == (0, 32, 32)


def test_map_runner_refuses_what_is_not_a_lesion_map(tmp_path):
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    inp = keras.Input((32, 32, 3))
    classifier = keras.Model(
        inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    )
    (tmp_path / "model.tflite").write_bytes(export._tflite_blob(classifier))
    with pytest.raises(ModelError, match=r"model\.tflite: not a lesion map model \(output \(3,\) per image"):
        MapRunner(tmp_path / "model.tflite")

    (tmp_path / "lesion.tflite").write_bytes(export._tflite_blob(bright_head(32)))
    with pytest.raises(ModelError, match=r"lesion\.tflite: images of shape \(2, 16, 16, 3\) given"):
        MapRunner(tmp_path / "lesion.tflite").maps(np.zeros((2, 16, 16, 3), np.uint8))
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(ModelError, match=r"broken\.tflite: cannot load TFLite model"):
        MapRunner(tmp_path / "broken.tflite")
    with pytest.raises(ModelError, match=r"lesion\.keras: not a \.tflite or \.onnx lesion model"):
        MapRunner(tmp_path / "lesion.keras")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_mismatching_export_is_refused_and_nothing_is_written(tmp_path, monkeypatch, fmt):
    images = disc_images(5).astype(np.float32)
    head = bright_head(32)
    target = tmp_path / f"lesion.{fmt}"
    export.write_lesion(head, target, fmt, images)
    before = target.read_bytes()
    # the converter hands back another head (its lesion pixels start at grey ~182 instead of 190)
    other = shifted(head, 1.0)
    if fmt == "tflite":
        blob = export._tflite_blob(other)
        monkeypatch.setattr(export, "_tflite_blob", lambda model: blob)
    else:
        export._onnx_file(other, tmp_path / "other.onnx")
        monkeypatch.setattr(export, "_onnx_file", lambda model, staged: shutil.copy(tmp_path / "other.onnx", staged))
    with pytest.raises(ExportError) as caught:
        export.write_lesion(head, target, fmt, images)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"lesion.{fmt}: exported lesion head disagrees with Keras (max abs difference ")
    assert _names(tmp_path) == {target.name} | ({"other.onnx"} if fmt == "onnx" else set())
    assert target.read_bytes() == before  # the earlier export stays as it was

    # a damaged conversion: refused as unusable, again leaving nothing behind
    if fmt == "tflite":
        monkeypatch.setattr(export, "_tflite_blob", lambda model: b"\x00garbage" * 16)
    else:
        monkeypatch.setattr(export, "_onnx_file", lambda model, staged: staged.write_bytes(b"\x00garbage" * 16))
    with pytest.raises(ExportError, match=rf"^lesion\.{fmt}: the exported lesion head does not run \(cannot load"):
        export.write_lesion(head, target, fmt, images)
    assert _names(tmp_path) == {target.name} | ({"other.onnx"} if fmt == "onnx" else set())
    assert target.read_bytes() == before


def _names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_check_lesion_figures_count_differing_mask_pixels(tmp_path):
    """The figures are real: a head whose threshold sits 4 grey levels lower flags exactly the pixels between."""
    images = disc_images(4).astype(np.float32)
    images[:, :8, :8] = 188.0  # a patch between the two heads' thresholds (186 and 190)
    head = bright_head(32)
    path = tmp_path / "lesion.tflite"
    path.write_bytes(export._tflite_blob(shifted(head, 0.5)))
    figures = export.check_lesion(head, path, "tflite", images, threshold=0.5)
    keras_mask = lesion_pixels(images)
    runtime_mask = keras_mask.copy()
    runtime_mask[:, :8, :8] = True
    assert figures["mask_pixels_differing"] == pytest.approx(np.mean(keras_mask != runtime_mask))
    inter = np.logical_and(keras_mask, runtime_mask).sum()
    assert figures["mask_dice_vs_keras"] == pytest.approx(2 * inter / (keras_mask.sum() + runtime_mask.sum()))
    # the largest gap of sigmoid(z + 0.5) - sigmoid(z) is at z = -0.25: grey 188, the patch
    gap = 1 / (1 + np.exp(-0.25)) - 1 / (1 + np.exp(0.25))
    assert figures["max_abs_difference_vs_keras"] == pytest.approx(gap, abs=1e-5)


def test_export_refuses_a_disagreeing_head_before_writing_anything(probe_run, tmp_path, monkeypatch):
    run = attach_head(probe_run["run"], tmp_path / "run")
    card_before = (run / "model_card.json").read_bytes()
    monkeypatch.setattr(export, "LESION_TOLERANCE", -1.0)  # any difference is too much
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "tflite"])
    assert r.exit_code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "error: lesion.tflite: exported lesion head disagrees with Keras" in line
    # the lesion head is checked first: neither runtime file is written, the card is unchanged
    assert not any(p.suffix in (".tflite", ".onnx", ".check") for p in run.iterdir())
    assert (run / "model_card.json").read_bytes() == card_before


def test_export_names_a_damaged_head(probe_run, tmp_path):
    run = attach_head(probe_run["run"], tmp_path / "run")
    (run / "lesion.keras").write_bytes(b"PK\x03\x04 truncated")
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "tflite"])
    assert r.exit_code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "lesion.keras: cannot load model" in line
    assert not any(p.suffix in (".tflite", ".check") for p in run.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_the_lesion_runtime_beside_the_classifier(probe_run, tmp_path, fmt):
    run = attach_head(probe_run["run"], tmp_path / "run")
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", fmt])
    assert r.exit_code == 0, r.output
    assert f"lesion.{fmt}" in r.stdout and "masks differ on 0.00% of pixels (Dice 1.000)" in " ".join(r.stdout.split())
    exports = json.loads((run / "model_card.json").read_text())["exports"]
    assert set(exports) == {fmt, f"lesion_{fmt}"}
    info = exports[f"lesion_{fmt}"]
    assert info["file"] == f"lesion.{fmt}" and info["bytes"] == (run / f"lesion.{fmt}").stat().st_size
    from liverscan.core.fileio import sha256_file

    assert info["sha256"] == sha256_file(run / f"lesion.{fmt}") and info["threshold"] == 0.5
    assert info["max_abs_difference_vs_keras"] <= export.LESION_TOLERANCE and info["mask_pixels_differing"] == 0.0
    assert info["checked_images"] == exports[fmt]["checked_images"] > 0
    assert not any(p.name.endswith(".check") for p in run.iterdir())
    images = disc_images()
    maps = MapRunner(run / f"lesion.{fmt}").maps(images)
    np.testing.assert_array_equal(maps >= 0.5, lesion_pixels(images))


@pytest.mark.slow
def test_a_run_without_a_head_exports_as_before(probe_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    info = export.export_model(run, "tflite")
    assert "lesion" not in info
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".tflite", ".onnx", ".check")) == ["model.tflite"]
    assert set(json.loads((run / "model_card.json").read_text())["exports"]) == {"tflite"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("flip", [False, True])
def test_the_real_design_converts_and_agrees(tmp_path, fmt, flip):
    """The decoder on a nested MobileNetV2 (random weights, logits spread so that masks are not a coin toss), with
    and without the pass on the mirror image."""
    from liverscan.core.keras_env import import_keras
    from liverscan.core.lesion import build_lesion_model

    keras = import_keras()
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    model = build_lesion_model(backbone, flip=flip)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    logits = model.get_layer("lesion_decoder").get_layer("lesion_logits")
    kernel, bias = logits.get_weights()
    raw = predict_maps(model, images).astype(np.float64)
    z = np.log(raw / (1 - raw))
    centre = float(np.median(z))
    scale = float(np.abs(z - centre).max())
    logits.set_weights([kernel / scale, (bias - centre) / scale])  # logits in -1..1, half of them above 0
    info = export.write_lesion(model, tmp_path / f"lesion.{fmt}", fmt, images)
    ref = predict_maps(model, images)
    assert 0.2 < float((ref >= 0.5).mean()) < 0.8
    assert info["max_abs_difference_vs_keras"] <= 1e-4 and info["mask_pixels_differing"] <= export.MASK_TOLERANCE
    assert info["mask_dice_vs_keras"] > 0.99
    np.testing.assert_allclose(MapRunner(tmp_path / f"lesion.{fmt}").maps(images), ref, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("zoom,flip", [(1, False), (2, False), (2, True)])
def test_a_head_sharing_the_backbone_rides_in_the_classifier_graph(probe_run, tmp_path, monkeypatch, zoom, flip):
    """A head tuned from ``block_6_expand`` on the classifier's backbone is exported inside ``model.tflite``, the
    layers below it run once: one pass gives the probabilities, the guard's features and the lesion map, and
    predict takes its maps from that pass (with ``lesion.zoom`` 2, the pass on the upsampled image included; with
    ``lesion.flip``, the passes on the mirror image)."""
    from liverscan.core.images import load_image
    from liverscan.core.keras_env import import_keras
    from liverscan.core.lesion import build_lesion_model, shared_backbone_model
    from liverscan.core.model import backbone_of, build_backbone, load_model
    from liverscan.serving import Classifier
    from liverscan.serving.runtime import TFLiteRunner

    clf = load_model(probe_run["run"] / "model.keras")
    own = build_backbone(32, "none")
    theirs = backbone_of(clf)
    own.set_weights([w for layer in own.layers if layer.weights for w in theirs.get_layer(layer.name).get_weights()])
    rng = np.random.default_rng(0)
    for layer in own.layers[[layer.name for layer in own.layers].index("block_6_expand") :]:  # "fine-tuned"
        layer.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(w.dtype) for w in layer.get_weights()])
    head = build_lesion_model(own, width=4, zoom=zoom, flip=flip)
    weights = head.get_weights()
    weights[-1] = weights[-1] + np.float32(3.0)  # a head that finds something: maps well above 0.5 somewhere
    head.set_weights(weights)
    stranger = build_lesion_model(
        import_keras().applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None), width=4
    )
    assert shared_backbone_model(clf, stranger) is None  # other backbone weights: two graphs
    run = attach_head(probe_run["run"], tmp_path / "run", head)
    r = CliRunner().invoke(app, ["export", str(run), "--runtime", "tflite"])
    assert r.exit_code == 0, r.output
    exports = json.loads((run / "model_card.json").read_text())["exports"]
    assert exports["tflite"]["outputs"] == ["probabilities", "features"]  # --no-lesion runs the classifier alone
    info = exports["lesion_tflite"]
    assert info["outputs"] == ["probabilities", "features", "lesion probability"]
    assert info["shared_backbone_with_classifier"] is True and info["max_abs_difference_vs_keras"] <= 1e-3
    assert info["probabilities_max_abs_difference_vs_keras"] <= 1e-4 and info["mask_pixels_differing"] <= 1e-3
    assert info["lesion_head_runs_own_layers_from"] == "block_6_expand"

    paths = sorted(str(p) for p in (probe_run["data"] / "tumor").glob("*.png"))[:5]
    runner = TFLiteRunner(run / "lesion.tflite", batch_size=4)
    assert runner.has_maps and runner.has_features
    images = np.stack([load_image(p, 32) for p in paths])
    probs, feats, maps = runner.run_all(images)
    assert probs.shape == (5, 3) and feats is not None and maps is not None and maps.shape == (5, 32, 32)
    np.testing.assert_allclose(maps, predict_maps(head, images.astype(np.float32)), atol=1e-3)
    np.testing.assert_allclose(probs, TFLiteRunner(run / "model.tflite").run(images)[0], atol=1e-4)
    assert not TFLiteRunner(run / "model.tflite").has_maps
    np.testing.assert_allclose(MapRunner(run / "lesion.tflite").maps(images), maps, atol=1e-6)  # the Python API

    fast, slow = Classifier.load(run), Classifier.load(run, runtime="keras")
    assert fast.runtime == "tflite" and fast.runner.has_maps and slow.runner is None
    assert fast.runner.path.name == "lesion.tflite"
    assert not Classifier.load(run, lesion=False).runner.has_maps  # without the head: model.tflite alone

    def unused(images):
        raise AssertionError("the standalone lesion head ran: the map should come from the classifier's pass")

    monkeypatch.setattr(fast.lesion, "maps", unused)
    fr, sr = fast.predict(paths), slow.predict(paths)
    for a, b in zip(fr, sr):
        assert a.lesion is not None and b.lesion is not None
        assert a.lesion.found == b.lesion.found and abs(a.lesion.probability - b.lesion.probability) <= 1e-3
        assert a.predicted_class == b.predicted_class
    monkeypatch.undo()
    assert fast.lesion._runner.runner is fast.runner  # the head's maps come from the classifier's interpreter
    assert fast.lesion.kind == "tflite" and fast.lesion_status.startswith("tflite, in the classifier's own pass")
    np.testing.assert_allclose(fast.lesion_maps(images), maps, atol=1e-6)
    assert all(p.lesion is None for p in Classifier.load(run, lesion=False).predict(paths[:2]))

    if runtime.onnx_available():  # the same graph for ONNX Runtime
        r = CliRunner().invoke(app, ["export", str(run), "--runtime", "onnx"])
        assert r.exit_code == 0, r.output
        onnx = Classifier.load(run, runtime="onnx")
        assert onnx.runner.has_maps and onnx.runner.path.name == "lesion.onnx"
        np.testing.assert_allclose(onnx.runner.run_all(images)[2], maps, atol=1e-3)
