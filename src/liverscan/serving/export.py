"""``export``: write a run's model (and its lesion head, when it has one) in a dedicated inference format,
verified against Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverscan.core.artifacts import (
    EXPORT_FORMATS,
    LESION_FILE,
    LESION_ONNX_FILE,
    LESION_TFLITE_FILE,
    ONNX_FILE,
    OOD_FILE,
    TFLITE_FILE,
    LoadedRun,
    lesion_export_key,
    load_run,
)
from liverscan.core.errors import ConfigError, ExportError, LiverscanError, ModelError, RunDirError
from liverscan.core.fileio import sha256_file, write_bytes_atomic
from liverscan.core.guard import Reference, assess

FORMATS = EXPORT_FORMATS
TOLERANCE = 1e-4
GUARD_SCORE_TOLERANCE = 1e-4  # max abs difference of the guard scores (x the threshold when it is above 1)
LESION_TOLERANCE = 1e-3  # max abs difference of the lesion probability maps (per pixel; no pooling averages it)
MASK_TOLERANCE = 1e-3  # share of map pixels whose thresholded mask value may differ


def check_images(run: LoadedRun, n: int = 32) -> np.ndarray:
    """Real validation images when the run's prepared data is at hand (random pixels saturate the
    softmax and hide differences), else seeded random images."""
    from liverscan.core.dataset import PreparedData

    size = run.image_size
    try:
        x = PreparedData(run.card.prepared_dir or "").split("val", size).x[:n]
        if len(x):
            return x.astype(np.float32)
    except LiverscanError:
        pass
    return np.random.default_rng(0).integers(0, 256, size=(16, size, size, 3)).astype(np.float32)


def export_model(run_dir: str | Path, fmt: str = "tflite", images: np.ndarray | None = None) -> dict:
    """Convert, check agreement with Keras, write ``model.<fmt>`` into the run directory, record it in the card.

    The exported graph gives the probabilities and the pooled features the
    out-of-distribution guard scores; a model whose probabilities or guard scores differ by more
    than 1e-4, or whose guard answer differs on a checked image whose score is not within that
    tolerance of the threshold (:func:`guard_agreement`), is not written.
    A run with a lesion head (``lesion.keras``) also gets ``lesion.<fmt>``, checked on the
    same images (:func:`check_lesion`); when the head shares the classifier's backbone layers (all, or those
    below its first tuned one: :func:`liverscan.core.lesion.shared_backbone_model`), that file is both in one
    graph, checked against both (:func:`write_lesion`; the card's entry says ``shared_backbone_with_classifier``).
    Both files are written or neither.  Returns the
    classifier's figures (as in ``card.exports[fmt]``), with ``lesion``: the head's
    (``card.exports["lesion_<fmt>"]``) when the run has one.
    """
    from liverscan.core.keras_env import backend_name
    from liverscan.core.model import load_model

    if fmt not in FORMATS:  # a bad --runtime: a usage error
        raise ConfigError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    run = load_run(run_dir)
    if run.run_dir is None:
        raise RunDirError(f"{run_dir}: export needs a run directory")
    if backend_name() != "tensorflow":
        raise ExportError(f"{fmt} export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    reference = Reference.for_model(run.run_dir / OOD_FILE, required=bool(run.card.ood))
    images = np.asarray(check_images(run) if images is None else images, dtype=np.float32)
    head = run.run_dir / LESION_FILE
    staged = None
    threshold = float((run.card.lesion or {}).get("threshold", 0.5))
    classifier = load_model(run.model_path)
    try:
        if head.is_file():
            lesion_target = run.run_dir / (LESION_TFLITE_FILE if fmt == "tflite" else LESION_ONNX_FILE)
            staged, figures = _staged_lesion(
                load_model(head), lesion_target, fmt, images, threshold, classifier, reference
            )
        write = write_tflite if fmt == "tflite" else write_onnx
        info = write(classifier, run.run_dir / (TFLITE_FILE if fmt == "tflite" else ONNX_FILE), images, reference)
        run.card.exports[fmt] = info
        if staged is not None:
            staged.replace(lesion_target)
            lesion_info = {**_file_figures(lesion_target), **figures}
            run.card.exports[lesion_export_key(fmt)] = lesion_info
            info = {**info, "lesion": lesion_info}
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)
    run.save_card()
    return info


def write_lesion(
    model,
    target: Path,
    fmt: str,
    images: np.ndarray,
    threshold: float = 0.5,
    classifier=None,
    reference: Reference | None = None,
) -> dict:
    """Convert lesion head ``model`` to ``fmt`` at ``target`` once its maps agree with Keras on ``images``
    (:func:`check_lesion`); returns the figures recorded in the card.

    With the ``classifier`` whose backbone the head shares (all of it, or the layers below its first tuned one:
    :func:`liverscan.core.lesion.shared_backbone_model`), the file is one graph giving the classifier's
    probabilities and guard features too (the shared layers run once), checked against both Keras models;
    ``predict`` then runs it instead of the classifier's own file when the lesion head is on."""
    staged, figures = _staged_lesion(model, target, fmt, images, threshold, classifier, reference)
    try:
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    return {**_file_figures(target), **figures}


def _staged_lesion(
    model,
    target: Path,
    fmt: str,
    images: np.ndarray,
    threshold: float,
    classifier=None,
    reference: Reference | None = None,
) -> tuple[Path, dict]:
    """Convert ``model`` (with ``classifier`` in one graph when they share backbone layers) beside ``target`` (a
    hidden ``.check`` file) and check it: (staged file, figures).  Raises :class:`ExportError` naming ``target``
    (and leaves no staged file) when either fails."""
    from liverscan.core.lesion import shared_backbone_model

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    joint = shared_backbone_model(classifier, model) if classifier is not None else None
    staged = target.with_name(f".{target.name}.check")
    try:
        try:
            _convert(model if joint is None else joint, staged, fmt)
        except ExportError as exc:
            raise ExportError(f"{target.name}: {exc}") from None
        if joint is not None:
            return staged, _joint_figures(
                joint, classifier, model, staged, target.name, fmt, images, reference, threshold
            )
        try:
            figures = check_lesion(model, staged, fmt, images, threshold)
        except ModelError as exc:
            reason = str(exc).removeprefix(f"{staged}: ")
            raise ExportError(f"{target.name}: the exported lesion head does not run ({reason})") from None
        _check_map_tolerance(target.name, figures)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged, figures


def _convert(model, staged: Path, fmt: str) -> None:
    """Write Keras ``model`` converted to ``fmt`` at ``staged``."""
    if fmt == "tflite":
        write_bytes_atomic(staged, _tflite_blob(model))
    else:
        _onnx_file(model, staged)


def _joint_figures(
    joint, classifier, head, staged: Path, name: str, fmt: str, images: np.ndarray, reference, threshold: float
) -> dict:
    """How the converted graph ``joint`` at ``staged`` agrees with the Keras ``head`` (its lesion maps, as
    :func:`check_lesion` asks) and ``classifier`` (probabilities and guard, as :func:`_agreement` asks)."""
    from liverscan.core.lesion import first_unshared_layer, predict_maps
    from liverscan.serving.runtime import OnnxRunner, TFLiteRunner

    runner_class = TFLiteRunner if fmt == "tflite" else OnnxRunner
    try:
        got_p, got_f, got_m = runner_class(staged, batch_size=16).run_all(images)
    except ModelError as exc:
        reason = str(exc).removeprefix(f"{staged}: ")
        raise ExportError(f"{name}: the exported graph does not run ({reason})") from None
    ref_m = predict_maps(head, images)
    if got_m is None or got_m.shape != ref_m.shape:
        raise ExportError(f"{name}: the exported graph gives no lesion map of shape {ref_m.shape[1:]}")
    figures = map_figures(got_m, ref_m, threshold)
    _check_map_tolerance(name, figures, "its lesion map disagrees with the lesion head")
    classifier_figures = _agreement(_with_features(classifier), got_p, got_f, images, reference, name)
    return {
        "outputs": ["probabilities", "features", "lesion probability"],
        "shared_backbone_with_classifier": True,
        "lesion_head_runs_own_layers_from": first_unshared_layer(joint),
        **figures,
        "probabilities_max_abs_difference_vs_keras": classifier_figures.pop("max_abs_difference_vs_keras"),
        **classifier_figures,
        "checked_images": int(len(images)),
    }


def check_lesion(model, exported: Path, fmt: str, images: np.ndarray, threshold: float = 0.5) -> dict:
    """How the exported lesion head at ``exported`` agrees with Keras ``model`` on ``images``: the maps' max
    absolute difference, the share of pixels whose mask (``map >= threshold``) differs, and the Dice of the
    runtime's masks against Keras' over all images (1.0 when both are empty)."""
    from liverscan.core.lesion import predict_maps
    from liverscan.serving.runtime import MapRunner

    got = MapRunner(exported, batch_size=16, kind=fmt).maps(images)
    return {
        "outputs": ["lesion probability"],
        **map_figures(got, predict_maps(model, images), threshold),
        "checked_images": int(len(images)),
    }


def map_figures(got: np.ndarray, ref: np.ndarray, threshold: float) -> dict:
    """How runtime lesion maps ``got`` agree with Keras' ``ref``: the maps' max absolute difference, the share of
    pixels whose mask (``map >= threshold``) differs, and the Dice of the masks over all images (1.0 when both
    are empty)."""
    from liverscan.core.lesion import dice

    mg, mr = got >= threshold, ref >= threshold
    return {
        "max_abs_difference_vs_keras": float(np.abs(got - ref).max()) if got.size else 0.0,
        "threshold": float(threshold),
        "mask_pixels_differing": float(np.mean(mg != mr)) if mg.size else 0.0,
        "mask_dice_vs_keras": dice(mg, mr),
    }


def _check_map_tolerance(name: str, figures: dict, what: str = "exported lesion head disagrees with Keras") -> None:
    """Raise :class:`ExportError` naming ``name`` when :func:`map_figures` ``figures`` exceed the tolerances."""
    if figures["max_abs_difference_vs_keras"] > LESION_TOLERANCE or figures["mask_pixels_differing"] > MASK_TOLERANCE:
        raise ExportError(
            f"{name}: {what} (max abs difference {figures['max_abs_difference_vs_keras']:.2e}, tolerance "
            f"{LESION_TOLERANCE}; masks differ on {figures['mask_pixels_differing']:.2%} of pixels, tolerance "
            f"{MASK_TOLERANCE:.2%})"
        )


def _file_figures(path: Path) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_tflite(model, target: Path, images: np.ndarray, reference: Reference | None = None) -> dict:
    """Convert ``model`` (giving probabilities + features) to TFLite at ``target`` once it agrees with Keras on
    ``images``."""
    from liverscan.serving.runtime import TFLiteRunner

    staged = target.with_name(f".{target.name}.check")
    write_bytes_atomic(staged, _tflite_blob(_with_features(model)))
    return _verified(model, staged, target, TFLiteRunner, images, reference)


def _with_features(model):
    from liverscan.core.model import with_features

    return with_features(model)


def _tflite_blob(model) -> bytes:
    """``model`` (nested functional backbones included) converted to a TFLite flatbuffer."""
    import contextlib
    import io

    from liverscan.core.keras_env import import_keras, native_stderr_silenced

    import_keras()
    import tensorflow as tf

    chatter = io.StringIO()  # the converter prints every TensorSpec of the traced graph
    try:
        with contextlib.redirect_stdout(chatter), native_stderr_silenced():
            return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TFLite conversion failed ({exc.__class__.__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def write_onnx(model, target: Path, images: np.ndarray, reference: Reference | None = None) -> dict:
    """Convert ``model`` (giving probabilities + features) to ONNX at ``target`` once it agrees with Keras on
    ``images``."""
    from liverscan.serving.runtime import OnnxRunner

    staged = target.with_name(f".{target.name}.check")
    _onnx_file(_with_features(model), staged)
    return _verified(model, staged, target, OnnxRunner, images, reference)


def _onnx_file(model, staged: Path) -> None:
    """Write ``model`` converted to ONNX at ``staged`` (nothing left there when conversion fails)."""
    import contextlib
    import importlib.util
    import io
    import warnings

    from liverscan.core.keras_env import native_stderr_silenced

    if importlib.util.find_spec("tf2onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise ExportError('ONNX export needs tf2onnx and onnxruntime: pip install "liverscan[onnx]"')
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), native_stderr_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # input-structure and tf2onnx deprecation warnings
            model(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras exports only a called model
            model.export(str(staged), format="onnx", verbose=False)
        if not staged.is_file():
            raise RuntimeError("no file written")
    except Exception as exc:  # noqa: BLE001
        staged.unlink(missing_ok=True)
        raise ExportError(f"ONNX conversion failed ({exc.__class__.__name__}: {_first_line(exc)})") from None


def _verified(model, staged: Path, target: Path, runner_class, images: np.ndarray, reference) -> dict:
    """Move ``staged`` to ``target`` only when its probabilities and guard answers agree with Keras classifier
    ``model`` (:func:`_agreement`); returns the figures recorded in the card."""
    try:
        got_p, got_f, got_m = runner_class(staged, batch_size=16).run_all(images)
        if got_m is not None:
            raise ExportError(f"{target.name}: the exported graph gives a lesion map nobody checked")
        figures = _agreement(_with_features(model), got_p, got_f, images, reference, target.name)
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    return {
        **_file_figures(target),
        "outputs": ["probabilities", "features"],
        **figures,
        "checked_images": int(len(images)),
    }


def _agreement(both, got_p: np.ndarray, got_f, images: np.ndarray, reference, name: str) -> dict:
    """How a runtime's probabilities ``got_p`` and features ``got_f`` agree with Keras model ``both``
    (probabilities, features) on ``images``; raises :class:`ExportError` when probabilities differ by more than
    1e-4 or a guard answer differs (:func:`guard_agreement`)."""
    from liverscan.core.model import predict_outputs

    ref_p, ref_f = predict_outputs(both, images, batch_size=16)
    if got_f is None or ref_f is None:
        raise ExportError(f"{name}: exported without the pooled features")
    diff = float(np.abs(got_p - ref_p).max())
    fdiff = float(np.abs(got_f - ref_f).max() / max(float(np.abs(ref_f).max()), 1e-12))
    guard = guard_agreement(reference, images, ref_f, got_f)
    same_guard = guard.get("same_in_distribution_as_keras")
    if diff > TOLERANCE or same_guard is False:
        scores_line = (
            f"; guard scores differ by up to {guard['guard_score_max_abs_difference_vs_keras']:.2e}, "
            f"tolerance {guard['guard_score_tolerance']:.1e}"
            if reference is not None
            else ""
        )
        raise ExportError(
            f"{name}: exported model disagrees with Keras (max abs difference {diff:.2e}, tolerance {TOLERANCE}; "
            f"same out-of-distribution answers: {same_guard}{scores_line})"
        )
    return {"max_abs_difference_vs_keras": diff, "feature_max_relative_difference_vs_keras": fdiff, **guard}


def guard_agreement(reference: Reference | None, images: np.ndarray, keras_features, runtime_features) -> dict:
    """How the exported runtime's guard agrees with Keras' on ``images``: the largest difference of their scores,
    and whether their answers (image checks, then score > threshold) agree on every image whose scores are both
    more than the tolerance away from the threshold.  An image within float noise of the threshold (the threshold
    is one calibration image's score) may fall either side on either runtime: it is counted in
    ``images_near_the_guard_threshold``, not held against the export — its scores are still compared.

    ``same_in_distribution_as_keras`` is False when an answer away from the threshold differs or a score differs
    by more than ``guard_score_tolerance`` (1e-4, relative to the threshold from 1 on); None without a reference."""
    if reference is None:
        return {"same_in_distribution_as_keras": None, "images_near_the_guard_threshold": 0}
    from liverscan.core.guard import scores

    tolerance = GUARD_SCORE_TOLERANCE * max(1.0, abs(reference.threshold))
    pixels = np.asarray(images).astype(np.uint8)
    ks, rs = scores(reference, keras_features), scores(reference, runtime_features)
    score_diff = float(np.abs(ks - rs).max()) if len(ks) else 0.0
    near = (np.abs(ks - reference.threshold) <= tolerance) | (np.abs(rs - reference.threshold) <= tolerance)
    keras_side = [v.in_distribution for v in assess(reference, pixels, keras_features)]
    runtime_side = [v.in_distribution for v in assess(reference, pixels, runtime_features)]
    answers = all(k == r or n for k, r, n in zip(keras_side, runtime_side, near))
    return {
        "same_in_distribution_as_keras": bool(answers and score_diff <= tolerance),
        "guard_score_max_abs_difference_vs_keras": score_diff,
        "guard_score_tolerance": tolerance,
        "images_near_the_guard_threshold": int(near.sum()),
    }
