"""Decoding video loops (optional extra ``liverscan[video]``, PyAV), frame by frame, sampled as they come.

:func:`sampled_frames` opens a file (or an upload's bytes) and yields the sampled frames one at a time
(a ten-minute loop never sits in memory): 1-based frame number, time from the start in seconds, RGB
pixels.  A file that cannot be opened raises :class:`~liverscan.core.errors.ImageDecodeError` before
any frame; one that stops early (cut off, damaged) raises it after the frames it has.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverscan.core.errors import ImageDecodeError
from liverscan.core.frames import Sampling

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm"}
INSTALL_HINT = "video input needs the optional extra: pip install 'liverscan[video]'"


@dataclass
class LoopFrame:
    frame: int  # 1-based, counting every frame of the file
    time_s: float | None  # from the stream's start (None: the file gives no time)
    rgb: np.ndarray  # (H, W, 3) uint8


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av(label: str = "<video>"):
    """The PyAV module, or an error saying which extra to install."""
    try:
        import av
    except ImportError:
        raise ImageDecodeError(label, INSTALL_HINT) from None
    return av


def sampled_frames(label: str, sampling: Sampling = Sampling(), data: bytes | None = None) -> Iterator[LoopFrame]:
    """The sampled frames of the video at ``label`` (or in ``data``), decoded one at a time."""
    av = require_av(label)
    try:
        container = av.open(io.BytesIO(data) if data is not None else label)
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types for files it cannot open
        raise ImageDecodeError(label, f"not a readable video ({exc.__class__.__name__})") from None
    with container:
        if not container.streams.video:
            raise ImageDecodeError(label, "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected, step_s = _expected_seconds(container, stream), _frame_seconds(stream)
        sampler = sampling.sampler(timed=True)
        index, last_time = -1, None
        try:
            for frame in container.decode(stream):
                index += 1
                t = _seconds(frame, stream)
                last_time = t if t is not None else last_time
                if sampler.take(index, t):
                    yield LoopFrame(index + 1, None if t is None else round(t, 3), frame.to_ndarray(format="rgb24"))
        except ImageDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged stream ends the loop
            raise ImageDecodeError(label, f"the video stops at frame {index + 1}: {_reason(exc)}") from None
    if index < 0:
        raise ImageDecodeError(label, "the video has no decodable frame")
    if expected is not None and last_time is not None and last_time + 2 * step_s < expected:
        raise ImageDecodeError(label, f"the video is cut short: frames end at {last_time:.2f} s of {expected:.2f} s")


def _seconds(frame, stream) -> float | None:
    """A frame's time from the stream's start, in seconds (None when the file gives none)."""
    if frame.pts is None or stream.time_base is None:
        return None
    start = stream.start_time or 0
    return float((frame.pts - start) * stream.time_base)


def _frame_seconds(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(1 / rate) if rate else 0.04


def _expected_seconds(container, stream) -> float | None:
    """The duration the file's header declares, in seconds (None when it declares none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None  # the container's duration counts every stream (a longer audio track is no missing picture)


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return f"{exc.__class__.__name__}" + (f" ({text})" if text else "")
