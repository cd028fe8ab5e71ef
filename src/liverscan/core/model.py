"""The published architecture, backend-agnostic Keras 3.

``image (0..255) -> Rescaling to [-1, 1] -> MobileNetV2 (frozen, BatchNorm in
inference mode) -> GlobalAveragePooling2D (1280) -> head``, where the head is
``Dropout 0.5 -> Dense 128 ReLU -> Dense n_classes softmax``.

The head is its own small model so that it can be trained on cached backbone
features and then dropped, weights and all, into the full model.

Feature options (``build_model(features=, flip_average=)``), built into the graph: ``multistage`` pools
three stages (``block_6_expand_relu``, ``block_13_expand_relu``, ``out_relu``) and concatenates them;
``flip_average`` averages the pooled features of the image and its horizontal mirror.  The layer named
``pool`` always outputs the vector the head reads.

Preprocessing: the Keras MobileNetV2 ImageNet weights were trained on pixels
scaled to [-1, 1] (``x / 127.5 - 1``, Keras' ``mobilenet_v2.preprocess_input``).
The paper's text mentions [0, 1] scaling with ImageNet statistics, which does
not match what these weights expect; liverscan uses the scaling the backbone was
trained with, and it lives inside the saved model so no caller can get it wrong.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core.errors import ModelError
from liverscan.core.fileio import atomic_path
from liverscan.core.keras_env import import_keras

FEATURES = 1280  # MobileNetV2 alpha 1.0 last-layer channels
BACKBONE_NAME = "backbone"
HEAD_NAME = "head"


class WeightsUnavailable(ModelError):
    """ImageNet weights cannot be downloaded (offline) and are not cached."""


def imagenet_weights_file(alpha: float = 1.0, image_size: int = 160) -> Path:
    """Where Keras caches the no-top MobileNetV2 ImageNet weights (``$KERAS_HOME/models``)."""
    try:
        from keras.src.backend.config import keras_home

        home = Path(os.path.expanduser(keras_home()))
    except ImportError:  # pragma: no cover - keras internals moved
        home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{image_size}_no_top.h5"


#: the input sizes Keras ships ImageNet no-top MobileNetV2 weights for (it uses the 224 file for any other size)
KERAS_WEIGHT_SIZES = (96, 128, 160, 192, 224)


def imagenet_weights_in_use(alpha: float = 1.0, image_size: int = 160) -> Path | None:
    """The cached file ``weights=imagenet`` loads at ``image_size``, or None when none is cached.

    Keras' own file for that size (the 224 one for sizes it has no file for) when cached, else the cached
    file of another size (160 first): no-top convolution weights do not depend on the input size, so any
    of them fits any size (offline, a 224 model gets the 160 weights).
    """
    own = imagenet_weights_file(alpha, image_size if image_size in KERAS_WEIGHT_SIZES else 224)
    others = (imagenet_weights_file(alpha, s) for s in (160, 224, 192, 128, 96))
    return next((f for f in (own, *others) if f.is_file()), None)


#: the initialisers Keras layers name by default (MobileNetV2: convolutions, BatchNorm; Dense)
_INITIALISERS = ("GlorotUniform", "glorot_uniform", "Zeros", "zeros", "Ones", "ones")


def built_without_initialising(build: Callable[[], Any]) -> Any:
    """``build()`` a model whose every weight is overwritten next (saved or ImageNet weights), without
    running Keras' weight initialisers.

    Keras initialises each new variable; under JAX every random initialiser is a program
    compiled per variable shape, which made loading a model take ~14 s of compilation on a
    CPU before the saved weights replaced them all.  While ``build`` runs, the default
    initialisers give NaN instead (no program runs), so a weight that were somehow *not*
    overwritten shows up as non-finite outputs rather than as a silently wrong model.
    Afterwards every layer gets its real initialiser back, so the model saves and
    retrains exactly as one built the usual way.
    """
    keras: Any = import_keras()  # the module, untyped: its classes are bases here

    class _Unset(keras.initializers.Initializer):
        original = ""

        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

        def __call__(self, shape, dtype=None):
            dtype = np.dtype(dtype or "float32")
            return np.full(shape, np.nan if dtype.kind == "f" else 0, dtype=dtype)

        def get_config(self) -> dict:
            return dict(self.kwargs)

    stand_ins = {name: type(f"_Unset{name}", (_Unset,), {"original": name}) for name in _INITIALISERS}
    with keras.saving.custom_object_scope(stand_ins):
        model = build()
    _restore_initialisers(model, _Unset, keras, set())
    return model


def _restore_initialisers(layer, stand_in: Any, keras, seen: set[int]) -> None:
    # stand_in: the _Unset class, built on a Keras base at run time (so typed Any)
    if id(layer) in seen:
        return
    seen.add(id(layer))
    for key, value in list(vars(layer).items()):
        if isinstance(value, stand_in):
            real = keras.initializers.get(
                {"class_name": value.original, "config": value.kwargs} if value.kwargs else value.original
            )
            setattr(layer, key, real)
    for sub in getattr(layer, "layers", ()):
        _restore_initialisers(sub, stand_in, keras, seen)


def build_backbone(image_size: int, weights: str = "imagenet", alpha: float = 1.0):
    """A MobileNetV2 without its top at ``image_size`` with ``weights`` (imagenet | none | a .h5 file path)."""
    keras = import_keras()
    shape = (image_size, image_size, 3)
    spec = (weights or "none").strip()
    if spec.lower() == "none":
        return keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=None)
    if spec.lower() == "imagenet":
        try:
            return built_without_initialising(
                lambda: keras.applications.MobileNetV2(
                    input_shape=shape, alpha=alpha, include_top=False, weights="imagenet"
                )
            )
        except Exception as exc:  # noqa: BLE001 - download failures come in many types
            cached = imagenet_weights_in_use(alpha, image_size)
            if cached is not None:  # offline: another input size's cached file has the same layer shapes
                return build_backbone(image_size, str(cached), alpha)
            target = imagenet_weights_file(alpha, image_size)
            raise WeightsUnavailable(
                f"cannot download the ImageNet MobileNetV2 weights ({exc.__class__.__name__}). "
                f"Offline? Place the file at {target} (the Keras cache) or pass --weights PATH "
                "to a MobileNetV2 no-top .h5 weights file"
            ) from None
    path = Path(spec)
    if not path.is_file():
        raise WeightsUnavailable(f"{path}: weights file not found (use imagenet, none, or a path to a .h5 file)")
    try:
        return built_without_initialising(
            lambda: keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=str(path))
        )
    except Exception as exc:  # noqa: BLE001
        raise WeightsUnavailable(
            f"{path}: not MobileNetV2 no-top weights for {image_size}x{image_size} ({exc})"
        ) from None


HEADS = ("linear", "mlp")


def build_head(
    n_classes: int, dropout: float = 0.5, dense_units: int = 128, n_features: int = FEATURES, kind: str = "mlp"
):
    """The classifier on pooled backbone features.

    ``mlp`` (the paper's): Dropout -> Dense(ReLU) -> Dense(softmax).
    ``linear``: Dense(softmax) alone - a multinomial logistic regression whose weights
    are fitted by scikit-learn (the linear probe) and copied in.
    """
    keras = import_keras()
    if kind not in HEADS:
        raise ModelError(f"unknown head {kind!r} ({', '.join(HEADS)})")
    inp = keras.Input((n_features,), name="features")
    x = inp
    if kind == "mlp":
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    out = keras.layers.Activation("softmax", name="probabilities")(logits)
    return keras.Model(inp, out, name=HEAD_NAME)


#: the pooled features the head reads: ``last`` = the last stage (1280 at alpha 1.0); ``multistage`` = three
#: stages' pooled outputs concatenated (192 + 576 + 1280 = 2048 at alpha 1.0)
FEATURE_SETS = ("last", "multistage")
STAGES = ("block_6_expand_relu", "block_13_expand_relu", "out_relu")


def _flip_layer() -> Any:
    """The registered horizontal-mirror layer (defined on first use: Keras stays out of module import)."""
    global _Mirror
    if _Mirror is None:
        keras: Any = import_keras()

        @keras.saving.register_keras_serializable(package="liverscan", name="HorizontalMirror")
        class HorizontalMirror(keras.layers.Layer):
            """Mirror ``(N, H, W, C)`` images left to right (``keras.ops.flip`` on the width axis)."""

            def call(self, inputs):
                return keras.ops.flip(inputs, axis=2)

            def compute_output_shape(self, input_shape):
                return input_shape

        _Mirror = HorizontalMirror
    return _Mirror


_Mirror: Any = None


def register_layers() -> None:
    """Register liverscan's own layers with Keras (needed before loading a model that uses them)."""
    _flip_layer()


def _stage_backbone(backbone, features: str):
    """``backbone`` itself (``last``) or a model sharing its layers that outputs the three stages' maps."""
    if features == "last":
        return backbone
    keras = import_keras()
    outputs = [backbone.get_layer(name).output for name in STAGES]
    return keras.Model(backbone.inputs, outputs, name=backbone.name)


def _pooled(keras, maps, suffix: str):
    """Global-average-pool each map (and concatenate them): the pooled feature vector of one view."""
    if not isinstance(maps, (list, tuple)):
        return keras.layers.GlobalAveragePooling2D(name=f"pool{suffix}")(maps)
    pools = [
        keras.layers.GlobalAveragePooling2D(name=f"pool_{stage.rsplit('_', 1)[0]}{suffix}")(m)
        for stage, m in zip(STAGES, maps)
    ]
    return keras.layers.Concatenate(name=f"pool{suffix}")(pools)


def build_model(
    n_classes: int,
    image_size: int = 160,
    weights: str = "imagenet",
    alpha: float = 1.0,
    dropout: float = 0.5,
    dense_units: int = 128,
    head: str = "mlp",
    features: str = "last",
    flip_average: bool = False,
):
    """The full classifier: takes ``(N, S, S, 3)`` pixels in 0..255, returns class probabilities.

    ``features``: which pooled backbone features the head reads (:data:`FEATURE_SETS`); ``flip_average``:
    they are the mean of the image's and its horizontal mirror's.  Either way the layer named ``pool``
    outputs the vector the head reads, so feature caching, the out-of-distribution guard and export
    see one feature vector per image.
    """
    keras = import_keras()
    if features not in FEATURE_SETS:
        raise ModelError(f"unknown features {features!r} ({', '.join(FEATURE_SETS)})")
    backbone = _stage_backbone(build_backbone(image_size, weights, alpha), features)
    backbone.name = BACKBONE_NAME
    backbone.trainable = False
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")(inp)
    # BatchNorm stays in inference mode, even when unfrozen
    if flip_average:
        mirrored = _flip_layer()(name="mirror")(x)
        views = [
            _pooled(keras, backbone(v, training=False), f"_{name}") for v, name in ((x, "image"), (mirrored, "mirror"))
        ]
        pooled = keras.layers.Average(name="pool")(views)
    else:
        pooled = _pooled(keras, backbone(x, training=False), "")
    n_features = int(pooled.shape[-1])
    out = build_head(n_classes, dropout, dense_units, n_features, head)(pooled)
    return keras.Model(inp, out, name="liverscan_mobilenet_v2")


def feature_options(model) -> dict[str, Any]:
    """``{"features": ..., "flip_average": ...}`` of a built or loaded classifier, read from its layers."""
    names = {layer.name for layer in model.layers}
    backbone = model.get_layer(BACKBONE_NAME)
    multistage = isinstance(backbone.output, (list, tuple))
    return {"features": "multistage" if multistage else "last", "flip_average": "mirror" in names}


def feature_extractor(model):
    """Model mapping pixels to pooled backbone features (shares weights with ``model``)."""
    keras = import_keras()
    return keras.Model(model.inputs, model.get_layer("pool").output, name="features")


def head_of(model):
    return model.get_layer(HEAD_NAME)


def logits_view(model):
    """A model sharing every layer of ``model`` (full model or head) that outputs the logits.

    Training uses it with ``from_logits=True`` losses: a cross-entropy computed from
    clipped softmax outputs has zero gradient once the softmax saturates on some
    backends (JAX, torch), while from logits it is exact on all of them.
    """
    keras = import_keras()
    if model.name == HEAD_NAME:
        return keras.Model(model.inputs, model.get_layer("logits").output, name="head_logits")
    head_logits = logits_view(head_of(model))
    return keras.Model(model.inputs, head_logits(model.get_layer("pool").output), name="train_view")


def _find_layer(model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if hasattr(layer, "layers"):
            found = _find_layer(layer, name)
            if found is not None:
                return found
    return None


def set_linear_head(model, weights: np.ndarray, bias: np.ndarray) -> None:
    """Put fitted linear-probe weights (features x classes) into a ``linear`` head."""
    model.get_layer(HEAD_NAME).get_layer("logits").set_weights(
        [np.asarray(weights, np.float32), np.asarray(bias, np.float32)]
    )


def copy_trained_weights(src, dst) -> None:
    """Copy backbone / dense / logits weights from a (possibly reloaded) training view into ``dst``."""
    for name in (BACKBONE_NAME, "dense", "logits"):
        s, d = _find_layer(src, name), _find_layer(dst, name)
        if s is not None and d is not None and s is not d:
            d.set_weights(s.get_weights())


def backbone_of(model):
    return model.get_layer(BACKBONE_NAME)


def unfreeze_top_blocks(model, n_blocks: int) -> list[str]:
    """Make the top ``n_blocks`` inverted-residual blocks (and Conv_1) trainable.

    BatchNorm layers stay frozen; returns the names of layers made trainable.
    """
    backbone = backbone_of(model)
    if n_blocks <= 0:
        backbone.trainable = False
        return []
    backbone.trainable = True
    first = 17 - n_blocks  # MobileNetV2 has blocks 1..16
    names = []
    for layer in backbone.layers:
        name = layer.name
        block = None
        if name.startswith("block_"):
            block = int(name.split("_")[1])
        top = name.startswith("Conv_1") or (block is not None and block >= first)
        is_bn = layer.__class__.__name__ == "BatchNormalization"
        layer.trainable = bool(top and not is_bn and layer.weights)
        if layer.trainable:
            names.append(name)
    return names


def calibrate_batchnorm(model, images) -> None:
    """Set the backbone's BatchNorm statistics from one batch of ``images`` (0..255).

    Used only for a randomly initialised backbone (``weights=none``): without
    it, activations shrink towards zero through the 17 blocks and the frozen
    random features carry no information.  With it the random backbone is a
    usable (if weak) fixed feature extractor; pretrained weights never need it.
    """
    calibrate_backbone_batchnorm(backbone_of(model), images)


def calibrate_backbone_batchnorm(backbone, images) -> None:
    """:func:`calibrate_batchnorm` on a bare backbone (inputs in -1..1)."""
    import numpy as np

    keras = import_keras()
    was_trainable = backbone.trainable
    backbone.trainable = True
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in bns]
    try:
        for layer in bns:
            layer.momentum = 0.0
        x = np.asarray(images, dtype=np.float32) / 127.5 - 1.0
        backbone(x, training=True)
    finally:
        for layer, m in zip(bns, momenta):
            layer.momentum = m
        backbone.trainable = was_trainable


def count_params(model) -> dict[str, int]:
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}


def load_packed(path: Path):
    """A model shipped as float16 weights (``weights.npz``) beside a model card that describes its build."""
    import numpy as np

    from liverscan.core.artifacts import read_card

    card = read_card(path.parent)
    b = card.build
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = [data[f"arr_{i}"].astype("float32") for i in range(len(data.files))]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot load packed weights ({exc.__class__.__name__}: {exc})") from None
    model = built_without_initialising(
        lambda: build_model(
            card.n_classes,
            card.image_size,
            "none",
            b["alpha"],
            b["dropout"],
            b["dense_units"],
            b.get("head", "mlp"),
            features=b.get("features", "last"),  # cards written before these options: today's model
            flip_average=bool(b.get("flip_average", False)),
        )
    )
    try:
        model.set_weights(weights)
    except ValueError as exc:
        raise ModelError(f"{path}: weights do not fit the architecture in its model card ({exc})") from None
    return model


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a short final batch so every call has one shape (no re-tracing of the graph)."""
    if len(x) >= size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def with_features(model):
    """A model sharing every layer of ``model`` that outputs (probabilities, pooled backbone features)."""
    keras = import_keras()
    return keras.Model(model.inputs, [model.output, model.get_layer("pool").output], name="probabilities_and_features")


def predict_probs(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities in fixed-shape batches, renormalised to sum to one."""
    return predict_outputs(model, images, batch_size)[0]


def predict_outputs(model, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, pooled features or None) in fixed-shape batches; ``model`` may be a :func:`with_features` model.

    Probabilities are renormalised to sum to one (float32 softmax sums drift by ~1e-7).
    """
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        out = model.predict_on_batch(pad_batch(batch, batch_size))
        p, f = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
        probs.append(np.asarray(p, dtype=np.float64)[: len(batch)])
        if f is not None:
            feats.append(np.asarray(f, dtype=np.float32)[: len(batch)])
    if not probs:
        return np.zeros((0, 0)), None
    p = np.concatenate(probs)
    return p / p.sum(1, keepdims=True), (np.concatenate(feats) if feats else None)


def _load_keras_file(keras, path: Path):
    """``keras.saving.load_model`` in safe mode, with the default initialisers in the saved config named so
    that :func:`built_without_initialising`'s stand-ins apply (a ``.keras`` config names Keras' own classes
    with ``registered_name: null``, which bypasses custom objects)."""
    import io
    import json

    try:
        from keras.src.saving import saving_lib

        buf = io.BytesIO()
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    _name_initialisers(config)
                    data = json.dumps(config).encode("utf-8")
                zout.writestr(item, data)
        buf.seek(0)
        return saving_lib.load_model(buf, compile=False, safe_mode=True)
    except Exception:  # noqa: BLE001 - Keras internals moved, or a damaged file: the usual way says what is wrong
        return keras.saving.load_model(path, compile=False, safe_mode=True)


def _name_initialisers(node) -> None:
    if isinstance(node, dict):
        if (
            node.get("module") == "keras.initializers"
            and node.get("class_name") in _INITIALISERS
            and node.get("registered_name") is None
        ):
            node["registered_name"] = node["class_name"]
        for value in node.values():
            _name_initialisers(value)
    elif isinstance(node, list):
        for value in node:
            _name_initialisers(value)


def save_keras_atomic(model, path: str | Path) -> None:
    """Save a Keras model so that ``path`` is either the old file or the whole new one."""
    with atomic_path(path, suffix=".tmp.keras") as tmp:  # Keras wants the .keras suffix
        model.save(tmp)


def load_model(path: str | Path):
    """Load a saved ``.keras`` model in safe mode (no code embedded in the file runs), or packed weights."""
    keras = import_keras()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.suffix == ".npz":
        return load_packed(path)
    register_layers()
    try:
        return built_without_initialising(lambda: _load_keras_file(keras, path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load model ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
