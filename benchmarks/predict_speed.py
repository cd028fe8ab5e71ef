"""Prediction speed and memory: ``liverscan predict`` end to end vs a plain loop.

Side by side in one run, on the shared xu-liver images repeated to N images:
- plain loop: PIL decode + convert RGB + bilinear resize to 160, ``model.predict`` on batches of 32;
- liverscan: ``liverscan predict`` (the CLI, in a child process) writing a CSV.
Prints images/s of each (median of repeats), the ratio, and the child's peak
resident memory (which for a run of 10,000 images shows that memory stays bounded).

    python benchmarks/predict_speed.py                              # the shipped model, 2,000 images, 3 repeats
    python benchmarks/predict_speed.py --model runs/xu --images 10000 --repeats 1
    python benchmarks/predict_speed.py --smoke                      # 40 images, 1 repeat: checks it runs

Each repeat writes a fresh output file; a repeat whose command fails (any exit code but 0) stops the
benchmark with its error instead of timing it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "xu-liver"


def image_list(data: Path, n: int) -> list[str]:
    files = sorted(str(p) for p in data.glob("*/image/*.jpg"))
    return list(itertools.islice(itertools.cycle(files), n))


def plain_loop(model, paths: list[str]) -> float:
    t0 = time.perf_counter()
    for start in range(0, len(paths), 32):
        batch = [
            np.asarray(Image.open(p).convert("RGB").resize((160, 160), Image.Resampling.BILINEAR), np.float32)
            for p in paths[start : start + 32]
        ]
        model.predict(np.stack(batch), batch_size=32, verbose=0)
    return len(paths) / (time.perf_counter() - t0)


def liverscan_cli(model: str, paths: list[str], workdir: Path, repeat: int) -> tuple[float, float]:
    """(images/s, peak RSS MiB) of `liverscan predict` reading paths from stdin, into a fresh output file."""
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = workdir / f"out-{repeat}.csv"
    if out.exists():
        raise SystemExit(f"{out} exists: each repeat needs a fresh output")
    code = (
        "import sys, time, resource; from liverscan.faces.cli import main; sys.argv = ['liverscan', 'predict', '-', "
        f"'--model', {model!r}, '--output', {str(out)!r}, '-q']\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')] if sys.platform == 'linux' else []\n"
        "peak = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('PEAK_RSS_KB', peak, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    t0 = time.perf_counter()
    with open(listing) as stdin:
        proc = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:  # a refused or partly failed repeat is an error, never a figure
        raise SystemExit(f"liverscan predict failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    # measured inside the child (VmHWM of its own address space): ru_maxrss would carry over
    # the parent's pages from before exec
    rss = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    n_rows = sum(1 for _ in open(out)) - 1
    assert n_rows == len(paths), (n_rows, len(paths))
    return len(paths) / wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="run directory or model file (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="40 images, 1 repeat: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.repeats = 40, 1
    if args.model is None:
        from liverscan.serving import default_model_dir

        args.model = str(default_model_dir())
    if not args.data.is_dir():
        print(f"skipped: data folder {args.data} not found", file=sys.stderr)
        return 0
    from liverscan.core.artifacts import load_run
    from liverscan.core.model import load_model

    model = load_model(load_run(args.model).model_path)
    paths = image_list(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="liverscan-predict-bench-"))
    plain, ours, rss = [], [], 0.0
    for k in range(args.repeats):
        plain.append(plain_loop(model, paths))
        speed, peak = liverscan_cli(args.model, paths, work, k)
        ours.append(speed)
        rss = max(rss, peak)
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"images: {len(paths)} (xu-liver repeated), repeats: {args.repeats}, cpus: {os.cpu_count()}")
    print(f"plain loop (PIL + model.predict, batch 32): {p:7.1f} images/s  {[round(x, 1) for x in plain]}")
    print(f"liverscan predict (CLI end to end, CSV):    {o:7.1f} images/s  {[round(x, 1) for x in ours]}")
    print(f"ratio liverscan / plain: {o / p:.2f}x (CLI figure includes process start-up and model loading)")
    print(f"peak resident memory of liverscan predict: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
