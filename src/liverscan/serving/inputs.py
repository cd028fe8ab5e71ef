"""What ``predict`` reads: input paths (files, folders, globs, stdin), the default model, one file's frames."""

from __future__ import annotations

import glob as globlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from liverscan.core.artifacts import CARD_FILE
from liverscan.core.errors import ImageDecodeError, RunDirError
from liverscan.core.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_image
from liverscan.serving.records import Prediction


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


def expand_inputs(items: Iterable[str], stdin=None) -> Iterator[str]:
    """Files, folders (recursive), globs, or '-' for newline-separated paths on standard input.

    Yields paths lazily (a huge folder is walked, not listed up front); a path
    that does not exist is yielded as is and becomes an error record.
    """
    from liverscan.serving.dicom import DICOM_SUFFIXES

    wanted = IMAGE_SUFFIXES | DICOM_SUFFIXES
    for item in items:
        if item == "-":
            for line in stdin or sys.stdin:
                line = line.strip()
                if line:
                    yield from expand_inputs([line])
            continue
        p = Path(item)
        if p.is_dir():
            for sub in sorted(p.rglob("*")):
                if sub.is_file() and sub.suffix.lower() in wanted and not sub.name.startswith("."):
                    yield str(sub)
        elif p.exists():
            yield str(p)
        elif any(ch in item for ch in "*?["):
            matches = sorted(globlib.glob(item, recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                yield item  # reported as 'no file matches'
            yield from files
        else:
            yield item


def load_input(
    path: str, size: int, dicom_tags: tuple[str, ...] = (), max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[Prediction, np.ndarray | None]]:
    """(record, model input) pairs for one file: one per DICOM frame; an error record when unreadable."""
    from liverscan.serving.dicom import is_dicom_path, read_dicom

    try:
        p = Path(path)
        if not p.exists():
            reason = "no file matches this pattern" if any(ch in path for ch in "*?[") else "file not found"
            raise ImageDecodeError(path, reason)
        if p.is_dir():
            raise ImageDecodeError(path, "is a directory")
        if is_dicom_path(p):
            frames = read_dicom(p, size, dicom_tags)
            return [
                (
                    Prediction(path, frame=f.frame, sop_instance_uid=f.sop_instance_uid, dicom_tags=f.tags or None),
                    f.array,
                )
                for f in frames
            ]
        return [(Prediction(path), load_image(p, size, max_pixels=max_pixels))]
    except ImageDecodeError as exc:
        return [(Prediction(path, error=exc.reason), None)]
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run
        return [(Prediction(path, error=f"unexpected error: {exc.__class__.__name__}: {exc}"), None)]


def load_bytes(
    name: str, data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[Prediction, np.ndarray | None]]:
    """Like :func:`load_input` for an in-memory file (an upload): image or DICOM by name or magic bytes."""
    import io

    from liverscan.core.images import decode
    from liverscan.serving.dicom import read_dicom

    try:
        if name.lower().endswith((".dcm", ".dicom")) or data[128:132] == b"DICM":
            frames = read_dicom(io.BytesIO(data), size)
            return [(Prediction(name, frame=f.frame, sop_instance_uid=f.sop_instance_uid), f.array) for f in frames]
        return [(Prediction(name), decode(data, size=size, max_pixels=max_pixels).array)]
    except ImageDecodeError as exc:
        return [(Prediction(name, error=exc.reason), None)]
