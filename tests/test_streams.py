"""FrameStream: a file's frames as (record, model input) pairs, checked as they decode, ending in one error record."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from liverscan.core.errors import ImageDecodeError
from liverscan.serving.records import Prediction
from liverscan.serving.streams import FrameStream


@dataclass(frozen=True)
class TwoFramesThenDamage(FrameStream):
    """A blank frame, a grey textured one, then damage."""

    def frames(self) -> Iterator[tuple[Prediction, np.ndarray]]:
        rng = np.random.default_rng(0)
        yield Prediction(self.path, frame=1), np.zeros((self.size, self.size, 3), np.uint8)
        grey = rng.integers(40, 200, (self.size, self.size, 1), dtype=np.uint8)
        yield Prediction(self.path, frame=2), np.repeat(grey, 3, axis=2)
        raise ImageDecodeError(self.path, "the pixel data stops at frame 3 of 9")


def test_frames_are_checked_as_they_come_and_a_failure_is_the_last_record():
    stream = TwoFramesThenDamage("loop.dcm", 32)
    assert [(r.frame, r.image_check, r.error) for r, _ in stream][-1] == (
        None,
        None,
        "the pixel data stops at frame 3 of 9",
    )
    checked = list(replace(pickle.loads(pickle.dumps(stream)), checks=True))  # handed between processes
    assert [r.frame for r, a in checked if a is not None] == [1, 2]
    assert checked[0][0].image_check and checked[1][0].image_check == ""  # the blank frame is flagged


@dataclass(frozen=True)
class TwoFramesThenBadHeaderValue(TwoFramesThenDamage):
    """Two frames, then a ValueError (what a damaged header value such as a FrameTime of 'abcd' raises)."""

    def frames(self) -> Iterator[tuple[Prediction, np.ndarray]]:
        yield from islice(super().frames(), 2)
        raise ValueError("could not convert string to float: 'abcd'")


def test_any_other_exception_is_one_unexpected_error_record_after_the_frames():
    pairs = list(TwoFramesThenBadHeaderValue("loop.dcm", 32))
    assert [(r.path, r.frame, a is not None) for r, a in pairs] == [
        ("loop.dcm", 1, True),
        ("loop.dcm", 2, True),
        ("loop.dcm", None, False),
    ]
    assert pairs[-1][0].error == "unexpected error: ValueError: could not convert string to float: 'abcd'"
