"""Batch prediction on Ray Data: ``predict``'s records from a pool of actors, in restartable shards.

Ray is the engine (``pip install "liverscan[ray]"``); this module only maps liverscan onto it:
the input paths become a Ray Dataset with a stable ``index`` column, a pool of actors each
holding one :class:`~liverscan.serving.predict.Classifier` decodes and predicts in
``map_batches``, and every batch becomes one shard file written atomically (a temporary
name, then a rename).  A killed run therefore leaves whole shards only, and ``resume``
predicts just the inputs that have no record yet.  Ray is imported only inside these
functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverscan.core.artifacts import ONNX_FILE, TFLITE_FILE
from liverscan.core.errors import ConfigError, LiverscanError, RunDirError
from liverscan.core.fileio import write_bytes_atomic, write_json_atomic
from liverscan.serving.options import PredictOptions
from liverscan.serving.records import Prediction, flat_row, record_columns

SHARD_FORMATS = ("parquet", "jsonl")
INDEX = "index"
RUN_FILE = "_run.json"  # what the run was started with (inputs hash, model, format); checked by resume
SUMMARY_FILE = "_summary.json"  # written when every input has its records
SHARD_PREFIX = "part-"
SHARD_TMP_GLOB = f".{SHARD_PREFIX}*.tmp"  # a shard being written (its atomic write's temporary name)
PREVIOUS_DIR = ".previous"  # the records --overwrite replaces, kept until the new run has finished
#: environment passed on to the workers (a cluster's workers do not inherit the driver's)
FORWARDED_ENV = ("KERAS_BACKEND", "KERAS_HOME", "LIVERSCAN_JAX_CACHE", "TF_CPP_MIN_LOG_LEVEL")
#: what Ray's C++ core prints for every Ray Data actor pool (ray-project/ray#57733), though the pool holds its
#: constructor arguments for as long as it runs: dropped from the terminal (Ray's own log files keep it)
RAY_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LiverscanError('the Ray engine needs Ray Data: pip install "liverscan[ray]"') from None
    return ray


# -- records as rows -------------------------------------------------------------------------------


def _schema(passthrough, classes: list[str], tags: tuple[str, ...], lesion: bool = False):
    import pyarrow as pa

    fields = [f for f in passthrough if f.name not in ("path", "bytes")]
    columns = record_columns(classes, tags, lesion=lesion)
    return pa.schema(fields + [pa.field(c.name, getattr(pa, c.kind)()) for c in columns])


# -- the actor ---------------------------------------------------------------------------------------


class BatchPredictor:
    """A Ray Data callable class: one Classifier per actor; a batch of paths (or bytes) in, records out.

    With ``shard_dir`` each batch is also written there as one shard, and only a short
    summary (index, path, decision, error) goes back to the driver.
    """

    def __init__(
        self,
        model: str | None,
        options: PredictOptions,
        shard_dir: str | None = None,
        shard_format: str = "parquet",
        base_dir: str | None = None,
    ):
        from liverscan.serving.predict import Classifier

        self.shard_dir = Path(shard_dir) if shard_dir else None
        if self.shard_dir is not None and not (self.shard_dir / RUN_FILE).is_file():
            raise RunDirError(
                f"{self.shard_dir}: the output folder is not visible on this worker; "
                "it must be on storage every worker sees at the same path"
            )
        self.clf = Classifier.load(model, options)
        self.batch_size = options.batch_size
        self.threads = options.workers
        self.shard_format = shard_format
        self.base_dir = base_dir  # relative input paths are read from here (the driver's folder)

    def _load_path(self, path: str):
        """(record, array) pairs for one path; a relative path is read from ``base_dir`` but recorded as given."""
        if self.base_dir is None or os.path.isabs(path):
            return self.clf._load(path)
        pairs = list(self.clf._load(os.path.join(self.base_dir, path)))  # a video's frames, decoded
        for rec, _ in pairs:
            rec.path = path
        return pairs

    def __call__(self, batch):
        import pyarrow as pa

        clf = self.clf
        data = batch.column("bytes").to_pylist() if "bytes" in batch.column_names else None
        paths = [str(p) for p in batch.column("path").to_pylist()]
        if data is None:
            items: list = paths
            load = self._load_path
        else:
            from liverscan.serving.inputs import load_bytes

            items = list(zip(paths, data))

            def load(item):
                return load_bytes(item[0], item[1], clf.image_size, clf.max_pixels, clf.include_dicom_tags)

        keep = [n for n in batch.column_names if n not in ("path", "bytes")]
        kept = {n: batch.column(n).to_pylist() for n in keep}
        rows, records = [], []
        columns = record_columns(clf.classes, clf.include_dicom_tags, lesion=clf.has_lesion)
        for k, rec, _ in clf._iter_indexed(items, self.batch_size, self.threads, None, load=load, keep_arrays=False):
            row = {n: kept[n][k] for n in keep}
            row.update(flat_row(rec, columns))
            rows.append(row)
            records.append(rec)
        schema = _schema(batch.schema, clf.classes, clf.include_dicom_tags, clf.has_lesion)
        table = pa.Table.from_pylist(rows, schema=schema)
        if self.shard_dir is None:
            return table
        _write_shard(self.shard_dir, self.shard_format, table, records)
        return table.select([n for n in (INDEX, "path", "decision", "in_distribution", "error") if n in schema.names])


def _write_shard(folder: Path, fmt: str, table, records: list[Prediction]) -> Path:
    """Write one batch atomically, named by its index range (a retried batch replaces its own shard)."""
    idx = table.column(INDEX).to_pylist()
    target = folder / f"{SHARD_PREFIX}{min(idx):010d}-{max(idx):010d}.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes_atomic(target, sink.getvalue().to_pybytes())
    else:
        lines = (json.dumps({INDEX: i, **rec.to_dict()}) + "\n" for i, rec in zip(idx, records))
        write_bytes_atomic(target, "".join(lines).encode("utf-8"))
    return target


# -- the API over a Ray Dataset -------------------------------------------------------------------------


def predict_dataset(
    ds,
    model: str | Path | None = None,
    options: PredictOptions | None = None,
    *,
    num_workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    rows_per_batch: int = 1000,
    **changes: Any,
):
    """Records for a Ray Dataset with a ``path`` column (and optionally ``bytes``, as from
    ``ray.data.read_binary_files(..., include_paths=True)``), as a lazy Ray Dataset.

    Other input columns (an ``index``, a patient id) are kept beside the record columns
    (:func:`~liverscan.serving.records.record_columns`).  ``options`` (keyword ``changes`` replace single
    ones: ``runtime``, ``use_operating_point``, ``batch_size``, ``workers`` decoding threads, ...) are
    :class:`~liverscan.serving.options.PredictOptions`.  Each of ``num_workers`` actors loads the model once.

    >>> ds = ray.data.read_binary_files("s3://archive/", include_paths=True)   # doctest: +SKIP
    >>> predict_dataset(ds, "runs/xu").write_parquet("s3://results/")        # doctest: +SKIP
    """
    options = (options or PredictOptions()).replace(**changes)
    return _map(ds, model, num_workers, gpus_per_worker, cpus_per_worker, rows_per_batch, None, "", options)


def _map(ds, model, num_workers, gpus, cpus, rows, shard_dir, shard_format, options: PredictOptions, base_dir=None):
    import ray.data

    if "path" not in ds.columns():
        raise ConfigError("the dataset needs a 'path' column")
    return ds.map_batches(
        BatchPredictor,
        batch_size=rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_gpus=gpus or None,
        num_cpus=cpus,
        fn_constructor_kwargs=dict(
            model=None if model is None else str(model),
            options=options,
            shard_dir=None if shard_dir is None else str(shard_dir),
            shard_format=shard_format or "parquet",
            base_dir=base_dir,
        ),
    )


# -- a restartable run into a folder of shards ---------------------------------------------------------------


@dataclass
class RayRunSummary:
    """What a Ray-backed run did."""

    output: Path
    inputs: int
    predicted_now: int = 0  # inputs predicted by this run (the rest came from a stopped one)
    records: int = 0
    failed: int = 0
    outside: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    shards: int = 0
    seconds: float = 0.0


def _inputs_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _is_ours(p: Path) -> bool:
    """A file the Ray engine writes in its output folder: the run and summary files, a shard, a shard's
    temporary name; nothing else there is ever moved or removed."""
    if p.is_symlink() or not p.is_file():
        return False
    shard = p.name.startswith(SHARD_PREFIX) and p.suffix.lstrip(".") in SHARD_FORMATS
    return p.name in (RUN_FILE, SUMMARY_FILE) or shard or p.match(SHARD_TMP_GLOB)


def _our_files(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if _is_ours(p)]


def _foreign_in_previous(out: Path) -> Path | None:
    """What in ``out/.previous`` liverscan did not put there (or the entry itself, when not a plain folder)."""
    previous = out / PREVIOUS_DIR
    if not previous.exists() and not previous.is_symlink():
        return None
    if previous.is_symlink() or not previous.is_dir():
        return previous
    return next((p for p in sorted(previous.iterdir()) if not _is_ours(p)), None)


def _drop_previous(previous: Path) -> None:
    """Remove the records kept in ``previous`` (liverscan's files only), then the folder when that empties it."""
    if previous.is_symlink() or not previous.is_dir():
        return
    for p in _our_files(previous):
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        previous.rmdir()


def shard_files(out: str | Path) -> list[Path]:
    """The finished shards of a run folder, in index order."""
    out = Path(out)
    return sorted(p for p in out.glob(f"{SHARD_PREFIX}*") if p.suffix.lstrip(".") in SHARD_FORMATS)


def read_shard_rows(path: Path, columns: list[str] | None = None) -> list[dict]:
    """The rows of one shard (Parquet or JSON Lines)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns).to_pylist()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{c: r.get(c) for c in columns} for r in rows] if columns else rows


def _done_indices(out: Path, fmt: str) -> set[int]:
    done: set[int] = set()
    for shard in shard_files(out):
        if shard.suffix.lstrip(".") != fmt:
            raise RunDirError(f"{shard}: a {shard.suffix} shard in a {fmt} run")
        try:
            done.update(r[INDEX] for r in read_shard_rows(shard, [INDEX]))
        except Exception as exc:  # noqa: BLE001 - name the shard, whatever the reader raised
            raise RunDirError(f"{shard}: unreadable shard ({exc.__class__.__name__}); remove it and resume") from None
    return done


#: what must match between a stopped run and its --resume: (plan key, what it is, the plan key shown)
_RESUME_KEYS = (
    ("inputs_sha256", "input list", "inputs"),
    ("model", "model", "model"),
    ("model_sha256", "model's content", None),
    ("options", "set of prediction options", "options"),
    ("shard_format", "shard format", "shard_format"),
)


def prepare_output(out: Path, plan: dict, resume: bool, overwrite: bool) -> set[int]:
    """Check the output folder against this run (nothing written); the input indices already done (resume)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a folder (with --engine ray the output is a folder of shards)")
    run_file = out / RUN_FILE
    if resume:
        if not run_file.is_file():
            raise RunDirError(f"{out}: nothing to resume (no {RUN_FILE}); run without --resume")
        before = json.loads(run_file.read_text(encoding="utf-8"))
        for key, what, shown in _RESUME_KEYS:
            if before.get(key) != plan[key]:
                change = ""
                if shown is not None:
                    then, now = before.get(shown), plan[shown]
                    if isinstance(now, dict):
                        then, now = _differing(then or {}, now)
                    change = f" ({then} then, {now} now)"
                raise RunDirError(
                    f"{out}: the {what} differs from the stopped run's{change}; "
                    "resume with the same inputs and options, or start again with --overwrite"
                )
        return _done_indices(out, plan["shard_format"])
    if out.is_dir() and (shard_files(out) or (out / SUMMARY_FILE).exists()) and not overwrite:
        raise RunDirError(f"{out}: holds records of an earlier run; pass --resume to finish it or --overwrite")
    odd = _foreign_in_previous(out) if out.is_dir() and shard_files(out) else None
    if odd is not None:  # --overwrite would replace the records kept there: only liverscan's may go
        raise RunDirError(
            f"{odd}: not written by liverscan; --overwrite keeps the replaced records in {PREVIOUS_DIR}/ and "
            f"removes only its own files, so move it out of {out} first"
        )
    return set()


def _differing(then: dict, now: dict) -> tuple[dict, dict]:
    keys = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    return {k: then.get(k) for k in keys}, {k: now.get(k) for k in keys}


def _start_output(out: Path, plan: dict, resume: bool) -> Path | None:
    """Make the folder ready for this run's shards; earlier records replaced by --overwrite are moved
    to ``.previous/`` (removed once this run finishes: a failed run never loses them)."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(SHARD_TMP_GLOB):  # a shard being written when a run was killed
        tmp.unlink(missing_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    previous = None
    if not resume:
        old = [p for p in _our_files(out) if p.name != RUN_FILE]
        if old:
            previous = out / PREVIOUS_DIR
            _drop_previous(previous)  # an earlier --overwrite's, left by a failed run (checked: liverscan's only)
            previous.mkdir(exist_ok=True)
            for p in old:
                os.replace(p, previous / p.name)
        write_json_atomic(out / RUN_FILE, plan)
    return previous


@contextlib.contextmanager
def _without_lines(fragments: tuple[bytes, ...], fd: int = 2) -> Iterator[None]:
    """Lines written to file descriptor ``fd`` (standard error, where Ray's C++ core logs) pass through in order,
    except those holding one of ``fragments``: known noise goes, every other line (errors included) shows."""
    import sys
    import threading

    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not any(f in line for f in fragments):
                    view = memoryview(line)
                    while view:
                        view = view[os.write(saved, view) :]

    thread = threading.Thread(target=pump, name="liverscan-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last writer gone: the pump passes on what is left, then ends
        thread.join(timeout=10)
        if not thread.is_alive():
            os.close(saved)


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """One run per output folder (an advisory lock on ``.lock``, where the file system supports it)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows
            pass
        except BlockingIOError:
            raise RunDirError(f"{out}: another liverscan run is writing this folder") from None
        yield
    finally:
        os.close(fd)


def _model_digest(run) -> str:
    """SHA-256 over the model card and model files (a model retrained in place is another model)."""
    from liverscan.core.artifacts import CARD_FILE, ONNX_FILE, OOD_FILE, TFLITE_FILE

    h = hashlib.sha256()
    folder = run.model_path.parent
    for name in (CARD_FILE, run.model_path.name, OOD_FILE, TFLITE_FILE, ONNX_FILE):
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _check_options(run, options: PredictOptions) -> None:
    """Refuse, on the driver and before Ray starts, what would otherwise fail in every actor."""
    runtime = options.runtime
    if runtime in ("tflite", "onnx"):
        f = run.model_path.with_name(TFLITE_FILE if runtime == "tflite" else ONNX_FILE)
        if not f.is_file():
            raise RunDirError(f"{run.source}: no {f.name}; export it first: liverscan export RUN --runtime {runtime}")
    if options.use_operating_point and not run.card.operating_point:
        raise RunDirError(
            f"{run.source}: the model card has no operating point; fit one by evaluating this run "
            "with an operating-point goal, e.g. liverscan evaluate RUN --fit-operating-point 'tumor>=0.95'"
        )


def run_ray_predict(
    paths: Iterable[str],
    output: str | Path,
    model: str | Path | None = None,
    options: PredictOptions | None = None,
    *,
    shard_format: str = "parquet",
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    num_workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    shard_size: int = 1000,
    on_batch: Callable[[list[dict]], None] | None = None,
    **changes: Any,
) -> RayRunSummary:
    """Predict ``paths`` on Ray into ``output``/part-*.{parquet,jsonl}; restartable with ``resume``.

    ``options`` (:class:`~liverscan.serving.options.PredictOptions`, keyword ``changes`` replace single
    ones) are what every actor's classifier applies; its ``workers`` are each actor's decoding threads.

    Without ``address`` a local Ray starts on this machine (and stops afterwards).
    ``on_batch`` receives each finished batch's (index, path, decision, error) rows.
    """
    if shard_format not in SHARD_FORMATS:
        raise ConfigError(f"unknown shard format {shard_format!r} ({', '.join(SHARD_FORMATS)})")
    ray = _require_ray()
    import pyarrow as pa

    from liverscan import __version__
    from liverscan.core.artifacts import load_run
    from liverscan.serving.inputs import resolve_model

    options = (options or PredictOptions()).replace(**changes)
    out = Path(output).absolute()
    listed = list(paths)
    run = load_run(resolve_model(model))  # a bad model fails here, in one line, not in every actor
    _check_options(run, options)
    model_path = str(run.source.resolve())
    plan = {
        "inputs": len(listed),
        "inputs_sha256": _inputs_digest(listed),
        "model": model_path,
        "model_sha256": _model_digest(run),
        "options": options.model_settings(),
        "shard_format": shard_format,
        "liverscan_version": __version__,
    }
    done = prepare_output(out, plan, resume, overwrite)
    todo = [i for i in range(len(listed)) if i not in done]
    summary = RayRunSummary(output=out, inputs=len(listed), predicted_now=len(todo))
    t0 = time.perf_counter()
    with _folder_lock(out), _without_lines(RAY_NOISE):
        started = _start_ray(ray, address, num_workers * cpus_per_worker) if todo else False
        try:
            previous = _start_output(out, plan, resume)
            if todo:
                chunks = [todo[k : k + shard_size] for k in range(0, len(todo), shard_size)]
                tables = [pa.table({INDEX: pa.array(c, pa.int64()), "path": [listed[i] for i in c]}) for c in chunks]
                ds = _map(
                    ray.data.from_arrow(tables),
                    model_path,
                    min(num_workers, len(tables)),  # one task per shard: an actor more would only load the model
                    gpus_per_worker,
                    cpus_per_worker,
                    shard_size,
                    out,
                    shard_format,
                    options,
                    base_dir=os.getcwd(),
                )
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    if on_batch is not None:
                        on_batch(batch.to_pylist())
        except Exception as exc:
            if type(exc).__module__.split(".")[0] == "ray":  # Ray's wrappers: say what went wrong, in one line
                raise _explained(exc, out) from None
            raise
        finally:
            if started:
                ray.shutdown()
        for tmp in out.glob(SHARD_TMP_GLOB):  # left by a worker that failed while writing
            tmp.unlink(missing_ok=True)
        _tally(out, shard_format, summary)
        summary.seconds = time.perf_counter() - t0
        missing = set(range(len(listed))) - _done_indices(out, shard_format)
        if missing:
            raise RunDirError(f"{out}: {len(missing)} inputs have no record; run again with --resume-shards")
        write_json_atomic(out / SUMMARY_FILE, {**plan, **_summary_fields(summary)})
        if previous is not None:
            _drop_previous(previous)
    return summary


def _explained(exc: BaseException, out: Path) -> Exception:
    """A liverscan error or OS error raised in a worker, or one line on what Ray reported."""
    import re

    from liverscan.core.errors import LiverscanError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (LiverscanError, OSError)):
            return seen if isinstance(seen, LiverscanError) else RunDirError(f"{seen}")
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
    errors = [line.strip() for line in text.splitlines() if re.match(r"\s*[\w.]*(Error|Exception): ", line)]
    reason = errors[-1] if errors else exc.__class__.__name__
    return RunDirError(f"the Ray run failed: {reason}; finished shards are kept in {out} (finish with --resume-shards)")


def _summary_fields(s: RayRunSummary) -> dict:
    return {
        "records": s.records,
        "failed": s.failed,
        "out_of_distribution": s.outside,
        "decisions": s.decisions,
        "shards": s.shards,
    }


def _tally(out: Path, fmt: str, summary: RayRunSummary) -> None:
    """Counts over every shard (this run's and a stopped run's)."""
    seen: set[tuple] = set()
    shards = shard_files(out)
    for shard in shards:
        try:
            rows = read_shard_rows(shard, [INDEX, "frame", "decision", "in_distribution", "error"])
        except Exception as exc:  # noqa: BLE001 - name the shard, whatever the reader raised
            raise RunDirError(f"{shard}: unreadable shard ({exc.__class__.__name__}); remove it and resume") from None
        for r in rows:
            key = (r[INDEX], r.get("frame"))
            if key in seen:
                raise RunDirError(f"{shard}: index {r[INDEX]} has a record in two shards")
            seen.add(key)
            summary.records += 1
            if r.get("error"):
                summary.failed += 1
            else:
                summary.decisions[r["decision"]] = summary.decisions.get(r["decision"], 0) + 1
                summary.outside += r.get("in_distribution") is False
    summary.shards = len(shards)


def _start_ray(ray, address: str | None, cpus_needed: float) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it.

    A local Ray gets at least the CPUs the actor pool asks for, so it never waits for
    resources this machine was not given.
    """
    import logging
    import math

    if ray.is_initialized():
        return False
    import signal

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    joins = address or os.environ.get("RAY_ADDRESS")
    local = {} if joins else {"num_cpus": max(os.cpu_count() or 1, math.ceil(cpus_needed))}
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s}
    ray.init(
        address=address,
        **local,
        runtime_env={"env_vars": env} if env else None,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    for sig, handler in handlers.items():  # ray.init replaces them; liverscan's clean stop stays in charge
        if handler is not None:
            signal.signal(sig, handler)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "raise_original_map_exception"):
        ctx.raise_original_map_exception = True
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    return True
