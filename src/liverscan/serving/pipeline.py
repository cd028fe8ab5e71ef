"""Decoding in a thread pool ahead of the model, in bounded memory, in input order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

Item = tuple[int, Any, "np.ndarray | None"]


def decoded_batches(
    paths: Iterable[str], load: Callable[[str], list[tuple[Any, np.ndarray | None]]], batch_size: int, workers: int
) -> Iterator[list[Item]]:
    """Lists of (input index, record, model input or None) holding up to ``batch_size`` decoded images.

    ``load(path)`` returns one or more (record, array) pairs (a DICOM file gives one per
    frame; an unreadable file one pair with no array).  At most ``4 * batch_size`` files
    are in flight, so a folder of any size streams through.
    """
    window = max(4 * batch_size, 16)
    pending: deque[tuple[int, Future]] = deque()
    numbered = enumerate(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def refill() -> None:
            while len(pending) < window:
                try:
                    k, path = next(numbered)
                except StopIteration:
                    return
                pending.append((k, pool.submit(load, path)))

        try:
            refill()
            ready: list[Item] = []
            n_images = 0
            while pending or ready:
                while pending and n_images < batch_size:
                    k, fut = pending.popleft()
                    items = fut.result()
                    ready.extend((k, rec, arr) for rec, arr in items)
                    n_images += sum(a is not None for _, a in items)
                    refill()
                if ready:
                    yield ready
                    ready, n_images = [], 0
        finally:  # stopped early (a signal, a closed generator): do not decode the rest of the window
            for _, fut in pending:
                fut.cancel()
