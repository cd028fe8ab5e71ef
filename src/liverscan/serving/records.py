"""The prediction record and its one schema: fields, types, CSV flattening and JSON.

Every writer reads the schema from here — the CSV / JSON / JSON Lines writer, the Ray engine's
Parquet and JSON Lines shards, study records, the app's download — so adding a field is one edit:
a field of :class:`Prediction` (JSON) and, for a scalar, a :class:`Column` in :func:`record_columns`
(CSV and shards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from liverscan.serving.lesion import LesionFinding

OUT_OF_DISTRIBUTION = "out_of_distribution"


@dataclass
class Prediction:
    """One prediction record (one image, one DICOM frame or one sampled video frame)."""

    path: str
    predicted_class: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    decision_rule: str = "argmax"
    #: the answer to act on: the predicted class, or "out_of_distribution" when the guard says the
    #: image is unlike the training data (the probabilities stay in the record); None on error
    decision: str | None = None
    in_distribution: bool | None = None  # None: the guard is off or the model has no reference
    ood_score: float | None = None
    ood_reason: str | None = None
    needs_review: bool = False
    error: str | None = None
    frame: int | None = None
    time_s: float | None = None  # a loop's (video, DICOM cine) frame: its time from the loop's start
    #: a frozen frame: the earlier sampled frame it repeats (it does not vote in its study)
    duplicate_of: int | None = None
    sop_instance_uid: str | None = None
    dicom_tags: dict[str, str] | None = None
    explanation: str | None = None  # path of the Grad-CAM overlay, when written
    group: str | None = None  # the study / patient it belongs to, with predict --group-by
    #: DICOM study and series UIDs, read for --group-by study|series; written only as a group key
    study_instance_uid: str | None = field(default=None, repr=False)
    series_instance_uid: str | None = field(default=None, repr=False)
    #: where the model's lesion head points (None: the model has no head, it was skipped, or the image failed)
    lesion: LesionFinding | None = None
    lesion_mask: str | None = None  # path of the lesion mask PNG, when written (predict --lesion-masks)
    #: the guard's image checks, run where the image was decoded: None not run yet, "" passed, else the reason
    image_check: str | None = field(default=None, repr=False, compare=False)
    #: (width, height) of the image as given (a DICOM frame's columns and rows): lesion coordinates are in it
    source_size: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def lesion_withheld(self) -> bool:
        """Whether the record's lesion map is no finding (``lesion.withheld``: out of distribution): no mask, no
        outline, no DICOM SEG or SR area, and no study lesion come from it."""
        return self.lesion is not None and self.lesion.withheld is not None

    def __post_init__(self) -> None:
        if self.error is not None:  # a file that gave no answer always needs a person to look at it
            self.needs_review = True

    def fail(self, reason: str) -> None:
        """Mark this record as failed: ``error`` set, review needed (whatever else it says stays)."""
        self.error, self.needs_review = reason, True

    def to_dict(self) -> dict[str, Any]:
        """The JSON record."""
        d = asdict(self)
        for key in ("study_instance_uid", "series_instance_uid", "image_check", "source_size"):
            d.pop(key)
        for key in ("dicom_tags", "group"):
            if d[key] is None:
                d.pop(key)
        if d["time_s"] is None and d["duplicate_of"] is None:  # not a frame of a loop: what it always wrote
            d.pop("time_s")
            d.pop("duplicate_of")
        return without_empty_lesion(d)


def without_empty_lesion(d: dict[str, Any]) -> dict[str, Any]:
    """A JSON record without its lesion fields when it has none (a model without a lesion head writes what it
    always wrote); tuples as lists.  A lesion map that is no finding says why (``found`` null, ``withheld``)."""
    if d.get("lesion") is None and d.get("lesion_mask") is None:
        d.pop("lesion", None)
        d.pop("lesion_mask", None)
    elif d["lesion"] is not None:
        les = d["lesion"]
        d["lesion"] = {**les, "peak": list(les["peak"]), "outline": [list(p) for p in les["outline"]]}
        if les["bbox"] is not None:
            d["lesion"]["bbox"] = list(les["bbox"])
    return d


@dataclass(frozen=True)
class Column:
    """One flat column of a record: its name, its type (a pyarrow type name) and how to read it."""

    name: str
    kind: str  # "string" | "int64" | "float64" | "bool_"
    value: Callable[[Any], Any]

    def cell(self, record: Any) -> str:
        """The CSV cell: floats with 6 decimals, booleans as true/false, None empty."""
        return format_cell(self.value(record))


def format_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        return f"{v:.6f}"
    return str(v)


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda r: getattr(r, name)


def _probability(c: str) -> Callable[[Any], Any]:
    return lambda r: r.probabilities.get(c)


def _tag(t: str) -> Callable[[Any], Any]:
    return lambda r: (r.dicom_tags or {}).get(t)


def _lesion(get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda r: None if r.lesion is None else get(r.lesion)


def _corner(k: int) -> Callable[[Any], Any]:
    return _lesion(lambda les: None if les.bbox is None else les.bbox[k])


def lesion_columns() -> list[Column]:
    """The flat columns of a record's (or a study's) lesion finding: scalars only, the outline stays in JSON."""
    f = "float64"
    return (
        [Column("lesion_found", "bool_", _lesion(lambda les: les.found))]
        + [Column("lesion_probability", f, _lesion(lambda les: les.probability))]
        + [Column("lesion_peak_x", f, _lesion(lambda les: les.peak[0]))]
        + [Column("lesion_peak_y", f, _lesion(lambda les: les.peak[1]))]
        + [Column(f"lesion_bbox_{n}", f, _corner(k)) for k, n in enumerate(("x0", "y0", "x1", "y1"))]
        + [Column("lesion_area_fraction", f, _lesion(lambda les: les.area_fraction))]
        + [Column("lesion_count", "int64", _lesion(lambda les: les.count))]
        + [Column("lesion_mask", "string", _attr("lesion_mask"))]
    )


def record_columns(
    classes: Sequence[str], tags: Sequence[str] = (), group: bool = False, lesion: bool = False
) -> list[Column]:
    """The flat columns of a prediction record (``predict``'s CSV header, typed); ``lesion``: the model has a
    lesion head (its columns follow ``explanation``)."""
    s, f, b = "string", "float64", "bool_"
    return (
        ([Column("group", s, _attr("group"))] if group else [])
        + [Column("path", s, _attr("path")), Column("frame", "int64", _attr("frame"))]
        + [Column("time_s", f, _attr("time_s")), Column("duplicate_of", "int64", _attr("duplicate_of"))]
        + [
            Column("sop_instance_uid", s, _attr("sop_instance_uid")),
            Column("predicted_class", s, _attr("predicted_class")),
        ]
        + [Column("confidence", f, _attr("confidence"))]
        + [Column(f"p_{c}", f, _probability(c)) for c in classes]
        + [Column(n, s, _attr(n)) for n in ("decision_rule", "decision")]
        + [Column("in_distribution", b, _attr("in_distribution")), Column("ood_score", f, _attr("ood_score"))]
        + [Column("ood_reason", s, _attr("ood_reason")), Column("needs_review", b, _attr("needs_review"))]
        + [Column("error", s, _attr("error")), Column("explanation", s, _attr("explanation"))]
        + (lesion_columns() if lesion else [])
        + [Column(f"dicom_{t}", s, _tag(t)) for t in tags]
    )


def study_columns(classes: Sequence[str], lesion: bool = False) -> list[Column]:
    """The flat columns of a study record (:class:`~liverscan.serving.studies.Study`); ``lesion``: the lesion
    of the frame the head found most probable, and which frame it was."""
    s, i, f = "string", "int64", "float64"
    return (
        [Column("group", s, _attr("group"))]
        + [Column(n, i, _attr(n)) for n in ("n_frames", "n_used", "n_failed", "n_out_of_distribution", "n_voting")]
        + [Column("ood_share", f, _attr("ood_share")), Column("rule", s, _attr("rule"))]
        + [Column(n, s, _attr(n)) for n in ("decision_rule", "predicted_class")]
        + [Column("confidence", f, _attr("confidence"))]
        + [Column(f"p_{c}", f, _probability(c)) for c in classes]
        + [Column("decision", s, _attr("decision")), Column("needs_review", "bool_", _attr("needs_review"))]
        + [Column("most_suspicious_path", s, _attr("most_suspicious_path"))]
        + [Column("most_suspicious_frame", i, _attr("most_suspicious_frame"))]
        + [Column(n, s, _attr(n)) for n in ("explanation", "error")]
        + (
            [Column("lesion_path", s, _attr("lesion_path")), Column("lesion_frame", i, _attr("lesion_frame"))]
            if lesion
            else []
        )
        + (lesion_columns() if lesion else [])
    )


def flat_row(record: Any, columns: Sequence[Column]) -> dict[str, Any]:
    """A record as typed values by column name (None where the CSV has an empty cell)."""
    return {c.name: c.value(record) for c in columns}


def csv_cells(record: Any, columns: Sequence[Column]) -> list[str]:
    """A record as CSV cells."""
    return [c.cell(record) for c in columns]


def records_csv(
    records: Sequence[Prediction],
    classes: Sequence[str],
    tags: Sequence[str] = (),
    group: bool = False,
    lesion: bool = False,
) -> str:
    """Records as one CSV text (``predict``'s columns), e.g. for a download."""
    from liverscan.core.fileio import csv_text

    columns = record_columns(classes, tags, group, lesion)
    return csv_text([c.name for c in columns], [csv_cells(r, columns) for r in records])
