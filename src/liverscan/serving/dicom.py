"""DICOM input (optional extra ``liverscan[dicom]``, pydicom).

Every frame of a single- or multi-frame object becomes one record, carrying the
SOP Instance UID and the 1-based frame number.  Photometric interpretations:
MONOCHROME2 as stored, MONOCHROME1 inverted, RGB as stored, YBR_* converted to
RGB.  Monochrome data deeper than 8 bits uses the VOI LUT / window when the file
has one, otherwise a linear map of the stored bit depth to 0..255.
No tag other than the SOP Instance UID is read into records unless asked.

A cine (a multi-frame object with a frame time: FrameTimeVector, FrameTime, CineRate or
RecommendedDisplayFrameRate) is sampled as a video is (:mod:`liverscan.core.frames`); its records
carry each frame's ``time_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from liverscan.core.errors import ConfigError, ImageDecodeError, LiverscanError
from liverscan.core.frames import FrozenCheck, Sampling
from liverscan.core.images import decode_array

DICOM_SUFFIXES = {".dcm", ".dicom"}


@dataclass
class DicomFrame:
    array: np.ndarray  # (S, S, 3) uint8 model input
    frame: int  # 1-based
    sop_instance_uid: str
    tags: dict[str, str]
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    size: tuple[int, int] | None = None  # (width, height) of the frame: its columns and rows
    time_s: float | None = None  # a cine frame's time from the first frame
    duplicate_of: int | None = None  # a frozen frame: the earlier sampled frame it repeats


def is_dicom_path(path: str | Path) -> bool:
    """By suffix, or by the 'DICM' marker at byte 128 (files without a suffix)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    if p.suffix == "" and p.is_file():
        try:
            with open(p, "rb") as fh:
                fh.seek(128)
                return fh.read(4) == b"DICM"
        except OSError:
            return False
    return False


def _require_pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImageDecodeError(
            "<dicom>", "DICOM support needs the optional extra: pip install 'liverscan[dicom]'"
        ) from None
    return pydicom


def check_tag_names(names: tuple[str, ...]) -> None:
    """Refuse DICOM keywords pydicom does not know (a misspelt name would give an empty column)."""
    if not names:
        return
    try:
        from pydicom.datadict import keyword_dict, tag_for_keyword
    except ImportError:
        raise LiverscanError("copying DICOM tags needs the optional extra: pip install 'liverscan[dicom]'") from None
    import difflib

    for name in names:
        if tag_for_keyword(name) is None:
            close = difflib.get_close_matches(name, list(keyword_dict), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown DICOM tag keyword {name!r}{hint}")


def _to_8bit(frame: np.ndarray, ds, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    if photometric.startswith("MONOCHROME"):
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        if bits > 8 and ("WindowCenter" in ds or "VOILUTSequence" in ds):
            frame = apply_voi_lut(frame, ds)
            lo, hi = float(frame.min()), float(frame.max())
            frame = np.zeros(frame.shape) if hi <= lo else (frame - lo) * (255.0 / (hi - lo))
        elif bits > 8 or frame.dtype != np.uint8:
            signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
            f = frame.astype(np.float64)
            if signed:
                f = f + 2 ** (bits - 1)
            frame = f * (255.0 / (2**bits - 1))
        frame = np.clip(np.round(frame), 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            frame = 255 - frame
        return frame
    return np.clip(frame, 0, 255).astype(np.uint8) if frame.dtype != np.uint8 else frame


def frame_times(ds, n_frames: int) -> list[float] | None:
    """Each frame's time in seconds from the first, from the header (None: the object says no frame time)."""
    if n_frames < 2:
        return None
    vector = getattr(ds, "FrameTimeVector", None)
    if vector is not None and len(vector) == n_frames:
        steps = [0.0] + [float(v) for v in list(vector)[1:]]
        return [float(t) / 1000.0 for t in np.cumsum(steps)]
    ms = None
    if getattr(ds, "FrameTime", None) not in (None, ""):
        ms = float(ds.FrameTime)
    else:
        rate = getattr(ds, "CineRate", None) or getattr(ds, "RecommendedDisplayFrameRate", None)
        ms = 1000.0 / float(rate) if rate not in (None, "") and float(rate) > 0 else None
    if ms is None or not ms > 0:
        return None
    return [k * ms / 1000.0 for k in range(n_frames)]


def read_dicom(
    path: str | Path | BinaryIO, size: int = 160, include_tags: tuple[str, ...] = (), sampling: Sampling = Sampling()
) -> list[DicomFrame]:
    """The frames of a DICOM file as model inputs (a cine's sampled frames; every frame of an untimed object
    unless ``sampling`` has a frame step)."""
    pydicom = _require_pydicom()
    label = str(path)
    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise ImageDecodeError(label, f"not a readable DICOM file ({exc.__class__.__name__})") from None
    if "PixelData" not in ds:
        raise ImageDecodeError(label, "DICOM object has no pixel data")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        pixels = ds.pixel_array  # pydicom 3 converts YBR_* to RGB here
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(label, f"cannot decode DICOM pixel data ({exc.__class__.__name__}: {exc})") from None
    if photometric.startswith("YBR"):
        photometric = "RGB"
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = pixels if (n_frames > 1) else pixels[np.newaxis]
    if spp == 1 and frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    uid = str(getattr(ds, "SOPInstanceUID", ""))
    study, series = str(getattr(ds, "StudyInstanceUID", "")), str(getattr(ds, "SeriesInstanceUID", ""))
    tags = {t: str(getattr(ds, t, "")) for t in include_tags}
    times = frame_times(ds, len(frames))
    if times is None and sampling.fps is not None and len(frames) > 1:
        raise ImageDecodeError(label, "--fps needs a frame time (FrameTime, FrameTimeVector); use --frame-step")
    sampler, frozen = sampling.sampler(timed=times is not None), FrozenCheck()
    out = []
    for i, frame in enumerate(frames):
        t = None if times is None else times[i]
        if len(frames) > 1 and not sampler.take(i, t):
            continue
        arr8 = _to_8bit(np.asarray(frame), ds, photometric)
        array = decode_array(arr8, size=size, label=label)
        f = DicomFrame(array, i + 1, uid, tags, study, series, (arr8.shape[1], arr8.shape[0]))
        if times is not None:
            f.time_s, f.duplicate_of = round(t or 0.0, 3), frozen.repeat_of(array, i + 1)
        out.append(f)
    return out
