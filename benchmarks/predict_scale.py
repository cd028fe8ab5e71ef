"""Prediction at archive scale: runtimes side by side over >= 10,000 images, with records compared.

In one run, on the shared xu-liver images repeated (links) to N images, ``liverscan predict`` in a
fresh child process per runtime, each writing a CSV:

- ``auto``: the runtime a user gets (the exported TFLite model);
- ``onnx``: ONNX Runtime on the exported ``model.onnx`` (written here into a copy of the model);
- ``keras``: the Keras graph (the fallback);
- ``ray``: ``--engine ray`` with 2 workers (a local Ray; needs "liverscan[ray]"), auto runtime,
  writing Parquet shards.

Prints images/s (median of the repeats, start-up included), the peak of the summed resident memory of
every process the command started (Ray's own processes and actors included; shared pages such as Ray's
object store are counted once per process), and how far the records of each are from the ``auto``
records (same classes? max probability difference).

    python benchmarks/predict_scale.py [--images 10000] [--repeats 1] [--model RUN]
    python benchmarks/predict_scale.py --smoke     # 50 images, the auto runtime only: checks that it runs

Each repeat rewrites its output (``--overwrite``); a command that fails stops the benchmark with its error output.
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "xu-liver"


def _session_rss_mb(sid: int) -> float:
    """Summed resident memory of the processes in session ``sid`` (the command and all it started)."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: resident pages
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6


def run_predict(model: Path, folder: Path, name: str, out: Path) -> tuple[float, float]:
    engine = ["--engine", "ray", "--num-workers", "2", "--runtime", "auto"] if name == "ray" else ["--runtime", name]
    workers = "1" if name == "ray" else str(os.cpu_count() or 2)  # ray: one decoding thread per actor
    cmd = [sys.executable, "-m", "liverscan", "predict", str(folder), "-m", str(model), *engine]
    cmd += ["-o", str(out), "--overwrite", "-q", "--batch-size", "64", "--workers", workers]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _session_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"predict ({name}) failed:\n{err}")
    return seconds, peak[0]


def records(path: Path) -> dict[str, dict]:
    """path -> record, from a CSV file or a folder of Ray shards (probabilities as p_CLASS)."""
    if path.is_dir():
        from liverscan.serving import read_shard_rows, shard_files

        return {row["path"]: row for shard in shard_files(path) for row in read_shard_rows(shard)}
    with open(path, newline="") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None, help="run directory (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--smoke", action="store_true", help="50 images, one repeat, auto runtime: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.repeats = 50, 1
    from liverscan.serving import default_model_dir, export_model, runtime

    files = sorted(args.data.glob("*/image/*.jpg"))
    if not files:
        raise SystemExit(f"{args.data}: no images (*/image/*.jpg)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        shutil.copytree(args.model or default_model_dir(), model)
        # a smoke run checks the benchmark itself: the ONNX export, TensorFlow's start (keras) or a local Ray
        # cluster would each take longer than the rest of it
        runtimes = ["auto"] if args.smoke else ["auto", "keras"]
        if runtime.onnx_available() and not args.smoke:
            if not (model / "model.onnx").is_file():
                export_model(model, "onnx")
            runtimes.insert(1, "onnx")
        from liverscan.serving.distributed import ray_available

        if ray_available() and not args.smoke:
            runtimes.append("ray")
        folder = tmp / "images"
        folder.mkdir()
        for i, src in zip(range(args.images), itertools.cycle(files)):
            os.symlink(src, folder / f"img{i:05d}.jpg")
        results = {}
        for name in runtimes:
            out = tmp / (name if name == "ray" else f"{name}.csv")
            runs = [run_predict(model, folder, name, out) for _ in range(args.repeats)]
            results[name] = (statistics.median(s for s, _ in runs), max(p for _, p in runs))
        base = records(tmp / "auto.csv")
        print(f"{args.images} images, {os.cpu_count()} CPU cores, median of {args.repeats}")
        print(f"{'runtime':<8} {'images/s':>9} {'peak MB':>8} {'same classes':>13} {'max prob diff':>14}")
        print("(peak MB: all processes of the command, summed)")
        for name, (seconds, peak) in results.items():
            other = records(tmp / (name if name == "ray" else f"{name}.csv"))
            same = sum(base[p]["predicted_class"] == other[p]["predicted_class"] for p in base) / len(base)
            diff = max(
                abs(float(base[p][k]) - float(other[p][k]))
                for p in base
                for k in base[p]
                if k.startswith("p_") and base[p][k] not in ("", None)
            )
            print(f"{name:<8} {args.images / seconds:>9.0f} {peak:>8.0f} {same:>13.4f} {diff:>14.2e}")


if __name__ == "__main__":
    main()
