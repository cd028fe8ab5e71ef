"""How well the out-of-distribution guard separates the training source from everything else.

Protocol (nothing is ever fitted or tuned on an out-of-distribution set):
xu-liver is prepared as usual; the guard's reference is fitted on the train split's
pooled features and its threshold chosen on the validation split for the stated
retention (default 0.95). Then, side by side in one run, the share flagged (image
checks + feature score, exactly what ``predict`` applies) and the AUROC of the
feature score against the xu test split, for:

- the xu test split itself (target: at most 10 % flagged);
- non-ultrasound images: matplotlib's sample images, synthetic text pages, browser
  screenshots and 2x2 collages of xu images, plots, blank and noise images (target: 100 %);
- the Byra liver patches (another scanner, resized as any input is; target: at least 95 %);
- xu test images altered the way another scanner differs (sector shape and size,
  scanner UI, burned-in text, an ECG trace, gain / gamma / contrast, blur).

    python benchmarks/ood.py [--shared ../shared] [--retention 0.95]
    python benchmarks/ood.py --smoke     # 8 xu images per class and 8 Byra patches: checks that it runs
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from _smoke import subset
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
WORDS = "liver ultrasound examination findings homogeneous parenchyma portal vein patent impression follow-up".split()


def decode(im: Image.Image | str) -> np.ndarray:
    """Through the library's one decoding path, as every input of ``predict``."""
    from liverscan.core.images import decode as lib_decode

    if isinstance(im, Image.Image):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return lib_decode(buf.getvalue(), size=160).array
    return lib_decode(im, size=160).array


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def browser(w: int, h: int, bg=(255, 255, 255)):
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, w, 70], fill=(222, 225, 230))
    d.rounded_rectangle([120, 18, w - 200, 52], 12, fill=(255, 255, 255))
    d.text((140, 24), "https://pacs.example.org/viewer?study=1234", fill=(60, 60, 60), font=font(18))
    return im, d


def non_ultrasound(test_paths: list[str], rng) -> dict[str, list[np.ndarray]]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    natural = [decode(str(p)) for p in sorted(sample.glob("*.jpg")) + sorted(sample.glob("*.png"))]
    try:  # matplotlib's MR slice (raw 16-bit)
        raw = np.frombuffer(gzip.open(sample / "s1045.ima.gz").read(), ">u2")
        side = math.isqrt(raw.size)
        mr = raw[: side * side].reshape(side, side).astype(np.float64)
        natural.append(decode(Image.fromarray((255 * (mr - mr.min()) / max(np.ptp(mr), 1)).astype(np.uint8))))
    except OSError:
        pass
    synthetic = []
    for i in range(4):  # report pages
        w, h = (850, 1100) if i % 2 == 0 else (1280, 800)
        im = Image.new("RGB", (w, h), (255, 255, 255))
        d = ImageDraw.Draw(im)
        for y in range(40, h - 40, 32):
            d.text((50, y), " ".join(rng.choice(WORDS, 8)), fill=(0, 0, 0), font=font(20))
        synthetic.append(decode(im))
    for i in range(6):  # 2x2 collages of xu images in a browser window
        im, d = browser(1400, 1000, (255, 255, 255) if i % 2 == 0 else (200, 200, 205))
        for k, j in enumerate(rng.choice(len(test_paths), 4, replace=len(test_paths) < 4)):
            tile = Image.open(test_paths[j]).convert("RGB").resize((560, 420))
            im.paste(tile, (80 + (k % 2) * 600, 110 + (k // 2) * 450))
        synthetic.append(decode(im))
    for _ in range(4):  # one xu image in a screenshot beside text
        im, d = browser(1600, 1000)
        im.paste(Image.open(test_paths[rng.integers(len(test_paths))]).convert("RGB").resize((800, 600)), (60, 120))
        for r in range(12):
            d.text((900, 140 + 40 * r), " ".join(rng.choice(WORDS, 5)), fill=(20, 20, 20), font=font(22))
        synthetic.append(decode(im))
    for i in range(3):  # figures
        fig = Figure(figsize=(6, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        if i == 0:
            x = np.linspace(0, 10, 200)
            ax.plot(x, np.sin(x))
        elif i == 1:
            ax.bar(range(5), rng.random(5))
        else:
            ax.imshow(rng.random((30, 30)))
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        synthetic.append(decode(Image.open(io.BytesIO(buf.getvalue()))))
    synthetic += [decode(Image.new("RGB", (640, 480), c)) for c in ((0, 0, 0), (255, 255, 255))]
    synthetic.append(decode(Image.fromarray(rng.integers(0, 256, (480, 640), dtype=np.uint8))))
    return {
        "non-ultrasound: natural and medical photos": natural,
        "non-ultrasound: pages, screenshots, collages, plots": synthetic,
    }


def sector(w: int, h: int, apex: float, half_angle: float, r0: float, r1: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(xx - w / 2, yy - apex * h)
    ang = np.degrees(np.arctan2(xx - w / 2, yy - apex * h))
    return (r >= r0 * h) & (r <= r1 * h) & (np.abs(ang) <= half_angle)


def alter(img: Image.Image, kind: str) -> Image.Image:
    a = np.asarray(img.convert("RGB")).astype(np.float64)
    h, w = a.shape[:2]
    if kind == "narrow phased-array sector":
        return Image.fromarray((a * sector(w, h, 0.02, 35, 0.02, 0.95)[..., None]).astype(np.uint8))
    if kind == "wide convex sector":
        return Image.fromarray((a * sector(w, h, -0.35, 40, 0.45, 1.3)[..., None]).astype(np.uint8))
    if kind == "linear-probe rectangle":
        m = np.zeros((h, w), bool)
        m[int(0.08 * h) : int(0.95 * h), int(0.25 * w) : int(0.75 * w)] = True
        return Image.fromarray((a * m[..., None]).astype(np.uint8))
    if kind == "small image in scanner UI":
        canvas = Image.new("RGB", (w, h))
        canvas.paste(img.convert("RGB").resize((int(w * 0.55), int(h * 0.55))), (int(w * 0.2), int(h * 0.2)))
        d = ImageDraw.Draw(canvas)
        for r, text in enumerate(["Gain 52", "DR 60", "3.5MHz", "Depth 16cm", "FPS 24", "MI 1.1"]):
            d.text((10, 20 + r * h // 12), text, fill=(230, 230, 230), font=font(max(12, h // 40)))
        return canvas
    if kind in ("burned-in text", "text + ECG trace"):
        im = img.convert("RGB").copy()
        d = ImageDraw.Draw(im)
        f = font(max(12, h // 30))
        d.text((10, 8), "ABD C1-5 12/03/2023 10:41", fill=(255, 255, 255), font=f)
        d.text((10, 8 + h // 25), "MI 1.2 TIS 0.5 Gn 48", fill=(255, 255, 255), font=f)
        if kind == "text + ECG trace":
            xs = np.arange(0, w, 2)
            ys = 0.93 * h + np.where((xs % 160) < 8, -0.06 * h * np.sin((xs % 160) / 8 * np.pi), 0)
            d.line(list(zip(xs.tolist(), ys.tolist())), fill=(0, 255, 0), width=2)
        return im
    if kind == "gamma 1.8":
        return Image.fromarray((255 * (a / 255) ** 1.8).astype(np.uint8))
    if kind == "gain x1.6":
        return Image.fromarray(np.clip(a * 1.6, 0, 255).astype(np.uint8))
    if kind == "contrast x0.5":
        return Image.fromarray(np.clip((a - a.mean()) * 0.5 + a.mean(), 0, 255).astype(np.uint8))
    if kind == "heavy blur":
        return img.convert("RGB").filter(ImageFilter.GaussianBlur(radius=max(2, w // 250)))
    raise KeyError(kind)


ALTERATIONS = [
    "narrow phased-array sector",
    "wide convex sector",
    "linear-probe rectangle",
    "small image in scanner UI",
    "burned-in text",
    "text + ECG trace",
    "gamma 1.8",
    "gain x1.6",
    "contrast x0.5",
    "heavy blur",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: runs/benchmark-ood)")
    ap.add_argument("--retention", type=float, default=0.95)
    ap.add_argument(
        "--smoke", action="store_true", help="8 xu images per class and 8 Byra patches: checks that it runs"
    )
    args = ap.parse_args()
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="liverscan-ood-")) if args.smoke else REPO / "runs" / "benchmark-ood"
    weights = args.shared / "weights" / "mobilenet_v2_1.0_160_no_top.h5"
    if not (args.shared / "data" / "xu-liver").is_dir() or not weights.is_file():
        print("benchmark skipped: ../shared data or weights not found")
        return 0
    from sklearn.metrics import roc_auc_score

    from liverscan.core import guard
    from liverscan.core.config import Config, SourceSpec
    from liverscan.core.dataset import PreparedData
    from liverscan.core.model import build_model, feature_extractor
    from liverscan.preparation import prepare_dataset
    from liverscan.training.features import compute_features

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    cfg = Config()
    xu = args.shared / "data" / "xu-liver"
    cfg.data.sources = [SourceSpec(str(subset(xu, args.out / "subset", 8) if args.smoke else xu), name="xu")]
    prepare_dataset(cfg, args.out / "prepared", overwrite=True)
    data = PreparedData(args.out / "prepared")
    train, val, test = (data.split(s, 160) for s in ("train", "val", "test"))
    extractor = feature_extractor(build_model(2, 160, str(weights)))

    def features(x: np.ndarray) -> np.ndarray:  # batches are padded to one size: small ones in a smoke run
        return compute_features(extractor, np.asarray(x), batch_size=8 if args.smoke else 128)

    ref = guard.fit(features(train.x), train.y, method=cfg.ood.method, k=cfg.ood.k)
    ref = guard.calibrate(ref, guard.scores(ref, features(val.x)), args.retention, f"val (n={len(val.y)})")
    sets: dict[str, np.ndarray] = {"xu-liver test split (in distribution)": test.x}
    sets.update({k: np.stack(v) for k, v in non_ultrasound(test.paths, rng).items()})
    byra = sorted((args.shared / "data" / "byra-rois" / "rois").glob("*.png"))[: 8 if args.smoke else None]
    if byra:
        sets["Byra patches (another scanner)"] = np.stack([decode(str(p)) for p in byra])
    for kind in ALTERATIONS:
        sets[f"xu test, altered: {kind}"] = np.stack([decode(alter(Image.open(p), kind)) for p in test.paths])

    test_scores = None
    print(
        f"guard: {ref.method} k={ref.k}, threshold {ref.threshold:.4f} for retention {args.retention} on {ref.heldout}; "
        f"reference {len(train.y)} images"
    )
    print("| set | n | flagged (guard) | flagged by image checks | flagged by feature score | AUROC vs xu test |")
    print("|---|---|---|---|---|---|")
    for name, x in sets.items():
        f = features(x)
        verdicts = guard.assess(ref, x, f)
        s = guard.scores(ref, f)
        by_image = np.mean(
            [
                v.reason is not None
                and v.reason.split(" (")[0] != "unlike the training images"
                and not v.reason.startswith("unlike")
                for v in verdicts
            ]
        )
        flagged = np.mean([v.in_distribution is False for v in verdicts])
        if test_scores is None:
            test_scores = s
            auroc = "–"
        else:
            auroc = f"{roc_auc_score(np.r_[np.zeros(len(test_scores)), np.ones(len(s))], np.r_[test_scores, s]):.3f}"
        print(
            f"| {name} | {len(x)} | {100 * flagged:.1f} % | {100 * by_image:.1f} % | "
            f"{100 * np.mean(s > ref.threshold):.1f} % | {auroc} |",
            flush=True,
        )
    print(f"({time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPU cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
