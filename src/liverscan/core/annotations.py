"""Region annotations of an image: lesion, liver and scan fan, as polygons or mask images (NumPy / Pillow only).

Formats:
- polygon JSON: a list of ``[x, y]`` points, or a list of such polygons (their union), in pixel coordinates of
  the image as :func:`liverscan.core.images.decode` sees it (EXIF orientation applied).  Coordinates are
  continuous: pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, so its centre is ``(i + 0.5, j + 0.5)``.
  An empty list ``[]`` is an explicit "annotated, nothing there" (an all-zero mask);
- mask image (PNG, TIFF, BMP): the image's size, non-zero in any colour channel = inside (alpha ignored);
  an all-zero mask is likewise an explicit "nothing there".

Validation (each failure raises :class:`AnnotationError` naming the file and the reason): every polygon has at
least 3 finite points, encloses a non-zero area, and lies inside the image within :data:`POINT_TOLERANCE`
(points in the tolerance band are clipped to the border); a mask image has exactly the image's size.

Where annotations live: the xu layout is found automatically -
``<root>/<class>/segmentation/{mass,liver,outline}/<stem>.json`` beside ``<root>/<class>/image/<stem>.jpg`` -
or a user pattern such as ``"masks/{stem}.png"`` (placeholders ``{stem}``, ``{name}``, ``{parent}``, ``{kind}``;
a relative pattern is resolved against the image's folder, or against ``root`` when given).

Model input geometry: images are squashed (no aspect-ratio preservation) to ``size x size`` by
:func:`liverscan.core.images.load_image`, so input pixel ``u`` maps to original ``u * width / size``.  Masks are
resized by area (:func:`resize_mask`, the default: the share of each input pixel covered by the region,
thresholded at 0.5) or nearest neighbour.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from liverscan.core.errors import AnnotationError, ImageDecodeError
from liverscan.core.files import file_problem

KINDS = ("lesion", "liver", "fan")
XU_FOLDERS = {"lesion": "mass", "liver": "liver", "fan": "outline"}
POLYGON_SUFFIXES = {".json"}
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
POINT_TOLERANCE = 2.0  # pixels; or 0.5 % of the image's longer side when that is more
MAX_ANNOTATION_BYTES = 50_000_000
PLACEHOLDERS = ("stem", "name", "parent", "kind")  # of an annotation file pattern, e.g. "masks/{stem}.png"


@dataclass(frozen=True)
class Annotation:
    """One region of one image, rasterised at the image's original size."""

    path: Path  # the annotation file
    kind: str  # lesion | liver | fan
    mask: np.ndarray  # (height, width) bool
    polygons: tuple[np.ndarray, ...]  # (N, 2) float64 each, original pixels; empty for a mask image

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def resized(self, size: int, method: str = "area") -> np.ndarray:
        """The mask at model input resolution ``(size, size)`` bool."""
        return resize_mask(self.mask, size, method)

    def coverage(self, size: int) -> np.ndarray:
        """The share of each model input pixel inside the region, ``(size, size)`` float32 in 0..1."""
        return mask_coverage(self.mask, size)


def tolerance(width: int, height: int) -> float:
    return max(POINT_TOLERANCE, 0.005 * max(width, height))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file with EXIF orientation applied, without decoding its pixels."""
    from liverscan.core.images import DEFAULT_MAX_PIXELS, _open, _oriented_size

    im = _open(path, DEFAULT_MAX_PIXELS)
    try:
        return _oriented_size(im)
    finally:
        im.close()


def parse_polygons(data: object, width: int, height: int, label: str = "<polygons>") -> list[np.ndarray]:
    """Validated polygons (``(N, 2)`` float64, clipped to the image) from parsed JSON."""
    if not isinstance(data, list):
        raise AnnotationError(label, f"expected a list of [x, y] points or of polygons, got {type(data).__name__}")
    if not data:
        return []
    nested = isinstance(data[0], list) and bool(data[0]) and isinstance(data[0][0], list)
    raw = data if nested else [data]
    tol = tolerance(width, height)
    polygons = []
    for k, poly in enumerate(raw):
        where = f"polygon {k + 1}: " if nested else ""
        if not isinstance(poly, list):
            raise AnnotationError(label, f"{where}expected a list of [x, y] points")
        try:
            pts = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError):
            raise AnnotationError(label, f"{where}points must be [x, y] number pairs") from None
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise AnnotationError(label, f"{where}points must be [x, y] number pairs")
        if len(pts) < 3:
            raise AnnotationError(label, f"{where}{len(pts)} points, a polygon needs at least 3")
        if not np.isfinite(pts).all():
            raise AnnotationError(label, f"{where}non-finite coordinate")
        lo, hi = pts.min(0), pts.max(0)
        if lo[0] < -tol or lo[1] < -tol or hi[0] > width + tol or hi[1] > height + tol:
            bad = pts[(pts[:, 0] < -tol) | (pts[:, 1] < -tol) | (pts[:, 0] > width + tol) | (pts[:, 1] > height + tol)]
            x, y = bad[0]
            raise AnnotationError(label, f"{where}point ({x:.1f}, {y:.1f}) outside the {width}x{height} image")
        pts = np.clip(pts, 0.0, [float(width), float(height)])
        if polygon_area(pts) <= 0.0:
            raise AnnotationError(label, f"{where}encloses no area (all points on a line)")
        polygons.append(pts)
    return polygons


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of a closed polygon ``(N, 2)``."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def rasterise(polygons: list[np.ndarray] | tuple[np.ndarray, ...], width: int, height: int) -> np.ndarray:
    """The union of ``polygons`` as a ``(height, width)`` bool mask: a pixel is inside when its centre is.

    A scanline fill in NumPy (even-odd rule within a polygon); Pillow's ``ImageDraw.polygon`` would add
    its edge pixels, one pixel more on one side than the other.
    """
    mask = np.zeros((height, width), dtype=bool)
    for pts in polygons:
        mask |= _fill(np.asarray(pts, dtype=np.float64), width, height)
    return mask


def _fill(pts: np.ndarray, width: int, height: int) -> np.ndarray:
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows, xs = [], []
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue  # horizontal edge: no crossing of any row centre line
        lo, hi = min(b, d), max(b, d)
        first, last = math.ceil(lo - 0.5), math.ceil(hi - 0.5) - 1  # rows whose centre is in [lo, hi)
        first, last = max(first, 0), min(last, height - 1)
        if last < first:
            continue
        r = np.arange(first, last + 1)
        rows.append(r)
        xs.append(a + (r + 0.5 - b) * (c - a) / (d - b))
    mask = np.zeros((height, width), dtype=bool)
    if not rows:
        return mask
    row, x = np.concatenate(rows), np.concatenate(xs)
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    change = np.zeros((height, width + 1), dtype=np.int32)
    # crossings come in pairs per row (closed polygon); columns whose centre lies in [start, end) are inside
    start = np.clip(np.ceil(x[0::2] - 0.5), 0, width).astype(int)
    end = np.clip(np.ceil(x[1::2] - 0.5), 0, width).astype(int)
    np.add.at(change, (row[0::2], start), 1)
    np.add.at(change, (row[1::2], end), -1)
    return np.cumsum(change, axis=1)[:, :width] > 0


def read_polygons(path: str | Path, width: int, height: int) -> list[np.ndarray]:
    """Validated polygons from a JSON file, for an image of ``width x height``."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_polygons(data, width, height, str(path))


def read_mask_image(path: str | Path, width: int, height: int) -> np.ndarray:
    """A mask image as ``(height, width)`` bool: non-zero in any colour channel = inside."""
    problem = file_problem(path)
    if problem is not None:
        raise AnnotationError(path, problem)
    try:
        with Image.open(path) as opened:
            im: Image.Image = ImageOps.exif_transpose(opened)
            if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
                im = im.convert("RGB" if im.mode.startswith("RGB") else "L")
            elif im.mode == "P":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise AnnotationError(path, f"cannot read mask image ({exc.__class__.__name__}: {exc})") from None
    h, w = arr.shape[:2]
    if (w, h) != (width, height):
        raise AnnotationError(path, f"mask is {w}x{h} but its image is {width}x{height}")
    return np.asarray(arr.any(axis=2) if arr.ndim == 3 else arr != 0, dtype=bool)


def read_annotation(path: str | Path, width: int, height: int, kind: str = "lesion") -> Annotation:
    """A polygon JSON or mask image, validated and rasterised for an image of ``width x height``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in POLYGON_SUFFIXES:
        polygons = read_polygons(path, width, height)
        return Annotation(path, kind, rasterise(polygons, width, height), tuple(polygons))
    if suffix in MASK_SUFFIXES:
        return Annotation(path, kind, read_mask_image(path, width, height), ())
    raise AnnotationError(path, f"unsupported annotation type {suffix or '(no suffix)'} (JSON polygons, PNG/TIFF/BMP)")


def find_annotation(
    image: str | Path, kind: str = "lesion", pattern: str | None = None, root: str | Path | None = None
) -> Path | None:
    """The annotation file of ``kind`` for ``image``, or None when there is none.

    Without ``pattern`` the xu layout (``<class>/segmentation/<folder>/<stem>.json`` or ``.png``) is looked up.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown annotation kind {kind!r} ({', '.join(KINDS)})")
    image = Path(image)
    if pattern is not None:
        rel = pattern.format(stem=image.stem, name=image.name, parent=image.parent.name, kind=kind)
        candidate = Path(rel)
        if not candidate.is_absolute():
            candidate = (Path(root) if root is not None else image.parent) / candidate
        return candidate if candidate.exists() else None
    if image.parent.name != "image":
        return None
    folder = image.parent.parent / "segmentation" / XU_FOLDERS[kind]
    for suffix in (".json", ".png", ".tif", ".tiff"):
        candidate = folder / f"{image.stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_annotation(
    image: str | Path,
    kind: str = "lesion",
    pattern: str | None = None,
    root: str | Path | None = None,
    image_wh: tuple[int, int] | None = None,
) -> Annotation | None:
    """Find and read the ``kind`` annotation of ``image`` (None when it has none).

    ``image_wh``: the image's (width, height) when already known (saves opening the image).
    """
    path = find_annotation(image, kind, pattern, root)
    if path is None:
        return None
    if image_wh is None:
        try:
            image_wh = image_size(image)
        except ImageDecodeError as exc:
            raise AnnotationError(path, f"its image cannot be opened ({exc})") from None
    return read_annotation(path, image_wh[0], image_wh[1], kind)


def mask_coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Share of each of ``size x size`` input pixels covered by ``mask`` (box / area resize), float32 0..1."""
    m = np.asarray(mask, dtype=np.float32)
    im = Image.fromarray(m, mode="F").resize((size, size), Image.Resampling.BOX)
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def resize_mask(mask: np.ndarray, size: int, method: str = "area", keep_small: bool = True) -> np.ndarray:
    """A ``(H, W)`` mask resized to the model input ``(size, size)`` bool, the way images are (squashed).

    ``area``: an input pixel is inside when at least half of it is covered (no half-pixel shift, unlike nearest);
    ``nearest``: Pillow's nearest neighbour.  ``keep_small``: a non-empty region that would vanish keeps its
    most-covered pixel, so a tiny lesion is never lost.
    """
    m = np.asarray(mask).astype(bool)
    if method == "nearest":
        im = Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        out = np.asarray(im) > 0
        cover = None
    elif method == "area":
        cover = mask_coverage(m, size)
        out = cover >= 0.5
    else:
        raise ValueError(f"unknown resize method {method!r} (area, nearest)")
    if keep_small and not out.any() and m.any():
        if cover is None:
            cover = mask_coverage(m, size)
        out = np.zeros_like(out)
        out[np.unravel_index(int(np.argmax(cover)), cover.shape)] = True
    return out


def to_original(points: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """Continuous input-pixel coordinates ``(N, 2)`` [x, y] -> original image pixels."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p * np.array([width / size, height / size])


def to_input(points: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """Original image pixel coordinates ``(N, 2)`` [x, y] -> continuous input-pixel coordinates."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p * np.array([size / width, size / height])


def pixel_centre(row: int, col: int) -> tuple[float, float]:
    """Continuous (x, y) of the centre of pixel (row, col)."""
    return col + 0.5, row + 0.5


def contains(mask: np.ndarray, x: float, y: float) -> bool:
    """Whether the continuous point (x, y) falls in a true pixel of ``mask`` (False outside the image)."""
    col, row = math.floor(x), math.floor(y)
    h, w = mask.shape[:2]
    return 0 <= row < h and 0 <= col < w and bool(mask[row, col])


def _read_text(path: str | Path) -> str:
    problem = file_problem(path)
    if problem is not None:
        raise AnnotationError(path, problem)
    size = Path(path).stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise AnnotationError(path, f"annotation file too large ({size} bytes)")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AnnotationError(path, "not UTF-8 text") from None
    except OSError as exc:
        raise AnnotationError(path, f"cannot read ({exc.strerror or exc})") from None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot name one annotation per image, or None when it can."""
    dummy = {k: "x" for k in PLACEHOLDERS}
    try:
        pattern.format(**dummy)
    except (KeyError, IndexError, ValueError) as exc:
        return f"{pattern!r} is not a valid pattern ({exc.__class__.__name__}: {exc}; placeholders: {_names()})"
    if "{stem}" not in pattern and "{name}" not in pattern:
        return f"{pattern!r} must contain {{stem}} or {{name}} (one annotation per image)"
    return None


def _names() -> str:
    return ", ".join("{" + k + "}" for k in PLACEHOLDERS)


def lesion_free_classes(rows) -> set[str]:
    """Classes in which no manifest row has a lesion annotation: their images teach and are scored as "no lesion"
    (an image of a lesion class without an outline is unknown, not "nothing there")."""
    with_lesion = {r["class"] for r in rows if r.get("lesion_annotation")}
    return {r["class"] for r in rows} - with_lesion


def lesion_classes(rows) -> tuple[str, ...]:
    """Classes of which some manifest row has a lesion annotation (sorted)."""
    return tuple(sorted({r["class"] for r in rows if r.get("lesion_annotation")}))


def has_lesion_outlines(rows) -> bool:
    """Whether any manifest row has a lesion annotation."""
    return any(r.get("lesion_annotation") for r in rows)
