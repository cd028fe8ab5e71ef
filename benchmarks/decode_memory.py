"""Peak memory of decoding very large images, with and without the early box-reduce.

Writes five PNGs just under the default pixel limit (8-bit grey, RGB, RGBA with alpha,
palette, 16-bit grey), then decodes all five with two threads — what ``predict`` does
with its default two decoding workers — in a fresh process per variant, side by side:

- ``reduce``: the shipped decoder (images over 4 megapixels are box-reduced right
  after decoding, before any mode conversion);
- ``full``: the same decoder with the early reduce switched off (the previous path).

Each variant runs ``--repeats`` times; the median peak resident memory (VmHWM) and
time are printed with the ratio. Also printed: the largest pixel difference between
the two model inputs (the reduce changes pixels of such images slightly, never of
images under 4 megapixels).

    python benchmarks/decode_memory.py [--repeats 3] [--megapixels 89]
    python benchmarks/decode_memory.py --smoke     # 6-megapixel images, one run: checks that it runs

A decoding run that fails stops the benchmark with its exit code and error output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from liverscan.core import images
if sys.argv[1] == "full":
    images.REDUCE_ABOVE_PIXELS = 10**18
paths = sys.argv[2:]
t0 = time.perf_counter()
with ThreadPoolExecutor(2) as pool:
    arrays = list(pool.map(images.load_image, paths))
seconds = time.perf_counter() - t0
np.save(sys.argv[2] + "." + sys.argv[1] + ".npy", np.stack(arrays))
try:  # VmHWM is this program's own peak (ru_maxrss would include the parent's, inherited across exec)
    peak_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
except OSError:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak_mb, "seconds": seconds}))
"""


def make_images(folder: Path, megapixels: float) -> list[str]:
    import numpy as np
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    y, x = np.ogrid[0:side, 0:side]
    grey = ((x * 7 + y * 3) // 64 % 256).astype(np.uint8)
    grey = np.broadcast_to(grey, (side, side)).copy()
    made = {
        "grey8.png": Image.fromarray(grey),
        "rgb.png": Image.fromarray(np.stack([grey, grey[::-1], grey.T], -1)),
        "rgba.png": Image.fromarray(np.stack([grey, grey, grey, np.full_like(grey, 200)], -1)),
        "palette.png": Image.fromarray(grey).convert("P"),
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    paths = []
    for name, im in made.items():
        path = folder / name
        im.save(path, compress_level=1)
        paths.append(str(path))
    return paths


def run(variant: str, paths: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, *paths], capture_output=True, text=True)
    if out.returncode != 0:  # a failed run is an error, never a figure
        raise SystemExit(f"decoding ({variant}) failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--megapixels", type=float, default=89.0)
    ap.add_argument("--smoke", action="store_true", help="6-megapixel images (still reduced), one run")
    args = ap.parse_args()
    if args.smoke:
        args.megapixels, args.repeats = 6.0, 1
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.megapixels)
        results: dict[str, list[dict]] = {"reduce": [], "full": []}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
            for variant in results:
                results[variant].append(run(variant, paths))
        a = np.load(paths[0] + ".reduce.npy").astype(int)
        b = np.load(paths[0] + ".full.npy").astype(int)
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("peak_mb", "seconds")} for v, rs in results.items()}
    print(f"five PNGs of {args.megapixels:.0f} MP, two decoding threads, median of {args.repeats} runs")
    print(f"{'variant':<8} {'peak MB':>9} {'seconds':>8}")
    for v, m in med.items():
        print(f"{v:<8} {m['peak_mb']:>9.0f} {m['seconds']:>8.2f}")
    print(
        f"peak memory ratio reduce/full {med['reduce']['peak_mb'] / med['full']['peak_mb']:.2f}; "
        f"time ratio {med['reduce']['seconds'] / med['full']['seconds']:.2f}; "
        f"max pixel difference {int(np.abs(a - b).max())}, mean {float(np.abs(a - b).mean()):.2f}"
    )


if __name__ == "__main__":
    main()
