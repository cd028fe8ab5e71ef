"""Prediction speed and memory: ``liverscan predict`` end to end vs a plain loop, and where the time goes.

Side by side in one run, on the shared xu-liver images repeated to N images, for each ``--model``:
- plain loop: PIL decode + convert RGB + bilinear resize to 160, ``model.predict`` on batches of 32
  (the classifier only: no guard, no lesion head);
- liverscan: ``liverscan predict`` (the CLI, in a child process) writing a CSV at default settings (guard on,
  the lesion head on when the model has one), and with ``--no-lesion`` when it has one.
Prints images/s of each (median of repeats), the ratios, and the child's peak resident memory (which for a run
of 10,000 images shows that memory stays bounded).  Then a per-stage breakdown of one batch-32 pass over the
same images in this process (decode, the guard's image checks, the classifier, the guard's kNN score, the lesion
head, its post-processing, the CSV record writing): CPU milliseconds per image of all threads, so the figures
hold on a busy machine too, and each stage's share.

    python benchmarks/predict_speed.py                              # the shipped model, 2,000 images, 3 repeats
    python benchmarks/predict_speed.py --model runs/xu --images 10000 --repeats 1
    python benchmarks/predict_speed.py --model default --model runs/xu   # the shipped model and a fresh run
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


def liverscan_cli(
    model: str, paths: list[str], workdir: Path, tag: str, extra: tuple[str, ...] = ()
) -> tuple[float, float]:
    """(images/s, peak RSS MiB) of `liverscan predict` reading paths from stdin, into a fresh output file."""
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    out = workdir / f"out-{tag}.csv"
    if out.exists():
        raise SystemExit(f"{out} exists: each repeat needs a fresh output")
    argv = ["liverscan", "predict", "-", "--model", model, "--output", str(out), "-q", *extra]
    code = (
        f"import sys, time, resource; from liverscan.faces.cli import main; sys.argv = {argv!r}\n"
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


def cpu_ms(fn, n: int) -> float:
    """CPU milliseconds per image (all threads of this process) of ``fn()`` over ``n`` images."""
    t0 = time.process_time()
    fn()
    return 1000 * (time.process_time() - t0) / n


def stage_breakdown(model: str, paths: list[str]) -> list[tuple[str, float]]:
    """(stage, CPU ms per image) of one pass over ``paths`` in batches of 32, the way predict runs each stage."""
    import io

    from liverscan.core.guard import image_reason, scores
    from liverscan.serving import Classifier
    from liverscan.serving.inputs import load_input
    from liverscan.serving.outputs import RecordWriter

    clf = Classifier.load(model)
    n = len(paths)
    pairs: list = []
    rows = [
        (
            "decode (file -> 160 x 160 uint8)",
            cpu_ms(lambda: pairs.extend(load_input(p, clf.image_size)[0] for p in paths), n),
        )
    ]
    records = [rec for rec, _ in pairs]
    images = np.stack([a for _, a in pairs])
    rows.append(("guard: image checks", cpu_ms(lambda: [image_reason(a) for a in images], n)))
    batches = [slice(k, k + 32) for k in range(0, n, 32)]
    outs: list = []
    maps: list = []
    shared = clf.lesion is not None and getattr(clf.runner, "has_maps", False)
    if shared:  # one graph gives the class, the features and the lesion map
        rows.append(
            (
                f"classifier + lesion head, one pass ({clf.runtime})",
                cpu_ms(lambda: outs.extend(clf.runner.run_all(images[b]) for b in batches), n),
            )
        )
        maps = [m for _, _, m in outs]
    else:
        rows.append(
            (f"classifier ({clf.runtime})", cpu_ms(lambda: outs.extend(clf.outputs(images[b]) for b in batches), n))
        )
    feats = np.concatenate([o[1] for o in outs]) if outs and outs[0][1] is not None else None
    if clf.reference is not None and feats is not None:
        reference = clf.reference
        rows.append(("guard: kNN score", cpu_ms(lambda: [scores(reference, feats[b]) for b in batches], n)))
    if clf.lesion is not None:
        head = clf.lesion
        if not shared:
            rows.append(
                (f"lesion head ({head.kind})", cpu_ms(lambda: maps.extend(head.maps(images[b]) for b in batches), n))
            )
        found = np.concatenate(maps)
        rows.append(("lesion post-processing", cpu_ms(lambda: [head.finding(m, 1024, 768) for m in found], n)))
    fill = [clf.fill_records(records[b], images[b], 32) for b in batches]  # real records for the writer
    del fill
    buffer = io.StringIO()

    def write() -> None:
        with RecordWriter("csv", clf.classes, stream=buffer, lesion=clf.has_lesion) as w:
            for rec in records:
                w.write(rec)

    rows.append(("records -> CSV", cpu_ms(write, n)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", action="append", default=None,
        help="run directory or model file; repeat for several ('default': the shipped model, the default)",
    )  # fmt: skip
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="40 images, 1 repeat: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.repeats = 40, 1
    from liverscan.serving import default_model_dir

    models = [str(default_model_dir()) if m in (None, "default") else m for m in (args.model or [None])]
    if not args.data.is_dir():
        print(f"skipped: data folder {args.data} not found", file=sys.stderr)
        return 0
    from liverscan.core.artifacts import load_run
    from liverscan.core.model import load_model

    paths = image_list(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="liverscan-predict-bench-"))
    print(f"images: {len(paths)} (xu-liver repeated), repeats: {args.repeats}, cpus: {os.cpu_count()}")
    for m, model_dir in enumerate(models):
        run = load_run(model_dir)
        model = load_model(run.model_path)
        variants = [("default", ())] + ([("--no-lesion", ("--no-lesion",))] if run.card.lesion else [])
        plain: list[float] = []
        ours: dict[str, list[float]] = {name: [] for name, _ in variants}
        rss: dict[str, float] = {name: 0.0 for name, _ in variants}
        for k in range(args.repeats):
            plain.append(plain_loop(model, paths))
            for name, extra in variants:
                speed, peak = liverscan_cli(model_dir, paths, work, f"{m}-{name.strip('-')}-{k}", extra)
                ours[name].append(speed)
                rss[name] = max(rss[name], peak)
        p = statistics.median(plain)
        print(f"\nmodel: {model_dir}")
        print(f"  plain loop (PIL + model.predict, batch 32):  {p:7.1f} images/s  {[round(x, 1) for x in plain]}")
        for name, _ in variants:
            o = statistics.median(ours[name])
            label = f"liverscan predict ({name})"
            print(
                f"  {label:44s} {o:7.1f} images/s  {[round(x, 1) for x in ours[name]]}  "
                f"ratio {o / p:.2f}x  peak memory {rss[name]:.0f} MiB"
            )
        print("  (the CLI figures include process start-up and model loading)")
        stages = stage_breakdown(model_dir, paths[: min(len(paths), 256)])
        total = sum(t for _, t in stages)
        print("  per-stage CPU ms per image (all threads; batch 32):")
        for name, t in stages:
            print(f"    {name:36s} {t:6.2f} ms  {100 * t / total:5.1f} %")
        print(
            f"    {'total':36s} {total:6.2f} ms  (on {os.cpu_count()} cores at best {1000 / total * (os.cpu_count() or 1):.0f} images/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
