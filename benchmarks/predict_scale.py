"""Prediction at archive scale: runtimes side by side over >= 10,000 images, with records compared.

In one run, on the shared xu-liver images repeated (links) to N images, ``liverscan predict`` in a
fresh child process per runtime, each writing a CSV:

- ``auto``: the runtime a user gets (the exported TFLite model);
- ``onnx``: ONNX Runtime on the exported ``model.onnx`` (written here into a copy of the model);
- ``keras``: the Keras graph (the fallback).

Prints images/s (median of the repeats), peak resident memory of each child, and how far the records
of each runtime are from the ``auto`` records (same classes? max probability difference).

    python benchmarks/predict_scale.py [--images 10000] [--repeats 1] [--model RUN]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "xu-liver"

CHILD = r"""
import sys
from liverscan.faces.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    print(f"PEAK_MB {peak:.0f}", file=sys.stderr)
"""


def run_predict(model: Path, folder: Path, runtime: str, out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", CHILD, "predict", str(folder), "-m", str(model), "--runtime", runtime]
        + ["-o", str(out), "--overwrite", "-q", "--batch-size", "64", "--workers", str(os.cpu_count() or 2)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"predict --runtime {runtime} failed:\n{r.stderr}")
    peak = float(next(line.split()[1] for line in r.stderr.splitlines() if line.startswith("PEAK_MB")))
    return seconds, peak


def records(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None, help="run directory (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    from liverscan.serving import default_model_dir, export_model, runtime

    files = sorted(args.data.glob("*/image/*.jpg"))
    if not files:
        raise SystemExit(f"{args.data}: no images (*/image/*.jpg)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        shutil.copytree(args.model or default_model_dir(), model)
        runtimes = ["auto", "keras"]
        if runtime.onnx_available():
            if not (model / "model.onnx").is_file():
                export_model(model, "onnx")
            runtimes.insert(1, "onnx")
        folder = tmp / "images"
        folder.mkdir()
        for i, src in zip(range(args.images), itertools.cycle(files)):
            os.symlink(src, folder / f"img{i:05d}.jpg")
        results = {}
        for name in runtimes:
            runs = [run_predict(model, folder, name, tmp / f"{name}.csv") for _ in range(args.repeats)]
            results[name] = (statistics.median(s for s, _ in runs), max(p for _, p in runs))
        base = records(tmp / "auto.csv")
        print(f"{args.images} images, {os.cpu_count()} CPU cores, median of {args.repeats}")
        print(f"{'runtime':<8} {'images/s':>9} {'peak MB':>8} {'same classes':>13} {'max prob diff':>14}")
        for name, (seconds, peak) in results.items():
            other = records(tmp / f"{name}.csv")
            same = sum(base[p]["predicted_class"] == other[p]["predicted_class"] for p in base) / len(base)
            diff = max(
                abs(float(base[p][k]) - float(other[p][k]))
                for p in base
                for k in base[p]
                if k.startswith("p_") and base[p][k]
            )
            print(f"{name:<8} {args.images / seconds:>9.0f} {peak:>8.0f} {same:>13.4f} {diff:>14.2e}")


if __name__ == "__main__":
    main()
