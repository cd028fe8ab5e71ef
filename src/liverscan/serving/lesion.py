"""Where the lesion is: a run's lesion head applied to each image, and its map turned into a finding.

The head (``lesion.keras``, or an exported ``lesion.tflite`` / ``lesion.onnx``) maps the classifier's input
``(N, S, S, 3)`` to a lesion probability per input pixel.  Images are squashed to ``S x S``, so a finding's
coordinates are converted back to pixels of the image as given (its original width and height, EXIF
orientation applied; a DICOM frame's columns and rows) with :func:`liverscan.core.annotations.to_original`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from liverscan.core import lesion as core
from liverscan.core.annotations import to_original
from liverscan.core.errors import ModelError

#: the colour of the predicted outline drawn over an image
OUTLINE_COLOUR = (255, 255, 255)
#: the colour of an outline the classifier's gate opened on a faint map (its peak under the rule's threshold)
GATED_COLOUR = (255, 200, 0)
#: why an out-of-distribution image's lesion map is no finding
WITHHELD_OUT_OF_DISTRIBUTION = "out of distribution: the image is unlike the training images"


@dataclass(frozen=True)
class LesionFinding:
    """Where the lesion head points in one image (pixels of the image as given; ``[x, y]``, continuous).

    ``probability``: the map's maximum; ``found``: the head's :class:`~liverscan.core.lesion.LesionRule` keeps a
    region (the map's peak reached its threshold, or the classifier's lesion probability its gate); ``peak``: the
    most probable pixel's centre (of the strongest region when found); ``bbox`` ``[x0, y0, x1, y1]`` and
    ``outline`` (polygon, the region's largest component): the strongest region (None / empty when none);
    ``area_fraction``: the share of the image all kept regions cover; ``count``: regions kept.  ``gated``: found
    only because the classifier's lesion probability opened the rule's gate (the map's peak stayed under the
    threshold: a faint map).  ``withheld``: why the map is no finding at all (``found`` is then None, and there is
    no outline), e.g. the image is out of distribution.
    """

    found: bool | None
    probability: float
    peak: tuple[float, float]
    bbox: tuple[float, float, float, float] | None
    area_fraction: float
    outline: tuple[tuple[float, float], ...]
    count: int
    gated: bool = False
    withheld: str | None = None

    def withhold(self, reason: str) -> LesionFinding:
        """This finding as no finding: ``found`` None, no outline, the map's peak and ``reason`` kept."""
        return LesionFinding(None, self.probability, self.peak, None, 0.0, (), 0, withheld=reason)

    def caption(self, rule: core.LesionRule | None = None) -> str:
        """One line for an overlay or a table: what the record says of the lesion."""
        if self.withheld is not None:
            return f"lesion map not a finding ({self.withheld})"
        if self.found:
            r = rule or core.LesionRule()
            if self.gated:
                return (
                    f"faint lesion map (peak {self.probability:.2f} < {r.threshold:g}), outlined because the "
                    f"classifier gives {'/'.join(r.gate_classes)} p >= {r.gate:g}"
                )
            return f"lesion, peak {self.probability:.2f} ({r.caption()})"
        return f"no lesion found (max probability {self.probability:.2f})"


def _square(prob_map: np.ndarray) -> np.ndarray:
    p = np.asarray(prob_map, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or not p.size:
        raise ValueError(f"a lesion map must be square (S, S), not {p.shape}")
    return p


def _points(points, width: int, height: int, side: int) -> list[tuple[float, float]]:
    xy = np.round(np.asarray(to_original(points, width, height, side), dtype=np.float64).reshape(-1, 2), 2)
    return [(x, y) for x, y in xy.tolist()]


def find_lesion(
    prob_map: np.ndarray,
    width: int,
    height: int,
    rule: core.LesionRule | None = None,
    lesion_probability: float | None = None,
) -> LesionFinding:
    """The finding of one ``(S, S)`` probability map, in pixels of a ``width`` x ``height`` image, by ``rule``
    (default: ``p >= 0.5``); ``lesion_probability``: the classifier's, for the rule's gate."""
    p = _square(prob_map)
    side = p.shape[0]
    kept = (rule or core.LesionRule()).regions(p, lesion_probability)
    if kept:
        top = kept[0]
        (peak,) = _points([top.peak], width, height, side)
        corners = _points([top.bbox[:2], top.bbox[2:]], width, height, side)
        outline = tuple(_points(top.outline, width, height, side))
        top_value = float(p.max())
        return LesionFinding(
            found=True,
            probability=round(top_value, 6),
            peak=peak,
            bbox=(*corners[0], *corners[1]),
            area_fraction=round(float(sum(r.area_fraction for r in kept)), 6),
            outline=outline,
            count=len(kept),
            gated=top_value < (rule or core.LesionRule()).threshold,
        )
    x, y, value = core.peak(p)
    (peak,) = _points([(x, y)], width, height, side)
    return LesionFinding(False, round(value, 6), peak, None, 0.0, (), 0)


def mask_image(
    prob_map: np.ndarray,
    width: int,
    height: int,
    rule: core.LesionRule | None = None,
    lesion_probability: float | None = None,
) -> Image.Image:
    """The predicted lesion mask at the image's own size: an 8-bit greyscale image, 255 = lesion, 0 elsewhere."""
    p = core.upsample(_square(prob_map), width, height)
    mask = (rule or core.LesionRule()).mask(p, lesion_probability)
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def outlines(
    prob_map: np.ndarray, width: int, height: int, rule: core.LesionRule, lesion_probability: float | None = None
) -> list[np.ndarray]:
    """The outline polygons ``(N, 2)`` [x, y] of every kept region, in pixels of a ``width`` x ``height`` image."""
    p = _square(prob_map)
    return [to_original(r.outline, width, height, p.shape[0]) for r in rule.regions(p, lesion_probability)]


def draw_outlines(image: Image.Image, polygons: list[np.ndarray], colour=OUTLINE_COLOUR) -> Image.Image:
    """A copy of ``image`` (RGB) with closed ``polygons`` (its pixel coordinates) drawn on it."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 256))
    for poly in polygons:
        pts = [(float(x), float(y)) for x, y in np.asarray(poly).reshape(-1, 2)]
        if len(pts) >= 3:
            draw.line(pts + pts[:1], fill=colour, width=width)
    return out


def draw_finding(image: np.ndarray | Image.Image, finding: LesionFinding, source_size: tuple[int, int]) -> Image.Image:
    """``image`` (the image of ``source_size`` = (width, height), shown at any size) with the finding's outline."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    if not finding.outline:
        return img.convert("RGB")
    scale = np.array([img.width / source_size[0], img.height / source_size[1]])
    colour = GATED_COLOUR if finding.gated else OUTLINE_COLOUR
    return draw_outlines(img, [np.asarray(finding.outline, dtype=np.float64) * scale], colour)


def lesion_picture(
    image: np.ndarray | Image.Image,
    prob_map: np.ndarray,
    rule: core.LesionRule,
    lesion_probability: float | None = None,
    grey: bool = False,
):
    """The lesion overlay of one image: its probability map in colour and the predicted outline on top (in
    :data:`GATED_COLOUR` when only the classifier's gate opened it on a faint map).  ``grey``: the map is no
    finding (out of distribution): drawn in grey, with no outline."""
    from liverscan.serving.explain import overlay

    base = np.asarray(image)
    h, w = base.shape[:2]
    p = np.clip(np.asarray(prob_map, dtype=np.float32), 0.0, 1.0)
    if grey:
        return overlay(base, p, colours="Greys_r")
    picture = overlay(base, p)
    colour = OUTLINE_COLOUR if float(p.max(initial=0.0)) >= rule.threshold else GATED_COLOUR
    return draw_outlines(picture, outlines(prob_map, w, h, rule, lesion_probability), colour)


class LesionHead:
    """A run's lesion head: ``maps(images)`` gives ``(N, S, S)`` probabilities for ``(N, S, S, 3)`` pixels 0..255.

    Runs on the Keras model, or on an exported ``lesion.tflite`` / ``lesion.onnx`` through
    :class:`~liverscan.serving.runtime.MapRunner` when that runtime was chosen and the file exists.
    """

    def __init__(
        self,
        path: Path,
        size: int,
        rule: core.LesionRule | None = None,
        model=None,
        runner=None,
        zoom: int = 1,
        flip: bool = False,
    ):
        self.path, self.size, self.zoom, self.flip = Path(path), size, zoom, flip
        self.rule = rule or core.LesionRule()
        self._model, self._runner = model, runner
        self.kind = "keras" if runner is None else str(getattr(runner, "kind", Path(path).suffix.lstrip(".")))
        self.batch_size = 32

    @classmethod
    def load(
        cls, card, model_path: Path, runtime: str = "keras", batch_size: int = 32, shared: Any = None
    ) -> LesionHead | None:
        """The head the card describes (None when the run has none), on ``runtime`` where it was exported
        (``auto``: an exported file whose runtime is installed; else the Keras model).  ``shared``: the
        classifier's runner on a graph that also gives the maps (the head then runs on it: nothing is loaded)."""
        from liverscan.core.artifacts import LESION_FILE, LESION_ONNX_FILE, LESION_TFLITE_FILE

        entry = card.lesion
        if not entry:
            return None
        _prefetch_post_processing()
        folder = Path(model_path).parent
        keep = dict(
            size=card.image_size,
            rule=core.LesionRule.from_entry(entry),
            zoom=int(entry.get("zoom") or 1),
            flip=bool(entry.get("flip")),
        )
        if shared is not None:
            from liverscan.serving.runtime import MapRunner

            head = cls(shared.path, runner=MapRunner(shared.path, runner=shared), **keep)
        else:
            runner = _exported(folder / LESION_TFLITE_FILE, folder / LESION_ONNX_FILE, runtime, batch_size, card)
            if runner is None:
                keras_path = folder / str(entry.get("file") or LESION_FILE)
                head = cls(keras_path, model=_load_keras_head(keras_path, card.image_size, entry), **keep)
            elif tuple(runner.input_shape) != (card.image_size, card.image_size, 3):
                raise ModelError(f"{runner.path}: input {tuple(runner.input_shape)} does not match the model card")
            else:
                head = cls(runner.path, runner=runner, **keep)
        head.batch_size = batch_size
        return head

    def maps(self, images: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(N, S, S)`` float32 for ``(N, S, S, 3)`` images."""
        x = np.asarray(images, dtype=np.float32)
        if self._runner is not None:
            return np.asarray(self._runner.maps(x), dtype=np.float32).reshape(len(x), self.size, self.size)
        from liverscan.core.model import pad_batch

        out = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start : start + self.batch_size]
            pred = np.asarray(self._model.predict_on_batch(pad_batch(chunk, self.batch_size)), dtype=np.float32)
            out.append(pred[: len(chunk), ..., 0])
        return np.concatenate(out) if out else np.zeros((0, self.size, self.size), np.float32)

    def finding(
        self, prob_map: np.ndarray, width: int, height: int, probabilities: dict[str, float] | None = None
    ) -> LesionFinding:
        """The finding of one map; ``probabilities``: the classifier's ``{class: p}`` of the image (the rule's
        gate)."""
        return find_lesion(prob_map, width, height, self.rule, self.rule.lesion_probability(probabilities))

    def describe(self, where: str = "", kind: str | None = None) -> str:
        """One line: runtime (``kind``: another name for it), ``where`` it runs, its passes (zoom, mirror) and its
        outline rule."""
        zoom = f", on the image and on it upsampled up to {self.zoom}x" if self.zoom > 1 else ""
        zoom += (", and on its mirror" if self.zoom == 1 else ", each also mirrored") if self.flip else ""
        r = self.rule
        gate = f" or {'/'.join(r.gate_classes)} p >= {r.gate:g}" if r.gate is not None else ""
        found = f"lesion when peak >= {r.threshold:g}{gate}" if r.extent > 0 else ""
        return f"{kind or self.kind}{where}{zoom}, " + (f"{found}, {r.caption()}" if found else r.caption())


def _prefetch_post_processing() -> None:
    """Import what the post-processing needs (SciPy's ndimage: ~0.3-1 s) in a background thread, so it overlaps
    loading the model and decoding the first batch instead of delaying the first record."""
    import threading

    def load() -> None:
        try:
            import contourpy  # noqa: F401
            import scipy.ndimage  # noqa: F401
        except Exception:  # noqa: BLE001 - the import is retried (and reported) where it is used
            pass

    threading.Thread(target=load, name="liverscan-import-ndimage", daemon=True).start()


def _exported(tflite: Path, onnx: Path, runtime: str, batch_size: int, card=None) -> Any:
    """A MapRunner on the exported head the runtime asks for, when it exists (None: use the Keras head); a file
    that is not the one the card records (``card.exports``) is an error."""
    from liverscan.core.artifacts import check_file
    from liverscan.serving import runtime as rt

    runner_class = getattr(rt, "MapRunner", None)
    if runner_class is None or runtime == "keras":
        return None
    for file, name, usable in ((tflite, "tflite", rt.available), (onnx, "onnx", rt.onnx_available)):
        if (runtime == name or (runtime == "auto" and usable())) and file.is_file():
            if card is not None:
                again = f"export it again (liverscan export RUN --format {name}) or predict with --runtime keras"
                check_file(card, file, again)
            return runner_class(file, batch_size=batch_size)
    return None


def _load_keras_head(path: Path, size: int, entry: dict | None = None):
    from liverscan.core.model import load_model

    if not path.is_file():
        raise ModelError(f"{path}: the model card names a lesion head but the file is missing (or predict --no-lesion)")
    try:
        if path.suffix == ".npz":  # packed float16 weights (the shipped default model): rebuilt from the card
            e = entry or {}
            layers = e.get("layers") or core.DEFAULT_LAYERS
            model = core.load_packed(
                path, size, layers, int(e.get("width") or 32), zoom=int(e.get("zoom") or 1), flip=bool(e.get("flip"))
            )
        else:
            model = load_model(path)
    except ModelError as exc:
        raise ModelError(f"{exc}; predict without the lesion head with --no-lesion") from None
    shape_in, shape_out = tuple(model.input_shape[1:]), tuple(model.output_shape[1:])
    if shape_in != (size, size, 3) or shape_out != (size, size, 1):
        raise ModelError(
            f"{path}: lesion head {shape_in} -> {shape_out} does not match the model card's {size}px input "
            f"(expected ({size}, {size}, 3) -> ({size}, {size}, 1))"
        )
    return model
