"""Batch prediction: the ``Classifier`` API behind ``liverscan predict`` and the app.

Files are decoded by a small thread pool while the model runs on the previous
batch (:mod:`liverscan.serving.pipeline`); a file that cannot be read becomes a
record with ``error`` set and the run goes on.  Records come out in input order.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from liverscan.core.artifacts import (
    LESION_ONNX_FILE,
    LESION_TFLITE_FILE,
    ONNX_FILE,
    OOD_FILE,
    TFLITE_FILE,
    LoadedRun,
    ModelCard,
    check_file,
    lesion_export_key,
    load_run,
)
from liverscan.core.errors import ConfigError, ImageDecodeError, ModelError, RunDirError
from liverscan.core.guard import Reference, assess
from liverscan.core.images import decode_array
from liverscan.core.operating_point import ARGMAX
from liverscan.serving.inputs import load_bytes, load_checked, resolve_model
from liverscan.serving.lesion import WITHHELD_OUT_OF_DISTRIBUTION, LesionHead
from liverscan.serving.options import DECODERS, PredictOptions
from liverscan.serving.pipeline import decoded_batches
from liverscan.serving.records import OUT_OF_DISTRIBUTION, Prediction
from liverscan.serving.studies import StudyAggregator


class Classifier:
    """A trained liverscan model ready for prediction.

    >>> clf = Classifier.load("runs/xu")            # doctest: +SKIP
    >>> clf.predict(["scan1.png", "scan2.jpg"])     # doctest: +SKIP
    """

    def __init__(
        self,
        card: ModelCard,
        source: Path,
        model_path: Path,
        model: Any = None,
        runner: Any = None,
        options: PredictOptions | None = None,
        reference: Reference | None = None,
        lesion: LesionHead | None = None,
    ):
        options = options or PredictOptions()
        self.options = options
        self.card = card
        self.source = source
        self.model_path = model_path
        self._model = model
        self.runner = runner
        self.runtime = runner.kind if runner is not None else "keras"
        self.classes: list[str] = list(card.classes)
        self.image_size = card.image_size
        self.review_confidence = options.review_confidence
        self.include_dicom_tags = options.include_dicom_tags
        self.max_pixels = options.max_pixels
        #: the out-of-distribution guard: off (``ood=False``), image checks only (no reference), or full
        self.ood = options.ood
        self.reference = reference if options.ood else None
        #: the decision rule: the card's operating point with ``use_operating_point``, else argmax
        self.operating_point = (card.operating_point if options.use_operating_point else None) or ARGMAX
        if options.use_operating_point and not card.operating_point:
            from liverscan.serving.inputs import default_model_dir

            if Path(source).resolve() == default_model_dir().resolve():
                raise RunDirError(
                    "the shipped default model has no operating point; train a model on your data and fit one "
                    "with: liverscan evaluate RUN --fit-operating-point 'tumor>=0.95', then predict with --model RUN"
                )
            raise RunDirError(
                f"{source}: the model card has no operating point; fit one by evaluating this run "
                "with an operating-point goal, e.g. liverscan evaluate RUN --fit-operating-point 'tumor>=0.95'"
            )
        self._gradcam: Any = None  # the Grad-CAM of the Keras model, built on first use
        #: the lesion head (None: the model has none, or ``options.lesion`` is off): every record says where
        self.lesion = lesion if options.lesion else None
        if self.lesion is None and options.lesion and _needs_head(options):
            _no_head(source, options)

    @classmethod
    def load(cls, path: str | Path | None = None, options: PredictOptions | None = None, **changes: Any) -> Classifier:
        """Load a run directory or model file (None: the default model) with ``options``
        (:class:`~liverscan.serving.options.PredictOptions`; keyword ``changes`` replace single ones,
        e.g. ``Classifier.load("runs/xu", runtime="keras")``).

        ``runtime``: ``auto`` uses an exported ``model.tflite`` when present and a
        LiteRT interpreter is installed, else an exported ``model.onnx`` when ONNX
        Runtime is installed (no TensorFlow import, faster on CPU), else the Keras
        model, which is always loaded in safe mode (no embedded code runs).
        ``ood``: apply the out-of-distribution guard stored with the model;
        ``ood_retention`` recomputes its threshold for another retention.
        ``lesion``: load the run's lesion head when its card has one (on the exported
        ``lesion.tflite`` / ``lesion.onnx`` when that runtime is chosen and the file exists).
        """
        from liverscan.serving import runtime as rt

        options = options or PredictOptions()
        if changes:
            options = options.replace(**changes)
        runtime = options.runtime
        run = load_run(resolve_model(path))
        if options.lesion and not run.card.lesion and _needs_head(options):
            _no_head(run.source, options)
        reference = None
        if options.ood:
            reference = Reference.for_model(
                run.model_path.with_name(OOD_FILE),
                options.ood_retention,
                required=bool(run.card.ood),
                k=options.ood_k,
                method=options.ood_method,
            )
        tflite = run.model_path.with_name(TFLITE_FILE)
        onnx = run.model_path.with_name(ONNX_FILE)
        kw: dict[str, Any] = dict(options=options, reference=reference)

        def head(shared: Any = None) -> LesionHead | None:
            """The lesion head; on the classifier's runner ``shared`` when that graph gives the maps itself."""
            if not options.lesion:
                return None
            return LesionHead.load(run.card, run.model_path, runtime, options.batch_size, shared=shared)

        candidates: list[tuple[Path, Any, str]] = []
        if runtime == "tflite" or (runtime == "auto" and tflite.is_file() and rt.available()):
            candidates.append((tflite, rt.TFLiteRunner, "tflite"))
        if runtime == "onnx" or (runtime == "auto" and onnx.is_file() and rt.onnx_available()):
            candidates.append((onnx, rt.OnnxRunner, "onnx"))
        for file, runner_class, name in candidates:
            if not file.is_file():
                raise RunDirError(
                    f"{run.source}: no {file.name}; export it first: liverscan export RUN --runtime {name}"
                )
            joint = run.model_path.with_name(LESION_TFLITE_FILE if name == "tflite" else LESION_ONNX_FILE)
            if options.lesion and _is_joint(run.card, name) and joint.is_file():
                file = joint  # the classifier and the lesion head in one graph: one pass gives all
            again = f"export it again (liverscan export RUN --format {name}) or predict with --runtime keras"
            runner = runner_class(check_file(run.card, file, again), batch_size=options.batch_size)
            if runner.input_shape != (run.image_size, run.image_size, 3):
                raise ModelError(f"{file}: input {runner.input_shape} does not match the model card")
            if runner.output_shape[-1] not in (len(run.classes), None):
                raise ModelError(
                    f"{file}: gives {runner.output_shape[-1]} class probabilities, its model card names "
                    f"{len(run.classes)} classes; {again}"
                )
            if runner.has_features or reference is None:
                return cls(
                    run.card,
                    run.source,
                    run.model_path,
                    runner=runner,
                    lesion=head(runner if runner.has_maps else None),
                    **kw,
                )
            if runtime == name:
                raise ModelError(
                    f"{file}: exported without the features the out-of-distribution guard needs; export it again"
                )
        return cls(run.card, run.source, run.model_path, model=_load_keras(run), lesion=head(), **kw)

    @property
    def notices(self) -> list[str]:
        """What to know about the model itself before reading its answers (e.g. a card no seal vouches for)."""
        from liverscan.core.artifacts import seal_notices

        return seal_notices(self.card)

    @property
    def has_lesion(self) -> bool:
        """Whether records say where (the model's lesion head is in use)."""
        return self.lesion is not None

    @property
    def lesion_status(self) -> str | None:
        """One line on the lesion head (None when the model has none)."""
        if self.lesion is not None:
            if getattr(self.runner, "has_maps", False):
                return self.lesion.describe(", in the classifier's own pass", kind=self.runtime)
            return self.lesion.describe()
        return "off" if self.card.lesion else None

    @property
    def guard_status(self) -> str:
        """One line on what the out-of-distribution guard does for this model."""
        if not self.ood:
            return "off"
        if self.reference is None:
            return "image checks only (this model has no out-of-distribution reference)"
        r = self.reference
        return f"{r.method} k={r.k}, threshold {r.threshold:.4f} (retention {r.retention:.2f})"

    @functools.cached_property
    def _scorer(self):
        """The Keras model giving (probabilities, pooled features)."""
        from liverscan.core.model import with_features

        return with_features(self.model)

    @functools.cached_property
    def model(self):
        """The Keras model (loaded on first use when predictions run on TFLite)."""
        if self._model is not None:
            return self._model
        from liverscan.core.model import load_model

        return load_model(self.model_path)

    @property
    def decision_rule(self) -> str:
        """How records name the rule that decided them."""
        rule = self.operating_point.describe()
        return rule if self.ood else f"{rule} (out-of-distribution guard off)"

    def study_aggregator(self, key: Callable[[Prediction], str], rule: str | None = None) -> StudyAggregator:
        """One answer per group of this classifier's records, decided by its own rule.

        ``rule`` (mean, max, vote) defaults to the aggregation a patient-level operating point was
        fitted with, else ``mean`` — the same for ``predict --group-by``, the app and the Python API."""
        op = self.operating_point
        if rule is None:
            rule = (op.group_rule if op.level == "group" else None) or "mean"
        return StudyAggregator(self.classes, key, rule, op, self.review_confidence, self.decision_rule)

    # -- core -----------------------------------------------------------------

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Raw model probabilities for (N, S, S, 3) 0..255 arrays."""
        return self.outputs(images, batch_size)[0]

    def outputs(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, pooled backbone features or None when the guard does not need them)."""
        if self.runner is not None:
            return self.runner.run(images)
        from liverscan.core.model import predict_outputs, predict_probs

        if self.reference is None:
            return predict_probs(self.model, images, batch_size), None
        return predict_outputs(self._scorer, images, batch_size)

    def _forward(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, features or None, lesion maps or None): the maps come from the same pass when the exported
        graph carries the lesion head (it shares the classifier's backbone), else later from the head itself."""
        if self.lesion is not None and getattr(self.runner, "has_maps", False):
            return self.runner.run_all(images)
        return (*self.outputs(images, batch_size), None)

    def fill_records(self, records: list[Prediction], images: np.ndarray, batch_size: int) -> np.ndarray | None:
        """Set class, confidence, probabilities, review flag and lesion finding of ``records`` from ``images``;
        returns the lesion maps ``(N, S, S)`` (None without a lesion head)."""
        probs, feats, maps = self._forward(images, batch_size)
        idx, shown = self.operating_point.apply(probs)
        checked = [r.image_check for r in records]
        reasons = None if None in checked else [c or None for c in checked]
        verdicts = assess(self.reference, images, feats, reasons) if self.ood else [None] * len(records)
        for rec, k, p, v in zip(records, idx, shown, verdicts):
            if not np.all(np.isfinite(p)):
                rec.fail("the model gave non-finite probabilities (a damaged model?)")
                continue
            rec.predicted_class = self.classes[int(k)]
            rec.confidence = float(p[int(k)])
            rec.probabilities = {c: float(x) for c, x in zip(self.classes, p)}
            rec.decision_rule = self.decision_rule
            if v is not None:
                rec.in_distribution, rec.ood_score, rec.ood_reason = v.in_distribution, v.score, v.reason
            outside = rec.in_distribution is False
            rec.decision = OUT_OF_DISTRIBUTION if outside else rec.predicted_class
            rec.needs_review = outside or rec.confidence < self.review_confidence
        if self.lesion is None:
            return None
        maps = self.lesion.maps(images) if maps is None else maps
        for rec, m in zip(records, maps):
            if rec.error is None:
                width, height = rec.source_size or (self.image_size, self.image_size)
                rec.lesion = self.lesion.finding(m, width, height, rec.probabilities)
                if rec.decision == OUT_OF_DISTRIBUTION:  # the classifier's answer is no evidence: nor is the map
                    rec.lesion = rec.lesion.withhold(WITHHELD_OUT_OF_DISTRIBUTION)
        return maps

    def lesion_maps(self, images: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(N, S, S)`` of the model's lesion head for ``(N, S, S, 3)`` 0..255 images."""
        if self.lesion is None:
            raise ModelError(f"{self.source}: this model has no lesion head (or it is turned off)")
        return self.lesion.maps(images)

    @property
    def _load(self):
        """path -> (record, array) pairs, the guard's image checks included (picklable, for decoding processes)."""
        return functools.partial(
            load_checked,
            size=self.image_size,
            dicom_tags=self.include_dicom_tags,
            max_pixels=self.max_pixels,
            checks=self.ood,
            sampling=self.options.sampling,
        )

    def iter_predict(
        self,
        paths: Iterable[str],
        batch_size: int | None = None,
        workers: int | None = None,
        explain_dir: str | Path | None = None,
        decode: str | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for paths (in input order); decoding overlaps inference.

        Unset arguments come from the classifier's options.  ``decode``: ``threads``, ``processes``
        (``workers`` fresh processes: no shared interpreter lock, for many cores feeding a fast
        accelerator; a script using them needs the ``if __name__ == "__main__":`` guard) or ``auto``
        (processes from 4 workers on).
        """
        o = self.options
        explain = explain_dir if explain_dir is not None else o.explain_dir
        for _, rec, _ in self._iter_indexed(
            paths,
            batch_size or o.batch_size,
            workers or o.workers,
            explain,
            decode or o.decode,
            o.lesion_masks,
            keep_arrays=False,
        ):
            yield rec

    def _iter_indexed(
        self,
        paths: Iterable,
        batch_size: int,
        workers: int,
        explain_dir,
        decode="threads",
        masks=None,
        load=None,
        keep_arrays: bool = True,
    ):
        """(input index, record, model input or None) in input order; a DICOM file gives one per frame.

        ``load`` turns one input into (record, array) pairs (default: read the path); ``masks``: the folder
        for lesion mask PNGs (None: none written).  With a DICOM SR asked for, the records of a DICOM object
        come out once its SR is written (``keep_arrays``: with their model inputs, else with None).
        """
        if decode not in DECODERS:
            raise ConfigError(f"unknown decoding {decode!r} ({', '.join(DECODERS)})")
        processes = decode == "processes" or (decode == "auto" and workers >= 4 and load is None)
        dicom_out = self._dicom_results()
        for items in decoded_batches(paths, load or self._load, batch_size, workers, processes=processes):
            good = [(rec, arr) for _, rec, arr in items if arr is not None]
            maps = None
            if good:
                images = np.stack([a for _, a in good])
                maps = self.fill_records([r for r, _ in good], images, batch_size)
                if masks is not None and maps is not None:
                    self._write_masks(good, maps, Path(masks))
                if explain_dir is not None:
                    self._write_explanations(good, images, Path(explain_dir), maps)
            yield from items if dicom_out is None else dicom_out.batch(items, maps, keep_arrays)
        if dicom_out is not None:
            yield from dicom_out.close()

    def _dicom_results(self):
        """The writer of DICOM SEG / SR results when the options ask for them (else None)."""
        o = self.options
        if o.dicom_seg is None and o.dicom_sr is None:
            return None
        from liverscan.serving.dicom_results import DicomResultWriter

        name = f"liverscan {Path(self.source).name}"
        version = str(self.card.versions.get("liverscan") or "unknown")
        head = self.lesion
        if head is None:
            return DicomResultWriter(None, o.dicom_sr, (name, version))
        return DicomResultWriter(o.dicom_seg, o.dicom_sr, (name, version), head.rule)

    def predict_bytes(self, name: str, data: bytes) -> list[tuple[Prediction, np.ndarray | None]]:
        """(record, model input or None) for an in-memory file such as an upload (DICOM, video: one per frame)."""
        items = load_bytes(name, data, self.image_size, self.max_pixels, sampling=self.options.sampling)
        good = [(rec, arr) for rec, arr in items if arr is not None]
        if good:
            self.fill_records([r for r, _ in good], np.stack([a for _, a in good]), 32)
        return items

    def predict(
        self, inputs: Iterable[str | Path | np.ndarray] | str | Path | np.ndarray, batch_size: int = 32
    ) -> list[Prediction]:
        """Predict paths and/or in-memory images ((H, W[, C]) arrays); returns typed records."""
        return [rec for rec, _ in self._predict_pairs(inputs, batch_size)]

    def _predict_pairs(self, inputs, batch_size: int) -> list[tuple[Prediction, np.ndarray | None]]:
        """(record, model input or None) for every input, in order (DICOM: one per frame)."""
        if isinstance(inputs, (str, Path, np.ndarray)):
            inputs = [inputs]
        inputs = list(inputs)
        slots: list[list[tuple[Prediction, np.ndarray | None]]] = [[] for _ in inputs]
        arrays = [(i, x) for i, x in enumerate(inputs) if isinstance(x, np.ndarray)]
        paths = [(i, str(x)) for i, x in enumerate(inputs) if not isinstance(x, np.ndarray)]
        good: list[tuple[Prediction, np.ndarray]] = []
        for i, x in arrays:
            rec = Prediction(f"<array {i}>")
            try:
                arr = decode_array(x, self.image_size, rec.path)
                rec.source_size = (int(x.shape[1]), int(x.shape[0]))
                good.append((rec, arr))
                slots[i].append((rec, arr))
            except ImageDecodeError as exc:
                rec.fail(exc.reason)
                slots[i].append((rec, None))
        if good:
            self.fill_records([r for r, _ in good], np.stack([a for _, a in good]), batch_size)
        if paths:
            for k, rec, arr in self._iter_indexed([p for _, p in paths], batch_size, 2, None):
                slots[paths[k][0]].append((rec, arr))
        return [pair for slot in slots for pair in slot]

    # -- explanations ------------------------------------------------------------

    def explain(self, inputs, class_name: str | None = None) -> list[tuple[Prediction, np.ndarray]]:
        """Predictions with Grad-CAM heatmaps (S x S, 0..1) of the predicted (or given) class.

        Unreadable inputs get their error record and an all-zero heatmap.
        """
        pairs = self._predict_pairs(inputs, 32)
        out = [(rec, np.zeros((self.image_size, self.image_size))) for rec, _ in pairs]
        ok = [(k, rec, arr) for k, (rec, arr) in enumerate(pairs) if arr is not None and rec.predicted_class]
        if ok:
            cls = [self.classes.index(class_name or rec.predicted_class or "") for _, rec, _ in ok]
            maps = self.heatmaps(np.stack([arr for _, _, arr in ok]), cls)
            for (k, rec, _), heat in zip(ok, maps):
                out[k] = (rec, heat)
        return out

    def heatmaps(self, images: np.ndarray, class_indices) -> np.ndarray:
        """Grad-CAM heatmaps (N, S, S) in 0..1 for the given class of each image."""
        from liverscan.serving.explain import GradCam

        if self._gradcam is None:
            self._gradcam = GradCam(self.model)
        return self._gradcam(images, class_indices)

    def explain_method(self) -> str:
        """What overlays show: ``lesion`` or ``gradcam`` (``auto``: lesion when the model has a lesion head)."""
        method = self.options.explain_method
        if method == "auto":
            return "lesion" if self.lesion is not None else "gradcam"
        return method

    def _write_explanations(self, good, images: np.ndarray, folder: Path, maps: np.ndarray | None = None) -> None:
        """Each record's overlay PNG, captioned with what its record says; a file that cannot be written is that
        record's error (its answer stays), never the run's."""
        from liverscan.core.images import display_image
        from liverscan.serving.explain import gradcam_caption, headline, save_image, save_overlay

        folder.mkdir(parents=True, exist_ok=True)
        lesion = self.lesion if self.explain_method() == "lesion" else None
        if lesion is None:
            heats = self.heatmaps(images, [self.classes.index(r.predicted_class or self.classes[0]) for r, _ in good])
        for k, (rec, arr) in enumerate(good):
            if rec.error:  # e.g. non-finite probabilities: nothing to explain
                continue
            try:
                base = display_image(rec.path) if rec.frame is None else np.repeat(np.repeat(arr, 2, 0), 2, 1)
            except ImageDecodeError:
                base = arr
            target = folder / f"{output_stem(rec)}.png"
            head = headline(rec)
            try:
                if lesion is not None and maps is not None and rec.lesion is not None:
                    from liverscan.serving.lesion import lesion_picture

                    gated = lesion.rule.lesion_probability(rec.probabilities)
                    picture = lesion_picture(base, maps[k], lesion.rule, gated, grey=rec.lesion_withheld)
                    save_image(picture, target, f"{head} | {rec.lesion.caption(lesion.rule)}")
                else:
                    cam = gradcam_caption(head, rec.predicted_class or "", heats[k])
                    save_overlay(base, heats[k], target, cam)
            except OSError as exc:
                rec.fail(f"its overlay {target.name} could not be written ({exc.strerror or exc})")
                continue
            rec.explanation = str(target)

    def _write_masks(self, good, maps: np.ndarray, folder: Path) -> None:
        """Each image's predicted lesion mask as an 8-bit PNG at its own size (255 = lesion), written atomically;
        none for a map that is no finding (out of distribution).  A mask that cannot be written is that record's
        error (its answer stays), never the run's."""
        import io

        from liverscan.core.fileio import write_bytes_atomic
        from liverscan.serving.lesion import mask_image

        assert self.lesion is not None  # masks come from the lesion head's maps
        folder.mkdir(parents=True, exist_ok=True)
        for (rec, _), prob in zip(good, maps):
            if rec.error or rec.lesion_withheld:
                continue
            width, height = rec.source_size or (self.image_size, self.image_size)
            buf = io.BytesIO()
            gated = self.lesion.rule.lesion_probability(rec.probabilities)
            mask_image(prob, width, height, self.lesion.rule, gated).save(buf, format="PNG")
            target = folder / f"{output_stem(rec)}-mask.png"
            try:
                write_bytes_atomic(target, buf.getvalue())
            except OSError as exc:
                rec.fail(f"its lesion mask {target.name} could not be written ({exc.strerror or exc})")
                continue
            rec.lesion_mask = str(target)


#: the most UTF-8 bytes of an input's own stem in the names of what is written about it (the rest of a name -
#: frame, digest, suffix - takes under 40 more), so every name fits a file system's 255-byte limit
STEM_BYTES = 160


def output_stem(rec: Prediction) -> str:
    """A file name stem for what is written about one record: the image's stem (cut to :data:`STEM_BYTES`; and
    frame), and a digest of its full path and frame, so two images of the same name in different folders never
    collide, and a long name still fits the file system."""
    stem = Path(rec.path).stem.encode("utf-8", "surrogateescape")[:STEM_BYTES].decode("utf-8", "ignore")
    stem += f"-frame{rec.frame}" if rec.frame else ""
    digest = hashlib.sha1(f"{Path(rec.path).resolve()}#{rec.frame}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"{stem}-{digest[:8]}"


def _is_joint(card: ModelCard, fmt: str) -> bool:
    """Whether the card's ``fmt`` export of the lesion head is the classifier and the head in one graph."""
    return bool((card.exports or {}).get(lesion_export_key(fmt), {}).get("shared_backbone_with_classifier"))


def _needs_head(options: PredictOptions) -> bool:
    return bool(options.lesion_masks or options.dicom_seg or options.explain_method == "lesion")


def _no_head(source: Path, options: PredictOptions) -> NoReturn:
    asked = (
        "--lesion-masks" if options.lesion_masks else "--dicom-seg" if options.dicom_seg else "--explain-method lesion"
    )
    raise RunDirError(
        f"{source}: this model has no lesion head, which {asked} needs; train on data with lesion outlines"
    )


def _load_keras(run: LoadedRun):
    """The run's Keras model, checked against its card."""
    from liverscan.core.model import load_model

    model = load_model(run.model_path)
    shape = tuple(model.input_shape[1:])
    if shape != (run.image_size, run.image_size, 3) or model.output_shape[-1] != len(run.classes):
        raise ModelError(
            f"{run.model_path}: model shape {shape} -> {model.output_shape[-1]} classes does not "
            f"match its model card ({run.image_size}px, {len(run.classes)} classes)"
        )
    return model
