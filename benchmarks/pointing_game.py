"""Is Grad-CAM pointing at the lesion?  The pointing game on xu-liver mass polygons.

For every tumor image of the run's validation and test splits that has a lesion
polygon (``<class>/segmentation/mass/<n>.json``), the peak of the tumor-class
Grad-CAM heatmap counts as a hit when it falls inside the lesion.  Baselines:
a random heatmap (its peak is a uniformly random pixel) over the whole image and
over the scan fan (``outline`` polygon), and the image centre.

    python benchmarks/pointing_game.py --model runs/xu
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="run directory trained on a prepared xu-liver dataset")
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--samples", type=int, default=2000, help="random points per image for the baselines")
    args = ap.parse_args()
    clf = Classifier.load(args.model, runtime="keras")
    if "tumor" not in clf.classes:
        print("the model has no 'tumor' class", file=sys.stderr)
        return 1
    prepared = Path(clf.card["data"]["prepared_dir"])
    rows = [
        r for r in read_csv(prepared / "manifest.csv") if r["split"] in args.splits.split(",") and r["class"] == "tumor"
    ]
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
