"""A file's frames as (record, model input) pairs, decoded as they are iterated: a video, a multi-frame DICOM object.

A :class:`FrameStream` is a lazy, picklable description of one file (a path or an upload's bytes): a
decoding process can hand it back to the process running the model, which then streams it a few batches
ahead of the model (:mod:`liverscan.serving.pipeline`), so a long loop never sits in memory.  A file that
cannot be opened is one error record; one that stops early (cut off, damaged) gives the frames it has and
then one error record.  Any other exception of a file (a damaged header value, a failing conversion) is one
error record too (:func:`error_reason`): a bad file never stops the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from liverscan.core.errors import ImageDecodeError
from liverscan.core.frames import Sampling
from liverscan.serving.records import Prediction


def error_reason(exc: Exception) -> str:
    """The error of a file's record when reading it raises ``exc``: the reason of an :class:`ImageDecodeError`,
    else ``unexpected error: TYPE: message``."""
    if isinstance(exc, ImageDecodeError):
        return exc.reason
    return f"unexpected error: {exc.__class__.__name__}: {exc}"


@dataclass(frozen=True)
class FrameStream:
    """The sampled frames of one file; subclasses say how they are decoded (:meth:`frames`).

    ``checks``: run the guard's image checks on each sampled frame; ``data``: an upload's bytes (else the file
    at ``path`` is read).
    """

    path: str
    size: int
    sampling: Sampling = Sampling()
    checks: bool = False
    data: bytes | None = None

    def frames(self) -> Iterator[tuple[Prediction, np.ndarray]]:
        """(record, model input) of each sampled frame; raises :class:`ImageDecodeError` when the file fails."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Prediction, np.ndarray | None]]:
        from liverscan.core.guard import image_reason

        try:
            for rec, array in self.frames():
                if self.checks:
                    rec.image_check = image_reason(array) or ""
                yield rec, array
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
            yield Prediction(self.path, error=error_reason(exc)), None
