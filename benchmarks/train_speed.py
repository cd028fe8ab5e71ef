"""Training speed, for both heads.

``--head mlp`` (the paper's protocol): the straightforward per-epoch fit vs liverscan's cached-feature
training, both on the same prepared data in this one process: MobileNetV2 (frozen) + head,
class-weighted loss, Adam 1e-3, early stopping on validation accuracy (patience 20, best weights
restored). Prints seconds per epoch-equivalent (median), projected wall time for the paper's 69 epochs,
the speed ratio, and validation / test accuracy each reaches.

``--head linear`` (the default model): the single-split linear-probe run and ``train --folds 5`` (5-fold
cross-validation, refit and out-of-fold predictions, features included), wall time of each.

    python benchmarks/train_speed.py                       # both heads, xu-liver beside the repo
    python benchmarks/train_speed.py --head mlp --fit-epochs 5   # shorter baseline (speed only)
    python benchmarks/train_speed.py --smoke               # 12 images per class, 2 epochs: checks it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from _smoke import subset

from liverscan.core.config import Config, SourceSpec
from liverscan.core.dataset import PreparedData
from liverscan.preparation.prepare import prepare_dataset
from liverscan.training.train import train_run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "xu-liver"
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_160_no_top.h5"
PAPER_EPOCHS = 69


def test_accuracy(run_dir: Path, prepared: Path) -> float:
    from sklearn.metrics import accuracy_score

    from liverscan.core.model import load_model

    data = PreparedData(prepared)
    test = data.split("test", 160)
    model = load_model(run_dir / "model.keras")
    probs = np.asarray(model.predict(test.x.astype(np.float32), batch_size=64, verbose=0))
    return float(accuracy_score(test.y, probs.argmax(1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "imagenet")
    ap.add_argument("--fit-epochs", type=int, default=100, help="epoch limit of the baseline (100 = full protocol)")
    ap.add_argument("--views", type=int, default=Config().train.views)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--head", choices=("both", "mlp", "linear"), default="both")
    ap.add_argument("--smoke", action="store_true", help="12 images per class, 2 epochs, 2 folds: checks it runs")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: data folder {args.data} not found", file=sys.stderr)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="liverscan-bench-"))
    folds, epoch_limit = 5, 100
    if args.smoke:
        args.data = subset(args.data, work / "subset", 12)
        args.fit_epochs, args.views, folds, epoch_limit = 2, 1, 2, 2
    from liverscan.core.keras_env import import_keras

    import_keras()  # import TensorFlow/Keras before timing: neither side pays for it
    prepared = work / "prepared"
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(args.data), name=args.data.name)]
    t0 = time.perf_counter()
    prepare_dataset(cfg, prepared, overwrite=True)
    t_prep = time.perf_counter() - t0
    cfg.model.weights = args.weights
    cfg.train.seed = args.seed
    cfg.lesion.head = "off"  # the classifier heads are timed here; benchmarks/localisation.py times the lesion head
    print(f"data: {args.data} (prepare {t_prep:.1f} s); weights: {args.weights}; cpus: {os.cpu_count()}")
    if args.head in ("both", "linear"):
        linear(cfg, prepared, work, folds)
    if args.head in ("both", "mlp"):
        mlp(cfg, prepared, work, args.fit_epochs, args.views, epoch_limit)
    return 0


def linear(cfg: Config, prepared: Path, work: Path, folds: int) -> None:
    """The default head: one split, and cross-validated with a refit."""
    from liverscan.training.crossval import cross_validate

    cfg.model.head = "linear"
    t0 = time.perf_counter()
    res = train_run(cfg, prepared, work / "linear", overwrite=True)
    single = time.perf_counter() - t0
    cfg.train.folds = folds
    t0 = time.perf_counter()
    cross_validate(cfg, prepared, work / "linear-cv", overwrite=True)
    cv = time.perf_counter() - t0
    cfg.train.folds = 0
    val = res.card.validation.get("accuracy")
    print(
        f"linear probe: one split {single:.1f} s (val acc {val:.4f}, test acc "
        f"{test_accuracy(work / 'linear', prepared):.4f}); train --folds {folds} (CV, refit, out-of-fold "
        f"predictions, features included) {cv:.1f} s"
    )


def mlp(cfg: Config, prepared: Path, work: Path, fit_epochs: int, views: int, epoch_limit: int) -> None:
    """The paper's head: the plain per-epoch fit against liverscan's cached-feature training."""
    cfg.model.head = "mlp"
    results = {}
    for name, mode, epochs in (("fit (baseline)", "fit", fit_epochs), ("cached (liverscan)", "cached", epoch_limit)):
        # every section as given (the lesion head stays off: it would add the same minutes to both sides)
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mode=mode, epochs=epochs, views=views))
        t0 = time.perf_counter()
        res = train_run(c, prepared, work / mode, overwrite=True)
        wall = time.perf_counter() - t0
        epoch_secs = [r["seconds"] for r in res.history]
        if not epoch_secs:
            raise SystemExit(f"{name}: the run recorded no epochs (head {c.model.head})")
        med = statistics.median(epoch_secs)
        fixed = wall - sum(epoch_secs)  # model build, feature computation, writing outputs
        results[name] = {
            "epochs": len(res.history),
            "wall": wall,
            "median_epoch": med,
            "fixed": fixed,
            "per_epoch_equiv": wall / len(res.history),
            "projected_69": fixed + PAPER_EPOCHS * med,
            "val": res.card.validation["accuracy"],
            "test": test_accuracy(work / mode, prepared),
        }
    base, ours = results["fit (baseline)"], results["cached (liverscan)"]
    print(
        f"{'':20s} {'epochs':>6s} {'wall s':>8s} {'s/epoch med':>11s} {'s/epoch-eq':>10s} {'69-epoch s':>10s} "
        f"{'val acc':>8s} {'test acc':>8s}"
    )
    for name, r in results.items():
        print(
            f"{name:20s} {r['epochs']:6d} {r['wall']:8.1f} {r['median_epoch']:11.3f} {r['per_epoch_equiv']:10.3f} "
            f"{r['projected_69']:10.1f} {r['val']:8.4f} {r['test']:8.4f}"
        )
    print(
        f"speed-up, projected 69 epochs: {base['projected_69'] / ours['projected_69']:.1f}x; "
        f"per epoch-equivalent (median epoch of the baseline vs wall/epochs of ours): "
        f"{base['median_epoch'] / ours['per_epoch_equiv']:.1f}x"
    )
    print(f"full protocol wall time (liverscan, to early stop, features included): {ours['wall']:.1f} s")
    print(
        f"accuracy difference (liverscan - baseline): val {100 * (ours['val'] - base['val']):+.2f} points, "
        f"test {100 * (ours['test'] - base['test']):+.2f} points"
    )


if __name__ == "__main__":
    sys.exit(main())
