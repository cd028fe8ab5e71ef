"""Scanning input sources into candidate records.

Three source kinds:
- ``folder``: one sub-folder per source category, images anywhere below it;
- ``glob``: a pattern with a ``{label}`` placeholder, e.g. ``data/xu/{label}/image/*.jpg``;
- ``csv``: a table with a path column, a label column and optionally a group column and annotation columns
  (``mask`` or ``lesion_mask``: the lesion annotation, ``liver_mask``, ``fan_mask``; paths relative to the CSV);
  a ``.tsv`` file is read tab-separated.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from liverscan.core.config import SourceSpec
from liverscan.core.errors import DataError
from liverscan.core.fileio import read_csv
from liverscan.core.files import Skipped, file_problem, glob_files, walk_files
from liverscan.core.images import IMAGE_SUFFIXES
from liverscan.core.video import VIDEO_SUFFIXES

#: what a folder source takes: images, and videos (their frames; see liverscan.preparation.videos)
SOURCE_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES

PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "filepath")
LABEL_COLUMNS = ("label", "class", "category", "diagnosis", "target")
GROUP_COLUMNS = ("group", "patient", "patient_id", "subject", "subject_id", "study")
#: CSV columns naming an image's annotation file, by kind (lesion, liver, fan); the first one present is used
CSV_ANNOTATION_COLUMNS = {
    "lesion": ("mask", "lesion_mask", "lesion_annotation"),
    "liver": ("liver_mask", "liver_annotation"),
    "fan": ("fan_mask", "fan_annotation"),
}


#: the ``rejects.csv`` reason of a CSV row whose path cell is empty
EMPTY_PATH = "CSV row with an empty path"
#: why an image directly in a folder source is not used (its class is the name of the sub-folder it is in)
TOP_LEVEL_IMAGE = "image outside the class sub-folders"


@dataclass(frozen=True)
class Candidate:
    """A file claimed by a source, before validation."""

    path: str
    source: str
    source_label: str
    group: str = ""
    annotations: tuple[tuple[str, str], ...] = ()  # (kind, annotation path) given by the source (CSV columns)


@dataclass
class ScanResult:
    candidates: list[Candidate]
    ignored: Skipped  # files left out of folder walks and globs, by reason
    #: CSV rows that name no file: rows of ``rejects.csv`` (path: ``FILE.csv:LINE``, source, label, reason)
    rejects: list[list[str]] = field(default_factory=list)


def parse_source_arg(arg: str) -> SourceSpec:
    """Parse ``[NAME=]PATH`` from the command line."""
    name, path = "", arg
    head, sep, tail = arg.partition("=")
    if sep and head and "/" not in head and "{" not in head and not Path(arg).exists():
        name, path = head, tail
    return SourceSpec(path=path, name=name)


def detect_kind(spec: SourceSpec) -> str:
    if spec.kind != "auto":
        if spec.kind not in ("folder", "glob", "csv"):
            raise DataError(f"source {spec.path}: unknown kind {spec.kind!r} (folder, glob, csv)")
        return spec.kind
    if "{label}" in spec.path:
        return "glob"
    p = Path(spec.path)
    if p.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if p.is_dir():
        return "folder"
    raise DataError(f"source {spec.path}: not a folder, a CSV file or a pattern containing {{label}}")


def default_name(spec: SourceSpec, kind: str) -> str:
    if spec.name:
        return spec.name
    if kind == "glob":
        prefix = spec.path.split("{label}", 1)[0].rstrip("/")
        return Path(prefix).name or "source"
    p = Path(spec.path).resolve()
    return (p.parent.name if kind == "csv" else p.name) or "source"


def scan_folder(root: Path, name: str) -> ScanResult:
    if not root.is_dir():
        raise DataError(f"source {root}: folder not found")
    candidates, ignored = [], Skipped()
    try:
        entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"source {root}: cannot list the folder ({exc.strerror or exc})") from None
    categories = [d for d in entries if d.is_dir()]
    for f in entries:
        if not f.is_dir() and f.suffix.lower() in SOURCE_SUFFIXES:
            ignored.add(TOP_LEVEL_IMAGE, f)
    if not categories:
        raise DataError(f"source {root}: no category sub-folders (expected one folder per category)")
    for cat in categories:
        for f in walk_files(cat, SOURCE_SUFFIXES, ignored):
            candidates.append(Candidate(str(f.resolve()), name, cat.name))
    return ScanResult(candidates, ignored)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching paths of ``pattern`` with the ``{label}`` part captured."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("{label}", i):
            out.append("(?P<label>[^/]+)")
            i += len("{label}")
        elif pattern.startswith("**/", i):  # no, one or more folders
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            out.append(pattern[i : j + 1] if j > i else re.escape("["))
            i = j + 1 if j > i else i + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def scan_glob(pattern: str, name: str) -> ScanResult:
    if pattern.count("{label}") != 1:
        raise DataError(f"source {pattern}: the pattern needs exactly one {{label}} placeholder")
    regex = _glob_regex(pattern)
    candidates, ignored = [], Skipped()
    for m in glob_files(pattern.replace("{label}", "*"), ignored):
        problem = file_problem(m)
        if problem is not None:
            ignored.add(problem, m)
            continue
        hit = regex.match(m)
        if hit:
            candidates.append(Candidate(str(Path(m).resolve()), name, hit.group("label")))
    if not candidates:
        raise DataError(f"source {pattern}: the pattern matches no files")
    return ScanResult(candidates, ignored)


def _pick(columns: list[str], wanted: str, choices: tuple[str, ...], what: str, path: Path) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"source {path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    for c in choices:
        if c in lower:
            return lower[c]
    if what == "group":
        return ""
    raise DataError(
        f"source {path}: cannot find the {what} column among {', '.join(columns)}; name it with --{what}-column"
    )


def scan_csv(spec: SourceSpec, name: str) -> ScanResult:
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"source {path}: CSV file not found")
    try:
        rows = read_csv(path)
    except UnicodeDecodeError:
        raise DataError(
            f"source {path}: not a readable {path.suffix.lstrip('.').upper()} file (not UTF-8 text)"
        ) from None
    except csv.Error as exc:
        raise DataError(f"source {path}: malformed {path.suffix.lstrip('.').upper()} file ({exc})") from None
    except OSError as exc:
        raise DataError(f"source {path}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(f"source {path}: CSV file has no rows")
    columns = list(rows[0].keys())
    pcol = _pick(columns, spec.path_column, PATH_COLUMNS, "path", path)
    lcol = _pick(columns, spec.label_column, LABEL_COLUMNS, "label", path)
    gcol = _pick(columns, spec.group_column, GROUP_COLUMNS, "group", path)
    lower = {c.lower(): c for c in columns}
    acols = {}
    for kind, names in CSV_ANNOTATION_COLUMNS.items():
        hit = next((lower[n] for n in names if n in lower), None)
        if hit is not None:
            acols[kind] = hit
    base = path.resolve().parent
    candidates, ignored, rejects = [], Skipped(), []
    for k, row in enumerate(rows, start=2):
        raw = (row.get(pcol) or "").strip()
        if not raw:
            rejects.append([f"{path}:{k}", name, (row.get(lcol) or "").strip(), EMPTY_PATH])
            continue
        f = Path(raw)
        f = f if f.is_absolute() else base / f
        group = (row.get(gcol) or "").strip() if gcol else ""
        annotations = []
        for kind, col in acols.items():
            cell = (row.get(col) or "").strip()
            if cell:
                a = Path(cell)
                annotations.append((kind, str((a if a.is_absolute() else base / a).resolve())))
        label = (row.get(lcol) or "").strip()
        candidates.append(Candidate(str(f.resolve()), name, label, group, tuple(annotations)))
    return ScanResult(candidates, ignored, rejects)


def scan_source(spec: SourceSpec) -> tuple[str, ScanResult]:
    """Return (source name, scan result) for one source."""
    kind = detect_kind(spec)
    name = default_name(spec, kind)
    if kind == "folder":
        return name, scan_folder(Path(spec.path), name)
    if kind == "glob":
        return name, scan_glob(spec.path, name)
    return name, scan_csv(spec, name)


def scan_sources(
    specs: list[SourceSpec], rejects: list[list[str]] | None = None
) -> tuple[list[Candidate], Skipped, list[str]]:
    """Scan every source; names are made unique. Returns (candidates, files left out, names); CSV rows that
    name no file are added to ``rejects`` (``rejects.csv`` rows), or counted with the files left out without it."""
    if not specs:
        raise DataError("no data source given")
    all_candidates: list[Candidate] = []
    ignored = Skipped()
    names: list[str] = []
    for spec in specs:
        name, result = scan_source(spec)
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name}-{k}", k + 1
        names.append(unique)
        if unique != name:
            result.candidates[:] = [replace(c, source=unique) for c in result.candidates]
            for row in result.rejects:
                row[1] = unique
        all_candidates.extend(result.candidates)
        for row in result.rejects:
            if rejects is not None:
                rejects.append(row)
            else:
                ignored.add(row[3], row[0])
        for reason, paths in result.ignored.by_reason.items():
            for p in paths:
                ignored.add(reason, p)
    return all_candidates, ignored, names


def explicit_group(c: Candidate, regex: re.Pattern[str] | None) -> str:
    """The group (patient) a candidate names itself: its group column's value, else the first capture (or the
    match) of ``regex`` in its path; "" when neither says."""
    if c.group:
        return f"{c.source}/{c.group}"
    if regex is not None:
        m = regex.search(c.path)
        if m:
            return "re/" + (m.group(1) if m.groups() else m.group(0))
    return ""
