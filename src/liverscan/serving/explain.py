"""Explanation overlays: heatmaps and lesion maps blended over the image, with captions.

Grad-CAM itself (exact, closed form, backend-agnostic) lives in :mod:`liverscan.core.gradcam`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from liverscan.core.gradcam import GradCam, feature_map_model, gradcam_from_maps, head_weights, upsample
from liverscan.serving.records import OUT_OF_DISTRIBUTION

__all__ = [
    "GradCam",
    "captioned",
    "feature_map_model",
    "gradcam_caption",
    "gradcam_from_maps",
    "head_weights",
    "headline",
    "overlay",
    "save_image",
    "save_overlay",
    "upsample",
]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colours: str = "jet") -> Image.Image:
    """The image with a coloured heatmap blended on top (RGB, image resolution); ``colours``: a Matplotlib colour
    map (``jet``; ``Greys_r`` for a map shown only for what it is, no finding)."""
    from matplotlib import colormaps

    base = np.asarray(image, dtype=np.float32)
    h, w = base.shape[:2]
    heat = upsample(heatmap, w, h) if heatmap.shape != (h, w) else heatmap
    colour = colormaps[colours](heat)[..., :3] * 255.0
    weight = alpha * heat[..., None] ** 0.5  # cold regions stay mostly visible
    out = base * (1 - weight) + colour * weight
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def headline(rec) -> str:
    """What a prediction record answers, in a few words for a caption: ``tumor 0.92``, or, when the guard found
    the image out of distribution, ``out of distribution (model output tumor 0.57, not an answer)``."""
    said = f"{rec.predicted_class} {rec.confidence:.2f}" if rec.confidence is not None else str(rec.predicted_class)
    if rec.decision == OUT_OF_DISTRIBUTION:
        return f"out of distribution (model output {said}, not an answer)"
    return said


def gradcam_caption(head: str, class_name: str, heatmap: np.ndarray) -> str:
    """The caption of a Grad-CAM overlay: ``head`` (what the record says, see :func:`headline`) and the class the
    map explains; an all-zero map is said to show nothing, never shown silently."""
    if not np.any(np.asarray(heatmap) > 0):
        return f"{head} | Grad-CAM: nothing to show for {class_name!r} (all-zero map)"
    return f"{head} | Grad-CAM of {class_name!r}"


def captioned(img: Image.Image, caption: str) -> Image.Image:
    """``img`` with a one-line caption strip below it (as wide as the caption needs)."""
    from PIL import ImageDraw

    text_width = int(ImageDraw.Draw(img).textlength(caption)) + 8
    strip = Image.new("RGB", (max(img.width, text_width), 18), (0, 0, 0))
    ImageDraw.Draw(strip).text((4, 3), caption, fill=(255, 255, 255))
    canvas = Image.new("RGB", (strip.width, img.height + 18))
    canvas.paste(img, (0, 0))
    canvas.paste(strip, (0, img.height))
    return canvas


def save_image(img: Image.Image, path: str | Path, caption: str = "") -> None:
    """Write an overlay PNG atomically, with its caption drawn below it and kept as the PNG's ``caption`` text."""
    import io

    from PIL.PngImagePlugin import PngInfo

    from liverscan.core.fileio import write_bytes_atomic

    info = None
    if caption:
        img = captioned(img, caption)
        info = PngInfo()
        info.add_text("caption", caption)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    write_bytes_atomic(path, buf.getvalue())


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str | Path, caption: str = "") -> None:
    """Write the heatmap overlay PNG atomically (with a one-line caption strip when given)."""
    save_image(overlay(image, heatmap), path, caption)
