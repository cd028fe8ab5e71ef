"""Is Grad-CAM pointing at the lesion?  The pointing game on xu-liver mass polygons.

For every tumor image of the run's validation and test splits that has a lesion
polygon (``<class>/segmentation/mass/<n>.json``), the peak of the tumor-class
Grad-CAM heatmap counts as a hit when it falls inside the lesion.  Baselines:
a random heatmap (its peak is a uniformly random pixel) over the whole image and
over the scan fan (``outline`` polygon), and the image centre.

    python benchmarks/pointing_game.py --model runs/xu
    python benchmarks/pointing_game.py --data path/to/xu-liver   # every tumour image of the folder, shipped model
    python benchmarks/pointing_game.py --data path/to/xu-liver --smoke   # 6 of them: checks that it runs

With ``--data`` the tumour images (``Benign/`` and ``Malignant/``) of an xu-liver folder are scored instead of
a run's splits (the shipped model has seen them in training: its figure is not out of sample).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from matplotlib.path import Path as Polygon
from PIL import Image

from liverscan.core.fileio import read_csv
from liverscan.core.images import load_image
from liverscan.serving.predict import Classifier


def polygon(path: Path) -> Polygon | None:
    if not path.is_file():
        return None
    pts = json.loads(path.read_text())
    if pts and isinstance(pts[0][0], list):  # several polygons: take the largest
        pts = max(pts, key=len)
    return Polygon(np.asarray(pts, dtype=float)) if len(pts) >= 3 else None


def folder_rows(data: Path, limit: int | None = None) -> list[dict]:
    """The tumour images of an xu-liver folder (the first ``limit``), as manifest rows (path, width, height)."""
    images = sorted(data.glob("[BM]*/image/*.jpg"), key=lambda p: (p.parts[-3], int(p.stem) if p.stem.isdigit() else 0))
    rows = []
    for img in images[:limit]:
        with Image.open(img) as im:
            w, h = im.size
        rows.append({"path": str(img), "width": str(w), "height": str(h)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="run directory trained on a prepared xu-liver dataset")
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--data", type=Path, default=None, help="an xu-liver folder: score its tumour images instead")
    ap.add_argument("--samples", type=int, default=2000, help="random points per image for the baselines")
    ap.add_argument("--smoke", action="store_true", help="6 tumour images of --data: checks that it runs")
    args = ap.parse_args()
    if args.smoke and args.data is None:
        ap.error("--smoke needs --data XU_LIVER")
    if args.model is None and args.data is None:
        ap.error("give --model RUN (its validation and test splits) or --data XU_LIVER")
    if args.model is None:
        from liverscan.serving import default_model_dir

        args.model = str(default_model_dir())
    clf = Classifier.load(args.model, runtime="keras")
    if "tumor" not in clf.classes:
        print("the model has no 'tumor' class", file=sys.stderr)
        return 1
    if args.data is not None:
        rows = folder_rows(args.data, 6 if args.smoke else None)
        args.splits = f"{args.data.name}, tumour images"
    else:
        prepared = Path(clf.card["data"]["prepared_dir"])
        splits = args.splits.split(",")
        rows = [r for r in read_csv(prepared / "manifest.csv") if r["split"] in splits and r["class"] == "tumor"]
    rng = np.random.default_rng(0)
    hits, rand_image, rand_fan, centre, n = 0, [], [], 0, 0
    size = clf.image_size
    tumor = clf.classes.index("tumor")
    for r in rows:
        img = Path(r["path"])
        seg = img.parent.parent / "segmentation"
        mass = polygon(seg / "mass" / f"{img.stem}.json")
        if mass is None:
            continue
        fan = polygon(seg / "outline" / f"{img.stem}.json")
        w, h = int(r["width"]), int(r["height"])
        heat = clf.heatmaps(load_image(img, size)[None], [tumor])[0]
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peak = ((x + 0.5) * w / size, (y + 0.5) * h / size)
        hits += bool(mass.contains_point(peak))
        pts = rng.uniform([0, 0], [w, h], size=(args.samples, 2))
        rand_image.append(mass.contains_points(pts).mean())
        if fan is not None:
            inside = pts[fan.contains_points(pts)]
            if len(inside):
                rand_fan.append(mass.contains_points(inside).mean())
        centre += bool(mass.contains_point((w / 2, h / 2)))
        n += 1
    if n == 0:
        print("no tumor images with lesion polygons in those splits", file=sys.stderr)
        return 1
    print(f"model: {args.model}; images with a lesion polygon ({args.splits}): {n}")
    print(f"Grad-CAM peak inside the lesion:           {hits / n:.3f} ({hits}/{n})")
    print(f"random heatmap, whole image (expected):    {np.mean(rand_image):.3f}")
    if rand_fan:
        print(f"random heatmap, inside the scan fan:       {np.mean(rand_fan):.3f}")
    print(f"image centre:                              {centre / n:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
