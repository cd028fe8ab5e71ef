"""Peak memory of predicting a short and a long video loop: decoding streams, so the long one costs no more.

Encodes two made-up loops from the sample images (H.264, 25 frames a second, each image slowly panned):
a short one (``--short`` seconds) and a long one (``--long`` seconds, ten minutes by default), then runs
``predict`` on each — default model, guard, lesion head, one study per loop, records and the study written
to JSON Lines — in a fresh process per run, and prints the median peak resident memory (VmHWM), time and
record count of ``--repeats`` runs side by side.

    python benchmarks/video_memory.py [--repeats 3] [--short 10] [--long 600]
    python benchmarks/video_memory.py --smoke     # 2 s and 8 s loops, one run: checks that it runs

Needs ``liverscan[video]`` (PyAV).  A run that fails stops the benchmark with its exit code and error output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"

CHILD = r"""
import json, resource, sys, time
from liverscan.serving import PredictOptions, predict_files
video, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
s = predict_files([video], PredictOptions(group_by="object"), output=out + ".jsonl", study_output=out + "-s.jsonl",
                  overwrite=True)
seconds = time.perf_counter() - t0
try:  # VmHWM is this program's own peak
    peak_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
except OSError:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak_mb, "seconds": seconds, "records": s.records, "studies": len(s.studies or [])}))
"""


def make_loop(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240)) -> Path:
    """An H.264 loop of the sample images, each shown for two seconds while it pans a pixel per frame."""
    import av
    import numpy as np
    from PIL import Image

    w, h = size
    images = [np.asarray(Image.open(p).convert("RGB").resize((w + 64, h))) for p in sorted(EXAMPLES.glob("*/*.jpg"))]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            image, shift = images[(i // (2 * fps)) % len(images)], i % (2 * fps) % 64
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:, shift : shift + w]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_once(video: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(video), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=float, default=10.0, help="seconds of the short loop")
    ap.add_argument("--long", type=float, default=600.0, help="seconds of the long loop")
    ap.add_argument("--smoke", action="store_true", help="2 s and 8 s loops, one run each")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.short, args.long = 1, 2.0, 8.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loops = {
            "short": make_loop(folder / "short.mp4", args.short),
            "long": make_loop(folder / "long.mp4", args.long),
        }
        rows = {}
        for name, video in loops.items():
            runs = [run_once(video, folder / f"{name}-{k}") for k in range(args.repeats)]
            rows[name] = (
                statistics.median(r["peak_mb"] for r in runs),
                statistics.median(r["seconds"] for r in runs),
                runs[0]["records"],
                runs[0]["studies"],
                video.stat().st_size / 1e6,
            )
    seconds = {"short": args.short, "long": args.long}
    print(f"{'loop':<6} {'length s':>9} {'file MB':>8} {'records':>8} {'studies':>8} {'peak MB':>8} {'time s':>7}")
    for name, (peak, secs, records, studies, size) in rows.items():
        print(f"{name:<6} {seconds[name]:>9.0f} {size:>8.1f} {records:>8} {studies:>8} {peak:>8.0f} {secs:>7.1f}")
    ratio = rows["long"][0] / rows["short"][0]
    print(f"peak memory, long / short: {ratio:.2f} (median of {args.repeats} runs each)")


if __name__ == "__main__":
    main()
