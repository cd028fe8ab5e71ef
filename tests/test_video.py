"""Video input: sampling, frame times, frozen repeats, streaming, cut-off files; a loop as one study."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverscan.core.errors import ConfigError
from liverscan.core.frames import FrameSampler, FrozenCheck, Sampling

av = pytest.importorskip("av")

from liverscan.serving.video import VideoFrames  # noqa: E402
from loop_helpers import cut_in_half, make_video, write_cine  # noqa: E402


def test_sampling_by_step_by_time_and_default():
    assert [i for i in range(10) if FrameSampler(step=3).take(i, None)] == [0, 3, 6, 9]
    times = [k / 30 for k in range(90)]  # 3 s at 30 fps, 2 frames a second -> 0, 0.5, ..., 2.5
    by_time = FrameSampler(interval=0.5)
    assert [round(t, 2) for i, t in enumerate(times) if by_time.take(i, t)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert Sampling().sampler(timed=False).step == 1  # an untimed multi-frame object: every frame
    assert Sampling().sampler(timed=True).interval == pytest.approx(0.25)  # a timed loop: 4 frames a second
    with pytest.raises(ConfigError, match="not both"):
        Sampling(frame_step=2, fps=1.0)
    frozen, a = FrozenCheck(), np.zeros((8, 8, 3), np.uint8)
    assert [frozen.repeat_of(x, k) for k, x in enumerate([a, a, a + 40, a + 40], start=1)] == [None, 1, None, 3]


def test_video_frames_stream_with_times_frozen_repeats_and_a_cut_off_copy(tmp_path):
    loop = make_video(tmp_path / "loop.mp4", n=40, fps=10, hold=5)
    pairs = list(VideoFrames(str(loop), size=64, sampling=Sampling(frame_step=2), checks=True))
    recs = [r for r, _ in pairs]
    assert [r.frame for r in recs] == list(range(1, 41, 2)) and all(r.ok for r in recs)
    assert [r.time_s for r in recs[:3]] == [0.0, 0.2, 0.4] and recs[0].source_size == (96, 80)
    assert all(a.shape == (64, 64, 3) for _, a in pairs) and all(r.image_check == "" for r in recs)
    # each image is held for 5 frames: frames 3 and 5 repeat frame 1 (frame 7 is the next image)
    assert [r.duplicate_of for r in recs[:4]] == [None, 1, 1, None]

    cut = cut_in_half(loop, tmp_path / "cut.mp4")
    recs = [r for r, _ in VideoFrames(str(cut), size=64, sampling=Sampling(frame_step=1))]
    assert 5 < len(recs) < 40 and all(r.ok for r in recs[:-1])
    assert recs[-1].frame is None and "video" in (recs[-1].error or "")
    (tmp_path / "junk.mov").write_bytes(b"not a video at all")
    [(bad, arr)] = list(VideoFrames(str(tmp_path / "junk.mov"), size=64))
    assert arr is None and bad.error == "not a readable video (InvalidDataError)"


def test_dicom_cine_sampled_by_its_frame_time(tmp_path):
    from liverscan.serving.dicom import read_dicom

    write_cine(tmp_path / "cine.dcm", n=12, hold=3, frame_time_ms=100.0)
    frames = read_dicom(tmp_path / "cine.dcm", 32, sampling=Sampling(fps=5.0))  # every 0.2 s of 0.1 s frames
    assert [(f.frame, f.time_s) for f in frames] == [(k, round((k - 1) * 0.1, 3)) for k in range(1, 13, 2)]
    assert [f.duplicate_of for f in frames[:3]] == [None, 1, None]  # frame 3 repeats frame 1; frame 5 is new


@pytest.mark.slow
def test_predict_a_loop_as_one_study_and_a_cut_off_one(tmp_path):
    from cli_helpers import runner
    from liverscan.faces.cli import app

    loop = make_video(tmp_path / "loop.mp4", n=60, fps=10, hold=5, blank=range(50, 55))
    cut_in_half(loop, tmp_path / "cut.mp4")
    out, studies = tmp_path / "frames.jsonl", tmp_path / "s.jsonl"
    r = runner.invoke(
        app,
        ["predict", str(loop), str(tmp_path / "cut.mp4"), "--group-by", "object", "--study-output", str(studies)]
        + ["-o", str(out), "-q"],
    )
    assert r.exit_code == 4, r.output  # the cut-off copy ends with an error record
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    whole = [x for x in recs if x["path"] == str(loop)]
    assert len(whole) == 24 and all(x["error"] is None for x in whole)  # 6 s at 4 frames a second
    assert whole[1]["time_s"] == pytest.approx(0.3) and whole[1]["duplicate_of"] == 1
    cut = [x for x in recs if x["path"] == str(tmp_path / "cut.mp4")]
    assert 1 < len(cut) < 24 and [x["error"] is not None for x in cut].count(True) == 1 and cut[-1]["error"]
    by_group = {s["group"]: s for s in map(json.loads, studies.read_text().splitlines())}
    study = by_group[str(loop)]
    assert study["n_frames"] == 24 and study["n_failed"] == 0
    blank = [x for x in whole if 51 <= x["frame"] <= 55]  # 5.1 s, 5.3 s: black frames, out of distribution
    assert len(blank) == 2 and all(x["ood_reason"] == "blank or uniform image" for x in blank)
    voting = [x for x in whole if x["duplicate_of"] is None and x["in_distribution"] is not False]
    assert study["n_voting"] == len(voting) < 24
    assert study["most_suspicious_frame"] in [x["frame"] for x in voting]
    assert study["ood_share"] == pytest.approx(sum(x["in_distribution"] is False for x in whole) / 24, abs=1e-4)
    assert "lesion" in study and by_group[str(tmp_path / "cut.mp4")]["n_failed"] == 1


def test_a_stream_is_cut_into_batches_between_lists_in_input_order():
    from liverscan.serving.pipeline import decoded_batches, prefetched

    def load(name):
        if name == "loop":  # a stream of 7 frames
            return ((f"loop#{k}", np.zeros(1)) for k in range(7))
        return [(name, np.zeros(1))]

    batches = list(decoded_batches(["a", "loop", "b"], load, batch_size=3, workers=2))
    assert [[rec for _, rec, _ in b] for b in batches] == [
        ["a", "loop#0", "loop#1"],
        ["loop#2", "loop#3", "loop#4"],
        ["loop#5", "loop#6", "b"],
    ]
    assert [k for b in batches for k, _, _ in b] == [0, 1, 1, 1, 1, 1, 1, 1, 2]

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(broken(), ahead=1):
            got.append(item)
    assert got == [1]
