"""Grad-CAM for the liverscan architecture, exact and backend-agnostic.

Grad-CAM weights each channel k of the last convolutional map A (h x w x 1280)
by the spatial mean of d(logit_c)/dA_k.  Here the map is globally average
pooled (f = mean over positions of A) before the head, so
d logit_c / dA_k(i, j) = (1 / hw) * d logit_c / d f_k at every position, and the
head (Dense ReLU -> Dense) has the closed-form gradient
d logit_c / d f = W1 @ (W2[:, c] * [f W1 + b1 > 0]); a linear head has d logit_c / d f = W[:, c].
So the weights come from NumPy, with no backend autodiff, and equal what a
GradientTape would give (dropout is inactive at inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from liverscan.core.keras_env import import_keras


def feature_map_model(model):
    """Pixels -> last convolutional feature map (input of the pooling layer)."""
    keras = import_keras()
    return keras.Model(model.inputs, model.get_layer("pool").input, name="feature_map")


def head_weights(model) -> tuple[np.ndarray, ...]:
    """(W1, b1, W2, b2) of the paper's head, or (W, b) of a linear head."""
    head = model.get_layer("head")
    w2, b2 = (np.asarray(v, dtype=np.float64) for v in head.get_layer("logits").get_weights())
    if "dense" not in {layer.name for layer in head.layers}:
        return w2, b2
    w1, b1 = (np.asarray(v, dtype=np.float64) for v in head.get_layer("dense").get_weights())
    return w1, b1, w2, b2


def gradcam_from_maps(maps: np.ndarray, head_weights, class_indices) -> np.ndarray:
    """Grad-CAM maps (N, h, w) in [0, 1] from feature maps (N, h, w, C) and head weights."""
    a = np.asarray(maps, dtype=np.float64)
    cls = np.asarray(class_indices, dtype=int)
    if len(head_weights) == 2:  # linear head: d logit_c / d f = W[:, c]
        grad_pooled = head_weights[0][:, cls].T
    else:
        w1, b1, w2, _ = head_weights
        active = (a.mean(axis=(1, 2)) @ w1 + b1) > 0  # (N, hidden)
        grad_pooled = (w2[:, cls].T * active) @ w1.T  # (N, C): d logit_c / d f
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
        maps = np.asarray(self.maps.predict_on_batch(x))
        cams = gradcam_from_maps(maps, self.head, class_indices)
        size = x.shape[1]
        return np.stack([upsample(c, size, size) for c in cams])


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with a 'jet' coloured heatmap blended on top (RGB, image resolution)."""
    from matplotlib import colormaps

    base = np.asarray(image, dtype=np.float32)
    h, w = base.shape[:2]
    heat = upsample(heatmap, w, h) if heatmap.shape != (h, w) else heatmap
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    weight = alpha * heat[..., None] ** 0.5  # cold regions stay mostly visible
    out = base * (1 - weight) + colour * weight
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | Path, caption: str = "") -> None:
    """Write the overlay PNG atomically (with a one-line caption strip when given)."""
    import io

    from liverscan.core.fileio import write_bytes_atomic

    img = overlay(image, heatmap)
    if caption:
        from PIL import ImageDraw

        strip = Image.new("RGB", (img.width, 18), (0, 0, 0))
        ImageDraw.Draw(strip).text((4, 3), caption, fill=(255, 255, 255))
        canvas = Image.new("RGB", (img.width, img.height + 18))
        canvas.paste(img, (0, 0))
        canvas.paste(strip, (0, img.height))
        img = canvas
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
