"""Video input for ``predict`` (optional extra ``liverscan[video]``): a loop's sampled frames as records, streamed.

A :class:`VideoFrames` is a lazy description of one video (a path or an upload's bytes): iterating it
decodes frame by frame (:func:`liverscan.core.video.sampled_frames`), so a ten-minute loop never sits in
memory.  Each sampled frame gives one record with its 1-based ``frame`` number and its ``time_s``; a
frozen repeat of the previous sampled frame says which one (``duplicate_of``).  A file that cannot be
opened is one error record; one that stops early (cut off, damaged) gives the frames it has and then one
error record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from liverscan.core.errors import ImageDecodeError
from liverscan.core.frames import FrozenCheck, Sampling
from liverscan.core.images import decode_array
from liverscan.core.video import VIDEO_SUFFIXES, is_video_path, sampled_frames
from liverscan.serving.records import Prediction

__all__ = ["VIDEO_SUFFIXES", "VideoFrames", "is_video_path"]


@dataclass(frozen=True)
class VideoFrames:
    """The sampled frames of one video as (record, model input or None) pairs, decoded as they are iterated.

    Picklable (it holds no open file), so a decoding process can hand it back to the process running the
    model, which then streams it.  ``checks``: run the guard's image checks on each sampled frame.
    """

    path: str
    size: int
    sampling: Sampling = Sampling()
    checks: bool = False
    data: bytes | None = None  # an upload's bytes (else the file at ``path`` is read)

    def __iter__(self) -> Iterator[tuple[Prediction, np.ndarray | None]]:
        from liverscan.core.guard import image_reason

        frozen = FrozenCheck()
        try:
            for f in sampled_frames(self.path, self.sampling, self.data):
                array = decode_array(f.rgb, size=self.size, label=self.path)
                rec = Prediction(
                    self.path, frame=f.frame, time_s=f.time_s, source_size=(f.rgb.shape[1], f.rgb.shape[0])
                )
                rec.duplicate_of = frozen.repeat_of(array, f.frame)
                if self.checks:
                    rec.image_check = image_reason(array) or ""
                yield rec, array
        except ImageDecodeError as exc:
            yield Prediction(self.path, error=exc.reason), None
