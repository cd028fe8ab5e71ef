"""Decoding in a pool of threads or processes ahead of the model, in bounded memory, in input order."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np

Item = tuple[int, Any, "np.ndarray | None"]
Load = Callable[[Any], list[tuple[Any, "np.ndarray | None"]]]

#: files per task sent to a decoding process (fewer, larger messages between processes)
PROCESS_CHUNK = 8


def _load_all(load: Load, paths: list) -> list[list[tuple[Any, np.ndarray | None]]]:
    return [load(p) for p in paths]


def _ignore_interrupts() -> None:
    """Decoding processes leave Ctrl+C to the main process, which stops them (no traceback from each)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(workers: int, processes: bool) -> Executor:
    if not processes:
        return ThreadPoolExecutor(max_workers=workers)
    # spawn: a fresh interpreter per worker (forking a process that runs TensorFlow or JAX threads is unsafe)
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
    )


def _result(fut: Future) -> list:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        from liverscan.core.errors import LiverscanError

        raise LiverscanError(
            "a decoding process died (out of memory, or a crash in an image decoder); "
            "run again with --decode threads or fewer --workers"
        ) from None


def decoded_batches(
    paths: Iterable, load: Load, batch_size: int, workers: int, processes: bool = False
) -> Iterator[list[Item]]:
    """Lists of (input index, record, model input or None) holding up to ``batch_size`` decoded images.

    ``load(path)`` returns one or more (record, array) pairs (a DICOM file gives one per
    frame; an unreadable file one pair with no array).  At most ``4 * batch_size`` files
    are in flight, so a folder of any size streams through.  With ``processes`` the files
    are decoded by ``workers`` processes (``load`` must be picklable), a few files per task.
    """
    window = max(4 * batch_size, 16)
    chunk = PROCESS_CHUNK if processes else 1
    pending: deque[tuple[int, Future]] = deque()
    numbered = enumerate(paths)
    pool = _pool(max(1, workers), processes)
    try:
        in_flight = 0

        def refill() -> None:
            nonlocal in_flight
            while in_flight < window:
                part = list(islice(numbered, chunk))
                if not part:
                    return
                pending.append((part[0][0], pool.submit(_load_all, load, [p for _, p in part])))
                in_flight += len(part)

        try:
            refill()
            ready: list[Item] = []
            n_images = 0
            while pending or ready:
                while pending and n_images < batch_size:
                    first, fut = pending.popleft()
                    results = _result(fut)
                    in_flight -= len(results)
                    for k, items in enumerate(results, start=first):
                        ready.extend((k, rec, arr) for rec, arr in items)
                        n_images += sum(a is not None for _, a in items)
                    refill()
                if ready:
                    yield ready
                    ready, n_images = [], 0
        finally:  # stopped early (a signal, a closed generator): do not decode the rest of the window
            for _, fut in pending:
                fut.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
