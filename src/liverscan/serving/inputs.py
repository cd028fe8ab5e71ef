"""What ``predict`` reads: input paths (files, folders, globs, stdin), the default model, one file's frames."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import CARD_FILE
from liverscan.core.errors import ConfigError, DataError, ImageDecodeError, RunDirError
from liverscan.core.fileio import read_csv
from liverscan.core.files import Skipped, file_problem, glob_files, walk_files
from liverscan.core.frames import Sampling
from liverscan.core.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, decode_pages
from liverscan.serving.records import Prediction
from liverscan.serving.streams import FrameStream, error_reason

#: one input's (record, model input or None) pairs: a list, or a video's frames streamed as they decode
Pairs = list[tuple[Prediction, np.ndarray | None]] | Iterable[tuple[Prediction, np.ndarray | None]]


def default_model_dir() -> Path:
    """The model shipped inside the package (``liverscan/models/default``)."""
    return Path(__file__).resolve().parents[1] / "models" / "default"


def resolve_model(model: str | Path | None) -> Path:
    """The given model path, or the shipped default model when None."""
    if model is not None:
        return Path(model)
    d = default_model_dir()
    if (d / CARD_FILE).is_file():
        return d
    raise RunDirError("no model given and no default model is installed; train one and pass its run directory")


#: why an input is left out when it was already given (it is predicted once)
LISTED_AGAIN = "listed more than once (predicted once)"


def expand_inputs(
    items: Iterable[str], stdin=None, skipped: Skipped | None = None, columns: dict[str, dict] | None = None
) -> Iterator[str]:
    """Files, folders (recursive), globs, CSV path lists, or '-' for newline-separated paths on standard input,
    each file once: a file given again (``a.jpg a.jpg``, or named and in a given folder) is left out and counted
    in ``skipped`` (see :func:`_expand`).  One folder or glob lists each file once by itself: its paths are not
    remembered (an archive of millions streams through in bounded memory)."""
    import os

    items = list(items)
    if len(items) == 1 and (Path(items[0]).is_dir() or (items[0] != "-" and any(ch in items[0] for ch in "*?["))):
        yield from _expand(items, stdin, skipped, columns)
        return
    seen: set[str] = set()
    for path in _expand(items, stdin, skipped, columns):
        key = os.path.normpath(os.path.abspath(path))
        if key in seen:
            if skipped is not None:
                skipped.add(LISTED_AGAIN, path)
            continue
        seen.add(key)
        yield path


def _expand(
    items: Iterable[str], stdin=None, skipped: Skipped | None = None, columns: dict[str, dict] | None = None
) -> Iterator[str]:
    """Files, folders (recursive), globs, CSV path lists, or '-' for newline-separated paths on standard input.

    A ``.csv`` input is a path list: its path column (``path``, ``file``, ``image``, ...; relative
    paths are relative to the CSV) gives the inputs, and each row is kept in ``columns`` (path ->
    row) for ``--group-by column:NAME``.

    Yields paths lazily (a huge folder is walked, not listed up front).  A path named
    explicitly is always yielded (one that cannot be read becomes an error record);
    what a folder walk leaves out (other file types, hidden files, broken links,
    FIFOs, links to folders, unreadable folders) is counted in ``skipped`` with its reason, and so are
    the links to folders a glob's ``**`` does not follow (each file is found once, a link loop never hangs).
    """
    from liverscan.serving.dicom import DICOM_SUFFIXES
    from liverscan.serving.video import VIDEO_SUFFIXES

    wanted = IMAGE_SUFFIXES | DICOM_SUFFIXES | VIDEO_SUFFIXES
    for item in items:
        if item == "-":
            for line in stdin or sys.stdin:
                line = line.strip()
                if line:
                    yield from _expand([line], skipped=skipped, columns=columns)
            continue
        p = Path(item)
        if p.suffix.lower() == ".csv" and p.is_file():
            for path, row in read_path_list(p):
                if columns is not None:
                    columns[path] = row
                yield path
            continue
        if p.is_dir():
            yield from (str(sub) for sub in walk_files(p, wanted, skipped))
        elif p.exists() or p.is_symlink():
            yield str(p)
        elif any(ch in item for ch in "*?["):
            files = glob_files(item, skipped)
            if not files:
                yield item  # reported as 'no file matches'
            yield from files
        else:
            yield item


def read_path_list(csv_path: Path) -> list[tuple[str, dict]]:
    """(path, row) for every row of a CSV path list."""
    import csv

    from liverscan.core.sources import PATH_COLUMNS

    try:
        rows = read_csv(csv_path)
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not a readable CSV path list (not UTF-8 text)") from None
    except csv.Error as exc:
        raise DataError(f"{csv_path}: not a readable CSV path list ({exc})") from None
    if not rows:
        return []
    lower = {c.lower(): c for c in rows[0]}
    column = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if column is None:
        raise DataError(f"{csv_path}: no path column (one of {', '.join(PATH_COLUMNS)})")
    out = []
    for row in rows:
        raw = (row.get(column) or "").strip()
        if raw:
            path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
            out.append((str(path), row))
    return out


def load_input(
    path: str,
    size: int,
    dicom_tags: tuple[str, ...] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    sampling: Sampling = Sampling(),
) -> Pairs:
    """(record, model input) pairs for one file: one per DICOM frame or TIFF page; an error record when unreadable.

    A video or a multi-frame DICOM object gives a :class:`~liverscan.serving.streams.FrameStream`: its
    sampled frames (``sampling``), decoded as they are iterated."""
    from liverscan.serving.dicom import DicomFrames, is_dicom_path
    from liverscan.serving.video import VideoFrames, is_video_path

    try:
        p = Path(path)
        problem = file_problem(p)
        if problem == "file not found" and any(ch in path for ch in "*?["):
            problem = "no file matches this pattern"
        if problem is not None:
            raise ImageDecodeError(path, problem)
        if is_dicom_path(p):
            frames = DicomFrames(path, size, sampling, tags=dicom_tags)
            return frames if frames.multi_frame() else list(frames)
        if is_video_path(p):
            return VideoFrames(path, size, sampling)
        return _image_records(p, path, size, max_pixels)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return [(Prediction(path, error=error_reason(exc)), None)]


def load_checked(
    path: str,
    size: int,
    dicom_tags: tuple[str, ...] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checks: bool = False,
    sampling: Sampling = Sampling(),
) -> Pairs:
    """:func:`load_input`, plus the guard's image checks on each decoded image when ``checks`` (so they run in
    the decoding threads or processes, not after the model; a stream's frames are checked as they decode)."""
    import dataclasses

    pairs = load_input(path, size, dicom_tags, max_pixels, sampling)
    if isinstance(pairs, FrameStream):
        return dataclasses.replace(pairs, checks=checks)
    if checks:
        from liverscan.core.guard import image_reason

        for rec, arr in pairs:
            if arr is not None:
                rec.image_check = image_reason(arr) or ""
    return pairs


def _image_records(
    source: Path | bytes, path: str, size: int, max_pixels: int
) -> list[tuple[Prediction, np.ndarray | None]]:
    """(record, model input) for an image file: one, or one per page of a multi-page TIFF (its frames, numbered
    from 1 as a DICOM object's; a page that cannot be decoded is an error record of its frame)."""
    pages = list(decode_pages(source, size=size, max_pixels=max_pixels))
    out: list[tuple[Prediction, np.ndarray | None]] = []
    for k, page in enumerate(pages, start=1):
        frame = k if len(pages) > 1 else None
        if isinstance(page, ImageDecodeError):
            if frame is None:
                raise page
            out.append((Prediction(path, frame=frame, error=page.reason), None))
        else:
            out.append((Prediction(path, frame=frame, source_size=(page.width, page.height)), page.array))
    return out


def load_bytes(
    name: str,
    data: bytes,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dicom_tags: tuple[str, ...] = (),
    sampling: Sampling = Sampling(),
) -> list[tuple[Prediction, np.ndarray | None]]:
    """Like :func:`load_input` for an in-memory file (an upload): image, DICOM or video by name or magic bytes."""
    from liverscan.serving.dicom import DicomFrames
    from liverscan.serving.video import VideoFrames, is_video_path

    try:
        if name.lower().endswith((".dcm", ".dicom")) or data[128:132] == b"DICM":
            return list(DicomFrames(name, size, sampling, data=data, tags=dicom_tags))
        if is_video_path(name):
            return list(VideoFrames(name, size, sampling, data=data))
        return _image_records(data, name, size, max_pixels)
    except Exception as exc:  # noqa: BLE001 - one bad upload or row never stops the others
        return [(Prediction(name, error=error_reason(exc)), None)]


def check_path_lists(items: Iterable[str], group_by: str | None = None) -> None:
    """Read every CSV path list given as input, and check a ``column:NAME`` grouping against each."""
    for item in items:
        p = Path(item)
        if p.suffix.lower() != ".csv" or not p.is_file():
            continue
        rows = read_path_list(p)
        if group_by and group_by.startswith("column:") and rows and group_by[7:] not in rows[0][1]:
            raise ConfigError(f"{p}: no column {group_by[7:]!r} for --group-by (columns: {', '.join(rows[0][1])})")
