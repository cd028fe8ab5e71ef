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


def lesion_export_key(fmt: str) -> str:
    """The model card's ``exports`` key of the lesion head's ``fmt`` export (``lesion_tflite``, ``lesion_onnx``)."""
    return f"lesion_{fmt}"


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
    same images (:func:`check_lesion`); both files are written or neither.  Returns the
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
    staged = head_model = None
    threshold = float((run.card.lesion or {}).get("threshold", 0.5))
    try:
        if head.is_file():
            lesion_target = run.run_dir / (LESION_TFLITE_FILE if fmt == "tflite" else LESION_ONNX_FILE)
            head_model = load_model(head)
            staged, figures = _staged_lesion(head_model, lesion_target, fmt, images, threshold)
        write = write_tflite if fmt == "tflite" else write_onnx
        info = write(
            load_model(run.model_path),
            run.run_dir / (TFLITE_FILE if fmt == "tflite" else ONNX_FILE),
            images,
            reference,
            lesion=head_model,
            threshold=threshold,
        )
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


def write_lesion(model, target: Path, fmt: str, images: np.ndarray, threshold: float = 0.5) -> dict:
    """Convert lesion head ``model`` to ``fmt`` at ``target`` once its maps agree with Keras on ``images``
    (:func:`check_lesion`); returns the figures recorded in the card."""
    staged, figures = _staged_lesion(model, target, fmt, images, threshold)
    try:
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    return {**_file_figures(target), **figures}


def _staged_lesion(model, target: Path, fmt: str, images: np.ndarray, threshold: float) -> tuple[Path, dict]:
    """Convert ``model`` beside ``target`` (a hidden ``.check`` file) and check it: (staged file, figures).
    Raises :class:`ExportError` naming ``target`` (and leaves no staged file) when either fails."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (supported: {', '.join(FORMATS)})")
    staged = target.with_name(f".{target.name}.check")
    try:
        try:
            if fmt == "tflite":
                write_bytes_atomic(staged, _tflite_blob(model))
            else:
                _onnx_file(model, staged)
        except ExportError as exc:
            raise ExportError(f"{target.name}: {exc}") from None
        try:
            figures = check_lesion(model, staged, fmt, images, threshold)
        except ModelError as exc:
            reason = str(exc).removeprefix(f"{staged}: ")
            raise ExportError(f"{target.name}: the exported lesion head does not run ({reason})") from None
        if (
            figures["max_abs_difference_vs_keras"] > LESION_TOLERANCE
            or figures["mask_pixels_differing"] > MASK_TOLERANCE
        ):
            raise ExportError(
                f"{target.name}: exported lesion head disagrees with Keras (max abs difference "
                f"{figures['max_abs_difference_vs_keras']:.2e}, tolerance {LESION_TOLERANCE}; masks differ on "
                f"{figures['mask_pixels_differing']:.2%} of pixels, tolerance {MASK_TOLERANCE:.2%})"
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged, figures


def check_lesion(model, exported: Path, fmt: str, images: np.ndarray, threshold: float = 0.5) -> dict:
    """How the exported lesion head at ``exported`` agrees with Keras ``model`` on ``images``: the maps' max
    absolute difference, the share of pixels whose mask (``map >= threshold``) differs, and the Dice of the
    runtime's masks against Keras' over all images (1.0 when both are empty)."""
    from liverscan.core.lesion import dice, predict_maps
    from liverscan.serving.runtime import MapRunner

    got = MapRunner(exported, batch_size=16, kind=fmt).maps(images)
    ref = predict_maps(model, images)
    diff = float(np.abs(got - ref).max()) if got.size else 0.0
    mg, mr = got >= threshold, ref >= threshold
    return {
        "outputs": ["lesion probability"],
        "max_abs_difference_vs_keras": diff,
        "threshold": float(threshold),
        "mask_pixels_differing": float(np.mean(mg != mr)) if mg.size else 0.0,
        "mask_dice_vs_keras": dice(mg, mr),
        "checked_images": int(len(images)),
    }


def _file_figures(path: Path) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _graph(model, lesion):
    """What is exported of classifier ``model``: (probabilities, features), plus the lesion map when ``lesion``
    shares its backbone (one pass gives all three); and the lesion head that map is checked against, or None."""
    from liverscan.core.lesion import shared_backbone_model
    from liverscan.core.model import with_features

    joint = shared_backbone_model(model, lesion) if lesion is not None else None
    return (with_features(model), None) if joint is None else (joint, lesion)


def write_tflite(
    model, target: Path, images: np.ndarray, reference: Reference | None = None, lesion=None, threshold: float = 0.5
) -> dict:
    """Convert ``model`` (probabilities + features, and the map of a ``lesion`` head sharing its backbone) to
    TFLite at ``target`` once it agrees with Keras on ``images``."""
    from liverscan.serving.runtime import TFLiteRunner

    graph, shared = _graph(model, lesion)
    blob = _tflite_blob(graph)
    staged = target.with_name(f".{target.name}.check")
    write_bytes_atomic(staged, blob)
    return _verified(graph, staged, target, TFLiteRunner, images, reference, shared, threshold)


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


def write_onnx(
    model, target: Path, images: np.ndarray, reference: Reference | None = None, lesion=None, threshold: float = 0.5
) -> dict:
    """Convert ``model`` (probabilities + features, and the map of a ``lesion`` head sharing its backbone) to
    ONNX at ``target`` once it agrees with Keras on ``images``."""
    from liverscan.serving.runtime import OnnxRunner

    graph, shared = _graph(model, lesion)
    staged = target.with_name(f".{target.name}.check")
    _onnx_file(graph, staged)
    return _verified(graph, staged, target, OnnxRunner, images, reference, shared, threshold)


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


def _verified(
    both, staged: Path, target: Path, runner_class, images: np.ndarray, reference, lesion=None, threshold: float = 0.5
) -> dict:
    """Move ``staged`` to ``target`` only when its probabilities (<= 1e-4) and guard answers agree with Keras, and
    its lesion map (a graph sharing the backbone with ``lesion``) agrees with that head as :func:`check_lesion` asks."""
    from liverscan.core.model import predict_outputs

    maps: dict = {}
    try:
        got_p, got_f, got_m = runner_class(staged, batch_size=16).run_all(images)
        ref_p, ref_f = predict_outputs(both, images, batch_size=16)
        if got_f is None or ref_f is None:
            raise ExportError(f"{staged.name}: exported without the pooled features")
        if lesion is not None:
            maps = _map_agreement(lesion, got_m, images, threshold)
            if (
                maps["lesion_max_abs_difference_vs_keras"] > LESION_TOLERANCE
                or maps["lesion_mask_pixels_differing"] > MASK_TOLERANCE
            ):
                raise ExportError(
                    f"{target.name}: its lesion map disagrees with the lesion head (max abs difference "
                    f"{maps['lesion_max_abs_difference_vs_keras']:.2e}, masks differ on "
                    f"{maps['lesion_mask_pixels_differing']:.2%} of pixels)"
                )
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
                f"exported model disagrees with Keras (max abs difference {diff:.2e}, tolerance {TOLERANCE}; "
                f"same out-of-distribution answers: {same_guard}{scores_line})"
            )
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    return {
        **_file_figures(target),
        "outputs": ["probabilities", "features"] + (["lesion probability"] if maps else []),
        "max_abs_difference_vs_keras": diff,
        "feature_max_relative_difference_vs_keras": fdiff,
        **guard,
        **maps,
        "checked_images": int(len(images)),
    }


def _map_agreement(lesion, got: np.ndarray | None, images: np.ndarray, threshold: float) -> dict:
    """How an exported graph's lesion maps ``got`` agree with the Keras head ``lesion`` on ``images``."""
    from liverscan.core.lesion import predict_maps

    ref = predict_maps(lesion, images)
    if got is None or got.shape != ref.shape:
        raise ExportError(f"exported graph gives no lesion map of shape {ref.shape[1:]}")
    return {
        "shared_backbone_with_lesion_head": True,
        "lesion_max_abs_difference_vs_keras": float(np.abs(got - ref).max()) if got.size else 0.0,
        "lesion_mask_pixels_differing": float(np.mean((got >= threshold) != (ref >= threshold))) if got.size else 0.0,
    }


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
