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

from liverscan.core.frames import FrozenCheck
from liverscan.core.images import decode_array
from liverscan.core.video import VIDEO_SUFFIXES, is_video_path, sampled_frames
from liverscan.serving.records import Prediction
from liverscan.serving.streams import FrameStream

__all__ = ["VIDEO_SUFFIXES", "VideoFrames", "is_video_path"]


@dataclass(frozen=True)
class VideoFrames(FrameStream):
    """The sampled frames of one video as (record, model input or None) pairs, decoded as they are iterated."""

    def frames(self) -> Iterator[tuple[Prediction, np.ndarray]]:
        frozen = FrozenCheck()
        for f in sampled_frames(self.path, self.sampling, self.data):
            array = decode_array(f.rgb, size=self.size, label=self.path)
            rec = Prediction(self.path, frame=f.frame, time_s=f.time_s, source_size=(f.rgb.shape[1], f.rgb.shape[0]))
            rec.duplicate_of = frozen.repeat_of(array, f.frame)
            yield rec, array
