"""One answer per study: grouping frame records (``predict --group-by``) and aggregating them.

Group keys:

- ``object`` (the default): the file — the frames of a multi-frame DICOM (cine) object form one group;
- ``study`` / ``series``: the DICOM StudyInstanceUID / SeriesInstanceUID (a file without one is
  its own group);
- ``folder``: the parent folder of the file;
- ``regex:PATTERN``: the first capture group (or the whole match) of PATTERN searched in the path
  (no match: the file is its own group);
- ``column:NAME``: the NAME column of the CSV path list the file was listed in.

A study's probabilities come from its voting frames by the rule of :mod:`liverscan.core.aggregate`
(mean, max or vote — as ``evaluate`` aggregates patients): the usable frames that are neither out of
distribution (a blank frame is one) nor frozen repeats of the frame before (``duplicate_of``); when
no frame votes, every usable frame does (``n_voting`` says how many voted).  A video, like a DICOM cine,
is one ``object``. A study whose frames are mostly
(more than half) out of distribution gets the decision ``out_of_distribution``; a study needs review
when that happens, when a frame failed, or when its confidence is below the review threshold.  With a
lesion head, a study carries the lesion of its most suspicious frame (``lesion_path``, ``lesion_frame`` say
which) — the frame its answer points to — unless the study is out of distribution, or that frame's map is no
finding (it is out of distribution itself): then the study carries no lesion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from liverscan.core.aggregate import RULES, suspicion
from liverscan.core.errors import ConfigError
from liverscan.core.operating_point import ARGMAX, REVIEW_CONFIDENCE, OperatingPoint
from liverscan.serving.records import OUT_OF_DISTRIBUTION, Prediction, csv_cells, study_columns, without_empty_lesion

if TYPE_CHECKING:
    from liverscan.serving.lesion import LesionFinding

KEYS = ("object", "study", "series", "folder", "regex:PATTERN", "column:NAME")


def group_key(spec: str, columns: dict[str, dict] | None = None) -> Callable[[Prediction], str]:
    """A function giving a record's group from a ``--group-by`` value."""
    if spec == "object":
        return lambda rec: rec.path
    if spec == "study":
        return lambda rec: rec.study_instance_uid or rec.path
    if spec == "series":
        return lambda rec: rec.series_instance_uid or rec.path
    if spec == "folder":
        return lambda rec: str(Path(rec.path).parent)
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:") :])
        except re.error as exc:
            raise ConfigError(f"--group-by {spec!r}: not a valid regular expression ({exc})") from None

        def by_regex(rec: Prediction) -> str:
            m = pattern.search(rec.path)
            if m is None:
                return rec.path
            return (m.group(1) if m.groups() else None) or m.group(0)

        return by_regex
    if spec.startswith("column:"):
        name = spec[len("column:") :]
        table = columns if columns is not None else {}

        def by_column(rec: Prediction) -> str:
            row = table.get(rec.path)
            if row is None:
                return rec.path
            if name not in row:
                raise ConfigError(f"--group-by column:{name}: the path list has no column {name!r} ({', '.join(row)})")
            return (row[name] or "").strip() or rec.path

        return by_column
    raise ConfigError(f"--group-by {spec!r}: use one of {', '.join(KEYS)}")


@dataclass
class Study:
    """The aggregated answer for one group of frames."""

    group: str
    n_frames: int
    n_used: int
    n_failed: int
    n_out_of_distribution: int
    ood_share: float | None
    rule: str
    decision_rule: str
    n_voting: int = 0  # the frames whose probabilities made the answer
    predicted_class: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    decision: str | None = None
    needs_review: bool = True
    most_suspicious_path: str | None = None
    most_suspicious_frame: int | None = None
    explanation: str | None = None
    error: str | None = None
    lesion: LesionFinding | None = None  # the lesion of the most suspicious frame (None: none, or no finding)
    lesion_path: str | None = None
    lesion_frame: int | None = None
    lesion_mask: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.lesion is None:
            for key in ("lesion_path", "lesion_frame"):
                d.pop(key)
        return without_empty_lesion(d)


@dataclass
class _Frame:
    path: str
    frame: int | None
    probs: np.ndarray | None
    outside: bool
    explanation: str | None
    lesion: LesionFinding | None = None
    lesion_mask: str | None = None
    frozen: bool = False  # a repeat of the sampled frame before it


class StudyAggregator:
    """Collects frame records by group (any input order) and gives one :class:`Study` per group.

    The study is decided by ``operating_point`` — the classifier's own decision rule, applied to the
    frames' probabilities as records show them (calibrated when a fitted point is in use): see
    :meth:`~liverscan.core.operating_point.OperatingPoint.decide_group`.
    """

    def __init__(
        self,
        classes: list[str],
        key: Callable[[Prediction], str],
        rule: str = "mean",
        operating_point: OperatingPoint = ARGMAX,
        review_confidence: float = REVIEW_CONFIDENCE,
        decision_rule: str | None = None,
    ):
        if rule not in RULES:
            raise ConfigError(f"unknown aggregation rule {rule!r} (one of {', '.join(RULES)})")
        self.classes, self.key, self.rule = classes, key, rule
        self.operating_point, self.review_confidence = operating_point, review_confidence
        self.decision_rule = decision_rule or operating_point.describe()
        self._groups: dict[str, list[_Frame]] = {}

    def add(self, rec: Prediction) -> str:
        """File a frame record under its group (also set on the record); returns the group."""
        group = self.key(rec)
        rec.group = group
        probs = None if rec.error else np.array([rec.probabilities[c] for c in self.classes])
        frame = _Frame(
            rec.path, rec.frame, probs, rec.in_distribution is False, rec.explanation, rec.lesion, rec.lesion_mask,
            frozen=rec.duplicate_of is not None,
        )  # fmt: skip
        self._groups.setdefault(group, []).append(frame)
        return group

    def studies(self) -> list[Study]:
        return [self._study(g, frames) for g, frames in self._groups.items()]

    def _study(self, group: str, frames: list[_Frame]) -> Study:
        used = [f for f in frames if f.probs is not None]
        outside = sum(f.outside for f in used)
        s = Study(
            group=group,
            n_frames=len(frames),
            n_used=len(used),
            n_failed=len(frames) - len(used),
            n_out_of_distribution=outside,
            ood_share=outside / len(used) if used else None,
            rule=self.rule,
            decision_rule=self.decision_rule,
        )
        if not used:
            s.error = "no frame of this group could be read"
            return s
        voters = [f for f in used if not (f.outside or f.frozen)] or used
        s.n_voting = len(voters)
        probs = np.stack([f.probs for f in voters if f.probs is not None])
        agg, k = self.operating_point.decide_group(probs, self.rule, self.classes)
        worst = voters[int(np.argmax(suspicion(probs, self.classes)))]
        s.predicted_class = self.classes[k]
        s.confidence = float(agg[k])
        s.probabilities = {c: float(v) for c, v in zip(self.classes, agg)}
        mostly_outside = outside * 2 > len(used)
        s.decision = OUT_OF_DISTRIBUTION if mostly_outside else s.predicted_class
        s.needs_review = bool(mostly_outside or s.n_failed or s.confidence < self.review_confidence)
        s.most_suspicious_path, s.most_suspicious_frame, s.explanation = worst.path, worst.frame, worst.explanation
        if worst.lesion is not None and worst.lesion.withheld is None and not mostly_outside:
            s.lesion, s.lesion_path, s.lesion_frame, s.lesion_mask = (
                worst.lesion,
                worst.path,
                worst.frame,
                worst.lesion_mask,
            )
        return s


def write_studies(
    path: str | Path, studies: list[Study], classes: list[str], overwrite: bool = False, lesion: bool = False
) -> None:
    """Write study records as .csv, .json or .jsonl, atomically (whole file or nothing); ``lesion``: the model
    has a lesion head (the CSV gets its columns)."""
    import json

    from liverscan.core.fileio import csv_text, write_text_atomic
    from liverscan.serving.outputs import check_output, format_for

    fmt = format_for(path)
    check_output(path, overwrite)
    if fmt == "csv":
        columns = study_columns(classes, lesion)
        text = csv_text([c.name for c in columns], [csv_cells(s, columns) for s in studies])
    elif fmt == "jsonl":
        text = "".join(json.dumps(s.to_dict()) + "\n" for s in studies)
    else:
        text = json.dumps([s.to_dict() for s in studies], indent=2) + "\n"
    write_text_atomic(path, text)
