"""Writing prediction records as CSV, JSON or JSON Lines — streamed, and atomic for files."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import IO

from liverscan.core.errors import ConfigError
from liverscan.serving.records import Prediction

FORMATS = ("csv", "json", "jsonl")


def format_for(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ConfigError(f"{path}: output must end in .csv, .json or .jsonl")
    return ext


def csv_header(classes: list[str], with_tags: list[str] = ()) -> list[str]:
    return (
        ["path", "frame", "sop_instance_uid", "predicted_class", "confidence"]
        + [f"p_{c}" for c in classes]
        + ["decision_rule", "decision", "in_distribution", "ood_score", "ood_reason", "needs_review", "error"]
        + ["explanation"]
        + [f"dicom_{t}" for t in with_tags]
    )


def csv_row(rec: Prediction, classes: list[str], with_tags: list[str] = ()) -> list:
    probs = [f"{rec.probabilities[c]:.6f}" if c in rec.probabilities else "" for c in classes]
    conf = "" if rec.confidence is None else f"{rec.confidence:.6f}"
    tags = [(rec.dicom_tags or {}).get(t, "") for t in with_tags]
    return (
        [rec.path, rec.frame or "", rec.sop_instance_uid or "", rec.predicted_class or "", conf]
        + probs
        + [
            rec.decision_rule,
            rec.decision or "",
            "" if rec.in_distribution is None else str(rec.in_distribution).lower(),
        ]
        + ["" if rec.ood_score is None else f"{rec.ood_score:.6f}", rec.ood_reason or ""]
        + [str(rec.needs_review).lower(), rec.error or "", rec.explanation or ""]
        + tags
    )


class RecordWriter:
    """Streams records to a file (temp file renamed into place on success) or to a text stream."""

    def __init__(
        self,
        fmt: str,
        classes: list[str],
        path: str | Path | None = None,
        stream: IO[str] | None = None,
        dicom_tags: tuple[str, ...] = (),
    ):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r} (csv, json, jsonl)")
        self.fmt, self.classes, self.path, self.tags = fmt, classes, Path(path) if path else None, list(dicom_tags)
        self._tmp: str | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            self.out: IO[str] = os.fdopen(fd, "w", newline="", encoding="utf-8")
        else:
            self.out = stream
        self._n = 0
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None

    def __enter__(self) -> RecordWriter:
        if self.fmt == "csv":
            self._csv.writerow(csv_header(self.classes, self.tags))
        elif self.fmt == "json":
            self.out.write("[")
        return self

    def write(self, rec: Prediction) -> None:
        if self.fmt == "csv":
            self._csv.writerow(csv_row(rec, self.classes, self.tags))
        elif self.fmt == "jsonl":
            self.out.write(json.dumps(rec.to_dict()) + "\n")
        else:
            self.out.write(("," if self._n else "") + "\n  " + json.dumps(rec.to_dict()))
        self._n += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n")
        self.out.flush()
        if self.path is None:
            return
        self.out.close()
        if exc_type is None:
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        else:  # interrupted: keep what was written, clearly marked as partial
            os.replace(self._tmp, self.path.with_name(self.path.name + ".partial"))
