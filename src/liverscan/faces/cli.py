"""The ``liverscan`` command line: a thin dispatcher over the library.

Only Typer is imported at start-up (``liverscan --help`` prints Click's plain help and needs no more;
benchmarks/startup.py measures it); every command imports what it needs (Rich, the configuration schema,
TensorFlow) when it runs.
No ``from __future__ import annotations`` here: Typer would evaluate every option's annotation string
again on each start.
"""

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from liverscan import __version__
from liverscan.core.defaults import REVIEW_CONFIDENCE
from liverscan.core.errors import ConfigError, LiverscanError
from liverscan.faces import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from liverscan.faces.consoles import console, err_console, escape
from liverscan.faces.options import (
    ConfigOpt,
    ModelOpt,
    OutDirOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    UseOperatingPointOpt,
    renamed,
)

if TYPE_CHECKING:  # the schema (and YAML) load when a command builds its configuration, not for --help
    from liverscan.core.config import Config


class _PlainFlags:
    """Help that shows a flag as a plain flag: ``--version``, not ``--version <bool>`` (Typer prints a type beside
    every option, flags included; a flag takes no value), and brackets as brackets."""

    def format_help(self, ctx, formatter) -> None:
        params = self.get_params(ctx)  # type: ignore[attr-defined]
        flags = [p for p in params if getattr(p, "is_flag", False) and p.metavar is None]
        for p in flags:
            p.metavar = ""
        try:
            super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            for p in flags:
                p.metavar = None
        # Typer before 0.21 (the federated extra's) escapes "[default: ...]" for Rich even in plain help
        formatter.buffer[:] = [part.replace("\\[", "[") for part in formatter.buffer]


class _Group(_PlainFlags, TyperGroup):
    pass


class _Command(_PlainFlags, TyperCommand):
    pass


# Click's plain help, not Typer's Rich panels: Rich's help renderer alone (typer.rich_utils, which imports
# rich.markdown, rich.syntax and rich.traceback) took --help past its 0.2 s start-up budget. Help texts are
# therefore plain text; a paragraph after a \b line (the examples) keeps its line breaks.
HELP_MARKUP = None
HELP_WIDTH = {"max_content_width": 120}  # the terminal's width up to this (Click's default stops at 80)

app = typer.Typer(
    name="liverscan",
    help="Classify liver B-mode ultrasound images into normal / fatty liver / tumor.",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_MARKUP,
    context_settings=HELP_WIDTH,
)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print a one-line error (markup in it is shown literally) and exit (see the exit codes in liverscan.faces)."""
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so every command stops the way Ctrl+C stops it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def _signal_name(exc: BaseException) -> str:
    import signal

    return signal.Signals(exc.signum).name if isinstance(exc, Stopped) else "Ctrl+C (SIGINT)"


def _signal_code(exc: BaseException) -> int:
    """128 + the signal number, as shells report a process stopped by a signal."""
    import signal

    return 128 + (exc.signum if isinstance(exc, Stopped) else int(signal.SIGINT))


def usage(message: str) -> NoReturn:
    """A usage error found after parsing (a bad value, options that do not go together): one line, exit 2."""
    fail(message, EXIT_USAGE)


def _error_code(exc: LiverscanError) -> int:
    """A bad configuration or option value is a usage error, as Click's own are; the rest are errors."""
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def command(name: str, group: Optional[typer.Typer] = None):
    """Register a command (on ``group``, else the top level) whose library errors become one-line messages (the
    CLI's one error handler)."""

    def register(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except LiverscanError as exc:
                fail(str(exc), _error_code(exc))
            except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM/SIGHUP raised as Stopped by main()
                fail(f"stopped by {_signal_name(exc)}; files are written whole or not at all", _signal_code(exc))
            except OSError as exc:  # unwritable or full output directory, unreadable input
                fail(_os_message(exc))

        return (group or app).command(name, cls=_Command)(guarded)

    return register


def _version(value: bool) -> None:
    if value:
        console().print(f"liverscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """liverscan: reproducible liver ultrasound classification (research use only, not a medical device)."""


def build_config(config: Optional[Path], overrides: Optional[list[str]], **flags: object) -> "Config":
    """Defaults <- YAML file <- --set overrides <- explicit flags (those not None)."""
    from liverscan.core.config import load_config, set_value

    cfg = load_config(config, overrides or [])
    for dotted, value in flags.items():
        if value is not None:
            cfg = set_value(cfg, dotted.replace("__", "."), value)
    return cfg


@command("config")
def config_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the effective configuration (the defaults unless --config/--set are given) as YAML.

    Example:

    \b
      liverscan config > my.yaml
    """
    sys.stdout.write(build_config(config, set_).to_yaml())


@command("prepare")
def prepare_cmd(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Data sources as [NAME=]PATH: a folder with one sub-folder per category, "
            "a glob with a {label} placeholder, or a CSV with path, label and optional group columns.",
            metavar="[NAME=]PATH",
            show_default=False,
        ),
    ],
    out: OutDirOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    map_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--map", metavar="CATEGORY=CLASS", help="Map a source category onto a class: CATEGORY=CLASS (repeatable)."
        ),
    ] = None,
    class_map: Annotated[
        Optional[Path],
        typer.Option("--class-map", help="YAML file of 'category: class' lines (replaces the default map)."),
    ] = None,
    classes: Annotated[
        Optional[str], typer.Option(help="Class order, comma-separated, e.g. normal,fatty,tumor.")
    ] = None,
    split_ratios: Annotated[Optional[str], typer.Option(help="Train/val/test ratios, e.g. 70/15/15.")] = None,
    old_split: Annotated[Optional[str], typer.Option("--split", hidden=True)] = None,
    seed: SeedOpt = None,
    group_regex: Annotated[
        Optional[str], typer.Option(help="Regex on the file path whose first group names the patient/group.")
    ] = None,
    path_column: Annotated[Optional[str], typer.Option(help="CSV sources: column holding the file path.")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="CSV sources: column holding the label.")] = None,
    group_column: Annotated[
        Optional[str], typer.Option(help="CSV sources: column holding the group (patient id).")
    ] = None,
    near_duplicate_distance: Annotated[
        Optional[int], typer.Option(help="Max perceptual-hash distance (of 64 bits) for near-duplicates; -1 disables.")
    ] = None,
    masks: Annotated[
        Optional[str],
        typer.Option(
            help="Lesion annotation of each image, e.g. 'masks/{stem}.png' (polygon JSON or binary mask; "
            "{stem} {name} {parent} {kind}; relative to the image's folder; with {kind} also liver and fan). "
            "Without it the xu layout (<class>/segmentation/mass/<stem>.json) is found automatically.",
        ),
    ] = None,
    keep_conflicts: Annotated[
        bool, typer.Option("--keep-conflicts", help="Keep images that appear under two labels.")
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not store decoded arrays (images.npy).")] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate, de-duplicate, audit and split images into a manifest (written to --out, required).

    Examples:

    \b
      liverscan prepare xu=data/xu-liver --out prepared/xu
      liverscan prepare "data/xu-liver/{label}/image/*.jpg" --map benign=tumor -o prepared/xu
    """
    from liverscan.core.classmap import load_class_map, parse_map_options
    from liverscan.core.config import SourceSpec, apply_overrides
    from liverscan.core.sources import parse_source_arg
    from liverscan.faces.terminal import print_prepare_summary
    from liverscan.preparation import prepare_dataset

    if out is None:
        usage("give the output directory: --out DIR")
    split = renamed("--split", "--split-ratios", old_split, split_ratios, err_console())
    cfg = build_config(
        config,
        set_,
        data__seed=seed,
        data__group_regex=group_regex,
        data__near_duplicate_distance=near_duplicate_distance,
        data__masks=masks,
        data__classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        data__keep_conflicts=True if keep_conflicts else None,
        data__cache_arrays=False if no_cache else None,
    )
    if split is not None:
        parts = [p for p in split.replace(",", "/").split("/") if p.strip()]
        try:
            ratios = [float(p) for p in parts]
        except ValueError:
            ratios = []
        if len(ratios) != 3:
            usage(f"--split-ratios {split!r} must give three numbers like 70/15/15")
        cfg = apply_overrides(cfg, [f"data.{k}_ratio={v!r}" for k, v in zip(("train", "val", "test"), ratios)])
    if class_map is not None:
        cfg.data.class_map = load_class_map(class_map)
    if map_:
        cfg.data.class_map.update(parse_map_options(map_))
    specs: list[SourceSpec] = []
    for arg in sources:
        spec = parse_source_arg(arg)
        spec.path_column = path_column or ""
        spec.label_column = label_column or ""
        spec.group_column = group_column or ""
        specs.append(spec)
    cfg.data.sources = specs
    result = _with_progress(lambda cb: prepare_dataset(cfg, out, overwrite=overwrite, progress=cb), "Decoding", quiet)
    print_prepare_summary(result.summary, out, console=console() if not quiet else None, err=err_console())
    _print_outlines(result.summary.get("annotations") or {}, quiet)


def _print_outlines(counts: dict, quiet: bool) -> None:
    """One line: how many images have lesion / liver / fan outlines, and how many annotation files were rejected."""
    if not any(counts.values()):
        return
    if not quiet:
        have = ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in ("lesion", "liver", "fan"))
        console().print(f"Images with outlines: {have}", highlight=False)
    bad = counts.get("rejected", 0)
    if bad:
        err_console().print(
            f"[yellow]note:[/] {bad} annotation file{'s' if bad != 1 else ''} rejected (see rejects.csv); "
            "their images were kept without them",
            highlight=False,
        )


@command("train")
def train_cmd(
    data: Annotated[
        Optional[Path], typer.Option("--data", "-d", help="Prepared dataset directory (from 'prepare').")
    ] = None,
    out: OutDirOpt = None,
    resume: Annotated[
        Optional[Path], typer.Option("--resume", help="Continue the interrupted run in this directory.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epoch limit (early stopping usually ends sooner).")] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(help="Backbone weights: imagenet, none, or a path to a MobileNetV2 no-top .h5 file."),
    ] = None,
    mode: Annotated[
        Optional[str], typer.Option(help="cached (backbone features computed once; fast) or fit (augment every epoch).")
    ] = None,
    views: Annotated[Optional[int], typer.Option(help="Augmented views per training image in cached mode.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="weighted, unweighted or focal.")] = None,
    fine_tune_blocks: Annotated[
        Optional[int], typer.Option(help="Second stage: fine-tune the top N backbone blocks (0 = off).")
    ] = None,
    seed: SeedOpt = None,
    head: Annotated[
        Optional[str],
        typer.Option(help="linear (default: the linear probe, chosen by cross-validation) or mlp (the paper's head)."),
    ] = None,
    features: Annotated[
        Optional[str],
        typer.Option(
            help="Pooled backbone features the head reads: auto (default: multistage for the linear head, "
            "chosen by cross-validation; last for the paper's mlp head), last (the last stage, 1280) or "
            "multistage (three stages concatenated, 2048)."
        ),
    ] = None,
    flip_average: Annotated[
        Optional[bool],
        typer.Option(
            "--flip-average/--no-flip-average",
            help="Average the features of each image and its horizontal mirror (inside the model).",
        ),
    ] = None,
    lesion_head: Annotated[
        Optional[str],
        typer.Option(
            help="auto (default: also fit the lesion localisation head when the data has lesion outlines) or off."
        ),
    ] = None,
    folds: Annotated[
        Optional[int],
        typer.Option(help="Cross-validate with this many group-aware stratified folds on all images, then refit."),
    ] = None,
    repeats: Annotated[
        Optional[int], typer.Option(help="Cross-validation repeats (different fold assignments).")
    ] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the MobileNetV2 transfer-learning model on a prepared dataset into the run directory --out.

    Examples (--folds 5: cross-validated, then refit on all images and evaluated out of fold; --head mlp: the
    paper's head; --weights: the backbone's ImageNet weights from a file, offline; --resume: go on after a stop):

    \b
      liverscan train --data prepared/xu --out runs/xu --folds 5
      liverscan train --data prepared/xu --out runs/xu-paper --head mlp
      liverscan train --data prepared/xu --out runs/xu --weights path/to/mobilenet_v2_1.0_160_no_top.h5
      liverscan train --resume runs/xu
    """
    from liverscan.core.artifacts import CONFIG_FILE, EVALUATE_PHASE, EXPORT_PHASE
    from liverscan.core.config import Config
    from liverscan.training import cross_validate, finish_run, train_run

    if resume is None and (data is None or out is None):
        usage("give --data PREPARED_DIR and --out RUN_DIR (or --resume RUN_DIR)")
    if resume is not None:
        cfg, target = Config(), resume
    else:
        assert data is not None and out is not None  # refused above
        base = config if config is not None else (data / CONFIG_FILE if (data / CONFIG_FILE).is_file() else None)
        cfg = build_config(
            base,
            set_,
            train__epochs=epochs,
            model__weights=weights,
            train__mode=mode,
            train__views=views,
            train__loss=loss,
            train__fine_tune_blocks=fine_tune_blocks,
            train__seed=seed,
            model__head=head,
            model__features=features,
            model__flip_average=flip_average,
            lesion__head=lesion_head,
            train__folds=folds,
            train__repeats=repeats,
        )
        target = out
    if resume is not None:
        from liverscan.core.artifacts import read_run_info

        cv = bool(read_run_info(resume).get("cross_validation"))
    else:
        cv = cfg.train.folds >= 2
    fit = cross_validate if cv else train_run
    # after training: the out-of-fold evaluation (cross-validated runs) and the fast runtime; run.json records
    # each, so a stop in any of them leaves a run that --resume finishes without training again
    then = ([EVALUATE_PHASE] if cv else []) + ([EXPORT_PHASE] if cfg.train.export_runtime != "none" else [])
    steps = {EVALUATE_PHASE: lambda: _evaluate_out_of_fold(target), EXPORT_PHASE: lambda: _export_fast_runtime(target)}
    try:
        if quiet or not console().is_terminal:
            result = fit(cfg, data, target, overwrite=overwrite, resume=resume is not None, then=then)
        else:
            from liverscan.faces.progress import RichReporter

            with RichReporter(console()) as reporter:
                result = fit(
                    cfg, data, target, overwrite=overwrite, resume=resume is not None, reporter=reporter, then=then
                )
        _print_trained(result)
        finish_run(target, steps)
    except KeyboardInterrupt as exc:
        fail(f"stopped by {_signal_name(exc)}; {_how_to_resume(target)}", _signal_code(exc))


def _how_to_resume(target: Path) -> str:
    """What a stopped ``train`` left, and the command that continues it."""
    from liverscan.core.artifacts import RUN_FILE, TRAIN_PHASE, pending_phases, read_run_info

    info = read_run_info(target) if (Path(target) / RUN_FILE).is_file() else {}
    if TRAIN_PHASE in info.get("done", []):
        left = ", ".join(pending_phases(info))
        return f"the model is trained; finish the rest ({left}) with: liverscan train --resume {target}"
    saved = any(Path(target).glob("checkpoint/*/state.json")) or any(Path(target).glob("folds/*/fold.json"))
    if saved:
        return f"resume from the last checkpoint with: liverscan train --resume {target}"
    return "no epoch had finished, so nothing was checkpointed"


def _print_trained(result) -> None:
    t, v = result.card.training, result.card.validation
    what = f"Trained {t['epochs_run']} epochs" if t.get("epochs_run") else f"Fitted the {t['mode']}"
    shown = f"; val accuracy {v['accuracy']:.4f} (balanced {v['balanced_accuracy']:.4f})" if v else ""
    console().print(f"{what} in {t['seconds']:.1f} s{shown} -> {escape(str(result.run_dir))}", highlight=False)
    if result.card.lesion:
        lt = result.card.lesion["training"]
        console().print(
            f"Lesion localisation head: {lt['images_with_lesion']} outlined lesions, {lt['images_without_lesion']} "
            f"lesion-free images, {lt['seconds']:.0f} s",
            highlight=False,
        )
    warning = (result.card.ood or {}).get("warning")
    if warning:
        err_console().print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)


def _evaluate_out_of_fold(run_dir: Path) -> None:
    """A cross-validated run's out-of-fold evaluation (``eval-cv/``), with its headline printed."""
    from liverscan.core.artifacts import CONFIG_FILE
    from liverscan.core.config import load_saved_config
    from liverscan.evaluation import evaluate, format_with_ci

    res = evaluate(run_dir, config=load_saved_config(Path(run_dir) / CONFIG_FILE))
    m = res.metrics.argmax
    keys = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro ROC-AUC", "macro_roc_auc"))
    cells = [f"{label} {format_with_ci(m.value(k), m.ci(k))}" for label, k in keys]
    console().print(
        f"Out of fold ({res.metrics.rows} predictions; {m.bootstrap.describe(short=True) if m.bootstrap else 'no CIs'}): "
        + ", ".join(cells)
        + f"; details in {escape(str(res.out_dir))}",
        highlight=False,
    )


def _export_fast_runtime(run_dir: Path) -> None:
    """Write the run's checked fast runtime (train.export_runtime), so predict runs at full speed at once."""
    from liverscan.core.artifacts import CONFIG_FILE
    from liverscan.core.config import load_saved_config
    from liverscan.core.keras_env import backend_name

    fmt = load_saved_config(Path(run_dir) / CONFIG_FILE).train.export_runtime
    if fmt == "none":
        return
    if backend_name() != "tensorflow":
        err_console().print(
            f"[yellow]note:[/] no {fmt} runtime written (export needs KERAS_BACKEND=tensorflow); predict uses Keras",
            highlight=False,
        )
        return
    from liverscan.serving import export_model

    try:
        info = export_model(run_dir, fmt)
    except Exception as exc:  # noqa: BLE001 - the model is trained and saved; predict falls back to Keras
        err_console().print(f"[yellow]warning:[/] no fast runtime written: {escape(str(exc))}", highlight=False)
        return
    lesion = info.get("lesion")
    also = f"; lesion head too (masks differ on {lesion['mask_pixels_differing']:.2%} of pixels)" if lesion else ""
    console().print(
        f"Wrote the {fmt} runtime (max abs difference vs Keras {info['max_abs_difference_vs_keras']:.1e} on "
        f"{info['checked_images']} images){also}; predict uses it",
        highlight=False,
    )


@command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory from 'liverscan train' (or its model.keras).")],
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            "-d",
            help="Prepared dataset dir (default: the run's own), or labelled folders / a {label} glob / a CSV.",
        ),
    ] = None,
    split: Annotated[
        Optional[str], typer.Option(help="Split of a prepared dataset to evaluate (default test).")
    ] = None,
    out: OutDirOpt = None,
    fit_operating_point: Annotated[
        Optional[str],
        typer.Option(
            "--fit-operating-point",
            "-p",
            help="Fit on held-out predictions (the validation split, or out of fold) and store in the model card: "
            "'balanced' or 'CLASS>=SENSITIVITY' (e.g. 'tumor>=0.95').",
        ),
    ] = None,
    old_operating_point: Annotated[Optional[str], typer.Option("--operating-point", hidden=True)] = None,
    group_column: Annotated[
        Optional[str],
        typer.Option(
            help="CSV data: column holding the group (patient id); found by name as in prepare when not given."
        ),
    ] = None,
    bootstrap: Annotated[
        Optional[int], typer.Option(help="Bootstrap resamples for the 95% CIs (default 1000).", min=0)
    ] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Metrics with 95% CIs, calibration, figures; argmax and tuned operating point side by side, written to
    --out (default RUN/eval-SPLIT, or RUN/eval-cv for a cross-validated run).

    Example:

    \b
      liverscan evaluate runs/xu --fit-operating-point "tumor>=0.95"
    """
    from liverscan.evaluation import evaluate
    from liverscan.faces.terminal import print_evaluation

    cfg = build_config(config, set_, eval__split=split, eval__bootstrap=bootstrap)
    retention = cfg.ood.retention if (config or set_) else None  # else the model's own, as predict does
    spec = renamed(
        "--operating-point", "--fit-operating-point", old_operating_point, fit_operating_point, err_console()
    )
    res = evaluate(
        run,
        data,
        split=split,
        out=out,
        operating_point=spec,
        config=cfg,
        seed=seed or 0,
        ood_retention=retention,
        group_column=group_column,
    )
    if not quiet:
        print_evaluation(res.metrics, console())
    for path, reason in res.metrics.skipped:
        err_console().print(f"[yellow]skipped:[/] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
    seen = res.metrics.leakage.warning(res.metrics.n) if res.metrics.leakage else None
    if seen:
        err_console().print(f"[yellow]warning:[/] {escape(seen)}", highlight=False, soft_wrap=True)
    for warning in res.metrics.warnings:  # an operating point fitted on too few images, classes without images
        err_console().print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console().print(f"Wrote predictions, metrics and figures to {escape(str(res.out_dir))}", highlight=False)


@command("report")
def report_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directory (several with --compare).", metavar="RUN", show_default=False)
    ],
    compare: Annotated[bool, typer.Option("--compare", help="Compare the given runs side by side.")] = False,
    eval_dir: Annotated[
        Optional[Path], typer.Option("--eval", help="Evaluation directory to report (default RUN/eval-test).")
    ] = None,
    out: OutDirOpt = None,
) -> None:
    """Render a run into report.html (self-contained) and report.md, or compare runs (--compare writes
    compare.md and compare.csv to --out, default liverscan-compare).

    Examples:

    \b
      liverscan report runs/xu
      liverscan report --compare runs/a runs/b -o comparison
    """
    from rich.table import Table

    from liverscan.evaluation import COMPARE_COLUMNS, write_compare, write_report

    if compare:
        rows = write_compare(runs, out or Path("liverscan-compare"))
        table = Table(title="Runs side by side")
        for c in COMPARE_COLUMNS:
            table.add_column(c)
        for r in rows:
            table.add_row(*[escape(str(x)) for x in r])
        console().print(table)
        console().print(
            f"Wrote compare.md and compare.csv to {escape(str(out or Path('liverscan-compare')))}", highlight=False
        )
        return
    if len(runs) != 1:
        usage("give one run directory (or --compare with several)")
    html_path, md_path, sections = write_report(runs[0], eval_dir)
    for s in sections:
        tables = [b for b in s.blocks if b[0] == "table"]
        if s.title.startswith("Results") and tables:
            header, rows = tables[0][1], tables[0][2]
            t = Table(title=s.title)
            for h in header:
                t.add_column(str(h))
            for r in rows:
                t.add_row(*[escape(str(c)) for c in r])
            console().print(t)
    console().print(f"Wrote {escape(str(html_path))} and {escape(str(md_path))}", highlight=False)


@command("predict")
def predict_cmd(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image, DICOM and video files, folders (recursive), globs, or - to read paths from standard input.",
            metavar="PATH",
            show_default=False,
        ),
    ],
    model: ModelOpt = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write records to .csv, .json or .jsonl.")
    ] = None,
    format_: Annotated[
        Optional[str], typer.Option("--format", "-f", help="Print records to standard output as csv, json or jsonl.")
    ] = None,
    explain: Annotated[
        Optional[Path],
        typer.Option(
            "--explain",
            help="Write an overlay PNG per image into this folder: the lesion probability map and outline when the "
            "model has a lesion head, else Grad-CAM (see --explain-method).",
        ),
    ] = None,
    explain_method: Annotated[
        str,
        typer.Option(help="What --explain shows: auto (lesion when the model has a lesion head), gradcam or lesion."),
    ] = "auto",
    no_lesion: Annotated[
        bool,
        typer.Option(
            "--no-lesion",
            help="Skip the model's lesion head (records then do not say where; faster).",
        ),
    ] = False,
    lesion_masks: Annotated[
        Optional[Path],
        typer.Option(
            help="Write each image's predicted lesion mask into this folder (8-bit PNG at the image's size, 255 = lesion)."
        ),
    ] = None,
    use_operating_point: UseOperatingPointOpt = False,
    old_operating_point: Annotated[bool, typer.Option("--operating-point", hidden=True)] = False,
    review_below: Annotated[
        Optional[float],
        typer.Option(
            help=f"Flag needs_review when the confidence is below this (default {REVIEW_CONFIDENCE}).", min=0.0, max=1.0
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.", min=1, max=4096)] = 32,
    workers: Annotated[int, typer.Option(help="Decoding threads (or processes, see --decode).", min=1, max=256)] = 2,
    decode: Annotated[
        str,
        typer.Option(help="Decode in threads or processes; auto: processes from 4 --workers on (cores feeding a GPU)."),
    ] = "auto",
    runtime: Annotated[
        str, typer.Option(help="auto (an exported model.tflite, else model.onnx, when present), keras, tflite or onnx.")
    ] = "auto",
    dicom_tags: Annotated[
        Optional[str], typer.Option(help="DICOM tags to copy into records, comma-separated (none by default).")
    ] = None,
    no_ood: Annotated[
        bool, typer.Option("--no-ood", help="Turn the out-of-distribution guard off (recorded in every record).")
    ] = False,
    ood_retention: Annotated[
        Optional[float],
        typer.Option(
            help="Share of in-distribution images the guard lets pass (default: the model's, 0.95).", min=0.5, max=1.0
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    group_by: Annotated[
        Optional[str],
        typer.Option(
            help="One answer per study: object (a file's frames), study, series (DICOM UIDs), folder, "
            "regex:PATTERN or column:NAME (of a CSV path list).",
        ),
    ] = None,
    group_rule: Annotated[
        Optional[str], typer.Option(help="How frames make a study's answer: mean (default), max or vote.")
    ] = None,
    study_output: Annotated[
        Optional[Path], typer.Option(help="Write one record per study to .csv, .json or .jsonl.")
    ] = None,
    frame_step: Annotated[
        Optional[int],
        typer.Option(
            help="Loops (videos, DICOM cine): read every N-th frame (default: about 4 frames a second).", min=1
        ),
    ] = None,
    fps: Annotated[
        Optional[float], typer.Option(help="Loops: read about F frames per second of the loop's time.", min=0.001)
    ] = None,
    dicom_seg: Annotated[
        Optional[Path],
        typer.Option(
            help='DICOM inputs: write a DICOM Segmentation of the lesion mask per object here ("liverscan[dicom]").'
        ),
    ] = None,
    dicom_sr: Annotated[
        Optional[Path],
        typer.Option(help="DICOM inputs: write a DICOM Structured Report (TID 1500) of the findings per object here."),
    ] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    engine: Annotated[
        str,
        typer.Option(
            help='local (this process) or ray (Ray Data actors; needs "liverscan[ray]"; --output is a folder).'
        ),
    ] = "local",
    ray_address: Annotated[
        Optional[str], typer.Option(help="Ray cluster to use: auto or ray://HOST:10001 (default: start a local Ray).")
    ] = None,
    old_address: Annotated[Optional[str], typer.Option("--address", hidden=True)] = None,
    num_workers: Annotated[int, typer.Option(help="Ray: actors, each holding the model once.", min=1, max=4096)] = 2,
    gpus_per_worker: Annotated[float, typer.Option(help="Ray: GPUs per actor (0: CPU).", min=0.0, max=64.0)] = 0.0,
    shard_size: Annotated[int, typer.Option(help="Ray: inputs per shard file.", min=1, max=1_000_000)] = 1000,
    shard_format: Annotated[str, typer.Option(help="Ray: parquet or jsonl shards.")] = "parquet",
    resume_shards: Annotated[
        bool,
        typer.Option(
            "--resume-shards", help="Ray: finish a stopped run in --output, predicting only inputs without a record."
        ),
    ] = False,
    old_resume: Annotated[bool, typer.Option("--resume", hidden=True)] = False,
) -> None:
    """Classify images; exit code 0 = all predicted, 4 = some files failed (see their records), 1 = model/data
    error, 2 = usage error, 130/143/129 = stopped by Ctrl+C/SIGTERM/SIGHUP (records so far kept in FILE.partial).

    Examples:

    \b
      liverscan predict scans/ --model runs/xu --output results.csv --explain overlays/
      find /archive -name '*.png' | liverscan predict - --format jsonl
    """
    from liverscan.faces.progress import RecordProgress
    from liverscan.faces.terminal import print_predict_summary
    from liverscan.serving import PredictJob, PredictOptions, PredictSummary

    use_operating_point = renamed(
        "--operating-point", "--use-operating-point", old_operating_point, use_operating_point, err_console()
    )
    resume = renamed("--resume", "--resume-shards", old_resume, resume_shards, err_console())
    address = renamed("--address", "--ray-address", old_address, ray_address, err_console())
    cfg = build_config(
        config,
        set_,
        eval__review_confidence=review_below,
        eval__group_rule=group_rule,
        ood__retention=ood_retention,
        ood__enabled=False if no_ood else None,
    )
    options = PredictOptions.from_config(
        cfg,
        retention_given=ood_retention is not None or bool(config or set_),
        grouped=bool(group_by or study_output or group_rule),
        use_operating_point=use_operating_point,
        include_dicom_tags=tuple(t.strip() for t in (dicom_tags or "").split(",") if t.strip()),
        runtime=runtime,
        batch_size=batch_size,
        workers=workers,
        decode=decode,
        explain_dir=explain,
        group_by=group_by,
        lesion=not no_lesion,
        lesion_masks=lesion_masks,
        explain_method=explain_method,
        frame_step=frame_step,
        fps=fps,
        dicom_seg=dicom_seg,
        dicom_sr=dicom_sr,
        **({"group_rule": group_rule} if group_rule else {}),
    )
    if engine not in ("local", "ray"):
        usage("--engine must be local or ray")
    if engine == "ray":
        refused = {"--decode processes": decode == "processes", "--format": format_, "--explain": explain}
        refused.update({"--lesion-masks": lesion_masks, "--dicom-seg": dicom_seg, "--dicom-sr": dicom_sr})
        refused.update({"--group-by": group_by, "--group-rule": group_rule, "--study-output": study_output})
        ray = dict(shard_format=shard_format, resume=resume, overwrite=overwrite, address=address)
        ray.update(num_workers=num_workers, gpus_per_worker=gpus_per_worker, shard_size=shard_size)
        return _predict_on_ray(paths, model, output, options, ray, refused=refused, quiet=quiet)
    if resume or address:
        usage("--resume-shards and --ray-address work with --engine ray")
    job = PredictJob(paths, options, model=model, output=output, stream_format=format_, study_output=study_output,
                     overwrite=overwrite)  # fmt: skip
    note = functools.partial(err_console().print, highlight=False, soft_wrap=True)
    _print_model(job, note)
    show_table, summary = not quiet and format_ is None, PredictSummary()
    shown: list = []

    def on_record(rec) -> None:
        if rec.error:
            note(f"[yellow]skipped:[/] {escape(rec.path)}: {escape(rec.error)}")
        if show_table and len(shown) < 200:
            shown.append(rec)
        progress.tick()

    try:
        with RecordProgress(err_console(), enabled=not quiet and format_ is None) as progress:
            job.run(on_record, summary)
    except (KeyboardInterrupt, OSError, LiverscanError) as exc:  # a signal, a full disk, a bad input list
        _fail_stopped(exc, summary, note)
    print_predict_summary(console(), err_console(), summary, summary.classes, shown if show_table else None,
                          job.options.group_by)  # fmt: skip
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_model(job, note) -> None:
    """Which model predicts, how it decides, and what to know before reading its answers."""
    clf = job.classifier
    note(
        f"Model: {escape(str(clf.source))} (classes: {', '.join(clf.classes)}; decision: {clf.decision_rule}; "
        f"runtime: {clf.runtime}; out-of-distribution guard: {escape(clf.guard_status)}"
        + (f"; lesion head: {escape(clf.lesion_status)})" if clf.lesion_status else ")")
    )
    for text in job.notes():
        note(f"[yellow]note:[/] {escape(text)}")


def _fail_stopped(exc: BaseException, summary, note) -> NoReturn:
    """One line for a stopped prediction run, saying what was kept where; the signal's exit code."""
    if summary.skipped.total:
        note(f"[yellow]note:[/] {escape(summary.skipped.summary())}")
    where = f"; {summary.written} records so far kept in {summary.kept}" if summary.kept else ""
    if isinstance(exc, OSError):
        fail(f"{_os_message(exc)}{where}")
    if isinstance(exc, LiverscanError):
        fail(f"{exc}{where}", _error_code(exc))
    fail(f"stopped by {_signal_name(exc)}{where}", _signal_code(exc))


def _predict_on_ray(paths, model, output, options, ray_options: dict, refused: dict, quiet: bool) -> None:
    """``predict --engine ray``: shards in the --output folder, a summary line, exit 4 when some files failed."""
    from liverscan.core.files import Skipped
    from liverscan.serving import check_path_lists, expand_inputs, run_ray_predict

    given = [flag for flag, value in refused.items() if value]
    if given:
        usage(f"{', '.join(given)} cannot be used with --engine ray (write shards with --output FOLDER)")
    if output is None:
        usage("--engine ray needs --output FOLDER for its shards")
    if Path(output).suffix.lower() in (".csv", ".json", ".jsonl", ".parquet"):
        usage(f"{output}: with --engine ray the output is a folder of shards, not a file")
    check_path_lists(paths)
    skipped = Skipped()
    listed = list(expand_inputs(paths, skipped=skipped))
    if skipped.total:
        err_console().print(f"[yellow]note:[/] {escape(skipped.summary())}", highlight=False, soft_wrap=True)
    if not listed:
        fail("no input images found")

    def show(rows: list[dict]) -> None:
        for row in rows:
            if row.get("error"):
                err_console().print(
                    f"[yellow]skipped:[/] {escape(row['path'])}: {escape(row['error'])}",
                    highlight=False,
                    soft_wrap=True,
                )

    workers = min(ray_options["num_workers"], -(-len(listed) // ray_options["shard_size"]))  # one per shard at most
    if not quiet:
        err_console().print(
            f"Ray engine: {len(listed)} inputs, {workers} workers, model "
            f"{escape(str(model or 'the shipped default model'))}, runtime {options.runtime}; shards in "
            f"{escape(str(output))}",
            highlight=False,
            soft_wrap=True,
        )
    try:
        s = run_ray_predict(listed, output, model, options, on_batch=show, **ray_options)
    except KeyboardInterrupt as exc:
        fail(
            f"stopped by {_signal_name(exc)}; finished shards are kept in {output}; finish with --resume-shards",
            _signal_code(exc),
        )
    decisions = ", ".join(f"{c}: {n}" for c, n in sorted(s.decisions.items()))
    err_console().print(
        escape(
            f"{s.records - s.failed} of {s.records} images predicted ({decisions or 'none'})"
            + (f"; {s.failed} failed" if s.failed else "")
            + f"; {s.predicted_now} of {s.inputs} inputs by this run in {s.seconds:.1f} s; "
            f"{s.shards} shards in {output}"
        ),
        highlight=False,
    )
    from liverscan.faces.terminal import ood_summary

    warning = ood_summary(s.outside, s.records - s.failed)
    if warning:
        err_console().print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if s.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory from 'liverscan train'.")],
    runtime: Annotated[
        Optional[str],
        typer.Option("--runtime", "-r", help='Fast runtime to export: tflite, or onnx (needs "liverscan[onnx]").'),
    ] = None,
    old_format: Annotated[Optional[str], typer.Option("--format", "-f", hidden=True)] = None,
) -> None:
    """Export the model for fast inference; written only when it agrees with Keras (max abs difference <= 1e-4).

    'liverscan predict' then uses it automatically (its --runtime picks one). A run with a lesion head also gets
    lesion.tflite / lesion.onnx, written only when its maps agree too.

    Examples:

    \b
      liverscan export runs/xu --runtime tflite
      liverscan export runs/xu --runtime onnx
    """
    from liverscan.serving import export_model

    fmt = renamed("--format", "--runtime", old_format, runtime, err_console()) or "tflite"
    info = export_model(run, fmt)
    console().print(
        f"Wrote {escape(str(run / info['file']))} ({info['bytes'] / 1e6:.1f} MB); max abs difference vs Keras "
        f"{info['max_abs_difference_vs_keras']:.1e} on {info['checked_images']} images",
        highlight=False,
    )
    if lesion := info.get("lesion"):
        console().print(
            f"Wrote {escape(str(run / lesion['file']))} ({lesion['bytes'] / 1e6:.1f} MB); lesion maps: max abs "
            f"difference vs Keras {lesion['max_abs_difference_vs_keras']:.1e}, masks differ on "
            f"{lesion['mask_pixels_differing']:.2%} of pixels (Dice {lesion['mask_dice_vs_keras']:.3f})"
            + _joint_words(lesion),
            highlight=False,
        )


def _joint_words(lesion: dict) -> str:
    """What the export line adds for a lesion file holding the classifier too."""
    if not lesion.get("shared_backbone_with_classifier"):
        return ""
    below = lesion.get("lesion_head_runs_own_layers_from")
    shared = f"the backbone below {below}" if below else "the whole backbone"
    return f"; one graph with the classifier, {shared} run once for both (predict uses it when the head is on)"


@command("app")
def app_cmd(
    model: ModelOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve on (localhost).", min=1, max=65535)] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind the app's server to.")] = "localhost",
    use_operating_point: UseOperatingPointOpt = False,
) -> None:
    """Start the Streamlit web app (needs the extra: pip install "liverscan[app]").

    Example (then open http://localhost:8501):

    \b
      liverscan app --model runs/xu --port 8501
    """
    import importlib.util
    import os

    from liverscan.faces import APP_MAX_UPLOAD_MB

    if importlib.util.find_spec("streamlit") is None:
        fail('the app needs Streamlit: pip install "liverscan[app]"')
    from liverscan.core.artifacts import load_run
    from liverscan.serving import resolve_model

    target = load_run(resolve_model(model)).source
    script = Path(__file__).resolve().parent / "app.py"
    env = {**os.environ, "LIVERSCAN_APP_MODEL": str(Path(target).resolve())}
    env["LIVERSCAN_APP_OPERATING_POINT"] = "1" if use_operating_point else ""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from liverscan.faces.cli import serve_app; sys.exit(serve_app(sys.argv[1:]))",
        "run",
        str(script),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--server.maxUploadSize",
        str(APP_MAX_UPLOAD_MB),
    ]
    err_console().print(
        f"liverscan app on http://{address}:{port} (model {escape(str(target))}); Ctrl+C to stop", highlight=False
    )
    if address not in ("localhost", "127.0.0.1", "::1"):
        err_console().print(
            f"[yellow]warning:[/] serving on {escape(address)} without authentication: anyone who can reach "
            "this address can upload images",
            highlight=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    # become the server (no child left behind): a signal to this process reaches Streamlit itself
    os.execve(sys.executable, cmd, env)


# the head options of both federated commands (simulate, server)
ProbeCOpt = Annotated[
    Optional[float],
    typer.Option(
        "--c",
        help="Inverse L2 strength of the probe (default: chosen on the sites' validation splits).",
        min=0.0,
    ),
]
RoundsOpt = Annotated[
    Optional[int], typer.Option(help="The mlp head (--set model.head=mlp): federated rounds (default 20).", min=1)
]
LocalEpochsOpt = Annotated[
    Optional[int], typer.Option(help="The mlp head: epochs each site trains per round (default 2).", min=1)
]
ProxMuOpt = Annotated[
    Optional[float], typer.Option(help="The mlp head: FedProx's proximal weight mu (default 0: FedAvg).", min=0.0)
]


federate_app = typer.Typer(
    name="federate",
    help="Federated training: each site keeps its images; only head parameters and aggregates travel "
    '(needs "liverscan[federated]" for a deployment).',
    cls=_Group,
    no_args_is_help=True,
    rich_markup_mode=HELP_MARKUP,
    context_settings=HELP_WIDTH,
)
app.add_typer(federate_app)


@command("simulate", federate_app)
def federate_simulate(
    data: Annotated[
        list[Path],
        typer.Argument(help="Prepared dataset folders, one per site.", metavar="PREPARED", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    min_sites: Annotated[int, typer.Option(help="Training stops when fewer sites than this answer.", min=1)] = 2,
    c: ProbeCOpt = None,
    rounds: RoundsOpt = None,
    local_epochs: LocalEpochsOpt = None,
    prox_mu: ProxMuOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Federated training with every site in this process: each computes its own features; only head
    parameters and aggregates go to the coordinator. The result is an ordinary run directory.

    Example:

    \b
      liverscan federate simulate prepared/site-a prepared/site-b --out runs/federated
    """
    from liverscan.core.artifacts import CONFIG_FILE, EXPORT_PHASE
    from liverscan.federated.run import mlp_settings, simulate
    from liverscan.training import finish_run

    if c is not None and c <= 0:
        usage("--c must be above 0")
    base = config if config is not None else (data[0] / CONFIG_FILE if (data[0] / CONFIG_FILE).is_file() else None)
    cfg = build_config(base, set_)
    say = (lambda message: None) if quiet else (lambda message: console().print(escape(message), highlight=False))
    settings = mlp_settings(cfg, rounds, local_epochs, prox_mu)
    card = simulate(cfg, data, out, overwrite=overwrite, min_sites=min_sites, c=c, mlp=settings, print_=say)
    _print_federated(card, out)
    finish_run(out, {EXPORT_PHASE: lambda: _export_fast_runtime(out)})


@command("server", federate_app)
def federate_server(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to write.")] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Go on with the stopped federated run in this directory.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    address: Annotated[
        str, typer.Option(help="HOST:PORT the coordinator listens on (loopback unless --tls-dir or --insecure).")
    ] = "127.0.0.1:8000",
    min_sites: Annotated[int, typer.Option(help="Training stops when fewer sites than this answer.", min=1)] = 2,
    sites: Annotated[
        Optional[int], typer.Option(help="Sites to wait for before starting (default: --min-sites).", min=1)
    ] = None,
    c: ProbeCOpt = None,
    max_rounds: Annotated[
        Optional[int],
        typer.Option(
            help="At most this many optimiser rounds per fit of the probe (default: until it converges).", min=1
        ),
    ] = None,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a site's reply before it is dropped from the round.", min=1.0)
    ] = 120.0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for --min-sites sites to connect.", min=1.0)] = 600.0,
    tls_dir: Annotated[
        Optional[Path], typer.Option(help="Folder with ca.crt, server.pem and server.key: serve over TLS.")
    ] = None,
    site_key: Annotated[
        Optional[list[Path]],
        typer.Option(
            metavar="<path>",
            help="A site's public key (repeatable): only sites holding these keys may connect (needs TLS).",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --address without TLS (a trusted network only).")
    ] = False,
    rounds: RoundsOpt = None,
    local_epochs: LocalEpochsOpt = None,
    prox_mu: ProxMuOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The coordinator of a federated deployment: a Flower SuperLink that sites connect to; writes the run.

    Example (the coordinator, then on each site; a stopped coordinator goes on with --resume):

    \b
      liverscan federate server --out runs/federated
      liverscan federate site --data prepared/site-a --server 127.0.0.1:8000
      liverscan federate server --resume runs/federated
    """
    from liverscan.core.artifacts import CONFIG_FILE, EXPORT_PHASE
    from liverscan.core.config import load_saved_config
    from liverscan.federated.deploy import start_server
    from liverscan.training import finish_run

    if (out is None) == (resume is None):
        usage("give --out RUN_DIR (or --resume RUN_DIR)")
    if c is not None and c <= 0:
        usage("--c must be above 0")
    cfg = load_saved_config(resume / CONFIG_FILE) if resume is not None else build_config(config, set_)
    target = resume if resume is not None else out
    assert target is not None
    say = (lambda message: None) if quiet else (lambda message: console().print(escape(message), highlight=False))
    try:
        card = start_server(
            cfg,
            target,
            address=address,
            min_sites=min_sites,
            sites=sites,
            c=c,
            max_rounds=max_rounds,
            rounds=rounds,
            local_epochs=local_epochs,
            prox_mu=prox_mu,
            round_timeout=round_timeout,
            wait=wait,
            tls_dir=tls_dir,
            insecure=insecure,
            site_keys=site_key or [],
            overwrite=overwrite,
            resume=resume is not None,
            print_=say,
        )
    except KeyboardInterrupt as exc:
        fail(
            f"stopped by {_signal_name(exc)}; go on with: liverscan federate server --resume {target}",
            _signal_code(exc),
        )
    _print_federated(card, target)
    finish_run(target, {EXPORT_PHASE: lambda: _export_fast_runtime(target)})


@command("site", federate_app)
def federate_site(
    data: Annotated[Path, typer.Option("--data", "-d", help="This site's prepared dataset folder.")],
    server: Annotated[str, typer.Option(help="The coordinator's HOST:PORT.")] = "127.0.0.1:8000",
    name: Annotated[
        Optional[str], typer.Option(help="This site's name in the card (default: the folder's name).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root_certificates: Annotated[
        Optional[Path], typer.Option(help="CA certificate of a coordinator serving TLS.")
    ] = None,
    auth_key: Annotated[
        Optional[Path], typer.Option(help="This site's private key, for a coordinator started with --site-key.")
    ] = None,
) -> None:
    """A site of a federated deployment: computes its features here and answers the coordinator with
    aggregates only (never images, features or per-image scores).

    Example:

    \b
      liverscan federate site --data prepared/site-a --server 127.0.0.1:8000
    """
    from liverscan.core.artifacts import CONFIG_FILE
    from liverscan.federated.deploy import start_site

    base = config if config is not None else (data / CONFIG_FILE if (data / CONFIG_FILE).is_file() else None)
    cfg = build_config(base, set_)
    say = lambda message: err_console().print(escape(message), highlight=False)  # noqa: E731
    start_site(cfg, data, server, name=name, root_certificates=root_certificates, auth_key=auth_key, print_=say)


def _print_federated(card, out: Path) -> None:
    fed = card.extra["federated"]
    pooled, opt = fed["pooled_test_metrics"], fed["optimiser"]
    head = f"C = {opt['C']:g}" if "C" in opt else f"{opt['strategy']}, best round {opt['best_round']}"
    console().print(
        f"Federated over {len(fed['sites'])} sites in {fed['rounds']} rounds "
        f"({(fed['bytes_to_sites'] + fed['bytes_from_sites']) / 1e6:.1f} MB sent), {head} -> {escape(str(out))}",
        highlight=False,
    )
    for label, m in (("federated", pooled["federated"]), ("each site alone", pooled["each_site_alone"])):
        console().print(
            f"  pooled test splits, {label}: n={m['n']}, balanced accuracy {m['balanced_accuracy']}, AUC {m['auc']}",
            highlight=False,
        )


def serve_app(args: list[str]) -> int:
    """The app's server process (``liverscan app`` becomes it): ``streamlit ARGS``, whose exit code says how it
    stopped as every command's does (130 Ctrl+C, 143 SIGTERM, 129 SIGHUP) where Streamlit itself exits 0."""
    import os
    import signal

    from streamlit.web import cli as streamlit_cli

    # Streamlit installs its own handlers once serving; the wakeup pipe records every signal whichever handles it
    received, write_end = os.pipe()
    os.set_blocking(received, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    # until then a stop exits at once: the server listens before Streamlit's handlers are in place, and asyncio's
    # own Ctrl+C handling in that gap leaves a half-started server (tracebacks, or a process that never exits).
    # A signal ignored on entry stays ignored until Streamlit handles it (nohup: SIGHUP; a background job: Ctrl+C)
    stops = {int(signal.SIGINT), int(signal.SIGTERM)}  # Streamlit handles both once serving, ignored or not
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _stop_app if name == "SIGHUP" else _exit_before_serving)
            stops.add(int(sig))  # SIGHUP counts only when it was not ignored on entry
    code: int | str | None = EXIT_OK
    try:
        streamlit_cli.main(args, prog_name="streamlit")
    except SystemExit as exc:
        code = exc.code
    try:
        seen = os.read(received, 1024)
    except BlockingIOError:
        seen = b""
    first = next((n for n in seen if n in stops), None)
    if first is not None:
        return 128 + first
    return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_ERROR)


def _exit_before_serving(signum, frame) -> NoReturn:
    """A stop before Streamlit serves: nothing is running yet, so the process ends at once, 128 + the signal."""
    import os
    import signal

    os.write(2, f"liverscan app: stopped by {signal.Signals(signum).name} before serving\n".encode())
    os._exit(128 + signum)


def _stop_app(signum, frame) -> None:
    """SIGHUP stops the app as SIGTERM does (Streamlit handles SIGTERM; the exit code still says SIGHUP)."""
    import signal

    if signal.getsignal(signal.SIGTERM) in (_exit_before_serving, signal.SIG_IGN):  # Streamlit is not serving yet
        _exit_before_serving(signum, frame)
    signal.raise_signal(signal.SIGTERM)


def _with_progress(fn, label: str, quiet: bool):
    """Run fn(progress_callback) under a Rich progress bar (none when quiet)."""
    if quiet or not console().is_terminal:
        return fn(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def cb(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return fn(cb)


def main() -> None:
    """Console-script entry point: SIGTERM and SIGHUP stop a command as cleanly as Ctrl+C."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # nohup keeps ignoring SIGHUP
            signal.signal(sig, _raise_stopped)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
