"""A federated run written as an ordinary liverscan run directory, and the sites' side of it.

The coordinator builds the same frozen backbone as every site (the card's fingerprint proves it), puts the
federated head into it and writes ``model.keras``, the Gaussian out-of-distribution reference, the model card
(with a ``federated`` section: sites and their image counts, rounds, bytes, faults, per-site and pooled
metrics) and ``run.json``; ``predict``, ``evaluate``, ``report`` and ``export`` read it as any other run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from liverscan.core import artifacts as art
from liverscan.core.config import Config
from liverscan.core.dataset import PreparedData
from liverscan.core.errors import ConfigError, DataError
from liverscan.core.runinfo import utc_now, versions
from liverscan.federated.coordinator import Coordinator, Expectation, FederatedResult, MlpSettings
from liverscan.federated.messages import SPLIT_NAMES
from liverscan.federated.site import Site, SiteData

STRATEGY = (
    "linear probe: exact federated standardisation (per-feature count, mean, M2), class-balanced logistic loss "
    "minimised by L-BFGS on summed site gradients (one round per evaluation), C by pooled validation log-loss"
)


MLP_STRATEGY = (
    "mlp head: {strategy} - each round every site trains the head for a few local epochs (Adam, class-weighted "
    "cross-entropy) and sends its weights; they are averaged by image count; the round with the best pooled "
    "validation accuracy is kept"
)


def _training(result: FederatedResult) -> dict:
    """The card's training entry of the federated head."""
    if result.head == "mlp":
        o = result.optimiser
        return {
            "mode": "federated mlp head",
            "loss": f"class-weighted cross-entropy ({o['strategy']}, {o['rounds']} rounds of {o['local_epochs']} "
            "local epochs)",
        }
    return {
        "mode": "federated linear probe",
        "loss": "class-balanced logistic loss (federated L-BFGS)",
        "C": result.c,
        "features": "standardised with federated moments (folded into the softmax layer)",
    }


def check_config(cfg: Config) -> None:
    if cfg.train.fine_tune_blocks > 0:
        raise ConfigError("federated training keeps the backbone frozen (train.fine_tune_blocks=0)")


def backbone(cfg: Config, n_classes: int):
    """The run's model (frozen backbone and its head) as every site and the coordinator build it (seeded, so a
    randomly initialised backbone, ``model.weights=none``, is the same everywhere)."""
    from liverscan.core.keras_env import seeded
    from liverscan.training.train import model_from_config

    with seeded(cfg.train.seed):
        return model_from_config(cfg, n_classes)


def fingerprint(cfg: Config) -> str:
    """What makes two sites' features comparable: backbone weights (their sha256), width, input size, features."""
    from liverscan.training.train import weights_source

    source = weights_source(cfg.model.weights, cfg)
    key = {
        "weights": source.get("sha256") or f"{source['spec']} (seed {cfg.train.seed})",
        "alpha": cfg.model.alpha,
        "size": cfg.preprocess.image_size,
        "features": cfg.model.feature_set,
        "flip_average": cfg.model.flip_average,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


#: the fewest images an aggregate a site sends may summarise (the mean of one image is that image's features)
MIN_IMAGES_PER_AGGREGATE = 2


def check_aggregate_sizes(name: str, where: Path, splits: dict[str, SiteData], classes: list[str]) -> None:
    """Refuse a site whose split, or class of its training split, holds a single image (its aggregate is the image)."""
    for split, part in splits.items():
        if 0 < len(part.y) < MIN_IMAGES_PER_AGGREGATE:
            raise DataError(
                f"{where}: site {name}'s {split} split holds {len(part.y)} image(s); its aggregates would give them "
                f"away (at least {MIN_IMAGES_PER_AGGREGATE}; prepare with other split ratios or leave the site out)"
            )
    counts = np.bincount(np.asarray(splits["train"].y, np.int64), minlength=len(classes))
    for cls, n in zip(classes, counts):
        if 0 < n < MIN_IMAGES_PER_AGGREGATE:
            raise DataError(
                f"{where}: site {name} has {n} training image(s) of {cls}; its class aggregates would give them away "
                f"(at least {MIN_IMAGES_PER_AGGREGATE}, or none)"
            )


def load_site(name: str, data: PreparedData, cfg: Config, model, print_: Callable[[str], None]) -> Site:
    """A site's features of its train / val / test splits, computed here with the frozen backbone."""
    from liverscan.core.model import feature_extractor
    from liverscan.training.features import compute_features

    extractor = feature_extractor(model)
    splits: dict[str, SiteData | None] = {}
    for split in SPLIT_NAMES:
        part = data.split(split, cfg.preprocess.image_size, cfg.preprocess.max_pixels)
        if len(part.y):
            feats = compute_features(extractor, part.x)
            splits[split] = SiteData(feats, part.y, np.asarray(part.groups))
        else:
            splits[split] = None
    n_features = next(s.features.shape[1] for s in splits.values() if s is not None)
    done = {k: v if v is not None else SiteData.empty(n_features) for k, v in splits.items()}
    if not len(done["train"].y):
        raise DataError(f"{data.dir}: no training images at site {name}")
    check_aggregate_sizes(name, data.dir, done, list(data.classes))
    print_(f"site {name}: features of {sum(len(s.y) for s in done.values())} images ({data.dir})")
    return Site(name, list(data.classes), fingerprint(cfg), done, seed=cfg.train.seed)


def mlp_settings(cfg: Config, rounds: int | None, local_epochs: int | None, mu: float | None) -> MlpSettings:
    """The mlp head's federated training settings: the run's head settings, and the given rounds, epochs, mu."""
    s = MlpSettings(
        hidden=cfg.model.dense_units,
        dropout=cfg.model.dropout,
        learning_rate=cfg.train.learning_rate,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
    )
    s.rounds, s.local_epochs, s.mu = rounds or s.rounds, local_epochs or s.local_epochs, mu or 0.0
    return s


def site_names(dirs: Sequence[Path]) -> list[str]:
    """A name per prepared folder: its own name, numbered when two share one."""
    names = [Path(d).resolve().name for d in dirs]
    return [n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names)]


def simulate(
    cfg: Config,
    data_dirs: Sequence[str | Path],
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    min_sites: int = 2,
    c: float | None = None,
    mlp: MlpSettings | None = None,
    print_: Callable[[str], None] = lambda message: None,
) -> art.ModelCard:
    """Every site in this process (each computes its own features), then the run directory."""
    from liverscan.federated.simulate import LocalTransport
    from liverscan.training.train import _start_run_dir

    check_config(cfg)
    if len(data_dirs) < max(min_sites, 1):
        raise DataError(f"{len(data_dirs)} prepared folder(s) given, fewer than the minimum {min_sites} sites")
    datasets = [PreparedData(d) for d in data_dirs]  # fails before the run directory is touched
    run = Path(run_dir)
    _start_run_dir(run, overwrite)
    cfg.save(run / art.CONFIG_FILE)
    info = {
        "created": utc_now(),
        "federated": True,
        "data_dirs": [str(Path(d).resolve()) for d in data_dirs],
        "phases": [art.TRAIN_PHASE] + ([art.EXPORT_PHASE] if cfg.train.export_runtime != "none" else []),
        "done": [],
        "status": "running",
    }
    art.write_run_info(run, info)
    try:
        t0 = time.perf_counter()
        model = backbone(cfg, len(datasets[0].classes))
        sites = [load_site(n, d, cfg, model, print_) for n, d in zip(site_names([d.dir for d in datasets]), datasets)]
        expect = Expectation(list(datasets[0].classes), fingerprint(cfg))
        result = Coordinator(
            LocalTransport(sites),
            expect,
            min_sites=min_sites,
            c=c,
            retention=cfg.ood.retention,
            log=print_,
            head=cfg.model.head,
            mlp_settings=mlp,
        ).run()
        card = write_run(cfg, run, result, model, "simulation (every site in one process)", time.perf_counter() - t0)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        info.update(status="interrupted" if interrupted else "failed", error=None if interrupted else str(exc))
        art.write_run_info(run, info)
        raise
    info["done"] = [art.TRAIN_PHASE]
    info["status"] = "trained" if art.pending_phases(info) else "complete"
    art.write_run_info(run, info)
    return card


def write_run(cfg: Config, run: Path, result: FederatedResult, model, engine: str, seconds: float) -> art.ModelCard:
    """model.keras, the out-of-distribution reference and the model card of a federated result."""
    from liverscan.core.keras_env import accelerator, backend_name
    from liverscan.core.model import count_params, save_keras_atomic, set_linear_head
    from liverscan.training.train import model_card_fields

    if result.mlp_params is not None:
        from liverscan.core.model import head_of

        p = result.mlp_params
        head_of(model).get_layer("dense").set_weights([p["w1"].astype(np.float32), p["b1"].astype(np.float32)])
        head_of(model).get_layer("logits").set_weights([p["w2"].astype(np.float32), p["b2"].astype(np.float32)])
    else:
        set_linear_head(model, result.weights, result.bias)
    save_keras_atomic(model, run / art.MODEL_FILE)
    result.reference.save(run / art.OOD_FILE)
    ood = result.reference.describe()
    ood.update(kind="Gaussian (class means, shared OAS-shrunk covariance) from summed per-class moments of the sites")
    totals = {s: sum(info["images"][s] for info in result.sites.values()) for s in SPLIT_NAMES}
    card = art.ModelCard(
        name=run.name,
        created=utc_now(),
        classes=list(result.classes),
        class_map={c: c for c in result.classes},
        image_size=cfg.preprocess.image_size,
        **model_card_fields(cfg, len(result.classes), count_params(model)),  # its head: cfg.model.head
        data={"prepared_dir": None, "sources": sorted(result.sites), "counts": totals},
        training={
            **_training(result),
            "class_weight": "balanced (from summed class counts)",
            "class_weights": result.class_weights,
            "seconds": round(seconds, 1),
            "seed": cfg.train.seed,
            "backend": backend_name(),
            "device": f"{accelerator()} (the coordinator)",
            "best": {"stage": _training(result)["mode"], "epoch": None, "val_accuracy": None},
            "epochs_run": 0,
        },
        ood=ood,
        versions=versions(),
    )
    card.extra["federated"] = {
        "engine": engine,
        "strategy": STRATEGY if result.head == "linear" else MLP_STRATEGY.format(strategy=result.optimiser["strategy"]),
        "sites": result.sites,
        "rounds": len(result.rounds),
        "optimiser": result.optimiser,
        "bytes_to_sites": int(sum(r["bytes_to_sites"] for r in result.rounds)),
        "bytes_from_sites": int(sum(r["bytes_from_sites"] for r in result.rounds)),
        "per_round": result.rounds,
        "events": result.events,
        "pooled_test_metrics": {"federated": result.pooled, "each_site_alone": result.pooled_alone},
        "what_travels": "head parameters and aggregates (moments, class counts, histograms); never images, "
        "features or per-image scores",
        "seconds": round(result.seconds, 1),
    }
    art.seal(card, run)
    art.write_card(run, card)
    return card
