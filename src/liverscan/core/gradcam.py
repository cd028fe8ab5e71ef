"""Grad-CAM for the liverscan architecture, exact and backend-agnostic.

Grad-CAM weights each channel k of the last convolutional map A (h x w x 1280)
by the spatial mean of d(logit_c)/dA_k.  Here the map is globally average
pooled (f = mean over positions of A) before the head, so
d logit_c / dA_k(i, j) = (1 / hw) * d logit_c / d f_k at every position, and the
head (Dense ReLU -> Dense) has the closed-form gradient
d logit_c / d f = W1 @ (W2[:, c] * [f W1 + b1 > 0]); a linear head has d logit_c / d f = W[:, c].
So the weights come from NumPy, with no backend autodiff, and equal what a
GradientTape would give (dropout is inactive at inference).

With multi-stage features (``model.features: multistage``) the head reads the pooled maps of three stages
concatenated, the last stage (``out_relu``) last: Grad-CAM is taken on that map, with the last C entries
of d logit_c / d f (the mlp head's ReLU pattern from the whole pooled vector). Flip-averaged features mix
two views of the image, so they have no single map to explain: Grad-CAM refuses them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from liverscan.core.keras_env import import_keras


def feature_map_model(model):
    """Pixels -> (last convolutional feature map, pooled feature vector the head reads)."""
    from liverscan.core.errors import ModelError

    keras = import_keras()
    names = {layer.name for layer in model.layers}
    if "mirror" in names:
        raise ModelError("Grad-CAM needs one view of the image; this model averages it with its mirror image")
    pool = model.get_layer("pool")
    last = model.get_layer("pool_out") if "pool_out" in names else pool  # multi-stage: the last stage's pooling
    return keras.Model(model.inputs, [last.input, pool.output], name="feature_map")


def head_weights(model) -> tuple[np.ndarray, ...]:
    """(W1, b1, W2, b2) of the paper's head, or (W, b) of a linear head."""
    head = model.get_layer("head")
    w2, b2 = (np.asarray(v, dtype=np.float64) for v in head.get_layer("logits").get_weights())
    if "dense" not in {layer.name for layer in head.layers}:
        return w2, b2
    w1, b1 = (np.asarray(v, dtype=np.float64) for v in head.get_layer("dense").get_weights())
    return w1, b1, w2, b2


def gradcam_from_maps(maps: np.ndarray, head_weights, class_indices, pooled: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM maps (N, h, w) in [0, 1] from feature maps (N, h, w, C) and head weights; ``pooled``: the whole
    pooled vector the head reads (N, F >= C, the map's own channels last; default: the map's mean)."""
    a = np.asarray(maps, dtype=np.float64)
    f = a.mean(axis=(1, 2)) if pooled is None else np.asarray(pooled, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=int)
    if len(head_weights) == 2:  # linear head: d logit_c / d f = W[:, c]
        grad_pooled = head_weights[0][:, cls].T
    else:
        w1, b1, w2, _ = head_weights
        active = (f @ w1 + b1) > 0  # (N, hidden)
        grad_pooled = (w2[:, cls].T * active) @ w1.T  # (N, F): d logit_c / d f
    grad_pooled = grad_pooled[:, -a.shape[-1] :]  # the entries of this map's channels
    cams = np.maximum(np.einsum("nhwc,nc->nhw", a, grad_pooled), 0.0)
    peak = cams.reshape(len(cams), -1).max(1)
    return np.divide(cams, peak[:, None, None], out=np.zeros_like(cams), where=peak[:, None, None] > 0)


def upsample(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of one (h, w) map to (height, width)."""
    img = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


class GradCam:
    """Grad-CAM heatmaps for a liverscan model."""

    def __init__(self, model):
        self.maps = feature_map_model(model)
        self.head = head_weights(model)

    def __call__(self, images: np.ndarray, class_indices) -> np.ndarray:
        """Heatmaps (N, S, S) in [0, 1] at the model's input resolution."""
        x = np.asarray(images, dtype=np.float32)
        maps, pooled = (np.asarray(o) for o in self.maps.predict_on_batch(x))
        cams = gradcam_from_maps(maps, self.head, class_indices, pooled)
        size = x.shape[1]
        return np.stack([upsample(c, size, size) for c in cams])
