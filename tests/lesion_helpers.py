"""Made-up outlined images and a known lesion head, for the tests of lesion localisation.

- :func:`make_xu_dataset` writes the xu layout (``<Class>/image/<n>.png`` with ``<Class>/segmentation/
  {mass,liver,outline}/<n>.json`` polygons): tumour images show one bright disc on a speckled grey fan, its
  outline in ``mass``; normals show none;
- :func:`bright_head` is a real, loadable lesion head whose answer is known without training: the probability
  of a pixel is a steep logistic of its brightness (a 1x1 convolution), so the bright discs are "the lesion";
- :func:`attach_head` saves such a head into a copy of a run directory and describes it in the card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DISC_LEVEL = 230  # grey level of a lesion disc; the fan's texture stays below ~150


def disc_image(size: int, centre: tuple[float, float] | None, radius: float, seed: int) -> Image.Image:
    """A speckled grey image of ``size`` x ``size`` with a bright disc at ``centre`` (x, y) when given."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(90, 18, size=(size, size))
    if centre is not None:
        y, x = np.mgrid[0:size, 0:size] + 0.5
        arr[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2] = DISC_LEVEL
    return Image.fromarray(np.clip(arr, 0, 200 if centre is None else 255).astype(np.uint8), "L").convert("RGB")


def disc_polygon(centre: tuple[float, float], radius: float, n: int = 24) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [[float(centre[0] + radius * np.cos(a)), float(centre[1] + radius * np.sin(a))] for a in t]


def make_xu_dataset(root: Path, n_tumour: int = 12, n_normal: int = 8, size: int = 64, seed: int = 0) -> dict:
    """Write the xu layout under ``root``; returns ``{"root", "discs": {image path: (cx, cy, r)}}``."""
    rng = np.random.default_rng(seed)
    discs: dict[str, tuple[float, float, float]] = {}
    full = [[0.5, 0.5], [size - 0.5, 0.5], [size - 0.5, size - 0.5], [0.5, size - 0.5]]
    for cls, n in (("Malignant", n_tumour), ("Normal", n_normal)):
        for sub in ("image", "segmentation/mass", "segmentation/liver", "segmentation/outline"):
            if cls == "Normal" and sub.endswith("mass"):
                continue
            (root / cls / sub).mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            centre = None
            if cls == "Malignant":
                r = float(rng.uniform(size * 0.1, size * 0.18))
                centre = (float(rng.uniform(r + 2, size - r - 2)), float(rng.uniform(r + 2, size - r - 2)))
            img = disc_image(size, centre, r if centre else 0.0, seed=1000 * (cls == "Normal") + k + 7 * seed)
            path = root / cls / "image" / f"{k}.png"
            img.save(path)
            seg = root / cls / "segmentation"
            (seg / "liver" / f"{k}.json").write_text(json.dumps(full))
            (seg / "outline" / f"{k}.json").write_text(json.dumps(full))
            if centre is not None:
                (seg / "mass" / f"{k}.json").write_text(json.dumps(disc_polygon(centre, r)))
                discs[str(path)] = (centre[0], centre[1], r)
    return {"root": root, "discs": discs}


def bright_head(size: int):
    """A lesion head ``(N, size, size, 3)`` pixels -> ``(N, size, size, 1)`` probability: sigmoid of
    ``(mean grey - 190) / 8``, so pixels at :data:`DISC_LEVEL` are lesion and the speckled fan is not."""
    from liverscan.core.keras_env import import_keras

    keras = import_keras()
    inp = keras.Input((size, size, 3), name="image")
    conv = keras.layers.Conv2D(1, 1, name="brightness")
    out = keras.layers.Activation("sigmoid", name="lesion_probability")(conv(inp))
    model = keras.Model(inp, out, name="bright_head")
    conv.set_weights([np.full((1, 1, 3, 1), 1.0 / (3 * 8.0), np.float32), np.array([-190.0 / 8.0], np.float32)])
    return model


def attach_head(run_src: Path, run_dst: Path, model=None) -> Path:
    """A copy of run ``run_src`` at ``run_dst`` with lesion head ``model`` (default: :func:`bright_head`)."""
    from liverscan.core.artifacts import LESION_FILE, read_card, write_card

    shutil.copytree(run_src, run_dst)
    card = read_card(run_dst)
    model = model if model is not None else bright_head(card.image_size)
    model.save(run_dst / LESION_FILE)
    card.lesion = {
        "file": LESION_FILE,
        "design": "test head: brightness",
        "layers": [],
        "output": "lesion probability per input pixel",
        "threshold": 0.5,
        "min_area": 0.002,
        "training": {},
    }
    write_card(run_dst, card)
    return run_dst
