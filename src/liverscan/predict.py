"""Batch prediction: the ``Classifier`` API and the streaming pipeline behind ``liverscan predict``.

Files are decoded by a small thread pool while the model runs on the previous
batch; only a bounded window of images is in memory at any time, so a folder
of 100,000 images streams through.  A file that cannot be read becomes a record
with ``error`` set and the run goes on.  Records come out in input order.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from liverscan.errors import ImageDecodeError, LiverscanError, RunDirError
from liverscan.images import IMAGE_SUFFIXES, decode_array, load_image

DEFAULT_REVIEW_CONFIDENCE = 0.6


@dataclass
class Prediction:
    """One prediction record (one image, or one DICOM frame)."""

    path: str
    predicted_class: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    decision_rule: str = "argmax"
    needs_review: bool = False
    error: str | None = None
    frame: int | None = None
    sop_instance_uid: str | None = None
    dicom_tags: dict[str, str] | None = None
    explanation: str | None = None  # path of the Grad-CAM overlay, when written

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["dicom_tags"] is None:
            d.pop("dicom_tags")
        return d


def default_model_dir() -> Path:
    """The model shipped inside the package (``liverscan/models/default``)."""
    return Path(__file__).resolve().parent / "models" / "default"


def resolve_model(model: str | Path | None) -> Path:
    if model is not None:
        return Path(model)
    d = default_model_dir()
    if (d / "model_card.json").is_file():
        return d
    raise RunDirError(
        "no --model given and no default model is installed; train one "
        "(liverscan prepare ... && liverscan train --data PREPARED --out RUN) and pass --model RUN"
    )


# ----------------------------------------------------------------------------- inputs


def expand_inputs(items: Iterable[str], stdin=None) -> Iterator[str]:
    """Files, folders (recursive), globs, or '-' for newline-separated paths on standard input.

    Yields paths lazily (a huge folder is walked, not listed up front); a path
    that does not exist is yielded as is and becomes an error record.
    """
    from liverscan.dicom import DICOM_SUFFIXES

    wanted = IMAGE_SUFFIXES | DICOM_SUFFIXES
    for item in items:
        if item == "-":
            for line in stdin or sys.stdin:
                line = line.strip()
                if line:
                    yield from expand_inputs([line])
            continue
        p = Path(item)
        if p.is_dir():
            for sub in sorted(p.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in wanted and not sub.name.startswith("."):
                    yield str(sub)
        elif p.exists():
            yield str(p)
        elif any(ch in item for ch in "*?["):
            matches = sorted(globlib.glob(item, recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                yield item  # reported as 'no file matches'
            yield from files
        else:
            yield item


# ----------------------------------------------------------------------------- classifier


class Classifier:
    """A trained liverscan model ready for prediction.

    >>> clf = Classifier.load("runs/xu")            # doctest: +SKIP
    >>> clf.predict(["scan1.png", "scan2.jpg"])     # doctest: +SKIP
    """

    def __init__(self, card: dict, source: Path, model_path: Path, model=None, runner=None,
                 use_operating_point: bool = False, review_confidence: float = DEFAULT_REVIEW_CONFIDENCE,
                 include_dicom_tags: tuple[str, ...] = ()):
        self.card = card
        self.source = source
        self.model_path = model_path
        self._model = model
        self.runner = runner
        self.runtime = "tflite" if runner is not None else "keras"
        self.classes: list[str] = list(card["classes"])
        self.image_size = int(card["input"]["size"][0])
        self.review_confidence = review_confidence
        self.include_dicom_tags = tuple(include_dicom_tags)
        self.operating_point = card.get("operating_point") if use_operating_point else None
        if use_operating_point and not self.operating_point:
            raise LiverscanError(
                f"{source}: the model card has no operating point; fit one with "
                f"liverscan evaluate {source} --operating-point \"tumor>=0.95\""
            )
        self._gradcam = None

    @classmethod
    def load(cls, path: str | Path | None = None, use_operating_point: bool = False,
             review_confidence: float = DEFAULT_REVIEW_CONFIDENCE, include_dicom_tags: tuple[str, ...] = (),
             runtime: str = "auto", batch_size: int = 32):
        """Load a run directory or model file (None: the default model).

        ``runtime``: ``auto`` uses an exported ``model.tflite`` when present and a
        LiteRT interpreter is installed (no TensorFlow import, faster on CPU), else
        the Keras model, which is always loaded in safe mode (no embedded code runs).
        """
        from liverscan import runtime as rt
        from liverscan.evaluate import load_run

        if runtime not in ("auto", "keras", "tflite"):
            raise LiverscanError(f"unknown runtime {runtime!r} (auto, keras, tflite)")
        run = load_run(resolve_model(path))
        source = run.run_dir or run.model_path
        tflite = run.model_path.with_name("model.tflite")
        kw = dict(use_operating_point=use_operating_point, review_confidence=review_confidence,
                  include_dicom_tags=include_dicom_tags)
        if runtime == "tflite" or (runtime == "auto" and tflite.is_file() and rt.available()):
            if not tflite.is_file():
                raise LiverscanError(f"{source}: no model.tflite; run liverscan export {source} --format tflite")
            runner = rt.TFLiteRunner(tflite, batch_size=batch_size)
            if runner.input_shape != (run.image_size, run.image_size, 3):
                raise LiverscanError(f"{tflite}: input {runner.input_shape} does not match the model card")
            return cls(run.card, source, run.model_path, runner=runner, **kw)
        model = cls._load_keras(run.model_path, run)
        return cls(run.card, source, run.model_path, model=model, **kw)

    @staticmethod
    def _load_keras(model_path: Path, run):
        from liverscan.model import load_model

        model = load_model(model_path)
        shape = tuple(model.input_shape[1:])
        if shape != (run.image_size, run.image_size, 3) or model.output_shape[-1] != len(run.classes):
            raise LiverscanError(f"{model_path}: model shape {shape} -> {model.output_shape[-1]} classes does not "
                                 f"match its model card ({run.image_size}px, {len(run.classes)} classes)")
        return model

    @property
    def model(self):
        """The Keras model (loaded on first use when predictions run on TFLite)."""
        if self._model is None:
            from liverscan.model import load_model

            self._model = load_model(self.model_path)
        return self._model

    @property
    def decision_rule(self) -> str:
        return f"operating point {self.operating_point['spec']}" if self.operating_point else "argmax"

    # -- core -----------------------------------------------------------------

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Raw model probabilities for (N, S, S, 3) 0..255 arrays."""
        if self.runner is not None:
            return self.runner(images)
        from liverscan.evaluate import predict_probs

        return predict_probs(self.model, images, batch_size)

    def _decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, reported probabilities) under the decision rule."""
        if not self.operating_point:
            return probs.argmax(1), probs
        from liverscan.calibration import apply_temperature, predict_with_rule

        cal = apply_temperature(probs, self.operating_point["temperature"])
        return predict_with_rule(cal, self.operating_point["rule"]), cal

    def fill_records(self, metas: list[Prediction], images: np.ndarray, batch_size: int) -> None:
        probs = self.probabilities(images, batch_size)
        idx, shown = self._decide(probs)
        for rec, k, p in zip(metas, idx, shown):
            rec.predicted_class = self.classes[int(k)]
            rec.confidence = float(p[int(k)])
            rec.probabilities = {c: float(v) for c, v in zip(self.classes, p)}
            rec.decision_rule = self.decision_rule
            rec.needs_review = rec.confidence < self.review_confidence

    def _load(self, path: str) -> list[tuple[Prediction, np.ndarray | None]]:
        from liverscan.dicom import is_dicom_path, read_dicom

        try:
            p = Path(path)
            if not p.exists():
                reason = "no file matches this pattern" if any(ch in path for ch in "*?[") else "file not found"
                raise ImageDecodeError(path, reason)
            if p.is_dir():
                raise ImageDecodeError(path, "is a directory")
            if is_dicom_path(p):
                frames = read_dicom(p, self.image_size, self.include_dicom_tags)
                return [(Prediction(path, frame=f.frame, sop_instance_uid=f.sop_instance_uid,
                                    dicom_tags=f.tags or None), f.array) for f in frames]
            return [(Prediction(path), load_image(p, self.image_size))]
        except ImageDecodeError as exc:
            return [(Prediction(path, error=exc.reason), None)]
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            return [(Prediction(path, error=f"unexpected error: {exc.__class__.__name__}: {exc}"), None)]

    def iter_predict(self, paths: Iterable[str], batch_size: int = 32, workers: int = 2,
                     explain_dir: str | Path | None = None) -> Iterator[Prediction]:
        """Stream predictions for paths (in input order); decoding overlaps inference."""
        for _, rec, _ in self._iter_indexed(paths, batch_size, workers, explain_dir):
            yield rec

    def _iter_indexed(self, paths: Iterable[str], batch_size: int, workers: int, explain_dir):
        """(input index, record, model input or None) in input order; a DICOM file gives one per frame."""
        window = max(4 * batch_size, 16)
        pending: deque[tuple[int, Future]] = deque()
        ready: list[tuple[int, Prediction, np.ndarray | None]] = []
        n_images = 0
        paths = enumerate(paths)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

            def refill() -> None:
                while len(pending) < window:
                    try:
                        k, path = next(paths)
                    except StopIteration:
                        return
                    pending.append((k, pool.submit(self._load, path)))

            refill()
            while pending or ready:
                while pending and n_images < batch_size:
                    k, fut = pending.popleft()
                    items = fut.result()
                    ready.extend((k, rec, arr) for rec, arr in items)
                    n_images += sum(a is not None for _, a in items)
                    refill()
                if ready:
                    yield from self._flush(ready, batch_size, explain_dir)
                    ready, n_images = [], 0

    def _flush(self, items, batch_size: int, explain_dir):
        good = [(rec, arr) for _, rec, arr in items if arr is not None]
        if good:
            images = np.stack([a for _, a in good])
            self.fill_records([r for r, _ in good], images, batch_size)
            if explain_dir is not None:
                self._write_explanations(good, images, Path(explain_dir))
        for k, rec, arr in items:
            yield k, rec, arr

    def predict(self, inputs: Iterable[str | Path | np.ndarray] | str | Path | np.ndarray,
                batch_size: int = 32) -> list[Prediction]:
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
                good.append((rec, arr))
                slots[i].append((rec, arr))
            except ImageDecodeError as exc:
                rec.error = exc.reason
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
        ok = [k for k, (_, arr) in enumerate(pairs) if arr is not None]
        if ok:
            cls = [self.classes.index(class_name or pairs[k][0].predicted_class) for k in ok]
            maps = self.heatmaps(np.stack([pairs[k][1] for k in ok]), cls)
            for k, heat in zip(ok, maps):
                out[k] = (pairs[k][0], heat)
        return out

    def heatmaps(self, images: np.ndarray, class_indices) -> np.ndarray:
        from liverscan.explain import GradCam

        if self._gradcam is None:
            self._gradcam = GradCam(self.model)
        return self._gradcam(images, class_indices)

    def _write_explanations(self, good, images: np.ndarray, folder: Path) -> None:
        from liverscan.explain import save_overlay
        from liverscan.images import display_image

        folder.mkdir(parents=True, exist_ok=True)
        cls = [self.classes.index(r.predicted_class) for r, _ in good]
        maps = self.heatmaps(images, cls)
        for (rec, arr), heat in zip(good, maps):
            stem = Path(rec.path).stem + (f"-frame{rec.frame}" if rec.frame else "")
            digest = hashlib.sha1(f"{Path(rec.path).resolve()}#{rec.frame}".encode()).hexdigest()[:8]
            name = f"{stem}-{digest}.png"
            try:
                base = display_image(rec.path) if rec.frame is None else np.repeat(np.repeat(arr, 2, 0), 2, 1)
            except ImageDecodeError:
                base = arr
            target = folder / name
            save_overlay(base, heat, target, f"{rec.predicted_class} {rec.confidence:.2f} (Grad-CAM)")
            rec.explanation = str(target)
