"""Where predict's time goes on an accelerator (or a CPU): each part alone, then end to end.

    python benchmarks/gpu_profile.py RUN_DIR IMAGE_FOLDER [--n 2048]
    python benchmarks/gpu_profile.py --smoke     # the shipped model on examples/images, pools of 2: checks it runs

Prints images/s (median of 3 timed repetitions after a warm-up) for:
- decoding real files: thread pools of 2 and 16, a process pool of 16 (``--workers`` sets the 16);
- the model on host arrays: ``predict_on_batch`` per batch (what predict uses) at batch 32 and 256,
  and one jitted call of the same model (JAX backend only);
- the out-of-distribution guard (image checks + kNN score) on the same arrays;
- ``Classifier.iter_predict`` end to end (decode + image checks, model, kNN score, records) with 2 and 16
  decoding threads and 16 decoding processes.

The images are the folder's image files (its subfolders included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rate(fn, n: int, repeats: int = 3) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="run directory (default with --smoke: the shipped model)")
    ap.add_argument("images", type=Path, nargs="?", help="image folder (default with --smoke: examples/images)")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=16, help="the larger decoding pools (threads and processes)")
    ap.add_argument("--smoke", action="store_true", help="pools of 2, batches of 8: checks that it runs on a CPU")
    args = ap.parse_args()
    batches = (32, 256)
    if args.smoke:
        from liverscan.serving import default_model_dir

        args.run = args.run or default_model_dir()
        args.images = args.images or REPO / "examples" / "images"
        args.workers, batches = 2, (8,)
    if args.run is None or args.images is None:
        ap.error("give RUN_DIR and IMAGE_FOLDER")

    from liverscan.core.images import load_image
    from liverscan.core.keras_env import accelerator, backend_name
    from liverscan.serving import Classifier

    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
    paths = sorted(str(p) for p in args.images.rglob("*") if p.suffix.lower() in suffixes)[: args.n]
    n = len(paths)
    print(f"backend {backend_name()} on {accelerator()}; {n} images; {os.cpu_count()} CPU cores")

    def decode_with(pool_cls, workers):
        def go():
            with pool_cls(workers) as pool:
                list(pool.map(load_image, paths, chunksize=16))

        return go

    many = args.workers
    for label, pool_cls, workers in dict.fromkeys(  # each once (--workers 2 makes two the same)
        [
            ("decode, 2 threads", ThreadPoolExecutor, 2),
            (f"decode, {many} threads", ThreadPoolExecutor, many),
            (f"decode, {many} processes", ProcessPoolExecutor, many),
        ]
    ):
        print(f"{label:<42} {rate(decode_with(pool_cls, workers), n, repeats=1):>9.0f} images/s", flush=True)

    x = np.stack([load_image(p) for p in paths[:256]]).astype(np.float32)
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    clf = Classifier.load(args.run, runtime="keras")
    for bs in batches:
        print(
            f"{'model, predict_on_batch, batch ' + str(bs):<42} {rate(lambda bs=bs: clf.outputs(x, bs), n):>9.0f} images/s",
            flush=True,
        )
    if backend_name() == "jax":
        import jax

        scorer = clf._scorer
        state = (scorer.trainable_variables, scorer.non_trainable_variables)

        @jax.jit
        def forward(tv, ntv, batch):
            (p, f), _ = scorer.stateless_call(tv, ntv, batch, training=False)
            return p, f

        def jitted():
            outs = [forward(*state, x[i : i + 256]) for i in range(0, n - n % 256, 256)]
            jax.block_until_ready(outs)
            return [np.asarray(o[0]) for o in outs]

        print(f"{'model, one jitted call per 256 (JAX)':<42} {rate(jitted, n - n % 256):>9.0f} images/s", flush=True)
    probs, feats = clf.outputs(x[:512], max(batches))
    from liverscan.core.guard import assess

    u8 = x[:512].astype(np.uint8)
    print(
        f"{'guard (image checks + kNN)':<42} {rate(lambda: assess(clf.reference, u8, feats), len(u8)):>9.0f} images/s"
    )
    for workers, decode in dict.fromkeys([(2, "threads"), (many, "threads"), (many, "processes")]):

        def e2e(workers=workers, decode=decode):
            for _ in clf.iter_predict(paths, batch_size=max(batches), workers=workers, decode=decode):
                pass

        label = f"end to end, iter_predict, {workers} {decode}"
        print(f"{label:<42} {rate(e2e, n, repeats=1):>9.0f} images/s")


if __name__ == "__main__":
    main()
