"""Which frames of a loop (a video or a DICOM cine) are read, and which repeat the one before.

A loop is sampled by ``frame_step`` (every N-th frame) or ``fps`` (about F frames per second of the
loop's own time); with neither, a timed loop is sampled at :data:`DEFAULT_FPS` and an untimed one
(a multi-frame DICOM object without a frame time) gives every frame.  A sampled frame whose model
input is (nearly) the same as the previous sampled frame's is a frozen repeat: it keeps its record
but does not vote in its study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverscan.core.errors import ConfigError

#: sampled frames per second of a timed loop when neither frame_step nor fps is given
DEFAULT_FPS = 4.0
#: mean absolute grey-level difference (0..255) of two model inputs below which the later one is a frozen repeat
FROZEN_DIFFERENCE = 0.5


@dataclass(frozen=True)
class Sampling:
    """How a loop's frames are sampled: ``frame_step`` (every N-th, from the first) or ``fps`` (None: the default)."""

    frame_step: int | None = None
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.frame_step is not None and self.fps is not None:
            raise ConfigError("give --frame-step or --fps, not both")
        if self.frame_step is not None and self.frame_step < 1:
            raise ConfigError(f"--frame-step must be at least 1, not {self.frame_step}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps must be above 0, not {self.fps}")

    def sampler(self, timed: bool) -> FrameSampler:
        """A fresh sampler for one loop (``timed``: its frames have times)."""
        if self.frame_step is not None:
            return FrameSampler(step=self.frame_step)
        if self.fps is not None and timed:
            return FrameSampler(interval=1.0 / self.fps)
        if self.fps is not None:
            raise ConfigError("--fps needs frame times; this loop has none (use --frame-step)")
        return FrameSampler(interval=1.0 / DEFAULT_FPS) if timed else FrameSampler(step=1)


class FrameSampler:
    """Decides, frame by frame in order, which frames of one loop are read."""

    def __init__(self, step: int | None = None, interval: float | None = None):
        self.step, self.interval = step, interval
        self._next_time: float | None = None

    def take(self, index: int, time_s: float | None) -> bool:
        """Whether frame ``index`` (0-based) at ``time_s`` seconds is sampled."""
        if self.interval is None or time_s is None:
            return index % (self.step or 1) == 0
        due = self._next_time
        if due is not None and time_s < due - 1e-6:
            return False
        # the next frame is due one interval later on the grid; after a gap longer than that, from this frame
        start = time_s if due is None or time_s >= due + self.interval else due
        self._next_time = start + self.interval
        return True


class FrozenCheck:
    """Finds sampled frames that repeat the previous sampled frame (a frozen display)."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self._previous_frame: int | None = None

    def repeat_of(self, array: np.ndarray, frame: int) -> int | None:
        """The frame number ``array`` repeats, or None (then it becomes the frame later ones are compared with)."""
        prev = self._previous
        if prev is not None and prev.shape == array.shape:
            diff = np.abs(prev.astype(np.int16) - array.astype(np.int16)).mean()
            if diff < FROZEN_DIFFERENCE:
                return self._previous_frame
        self._previous, self._previous_frame = array, frame
        return None
