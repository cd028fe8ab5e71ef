"""Start-up time: ``liverscan --help`` and a first ``liverscan predict`` in a fresh process, against their targets.

Each command runs ``--runs`` times, each in a fresh process, after one untimed run that fills the page cache:

- ``liverscan --help`` (target: at most 0.2 s wall);
- ``liverscan predict examples/images`` with the shipped model (9 images, a fresh CSV each run; target: at most
  2 s wall on 2 CPU cores);
- for reference, a bare ``python -c pass`` (the interpreter's own start-up on this machine).

Printed per command: the median wall time, the median CPU time (user + system; a busy machine inflates it less
than the wall time) and the target. Then, from one more run of each under ``python -X importtime``, the imports
that cost the most (cumulative), so a regression shows where it comes from. The figures are measurements, not a
pass/fail check; a command that fails stops the benchmark with its exit code and error output.

    python benchmarks/startup.py              # 11 runs of each
    python benchmarks/startup.py --smoke      # 2 runs of each: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def liverscan_command() -> list[str]:
    """What a user types: the installed console script beside this interpreter, else ``python -m liverscan``."""
    script = Path(sys.executable).with_name("liverscan")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "liverscan"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; a failed run stops the benchmark with its error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def top_imports(cmd: list[str], n: int) -> list[tuple[float, str]]:
    """The ``n`` costliest imports (cumulative seconds, module) of one run of ``cmd`` under ``-X importtime``."""
    if cmd[0] != sys.executable:  # the console script: the same entry point, through the interpreter
        cmd = [sys.executable, "-m", "liverscan", *cmd[1:]]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    found = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) == 1:  # a top-level import (by the entry point or a function), not a sub-import
            found.append((int(m.group(1)) / 1e6, m.group(3)))
    return sorted(found, reverse=True)[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11, help="timed runs of each command (median)")
    ap.add_argument("--top", type=int, default=8, help="costliest imports listed per command (0: none)")
    ap.add_argument("--smoke", action="store_true", help="2 runs of each: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.top = 2, 3
    with tempfile.TemporaryDirectory(prefix="liverscan-startup-") as tmp:
        measure(args.runs, args.top, Path(tmp))
    return 0


def measure(n_runs: int, top: int, work: Path) -> None:
    n_images = sum(1 for p in IMAGES.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    liverscan = liverscan_command()
    fresh = iter(range(10**6))

    def predict() -> list[str]:  # a fresh output file each run
        out = work / f"predict-{next(fresh)}.csv"
        return [*liverscan, "predict", str(IMAGES), "--output", str(out), "--quiet"]

    commands = [
        ("python -c pass (reference)", lambda: [sys.executable, "-c", "pass"], None),
        ("liverscan --help", lambda: [*liverscan, "--help"], 0.2),
        (f"liverscan predict examples/images ({n_images} images)", predict, 2.0),
    ]
    results = []
    for label, make, target in commands:
        timed(make())  # untimed: fills the page cache
        runs = [timed(make()) for _ in range(n_runs)]
        results.append((label, statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs), target))
    written = sorted(work.glob("predict-*.csv"))
    rows = [sum(1 for _ in open(p)) - 1 for p in written]
    if set(rows) != {n_images}:
        raise SystemExit(f"predict wrote {rows} records per run, not {n_images}")

    print(f"{' '.join(liverscan)}; median of {n_runs} runs; {os.cpu_count()} CPU cores")
    print(f"{'command':<46} {'wall s':>7} {'CPU s':>7} {'target':>8}  within")
    for label, wall, cpu, target in results:
        goal = f"<= {target:g} s" if target else ""
        within = "" if target is None else ("yes" if wall <= target else "no")
        print(f"{label:<46} {wall:>7.3f} {cpu:>7.3f} {goal:>8}  {within}")
    for label, make, _ in commands[1:] if top else []:
        print(f"\ncostliest imports of {label} (cumulative s, one run under -X importtime):")
        for seconds, module in top_imports(make(), top):
            print(f"  {seconds:6.3f}  {module}")


if __name__ == "__main__":
    sys.exit(main())
