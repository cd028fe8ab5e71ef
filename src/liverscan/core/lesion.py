"""Lesion localisation: a small decoder on a frozen backbone's multi-scale features, and its post-processing.

Model side (Keras 3, backend agnostic: ``keras.layers`` / ``keras.ops`` only):
- :func:`multiscale_backbone` - a backbone's named intermediate layers as one multi-output model
  (MobileNetV2: :data:`MOBILENET_V2_LAYERS`, strides 2..32);
- :func:`build_decoder` - feature maps -> lesion logits at the finest given scale (an FPN-like top-down path:
  1x1 lateral convolutions, bilinear upsampling, concatenation, one 3x3 convolution per scale);
- :func:`build_lesion_model` - pixels (0..255) -> lesion probability at input resolution, for serving;
- :func:`dice_bce_loss` - soft Dice plus binary cross-entropy, from logits: one Dice over the whole batch (images
  without a lesion, e.g. normals, take part without a 0/0) or each lesion image's own Dice, averaged.

Post-processing (NumPy / SciPy; maps are ``(H, W)`` probabilities; coordinates are continuous map pixels - pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` - so ``annotations.to_original(points, w, h, side)``
maps them to the image): :func:`peak`, :func:`regions` (connected components with bbox / area fraction / peak /
outline polygon), :func:`evidence` (max probability, area fraction, count: candidate classifier inputs),
:func:`outline`, :func:`upsample`, and the scores :func:`dice`, :func:`iou`, :func:`pointing_hit`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

MOBILENET_V2_LAYERS = (
    "block_1_expand_relu",  # stride 2
    "block_3_expand_relu",  # stride 4
    "block_6_expand_relu",  # stride 8
    "block_13_expand_relu",  # stride 16
    "out_relu",  # stride 32
)
STRIDES = dict(zip(MOBILENET_V2_LAYERS, (2, 4, 8, 16, 32)))
DEFAULT_LAYERS = MOBILENET_V2_LAYERS[1:]  # decoder output at stride 4 (40 x 40 at 160 px)
THRESHOLD = 0.5
MIN_AREA = 0.002  # regions smaller than this share of the map are dropped (~51 pixels of 160 x 160)
DICE_KINDS = ("batch", "image")  # the soft Dice of dice_bce_loss: over the whole batch, or per lesion image
MIRROR = "lesion_mirror"  # the mirror layer of a head run on the image and its mirror (build_lesion_model's flip)


# ---------------------------------------------------------------------------------------------- model side


def _keras() -> Any:
    from liverscan.core.keras_env import import_keras

    return import_keras()


def multiscale_backbone(backbone, layers: Sequence[str] = DEFAULT_LAYERS, name: str = "multiscale"):
    """A model sharing ``backbone``'s weights that outputs its named layers, finest first."""
    keras = _keras()
    outputs = [backbone.get_layer(n).output for n in layers]
    return keras.Model(backbone.inputs, outputs, name=name)


def build_decoder(
    shapes: Sequence[Sequence[int | None]],
    width: int = 32,
    n_outputs: int = 1,
    dropout: float = 0.0,
    name: str = "lesion_decoder",
):
    """Decoder from feature maps of ``shapes`` (``(h, w, channels)`` each, finest first, each scale an integer
    multiple of the next) to ``n_outputs`` logit maps at the finest scale.

    Channels: ``2 * width`` on the coarse half of the path, ``width`` on the fine half.
    """
    keras = _keras()
    layers = keras.layers
    inputs = [keras.Input(tuple(s), name=f"features_{i}") for i, s in enumerate(shapes)]
    n = len(inputs)
    x = inputs[-1]
    if dropout > 0:
        x = layers.Dropout(dropout, name="coarse_dropout")(x)
    x = layers.Conv2D(2 * width, 1, activation="relu", name=f"lateral_{n - 1}")(x)
    for i in range(n - 2, -1, -1):
        fine, coarse = shapes[i][0], shapes[i + 1][0]
        factor = int(fine) // int(coarse) if fine and coarse else 2
        ch = 2 * width if i >= n // 2 else width
        x = layers.UpSampling2D(factor, interpolation="bilinear", name=f"up_{i}")(x)
        lateral = layers.Conv2D(ch, 1, activation="relu", name=f"lateral_{i}")(inputs[i])
        x = layers.Concatenate(name=f"merge_{i}")([x, lateral])
        x = layers.Conv2D(ch, 3, padding="same", activation="relu", name=f"smooth_{i}")(x)
    logits = layers.Conv2D(n_outputs, 1, name="lesion_logits")(x)
    return keras.Model(inputs, logits, name=name)


def build_lesion_model(
    backbone,
    decoder=None,
    layers: Sequence[str] = DEFAULT_LAYERS,
    width: int = 32,
    n_outputs: int = 1,
    name: str = "lesion_model",
    zoom: int = 1,
    size: int | None = None,
    flip: bool = False,
):
    """Pixels ``(N, S, S, 3)`` in 0..255 -> lesion probabilities ``(N, S, S, n_outputs)``.

    ``backbone`` takes inputs in -1..1 (MobileNetV2's scaling); ``decoder`` is built here when not given.
    ``zoom`` > 1: the head also runs on the image upsampled (bilinear) to every multiple of ``S`` up to ``zoom x S``
    (fully convolutionally: the backbone and decoder take any size), and the map is the mean of the passes'
    probabilities, each brought back to ``S x S``; small lesions cover more of the backbone's feature cells there.
    ``flip``: every pass also runs on the mirror image (layer ``lesion_mirror``), its map mirrored back into the mean.
    ``size``: ``S`` for a ``backbone`` that takes any size (else its input's).
    """
    keras = _keras()
    size = int(size or backbone.input_shape[1])
    fine = backbone.get_layer(layers[0]).output.shape[1]
    stride = size // int(fine) if fine else STRIDES[layers[0]]  # the decoder's output stride
    if zoom > 1 and backbone.input_shape[1] is not None:
        backbone = any_size_backbone(backbone)
    features = multiscale_backbone(backbone, layers)
    if decoder is None:
        shapes = [tuple(s[1:]) for s in _as_list(features.output_shape)]
        decoder = build_decoder([(None, None, s[-1]) for s in shapes] if zoom > 1 else shapes, width, n_outputs)
    inp = keras.Input((size, size, 3), name="image")
    scale = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")
    sigmoid = keras.layers.Activation("sigmoid", name="lesion_probability")
    mirror: Any = _mirror() if flip else None
    maps = []
    for z in range(1, zoom + 1):
        view = inp if z == 1 else keras.layers.Resizing(z * size, z * size, "bilinear", name=f"zoom_{z}")(inp)
        back = _to_input_size(size, z, stride)
        for mirrored in (False, True) if mirror is not None else (False,):
            outs = features(scale(mirror(view) if mirrored else view), training=False)
            logits = decoder(list(outs) if isinstance(outs, (list, tuple)) else [outs])
            prob = sigmoid(logits if back is None else back(logits))
            maps.append(mirror(prob) if mirrored else prob)
    out = maps[0] if len(maps) == 1 else keras.layers.Average(name="lesion_mean")(maps)
    return keras.Model(inp, out, name=name)


def _mirror():
    """The horizontal-mirror layer of a flipped head (one, shared by its passes: it has no weights)."""
    from liverscan.core.model import _flip_layer

    return _flip_layer()(name=MIRROR)


def _to_input_size(size: int, zoom: int, stride: int):
    """The layer bringing the logits of the pass at ``zoom x size`` (``zoom x size / stride`` a side) to
    ``size x size`` (None: they are already)."""
    keras = _keras()
    side = zoom * size // stride
    if zoom == 1:
        if side == size:
            return None
        return keras.layers.UpSampling2D(size // side, interpolation="bilinear", name="to_input_size")
    return keras.layers.Resizing(size, size, "bilinear", name=f"to_input_size_{zoom}")


def any_size_backbone(backbone):
    """A copy of the functional ``backbone`` (its architecture and weights) that takes images of any size."""
    keras = _keras()
    config = backbone.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_shape"]
            layer["config"]["batch_shape"] = [shape[0], None, None, *shape[3:]]
    twin = keras.Model.from_config(config)
    twin.set_weights(backbone.get_weights())
    return twin


def zoom_of(head) -> int:
    """The largest zoom of a lesion model built by :func:`build_lesion_model` (1: one pass at the input size)."""
    names = {layer.name for layer in head.layers}
    return max([1, *(int(n.split("_")[1]) for n in names if n.startswith("zoom_") and n.split("_")[1].isdigit())])


def flip_of(head) -> bool:
    """Whether a lesion model built by :func:`build_lesion_model` also runs each pass on the mirror image."""
    return any(layer.name == MIRROR for layer in head.layers)


def shared_backbone_model(classifier, head):
    """One graph giving (probabilities, pooled features, lesion probability map) with the backbone layers both
    models share run once, or None when they share none (other weights or layers, a head tuned from the first
    layer on, a classifier averaging mirror images).

    The shared part is the classifier's backbone up to the first layer whose weights differ in ``head``'s (for a
    head tuned from ``lesion.fine_tune_from``, that layer): the head's features below it are read from the
    classifier's pass, and only its tuned rest runs on top of it (all of it shared for a head on the frozen
    backbone).  Uses the two models' own layers (no copies of weights)."""
    from liverscan.core.model import BACKBONE_NAME, HEAD_NAME, STAGES, feature_options

    keras = _keras()
    options = feature_options(classifier)
    if options["flip_average"]:
        return None
    backbone = classifier.get_layer(BACKBONE_NAME)
    try:
        multiscale = head.get_layer("multiscale")
        decoder = head.get_layer("lesion_decoder")
        sigmoid = head.get_layer("lesion_probability")
    except ValueError:
        return None
    if not _outputs_are(multiscale, DEFAULT_LAYERS):
        return None
    split = _first_tuned_layer(backbone, multiscale)
    if split == 0:
        return None
    order = {layer.name: i for i, layer in enumerate(multiscale.layers)}
    shared = [n for n in DEFAULT_LAYERS if split is None or order[n] < split]
    tuned = [n for n in DEFAULT_LAYERS if n not in shared]
    needed = list(dict.fromkeys([*(STAGES if options["features"] == "multistage" else (DEFAULT_LAYERS[-1],)), *shared]))
    outputs = [backbone.get_layer(n).output for n in needed]
    try:
        if tuned:
            cut = multiscale.layers[split]
            if isinstance(cut.input, (list, tuple)):
                return None
            rest = keras.Model(cut.input, [multiscale.get_layer(n).output for n in tuned], name="lesion_tuned_layers")
            outputs.append(backbone.get_layer(cut.name).input)
        trunk = keras.Model(backbone.inputs, outputs, name="shared_backbone")
    except (ValueError, TypeError):  # the tuned layers read more than the one cut tensor
        return None
    inp = keras.Input(tuple(classifier.input_shape[1:]), name="image")
    x = classifier.get_layer("scale_to_unit_range")(inp)
    outs = list(trunk(x, training=False))
    mine = dict(zip(needed, outs))  # the classifier's backbone
    theirs = {n: mine[n] for n in shared}  # the head's features
    if tuned:
        got = rest(outs[-1], training=False)
        theirs.update(zip(tuned, got if isinstance(got, (list, tuple)) else [got]))
    if options["features"] == "last":
        pooled = classifier.get_layer("pool")(mine[DEFAULT_LAYERS[-1]])
    else:  # the classifier's own per-stage pooling layers, then its concatenation
        stages = [classifier.get_layer(f"pool_{stage.rsplit('_', 1)[0]}")(mine[stage]) for stage in STAGES]
        pooled = classifier.get_layer("pool")(stages)
    probs = classifier.get_layer(HEAD_NAME)(pooled)
    names = {layer.name for layer in head.layers}

    def probability(logits, z: int):
        back = "to_input_size" if z == 1 else f"to_input_size_{z}"
        return sigmoid(head.get_layer(back)(logits) if back in names else logits)

    maps = [probability(decoder([theirs[n] for n in DEFAULT_LAYERS]), 1)]
    mirror = head.get_layer(MIRROR) if MIRROR in names else None
    # the zoomed and mirrored passes run the head's own backbone on the upsampled / mirrored image
    for z in range(1, zoom_of(head) + 1):
        view = inp if z == 1 else head.get_layer(f"zoom_{z}")(inp)
        for mirrored in (False, True) if mirror is not None else (False,):
            if z == 1 and not mirrored:  # the pass on the classifier's backbone, above
                continue
            x = classifier.get_layer("scale_to_unit_range")(mirror(view) if mirrored else view)  # the same scaling
            outs = multiscale(x, training=False)
            prob = probability(decoder(list(outs) if isinstance(outs, (list, tuple)) else [outs]), z)
            maps.append(mirror(prob) if mirrored else prob)
    prob = maps[0] if len(maps) == 1 else head.get_layer("lesion_mean")(maps)
    return keras.Model(inp, [probs, pooled, prob], name="classifier_and_lesion")


def first_unshared_layer(joint) -> str | None:
    """The first backbone layer the lesion head of :func:`shared_backbone_model`'s graph ``joint`` runs on its own
    (None: it shares the whole backbone)."""
    try:
        rest = joint.get_layer("lesion_tuned_layers")
    except ValueError:
        return None
    return next(layer.name for layer in rest.layers if type(layer).__name__ != "InputLayer")


def _first_tuned_layer(backbone, multiscale) -> int | None:
    """Index in ``multiscale.layers`` (an order in which every layer follows the layers it reads) of the first
    layer whose weights differ from ``backbone``'s layer of that name (None: all equal; 0: nothing to share,
    including another architecture)."""

    def names(model) -> list[str]:
        return sorted(layer.name for layer in model.layers if type(layer).__name__ != "InputLayer")

    if names(backbone) != names(multiscale):
        return 0
    for i, layer in enumerate(multiscale.layers):
        if type(layer).__name__ == "InputLayer":
            continue
        a, b = backbone.get_layer(layer.name).get_weights(), layer.get_weights()
        if len(a) != len(b) or any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a, b)):
            return 0 if i <= 1 else i  # the first layer after the input differs: nothing is shared
    return None


def _outputs_are(model, layers: Sequence[str]) -> bool:
    """Whether ``model``'s outputs are those of its layers named ``layers``, in that order."""
    try:
        return len(model.outputs) == len(layers) and all(
            model.get_layer(name).output is out for name, out in zip(layers, model.outputs)
        )
    except ValueError:  # no such layer
        return False


def save_packed(model, path) -> None:
    """A lesion model's weights as float16 (``.npz``, about half the size; rebuilt by :func:`load_packed`)."""
    from liverscan.core.fileio import npz_bytes, write_bytes_atomic

    write_bytes_atomic(path, npz_bytes(*[np.asarray(w).astype(np.float16) for w in model.get_weights()]))


def load_packed(
    path,
    size: int,
    layers: Sequence[str] = DEFAULT_LAYERS,
    width: int = 32,
    alpha: float = 1.0,
    zoom: int = 1,
    flip: bool = False,
):
    """The lesion model of float16 weights ``path`` (:func:`save_packed`): the architecture of
    :func:`build_lesion_model` at ``size`` with a random-initialised MobileNetV2, then the weights (as float32)."""
    from liverscan.core.errors import ModelError

    keras = _keras()
    shape = (None, None, 3) if zoom > 1 else (size, size, 3)  # a zoom's passes take any size
    backbone = keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=None)
    model = build_lesion_model(backbone, layers=layers, width=width, zoom=zoom, size=size, flip=flip)
    try:
        with np.load(path) as z:
            weights = [z[f"arr_{i}"].astype(np.float32) for i in range(len(z.files))]
        model.set_weights(weights)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: not packed weights of this lesion head ({exc.__class__.__name__})") from None
    return model


def _as_list(shapes) -> list:
    """A model's ``output_shape`` as a list of shapes (one output gives a bare shape)."""
    return list(shapes) if shapes and isinstance(shapes[0], (list, tuple)) else [shapes]


def dice_bce_loss(bce_weight: float = 1.0, smooth: float = 1.0, dice: str = "batch"):
    """Loss ``(y_true, logits)``: ``1 - soft Dice`` + weighted BCE.

    ``dice="batch"``: one Dice over the whole batch (channel by channel, averaged), so large lesions weigh most;
    ``"image"``: each image's own Dice, averaged over the images with a lesion in view (none: 0), so a small
    lesion counts as much as a large one - images without one learn "no lesion" from the BCE.
    """
    if dice not in DICE_KINDS:
        raise ValueError(f"dice must be one of {', '.join(DICE_KINDS)}, not {dice!r}")
    keras = _keras()
    ops = keras.ops

    def loss(y_true, logits):
        y_true = ops.cast(y_true, logits.dtype)
        prob = ops.sigmoid(logits)
        if dice == "batch":
            axes = (0, 1, 2)
            inter = ops.sum(y_true * prob, axis=axes)
            total = ops.sum(y_true, axis=axes) + ops.sum(prob, axis=axes)
            dice_loss = 1.0 - ops.mean((2.0 * inter + smooth) / (total + smooth))
        else:
            axes = (1, 2, 3)
            inter = ops.sum(y_true * prob, axis=axes)
            truth = ops.sum(y_true, axis=axes)
            per_image = 1.0 - (2.0 * inter + smooth) / (truth + ops.sum(prob, axis=axes) + smooth)
            has = ops.cast(truth > 0, logits.dtype)
            dice_loss = ops.sum(per_image * has) / ops.maximum(ops.sum(has), 1.0)
        # numerically stable BCE from logits
        bce = ops.mean(ops.relu(logits) - logits * y_true + ops.log1p(ops.exp(-ops.abs(logits))))
        return dice_loss + bce_weight * bce

    return loss


def predict_maps(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Lesion probability maps ``(N, S, S)`` float32 of a lesion head (Keras) for ``images`` (pixels 0..255).

    The model is called directly on each batch (no compiled predict function: a one-off pass is faster without
    tracing one)."""
    import warnings

    keras = _keras()
    out = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start : start + batch_size], np.float32)
        with warnings.catch_warnings():  # a loaded model's one input is a list of one: the call matches it up
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            y = model(x, training=False)
        out.append(np.asarray(keras.ops.convert_to_numpy(y), np.float32)[..., 0])
    return np.concatenate(out) if out else np.zeros((0, *np.shape(images)[1:3]), np.float32)


# ---------------------------------------------------------------------------------------------- post-processing


@dataclass
class Region:
    """One connected region of a thresholded probability map (continuous map-pixel coordinates)."""

    score: float  # max probability inside
    mean: float  # mean probability inside
    area_fraction: float  # share of the whole map
    peak: tuple[float, float]  # (x, y) of the most probable pixel's centre
    bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1), pixel edges
    mask: np.ndarray = field(repr=False, compare=False)  # the region's pixels inside its bbox

    @functools.cached_property
    def outline(self) -> np.ndarray:
        """(N, 2) [x, y] polygon around the region (traced on first use: most callers need only the top one's)."""
        polys = outline(self.mask)
        return polys[0] + [self.bbox[0], self.bbox[1]] if polys else np.zeros((0, 2))


def upsample(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ``(h, w)`` map resized (bilinear, squashed like the images) to ``(height, width)`` float32."""
    im = Image.fromarray(np.asarray(prob, dtype=np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(im, dtype=np.float32)


def peak(prob: np.ndarray, smooth: float = 0.0) -> tuple[float, float, float]:
    """(x, y, value) of the map's maximum (its pixel centre), after an optional Gaussian ``smooth`` (pixels)."""
    p = np.asarray(prob, dtype=np.float32)
    if smooth > 0:
        from scipy import ndimage

        p = ndimage.gaussian_filter(p, smooth, mode="nearest")
    row, col = np.unravel_index(int(np.argmax(p)), p.shape)
    return col + 0.5, row + 0.5, float(np.asarray(prob)[row, col])


def outline(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(N, 2)`` [x, y] around the true pixels of ``mask`` (marching squares on the pixel-centre
    grid, level 0.5; the pixel edge lies between), largest first."""
    import contourpy

    m = np.pad(np.asarray(mask, dtype=np.float64), 1)
    gen = contourpy.contour_generator(z=m, line_type=contourpy.LineType.Separate)
    lines = [np.asarray(line, dtype=np.float64) - 1.0 + 0.5 for line in gen.lines(0.5)]
    lines = [line[:-1] if len(line) > 1 and np.allclose(line[0], line[-1]) else line for line in lines]
    from liverscan.core.annotations import polygon_area

    lines = [line for line in lines if len(line) >= 3]
    return sorted(lines, key=polygon_area, reverse=True)


def regions(prob: np.ndarray, threshold: float = THRESHOLD, min_area: float = MIN_AREA) -> list[Region]:
    """Connected regions (8-connectivity) of ``prob >= threshold`` covering at least ``min_area`` of the map,
    most probable first."""
    from scipy import ndimage

    p = np.asarray(prob, dtype=np.float32)
    labels, n = ndimage.label(p >= threshold, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    found = []
    total = p.size
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        inside = labels[sl] == k
        area = int(inside.sum())
        if area / total < min_area:
            continue
        vals = np.where(inside, p[sl], -np.inf)
        r, c = np.unravel_index(int(np.argmax(vals)), vals.shape)
        found.append(
            Region(
                score=float(vals[r, c]),
                mean=float(p[sl][inside].mean()),
                area_fraction=area / total,
                peak=(sl[1].start + c + 0.5, sl[0].start + r + 0.5),
                bbox=(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)),
                mask=inside,
            )
        )
    return sorted(found, key=lambda g: g.score, reverse=True)


def predicted_mask(
    prob: np.ndarray, threshold: float = THRESHOLD, min_area: float = MIN_AREA, keep_peak: bool = False
) -> np.ndarray:
    """``prob >= threshold`` without regions smaller than ``min_area`` of the map (``keep_peak``: but the region
    of the map's maximum)."""
    from scipy import ndimage

    p = np.asarray(prob, dtype=np.float32)
    m = p >= threshold
    if min_area <= 0 or not m.any():
        return m
    labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area * p.size
    if keep_peak:
        keep[labels.flat[int(np.argmax(p))]] = True
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class LesionRule:
    """When a lesion map shows a lesion and which of its pixels are the lesion: the one home of that decision
    (``predict``, masks, overlays, DICOM SEG, ``evaluate`` and the out-of-fold figures all apply it).

    A lesion is found when the map's peak reaches ``threshold`` or, with a ``gate``, when the classifier gives the
    lesion classes (``gate_classes``) together at least ``gate`` probability: the classifier has said "tumour", so
    the head shows where it sees most.  Its pixels: with ``extent`` 0, ``p >= threshold``; else
    ``p >= max(floor, extent * peak)`` - the map around its peak down to a share of the peak's own height, so a
    faint small lesion keeps its outline.  Regions under ``min_area`` of the map are dropped, except (with an
    ``extent``) the peak's own.  A card without ``extent`` (an older run) keeps ``p >= threshold``.
    """

    threshold: float = THRESHOLD
    min_area: float = MIN_AREA
    extent: float = 0.0
    floor: float = 0.0
    gate: float | None = None
    gate_classes: tuple[str, ...] = ()

    @classmethod
    def from_entry(cls, entry: Any) -> LesionRule:
        """The rule of a model card's ``lesion`` section (missing keys: the older ``p >= threshold`` rule)."""
        e = dict(entry or {})
        gate = e.get("gate")
        return cls(
            threshold=float(e.get("threshold", THRESHOLD)),
            min_area=float(e.get("min_area", MIN_AREA)),
            extent=float(e.get("extent") or 0.0),
            floor=float(e.get("floor") or 0.0),
            gate=None if gate is None or not e.get("gate_classes") else float(gate),
            gate_classes=tuple(str(c) for c in e.get("gate_classes") or ()),
        )

    def to_entry(self) -> dict[str, Any]:
        """The card keys of this rule."""
        return {
            "threshold": self.threshold,
            "min_area": self.min_area,
            "extent": self.extent,
            "floor": self.floor,
            "gate": self.gate,
            "gate_classes": list(self.gate_classes),
        }

    def lesion_probability(self, probabilities: Any) -> float | None:
        """The classifier's probability of the lesion classes from ``{class: p}`` (None: no gate, or none given)."""
        if self.gate is None or not probabilities:
            return None
        return float(sum(float(probabilities.get(c, 0.0)) for c in self.gate_classes))

    def shows(self, peak_value: float, lesion_probability: float | None = None) -> bool:
        """Whether a map of this peak (and the classifier's lesion probability) shows a lesion."""
        if peak_value >= self.threshold:
            return True
        gated = self.gate is not None and lesion_probability is not None and lesion_probability >= self.gate
        return bool(gated and self.extent > 0 and peak_value > 0)

    def cut(self, peak_value: float) -> float:
        """The probability from which a pixel of a map of this peak is lesion."""
        return self.threshold if self.extent <= 0 else max(self.floor, self.extent * float(peak_value))

    def regions(self, prob: np.ndarray, lesion_probability: float | None = None) -> list[Region]:
        """The lesion's regions in ``prob``, most probable first (empty: no lesion)."""
        p = np.asarray(prob, dtype=np.float32)
        top = float(p.max()) if p.size else 0.0
        if not p.size or not self.shows(top, lesion_probability):
            return []
        if self.extent <= 0:
            return regions(p, self.threshold, self.min_area)
        found = regions(p, self.cut(top), 0.0)
        return [r for k, r in enumerate(found) if k == 0 or r.area_fraction >= self.min_area]

    def mask(self, prob: np.ndarray, lesion_probability: float | None = None) -> np.ndarray:
        """The lesion's pixels of ``prob`` (any size) as a bool mask."""
        p = np.asarray(prob, dtype=np.float32)
        top = float(p.max()) if p.size else 0.0
        if not p.size or not self.shows(top, lesion_probability):
            return np.zeros(p.shape, bool)
        return predicted_mask(p, self.cut(top), self.min_area, keep_peak=self.extent > 0)

    def describe(self) -> str:
        """One line for cards, reports and captions."""
        if self.extent <= 0:
            return f"p >= {self.threshold:g} over at least {self.min_area:g} of the image"
        gate = (
            f" or the classifier gives {'/'.join(self.gate_classes)} p >= {self.gate:g}"
            if self.gate is not None
            else ""
        )
        return (
            f"found when the map's peak is >= {self.threshold:g}{gate}; outline p >= max({self.floor:g}, "
            f"{self.extent:g} x peak); other regions under {self.min_area:g} of the image dropped"
        )

    def caption(self) -> str:
        """What an overlay's outline is, in a few words."""
        if self.extent <= 0:
            return f"outline p >= {self.threshold:g}"
        return f"outline p >= max({self.floor:g}, {self.extent:g} x peak)"


def evidence(prob: np.ndarray, threshold: float = THRESHOLD, min_area: float = MIN_AREA) -> dict[str, float]:
    """Summary numbers of one map, candidate inputs to a classifier: ``max`` probability, ``area_fraction``
    of the kept regions, region ``count``, ``mean`` probability, ``top_mean`` (mean of the top 1 % pixels)."""
    p = np.asarray(prob, dtype=np.float32)
    mask = predicted_mask(p, threshold, min_area)
    from scipy import ndimage

    _, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    k = max(1, p.size // 100)
    top = np.partition(p.ravel(), p.size - k)[-k:]
    return {
        "max": float(p.max()),
        "area_fraction": float(mask.mean()),
        "count": float(count),
        "mean": float(p.mean()),
        "top_mean": float(top.mean()),
    }


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    s = p.sum() + t.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(p, t).sum() / s)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    u = np.logical_or(p, t).sum()
    return 1.0 if u == 0 else float(np.logical_and(p, t).sum() / u)


def pointing_hit(prob: np.ndarray, true: np.ndarray, smooth: float = 0.0) -> bool:
    """Whether the map's peak falls inside ``true`` (a bool mask of any size; the map is scaled onto it)."""
    x, y, _ = peak(prob, smooth)
    h, w = np.asarray(prob).shape
    th, tw = true.shape
    col, row = int(x * tw / w), int(y * th / h)
    return bool(true[min(row, th - 1), min(col, tw - 1)])
