"""The lesion, liver and scan-fan annotations of the images ``prepare`` keeps: found, validated, hashed.

Where an image's annotation of each kind comes from, first match wins:
1. its source (a CSV's ``mask`` / ``liver_mask`` / ``fan_mask`` columns, :mod:`liverscan.core.sources`);
2. the ``data.masks`` pattern (``--masks``): the lesion annotation, and every kind when it holds ``{kind}``;
3. the xu layout, found automatically (``<class>/segmentation/{mass,liver,outline}/<stem>.json``).

Annotation files found among a source's files are neither images nor files left out. Each one is checked against
its image as :func:`liverscan.core.annotations.read_annotation` checks it; one that does not fit is reported (the
image is kept without it), and the content hash of each valid one enters the manifest hash.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from liverscan.core.annotations import KINDS, POLYGON_SUFFIXES, find_annotation, read_annotation, read_polygons
from liverscan.core.errors import AnnotationError
from liverscan.core.fileio import sha256_bytes
from liverscan.core.files import Skipped
from liverscan.core.sources import Candidate


@dataclass
class Annotations:
    """The annotations of one image: valid ones by kind, and the ones that were rejected."""

    paths: dict[str, str] = field(default_factory=dict)  # kind -> annotation file
    hashes: dict[str, str] = field(default_factory=dict)  # kind -> sha256 of the file's bytes
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, annotation file, reason)


def locate(image: str, given: Iterable[tuple[str, str]] = (), pattern: str = "") -> dict[str, str]:
    """The annotation file of each kind ``image`` has (kind -> path), by the order of precedence above."""
    found = dict(given)
    for kind in KINDS:
        if kind in found:
            continue
        if pattern and (kind == "lesion" or "{kind}" in pattern):
            path: Path | None = find_annotation(image, kind, pattern)
        else:
            path = find_annotation(image, kind)
        if path is not None:
            found[kind] = str(path.resolve())
    return found


def locate_all(
    candidates: list[Candidate], pattern: str, ignored: Skipped
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The annotation files of every candidate. Annotation files are not images, nor files the sources left out:
    candidates that are another's annotation (a mask image beside the images) are dropped, and annotation files
    are struck from ``ignored`` (the xu layout's JSON files). Returns (candidates, their annotation files)."""
    located = [locate(c.path, c.annotations, pattern) for c in candidates]
    files = {p for found in located for p in found.values()}
    if not files:
        return candidates, located
    for reason in list(ignored.by_reason):
        left = [p for p in ignored.by_reason[reason] if str(Path(p).resolve()) not in files]
        if left:
            ignored.by_reason[reason] = left
        else:
            del ignored.by_reason[reason]
    keep = [c.path not in files for c in candidates]
    return [c for c, k in zip(candidates, keep) if k], [a for a, k in zip(located, keep) if k]


def check(located: dict[str, str], width: int, height: int) -> Annotations:
    """Validate each annotation file (kind -> path) of an image of ``width x height`` (as decoded) against it."""
    out = Annotations()
    for kind, path in sorted(located.items(), key=lambda kv: KINDS.index(kv[0])):
        try:
            validate(path, width, height, kind)
            with open(path, "rb") as fh:
                digest = sha256_bytes(fh.read())
        except AnnotationError as exc:
            out.problems.append((kind, path, exc.reason))
            continue
        except OSError as exc:
            out.problems.append((kind, path, f"cannot read ({exc.strerror or exc})"))
            continue
        out.paths[kind] = path
        out.hashes[kind] = digest
    return out


def validate(path: str | Path, width: int, height: int, kind: str) -> None:
    """Raise :class:`AnnotationError` unless ``path`` is a valid ``kind`` annotation of a ``width x height`` image.

    The checks of :func:`~liverscan.core.annotations.read_annotation`, without rasterising polygons (which cannot
    fail and takes most of the time)."""
    if Path(path).suffix.lower() in POLYGON_SUFFIXES:
        read_polygons(path, width, height)
    else:
        read_annotation(path, width, height, kind)


def reject_reason(kind: str, image: str, reason: str) -> str:
    """The ``rejects.csv`` reason of an annotation that does not fit its image (which is kept)."""
    return f"{kind} annotation rejected, the image is kept without it ({image}): {reason}"
