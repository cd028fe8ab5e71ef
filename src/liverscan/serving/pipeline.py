"""Decoding in a pool of threads or processes ahead of the model, in bounded memory, in input order.

A file's pairs are a list (an image, a single-frame DICOM object) or a stream (the sampled frames of a video
or a multi-frame DICOM object): a stream is decoded by a thread of its own a few batches ahead of the model
and cut into batches, so a long loop flows through in bounded memory.
"""

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


def _load_all(load: Load, paths: list) -> list:
    return [load(p) for p in paths]


def prefetched(pairs: Iterable, ahead: int) -> Iterator:
    """The items of ``pairs``, produced by a thread of its own up to ``ahead`` items ahead of the reader
    (an exception in it reaches the reader; a reader that stops early stops it)."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in pairs:
                while not stop.is_set():
                    try:
                        box.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            box.put((end, exc))

    worker = threading.Thread(target=produce, name="liverscan-stream", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = box.get()
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                box.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                worker.join(0.05)


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

    ``load(path)`` returns one or more (record, array) pairs (a multi-page TIFF gives one per page; an
    unreadable file one pair with no array), as a list or as an iterable (a video or multi-frame DICOM object:
    streamed, cut into batches, so its frames may span batches).  At most ``4 * batch_size`` files are in
    flight, so a folder of any size streams through.  With ``processes`` the files are decoded by ``workers``
    processes (``load`` must be picklable), a few files per task.
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
                        if isinstance(items, list):
                            ready.extend((k, rec, arr) for rec, arr in items)
                            n_images += sum(a is not None for _, a in items)
                            continue
                        for rec, arr in prefetched(items, 2 * batch_size):  # a stream: cut into batches
                            ready.append((k, rec, arr))
                            n_images += arr is not None
                            if n_images >= batch_size:
                                yield ready
                                ready, n_images = [], 0
                    refill()
                if ready:
                    yield ready
                    ready, n_images = [], 0
        finally:  # stopped early (a signal, a closed generator): do not decode the rest of the window
            for _, fut in pending:
                fut.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
