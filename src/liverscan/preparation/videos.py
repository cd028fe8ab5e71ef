"""Videos as ``prepare`` sources: each loop's sampled frames become images of the dataset.

A video found by a source (folder, glob or CSV) is decoded frame by frame (sampled as ``predict`` samples
loops, :mod:`liverscan.core.frames`); each sampled frame that is not a frozen repeat of the one before is
written as a PNG into ``OUT/frames/`` and becomes a candidate with the video's label and, as its group, the
video (or the patient its CSV row names): a video never spans train and test.  A video that cannot be read
is a ``rejects.csv`` row; one that stops early keeps the frames it has and is a row too.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import replace
from pathlib import Path

from liverscan.core.errors import ImageDecodeError
from liverscan.core.fileio import write_bytes_atomic
from liverscan.core.frames import FrozenCheck, Sampling
from liverscan.core.images import decode_array
from liverscan.core.sources import Candidate
from liverscan.core.video import is_video_path, sampled_frames

#: the folder of a prepared dataset holding the frames taken from its video sources
FRAMES_DIR = "frames"
_FRAME_NAME = re.compile(r"frame\d{6}\.png")


def _frame_files(folder: Path) -> list[Path] | None:
    """The frame files under ``folder`` (``<video>-<digest>/frameNNNNNN.png``), or None if anything else is there."""
    files: list[Path] = []
    for sub in folder.iterdir():
        if not sub.is_dir() or sub.is_symlink():
            return None
        for f in sub.iterdir():
            if not (f.is_file() and not f.is_symlink() and _FRAME_NAME.fullmatch(f.name)):
                return None
            files.append(f)
    return files


def own_frames(folder: Path) -> bool:
    """True when ``folder`` holds only frames liverscan prepare writes (nothing of anyone else to lose)."""
    return folder.is_dir() and not folder.is_symlink() and _frame_files(folder) is not None


def prune_frames(folder: Path, kept: set[str]) -> None:
    """Remove the frames (and emptied video folders) under ``folder`` that the new manifest does not list."""
    if not folder.is_dir() or (files := _frame_files(folder)) is None:
        return
    keep = {str(Path(p).resolve()) for p in kept}
    for f in files:
        if str(f.resolve()) not in keep:
            f.unlink(missing_ok=True)
    for sub in list(folder.iterdir()):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def expand_videos(
    candidates: list[Candidate], out: Path, rejects: list[list[str]], sampling: Sampling = Sampling()
) -> list[Candidate]:
    """``candidates`` with each video replaced by its sampled frames (written under ``out/frames/``)."""
    if not any(is_video_path(c.path) for c in candidates):
        return candidates
    expanded: list[Candidate] = []
    for c in candidates:
        if is_video_path(c.path):
            expanded.extend(_frames_of(c, out / FRAMES_DIR, rejects, sampling))
        else:
            expanded.append(c)
    return expanded


def _frames_of(c: Candidate, folder: Path, rejects: list[list[str]], sampling: Sampling) -> list[Candidate]:
    from PIL import Image

    digest = hashlib.sha1(str(Path(c.path).resolve()).encode()).hexdigest()[:8]
    target = folder / f"{Path(c.path).stem}-{digest}"
    group = c.group or f"video:{c.path}"
    out: list[Candidate] = []
    frozen = FrozenCheck()
    try:
        for f in sampled_frames(c.path, sampling):
            if frozen.repeat_of(decode_array(f.rgb, size=64, label=c.path), f.frame) is not None:
                continue
            buf = io.BytesIO()
            Image.fromarray(f.rgb).save(buf, format="PNG")
            path = target / f"frame{f.frame:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, buf.getvalue())
            out.append(replace(c, path=str(path), group=group))
    except ImageDecodeError as exc:
        rejects.append([c.path, c.source, c.source_label, exc.reason])
    return out
