"""DICOM input (optional extra ``liverscan[dicom]``, pydicom).

Each sampled frame of a single- or multi-frame object (a single frame always) becomes one
record, carrying the SOP Instance UID and the 1-based frame number.  Photometric interpretations:
MONOCHROME2 as stored, MONOCHROME1 inverted, RGB as stored, YBR_* converted to
RGB.  Monochrome data deeper than 8 bits uses the VOI LUT / window when the file
has one, otherwise a linear map of the stored bit depth to 0..255.
No tag other than the SOP Instance UID is read into records unless asked.

A cine (a multi-frame object with a frame time: FrameTimeVector, FrameTime, CineRate or
RecommendedDisplayFrameRate) is sampled as a video is (:mod:`liverscan.core.frames`); its records
carry each frame's ``time_s``.

Frames are decoded one at a time, and only the sampled ones (:func:`iter_dicom`, over pydicom's
``iter_pixels``): the header is read without the pixel data, and the frames to read are picked as the
reading reaches them, so neither a ten-minute cine nor a header declaring millions of frames it lacks
sits in memory.  A :class:`DicomFrames` streams a multi-frame object's records to ``predict`` as a video's
are; pixel data that stops early (cut off, damaged) gives the frames it has, then one error record.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from liverscan.core.errors import ConfigError, ImageDecodeError, LiverscanError
from liverscan.core.frames import FrozenCheck, Sampling
from liverscan.core.images import decode_array
from liverscan.serving.records import Prediction
from liverscan.serving.streams import FrameStream

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
    """pydicom, with the frame-by-frame decoding of pydicom 3 (``pydicom.pixels``), or the install hint."""
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 - pydicom 3 or later
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


def _number(value, keyword: str, label: str) -> float:
    """A header value as a number, or :class:`ImageDecodeError` naming the tag and the value that is not one."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError(label, f"{keyword} {str(value).strip()!r} is not a number") from None


def frame_times(ds, n_frames: int, label: str = "<dicom>") -> Callable[[int], float] | None:
    """A frame's time in seconds from the first, by its 0-based index, from the header (None: the object says
    no frame time); computed per frame, so a huge declared frame count costs nothing here.

    Raises :class:`ImageDecodeError` when the frame time it uses is not a number (``FrameTime 'abc'``)."""
    if n_frames < 2:
        return None
    vector = getattr(ds, "FrameTimeVector", None)
    values = [] if vector is None else [vector] if isinstance(vector, str) or not hasattr(vector, "__len__") else vector
    if len(values) == n_frames:  # the vector is in the header, as long as it is
        values = list(values)
        times = np.cumsum([0.0] + [_number(v, "FrameTimeVector", label) for v in values[1:]]) / 1000.0
        return lambda i: float(times[i])
    ms = None
    if getattr(ds, "FrameTime", None) not in (None, ""):
        ms = _number(ds.FrameTime, "FrameTime", label)
    else:
        keyword = "CineRate" if getattr(ds, "CineRate", None) else "RecommendedDisplayFrameRate"
        rate = getattr(ds, keyword, None)
        fps = _number(rate, keyword, label) if rate not in (None, "") else None
        ms = 1000.0 / fps if fps is not None and fps > 0 else None
    if ms is None or not ms > 0:
        return None
    return lambda i: i * ms / 1000.0


def read_header(source: str | Path | BinaryIO, label: str):
    """The object's header, without its pixel data (never decoded or kept here)."""
    pydicom = _require_pydicom()
    try:
        return pydicom.dcmread(source, stop_before_pixels=True)
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise ImageDecodeError(label, f"not a readable DICOM file ({exc.__class__.__name__})") from None


def _transfer_syntax_problem(ds) -> str | None:
    """Why the pixel data cannot be decoded for want of a Transfer Syntax UID (it says how the pixel data is
    encoded, and lives in the file meta information), or None."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or len(meta) == 0:
        return "DICOM file without file meta information (no Transfer Syntax UID)"
    if not str(meta.get("TransferSyntaxUID") or "").strip():
        return "DICOM file meta information without a Transfer Syntax UID"
    return None


def frame_count(ds) -> int:
    """The number of frames the header declares (1 for a single-frame object; 0 or empty counts as 1, as
    pydicom reads it)."""
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def sampled_indices(ds, sampling: Sampling, label: str) -> tuple[Iterator[int], Callable[[int], float] | None]:
    """The 0-based frames of the object that are read, picked lazily as they are iterated (the first frame
    always: never an empty sample), and a frame's time by its index.

    Raises :class:`ImageDecodeError` when the header's frame count is below 1."""
    n_frames = frame_count(ds)
    if n_frames < 1:
        raise ImageDecodeError(label, f"NumberOfFrames {n_frames} is not a frame count")
    time_of = frame_times(ds, n_frames, label)
    if n_frames == 1:
        return iter([0]), None
    if time_of is None and sampling.fps is not None:
        raise ImageDecodeError(label, "--fps needs a frame time (FrameTime, FrameTimeVector); use --frame-step")
    sampler = sampling.sampler(timed=time_of is not None)
    return (i for i in range(n_frames) if sampler.take(i, None if time_of is None else time_of(i))), time_of


def iter_dicom(
    source: str | Path | BinaryIO,
    size: int = 160,
    include_tags: tuple[str, ...] = (),
    sampling: Sampling = Sampling(),
    label: str | None = None,
) -> Iterator[DicomFrame]:
    """The sampled frames of a DICOM object as model inputs (a single frame always; a timed cine's at
    ``sampling``'s rate; every frame of an untimed object unless ``sampling`` has a frame step), each decoded
    when it is reached: only the sampled frames are decoded, one at a time, so a long cine never sits in memory.

    Raises :class:`ImageDecodeError` before any frame when the object cannot be read (or pydicom is missing),
    has no Transfer Syntax UID (no file meta information) or a frame time that is not a number, and after the
    frames it has when its pixel data stops early (cut off, damaged).  Any other failure (a failing conversion)
    raises what pydicom or numpy raise: a :class:`~liverscan.serving.streams.FrameStream` turns either into
    one error record.
    """
    label = label or str(source)
    ds = read_header(source, label)  # first: without pydicom, it raises the install hint
    problem = _transfer_syntax_problem(ds)
    if problem:
        raise ImageDecodeError(label, problem)
    from pydicom.pixels import iter_pixels

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("YBR"):  # decoded to RGB (pydicom converts YBR_* when not asked for raw data)
        photometric = "RGB"
    indices, time_of = sampled_indices(ds, sampling, label)
    n_frames = frame_count(ds)
    uid = str(getattr(ds, "SOPInstanceUID", ""))
    study, series = str(getattr(ds, "StudyInstanceUID", "")), str(getattr(ds, "SeriesInstanceUID", ""))
    tags = {t: str(getattr(ds, t, "")) for t in include_tags}
    frozen = FrozenCheck()
    mine, theirs = itertools.tee(indices)  # pydicom reads the frames 'theirs' gives, in order
    pixels = iter_pixels(source, indices=theirs)
    first = True
    try:
        for i in mine:
            try:
                frame = next(pixels)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged pixel data
                raise _pixel_error(label, exc, i, n_frames, first) from None
            first = False
            if frame.ndim == 3 and frame.shape[-1] == 1:
                frame = frame[..., 0]
            arr8 = _to_8bit(np.asarray(frame), ds, photometric)
            array = decode_array(arr8, size=size, label=label)
            f = DicomFrame(array, i + 1, uid, tags, study, series, (arr8.shape[1], arr8.shape[0]))
            if time_of is not None:
                f.time_s, f.duplicate_of = round(time_of(i), 3), frozen.repeat_of(array, i + 1)
            yield f
    finally:  # closes the file when the reader stops early
        getattr(pixels, "close", lambda: None)()


def _pixel_error(label: str, exc: Exception, index: int, n_frames: int, first: bool) -> ImageDecodeError:
    """The one-line error of pixel data that fails at frame ``index`` (0-based; ``first``: no frame read yet)."""
    if isinstance(exc, AttributeError) and first and "no pixel data" in str(exc).lower():
        return ImageDecodeError(label, "DICOM object has no pixel data")
    detail = (
        "" if isinstance(exc, StopIteration) else f" ({exc.__class__.__name__}: {' '.join(str(exc).split())[:300]})"
    )
    if first and detail:
        return ImageDecodeError(label, f"cannot decode DICOM pixel data{detail}")
    return ImageDecodeError(label, f"the pixel data stops at frame {index + 1} of {n_frames}{detail}")


def read_dicom(
    path: str | Path | BinaryIO, size: int = 160, include_tags: tuple[str, ...] = (), sampling: Sampling = Sampling()
) -> list[DicomFrame]:
    """Every sampled frame of :func:`iter_dicom` at once (a damaged object raises, keeping none)."""
    return list(iter_dicom(path, size, include_tags, sampling))


@dataclass(frozen=True)
class DicomFrames(FrameStream):
    """The sampled frames of one DICOM object as (record, model input or None) pairs, decoded as they are
    iterated; ``tags``: the keywords copied into each record."""

    tags: tuple[str, ...] = ()

    def frames(self) -> Iterator[tuple[Prediction, np.ndarray]]:
        for f in iter_dicom(self._source(), self.size, self.tags, self.sampling, label=self.path):
            rec = Prediction(
                self.path,
                frame=f.frame,
                time_s=f.time_s,
                duplicate_of=f.duplicate_of,
                sop_instance_uid=f.sop_instance_uid,
                dicom_tags=f.tags or None,
                study_instance_uid=f.study_instance_uid or None,
                series_instance_uid=f.series_instance_uid or None,
                source_size=f.size,
            )
            yield rec, f.array

    def multi_frame(self) -> bool:
        """Whether the header declares more than one frame (False also when it cannot be read)."""
        try:
            return frame_count(read_header(self._source(), self.path)) > 1
        except ImageDecodeError:
            return False

    def _source(self) -> str | BinaryIO:
        import io

        return io.BytesIO(self.data) if self.data is not None else self.path
