"""The single decoding path: any supported file -> ``uint8`` array ``(S, S, 3)``.

Every stage (prepare, train, evaluate, predict) goes through :func:`load_image`,
so a model always sees pixels produced the same way.

Rules:
- formats: PNG, JPEG, BMP, TIFF (others raise :class:`ImageDecodeError`); a multi-page TIFF is read page by page
  by :func:`decode_pages` (``predict`` makes each page a frame; ``prepare`` uses the first page and says so);
- EXIF orientation is applied;
- 16-bit greyscale is mapped linearly from 0..65535 to 0..255 (no clipping);
  32-bit integer and float images are min-max scaled;
- RGBA / LA drop their alpha channel, palette / CMYK / YCbCr convert to RGB;
- greyscale is replicated to three channels;
- a JPEG is decoded by libjpeg at the smallest DCT scale (1/2, 1/4 or 1/8) that keeps both sides at least
  ``2 x size`` (Pillow's ``draft``), then resized;
- bilinear resize to ``size x size``; images over 4 megapixels (far above any ultrasound
  frame) are first box-reduced by an integer factor to at least ``4 x size`` on their short
  side, before any mode conversion, so no full-resolution copy is held beyond the decode;
- images over ``max_pixels`` are refused before decoding (decompression bombs).
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from liverscan.core.errors import ImageDecodeError
from liverscan.core.files import file_problem

SUPPORTED_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "TIFF"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DEFAULT_MAX_PIXELS = 89_478_485
DECODER = 1  # version of these rules, recorded where decoded pixels are kept (prepare's cache, cached features)
REDUCE_ABOVE_PIXELS = 4_000_000  # box-reduce larger images right after decoding (memory)
_LARGE_DECODES = threading.Semaphore(1)  # one full-resolution large image in memory at a time


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image at model resolution plus facts about the original."""

    array: np.ndarray  # (S, S, 3) uint8
    width: int  # original width after EXIF orientation
    height: int
    mode: str  # original Pillow mode
    format: str
    pages: int = 1  # pages in the file (a multi-page TIFF: more than one, read by :func:`decode_pages`)


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    if not isinstance(source, bytes):
        problem = file_problem(source)  # before opening: a FIFO would block, a device never ends
        if problem is not None:
            raise ImageDecodeError(label, problem)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(data)
        except FileNotFoundError:
            raise ImageDecodeError(label, "file not found") from None
        except IsADirectoryError:
            raise ImageDecodeError(label, "is a directory, not an image") from None
        except PermissionError:
            raise ImageDecodeError(label, "permission denied") from None
        except UnidentifiedImageError:
            size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
            reason = "empty file (0 bytes)" if size == 0 else "not a recognised image file"
            raise ImageDecodeError(label, reason) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageDecodeError(label, "image too large (decompression-bomb guard)") from None
        except OSError as exc:
            raise ImageDecodeError(label, f"cannot open image ({exc})") from None
    if im.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(label, f"unsupported image format {im.format} (supported: PNG, JPEG, BMP, TIFF)")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(label, f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(label, f"image too large: {w}x{h} = {w * h} pixels exceeds limit of {max_pixels}")
    return im


def _to_uint8_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB following the module rules."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.float32) / 257.0).round()
        else:
            arr = arr.astype(np.float64)
            if mode == "I" and arr.min() >= 0 and arr.max() <= 65535:
                # 16-bit data opened as 32-bit ints (common for 16-bit PNG)
                arr8 = (arr / 257.0).round() if arr.max() > 255 else arr
            else:
                lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                arr8 = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        gray = Image.fromarray(np.clip(arr8, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode in ("RGBA", "RGBa", "RGBX"):
        return im.convert("RGB")  # alpha channel dropped, colours kept as stored
    if mode in ("LA", "La"):
        return im.getchannel(0).convert("RGB")
    if mode == "P":
        converted = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        return converted.convert("RGB")
    if mode in ("L", "1"):
        return im.convert("L").convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def decode(source: str | Path | bytes, size: int = 160, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a file (or its bytes) into a ``(size, size, 3)`` uint8 array (a multi-page TIFF: its first page; the
    result's ``pages`` says how many it has)."""
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    im = _open(source, max_pixels)
    return _decoded(im, label, size, _pages(im))


def decode_pages(
    source: str | Path | bytes, size: int = 160, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[DecodedImage | ImageDecodeError]:
    """Every page of a file in order (one, unless it is a multi-page TIFF), read from one opened file; a page that
    cannot be decoded is given as its error, and the pages after it are still read.  A file that cannot be opened
    raises :class:`ImageDecodeError`."""
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    im = _open(source, max_pixels)
    pages = _pages(im)
    for k in range(pages):
        try:
            if k:
                try:
                    im.seek(k)
                except (OSError, ValueError, EOFError) as exc:
                    raise ImageDecodeError(label, f"corrupt image: page {k + 1}: {exc}") from None
                if im.size[0] * im.size[1] > max_pixels:
                    raise ImageDecodeError(label, f"image too large: page {k + 1} exceeds {max_pixels} pixels")
            yield _decoded(im, label, size, pages)
        except ImageDecodeError as exc:
            yield exc


def _decoded(im: Image.Image, label: str, size: int, pages: int) -> DecodedImage:
    """The opened image's current page at model resolution."""
    fmt = im.format or ""
    orig_w, orig_h = _oriented_size(im)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt in ("JPEG", "MPO") and im.mode in ("RGB", "L"):
                # libjpeg decodes at a reduced DCT scale that keeps both sides >= 2 x size
                im.draft(im.mode, (size * 2, size * 2))
            large = im.size[0] * im.size[1] > REDUCE_ABOVE_PIXELS
            with _LARGE_DECODES if large else contextlib.nullcontext():
                im.load()
                mode = im.mode
                reduced = _reduced(im, size)
            # the reduced copy has no EXIF: apply the original's orientation to it
            im = ImageOps.exif_transpose(im) if reduced is im else _transposed(reduced, _orientation(im))
            rgb = _to_uint8_rgb(im)
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc) or exc.__class__.__name__
        if "truncated" in msg.lower():
            msg = "truncated image data"
        raise ImageDecodeError(label, f"corrupt image: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file error
        raise ImageDecodeError(label, f"cannot decode image: {exc.__class__.__name__}: {exc}") from None
    if arr.shape != (size, size, 3):
        raise ImageDecodeError(label, f"unexpected decoded shape {arr.shape}")
    return DecodedImage(np.ascontiguousarray(arr), orig_w, orig_h, mode, fmt, pages)


def _pages(im: Image.Image) -> int:
    """How many pages a TIFF holds (1 for other formats, and when its page directory cannot be read beyond the
    first)."""
    if im.format != "TIFF":
        return 1
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except (OSError, ValueError, EOFError, SyntaxError):
        with contextlib.suppress(OSError, ValueError, EOFError, SyntaxError):
            im.seek(0)
        return 1


def _reduced(im: Image.Image, size: int) -> Image.Image:
    """A large image box-reduced by an integer factor (short side kept >= 4 x size); small ones as they are.

    Works in strips of rows, so besides the decoded image only one strip is ever converted.
    """
    w, h = im.size
    factor = min(w, h) // (4 * size)
    if w * h <= REDUCE_ABOVE_PIXELS or factor < 2:
        return im
    sixteen = im.mode.startswith("I;16")
    # alpha is dropped before averaging, as the full path drops it (Pillow would weight by alpha)
    convert = {"P": "RGB", "1": "L", "RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L"}.get(im.mode)
    out_h, out_w = h // factor, w // factor
    out = None if sixteen else Image.new(convert or im.mode, (out_w, out_h))
    parts = []
    rows = factor * 64
    for top in range(0, out_h * factor, rows):
        strip = im.crop((0, top, out_w * factor, min(top + rows, out_h * factor)))
        if out is None:  # Pillow cannot reduce 16-bit images: block means in NumPy, kept 16-bit
            a = np.asarray(strip)
            k = a.shape[0] // factor
            means = a.reshape(k, factor, out_w, factor).mean(axis=(1, 3), dtype=np.float32)
            parts.append(np.round(means).astype(np.uint16))
        else:
            out.paste((strip.convert(convert) if convert else strip).reduce(factor), (0, top // factor))
    return out if out is not None else Image.fromarray(np.concatenate(parts))


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - broken EXIF is treated as no rotation
        return 1


def _transposed(im: Image.Image, orientation: int) -> Image.Image:
    """``im`` turned upright for an EXIF orientation (as ``ImageOps.exif_transpose`` does)."""
    method = _TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Stored (width, height) with EXIF orientation applied, before any draft."""
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def load_image(path: str | Path, size: int = 160, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into the model's input array ``(size, size, 3)`` uint8."""
    return decode(path, size=size, max_pixels=max_pixels).array


def display_image(path: str | Path, max_side: int = 512, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image as RGB uint8 with its own aspect ratio, longest side <= ``max_side`` (for overlays)."""
    im = _open(path, max_pixels)
    try:
        im.draft("RGB", (max_side, max_side))
        im.load()
        im = _to_uint8_rgb(ImageOps.exif_transpose(im))
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(str(path), f"corrupt image: {exc}") from None
    return np.asarray(im, dtype=np.uint8)


def decode_array(array: np.ndarray, size: int = 160, label: str = "<array>") -> np.ndarray:
    """An in-memory image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> model input by the same rules.

    uint8 is taken as is; uint16 is mapped 0..65535 -> 0..255; other dtypes are
    min-max scaled.  An empty array, or one with a NaN or infinite value, is an :class:`ImageDecodeError`.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageDecodeError(label, f"unsupported array shape {arr.shape}")
    if arr.size == 0:
        raise ImageDecodeError(label, f"empty array (shape {arr.shape}): no pixels to classify")
    if arr.dtype.kind not in "biuf":
        raise ImageDecodeError(label, f"unsupported array type {arr.dtype} (expected numbers)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ImageDecodeError(label, f"{bad} of {arr.size} array values are not finite (NaN or infinite)")
    if arr.dtype == np.uint8:
        arr8 = arr
    elif arr.dtype == np.uint16:
        arr8 = np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    else:
        a = arr.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        arr8 = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if arr8.ndim == 3 and arr8.shape[-1] == 4:
        arr8 = arr8[..., :3]  # alpha dropped
    im = Image.fromarray(np.ascontiguousarray(arr8))
    out = np.asarray(_to_uint8_rgb(im).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return np.ascontiguousarray(out)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
