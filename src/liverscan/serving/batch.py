"""The prediction loop: inputs in, records and study records streamed to their writers, one summary out.

This is what ``liverscan predict`` runs (the CLI only parses, calls and prints) and what a Python user
runs for a folder of scans::

    from liverscan.serving import PredictOptions, predict_files

    summary = predict_files(["scans/"], PredictOptions(group_by="folder"), model="runs/xu",
                            output="results.csv", study_output="studies.csv")
    print(summary.predicted, summary.decisions, [s.decision for s in summary.studies])

Everything that can be refused is refused before the model loads: an output that exists (without
``overwrite``), the same file for records and studies, a bad ``group_by``, an unreadable CSV path list
or one without the grouping column.  Records reach ``FILE.partial`` as they are made (see
:class:`~liverscan.serving.outputs.RecordWriter`); when the loop is stopped (a signal, a full disk), the
exception propagates and :attr:`PredictSummary.kept` says what was kept where.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from liverscan.core.artifacts import EXPORT_PHASE
from liverscan.core.errors import ConfigError, DataError
from liverscan.core.files import Skipped
from liverscan.core.images import DECODER
from liverscan.serving.inputs import check_path_lists, expand_inputs
from liverscan.serving.options import PredictOptions
from liverscan.serving.outputs import (
    FORMATS,
    RecordWriter,
    check_not_an_input,
    check_output,
    check_output_folder,
    format_for,
    partial_path,
)
from liverscan.serving.predict import Classifier
from liverscan.serving.records import Prediction
from liverscan.serving.studies import Study, StudyAggregator, group_key, write_studies


def _unfinished_phases(source: Path) -> list[str]:
    """The phases after training that a run directory's ``run.json`` still lists as to do (none for a model
    folder without one)."""
    from liverscan.core.artifacts import RUN_FILE, TRAIN_PHASE, pending_phases, read_run_info

    if not (source / RUN_FILE).is_file():
        return []
    try:
        left = pending_phases(read_run_info(source))
    except (OSError, ValueError, AttributeError):  # an unreadable run.json says nothing about the model
        return []
    return [] if TRAIN_PHASE in left else left


def _missing_lesion_exports(clf: Classifier) -> list[str]:
    """The exported lesion-head files the model card records that are missing, when the head falls back to Keras
    for want of them (not when Keras was asked for)."""
    from liverscan.core.artifacts import lesion_export_key

    if clf.lesion is None or clf.lesion.kind != "keras" or clf.options.runtime == "keras":
        return []
    folder = Path(clf.model_path).parent
    names = [str((clf.card.exports.get(lesion_export_key(fmt)) or {}).get("file") or "") for fmt in ("tflite", "onnx")]
    return [name for name in names if name and not (folder / name).is_file()]


def _has_path_list(inputs: list[str]) -> bool:
    """Whether an input is (or, read from standard input, may be) a CSV path list."""
    return any(item == "-" or (item.lower().endswith(".csv") and Path(item).is_file()) for item in inputs)


def _trained_before(versions: dict[str, str], release: tuple[int, ...]) -> bool:
    """Whether a model card's ``versions`` say it was written by a liverscan older than ``release`` (or by one so
    old that it recorded no version)."""
    recorded = str(versions.get("liverscan") or "")
    try:
        return tuple(int(part) for part in recorded.split(".")[: len(release)]) < release
    except ValueError:
        return not recorded


@dataclass
class PredictSummary:
    """What a prediction run did (filled as it goes, so it is meaningful after a stop too)."""

    classes: list[str] = field(default_factory=list)  # the model's classes, in its order
    records: int = 0
    failed: int = 0
    outside: int = 0  # records the guard found out of distribution
    decisions: dict[str, int] = field(default_factory=dict)
    skipped: Skipped = field(default_factory=Skipped)  # files a folder walk left out, by reason
    studies: list[Study] | None = None
    group_rule: str | None = None
    output: Path | None = None
    study_output: Path | None = None
    written: int = 0  # records in the output file (or its .partial)
    writing: bool = False  # this run holds the output's .partial (another run's is never this run's to report)
    dicom_objects: int = 0  # records read from DICOM objects (a DICOM SEG / SR is written for those only)
    notes: list[str] = field(default_factory=list)  # what a user should know after the run

    @property
    def predicted(self) -> int:
        return self.records - self.failed

    @property
    def kept(self) -> Path | None:
        """Where the records of this run, stopped, are (``FILE.partial``), or None (none kept, or it never wrote
        one: refused because another run holds the output, say)."""
        if self.output is None or not self.writing:
            return None
        partial = partial_path(self.output)
        return partial if partial.exists() else None


class PredictJob:
    """One checked, loaded prediction run; :meth:`run` streams it.

    The constructor does every check that needs no model, then loads the classifier (or takes
    ``classifier``), so a caller can say which model it is before the first image is read.
    """

    def __init__(
        self,
        inputs: Iterable[str] | str | Path,
        options: PredictOptions | None = None,
        *,
        model: str | Path | None = None,
        classifier: Classifier | None = None,
        output: str | Path | None = None,
        stream: IO[str] | None = None,
        stream_format: str | None = None,
        study_output: str | Path | None = None,
        overwrite: bool = False,
    ):
        options = options or (classifier.options if classifier is not None else PredictOptions())
        if stream_format is not None and stream_format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
        self.inputs = list(inputs) if not isinstance(inputs, (str, Path)) else [str(inputs)]
        self.output = Path(output) if output else None
        self.study_output = Path(study_output) if study_output else None
        self.stream, self.stream_format, self.overwrite = stream, stream_format, overwrite
        if self.stream_format is not None and self.stream is None:
            self.stream = sys.stdout
        for out in (self.output, self.study_output):
            if out:
                check_output(out, overwrite)  # before the model loads: never clobber results, fail fast
                check_not_an_input(out, self.inputs)
        if self.output and self.study_output and self.study_output.resolve() == self.output.resolve():
            raise ConfigError("--output and --study-output must be different files")
        for folder, flag in (
            (options.explain_dir, "--explain"),
            (options.lesion_masks, "--lesion-masks"),
            (options.dicom_seg, "--dicom-seg"),
            (options.dicom_sr, "--dicom-sr"),
        ):
            if folder is not None:
                check_output_folder(folder, flag, self.inputs, overwrite)
        if (self.study_output or options.group_rule) and options.group_by is None:
            options = options.replace(group_by="object")
        if options.group_by and options.group_by.startswith("column:") and not _has_path_list(self.inputs):
            raise ConfigError(
                f"--group-by {options.group_by} reads a column of a CSV path list, and no input is one; "
                "list the files in a CSV with that column, or group by object, study, series, folder or regex:PATTERN"
            )
        self.options = options
        self.columns: dict[str, dict] = {}  # CSV path lists' rows, for group_by column:NAME
        self.key = group_key(options.group_by, self.columns) if options.group_by else None
        check_path_lists(self.inputs, options.group_by)  # a bad list or column fails before any work
        self.classifier = classifier or Classifier.load(model, options)

    def notes(self) -> list[str]:
        """What a user should know about this run before reading its answers."""
        clf, out = self.classifier, []
        if clf.operating_point.level == "group" and self.key is None:
            out.append(
                "this operating point was fitted on patients (one answer per study); apply it to studies with "
                "--group-by — on single images it is only indicative"
            )
        if clf.ood and clf.reference is None:
            why = "trained before liverscan 0.2" if _trained_before(clf.card.versions, (0, 2)) else "ood.enabled: false"
            out.append(
                f"this model has no out-of-distribution reference ({why}): in_distribution is left empty unless an "
                "image check fires; retrain to get the full guard"
            )
        warning = (clf.card.ood or {}).get("warning")
        if clf.reference is not None and warning:
            out.append(str(warning))
        trained_on = clf.card.input.get("decoder")
        if trained_on is not None and trained_on != DECODER:
            out.append(
                f"this model was trained on images decoded by liverscan's decoding rules version {trained_on}; this "
                f"liverscan decodes by version {DECODER}, so the model sees slightly different pixels and its answers "
                "may differ from its card's figures: retrain it, or predict with the liverscan version that trained it"
            )
        missing = _missing_lesion_exports(clf)
        if missing:
            out.append(
                f"{', '.join(missing)} recorded in the model card but missing beside the model: the lesion head runs "
                "on Keras, many times slower; export it again with liverscan export RUN (or predict with --no-lesion)"
            )
        out.extend(clf.notices)
        left = _unfinished_phases(Path(clf.source))
        if left:
            out.append(
                f"this run was stopped before its last steps ({', '.join(left)}): finish them with "
                f"liverscan train --resume {clf.source}"
                + ("; until then predict runs on the Keras model" if EXPORT_PHASE in left else "")
            )
        return out

    def studies(self) -> StudyAggregator | None:
        """The study aggregator of this run (None without grouping)."""
        if self.key is None:
            return None
        return self.classifier.study_aggregator(self.key, self.options.group_rule)

    def run(
        self, on_record: Callable[[Prediction], None] | None = None, summary: PredictSummary | None = None
    ) -> PredictSummary:
        """Predict every input in order; each record goes to the writers, then to ``on_record``.

        ``summary`` (optional) is filled as records arrive, so a caller keeps the counts when a signal or
        a full disk stops the run (the exception propagates; whole records stay in ``FILE.partial``).
        """
        clf = self.classifier
        s = summary if summary is not None else PredictSummary()
        s.output, s.study_output, s.classes = self.output, self.study_output, list(clf.classes)
        studies = self.studies()
        s.group_rule = studies.rule if studies is not None else None
        group_column = self.key is not None
        tags = clf.include_dicom_tags
        file_writer: RecordWriter | None = None
        with contextlib.ExitStack() as stack:
            writers = []
            if self.output:
                fmt = format_for(self.output)
                file_writer = RecordWriter(
                    fmt, clf.classes, path=self.output, dicom_tags=tags, overwrite=self.overwrite,
                    group_column=group_column, lesion=clf.has_lesion,
                )  # fmt: skip
                s.writing = True
                writers.append(stack.enter_context(file_writer))
            if self.stream_format:
                writers.append(
                    stack.enter_context(
                        RecordWriter(
                            self.stream_format,
                            clf.classes,
                            stream=self.stream,
                            dicom_tags=tags,
                            group_column=group_column,
                            lesion=clf.has_lesion,
                        )  # fmt: skip
                    )
                )
            records = clf.iter_predict(expand_inputs(self.inputs, skipped=s.skipped, columns=self.columns))
            for rec in records:
                s.records += 1
                s.dicom_objects += rec.sop_instance_uid is not None
                if studies is not None:
                    studies.add(rec)
                if rec.error:
                    s.failed += 1
                else:
                    assert rec.decision is not None
                    s.decisions[rec.decision] = s.decisions.get(rec.decision, 0) + 1
                    s.outside += rec.in_distribution is False
                for w in writers:
                    w.write(rec)
                if file_writer is not None:
                    s.written = file_writer.count
                if on_record is not None:
                    on_record(rec)
            if s.records == 0:  # inside the writers: no empty output file is left behind
                raise DataError("no input images found")
        dicom = [f for f, v in (("--dicom-seg", self.options.dicom_seg), ("--dicom-sr", self.options.dicom_sr)) if v]
        if dicom and not s.dicom_objects:
            s.notes.append(f"no input was a DICOM object, so {' and '.join(dicom)} wrote nothing")
        if studies is not None:
            s.studies = studies.studies()
            if self.study_output:
                write_studies(
                    self.study_output, s.studies, clf.classes, overwrite=self.overwrite, lesion=clf.has_lesion
                )
        return s


def predict_files(
    inputs: Iterable[str] | str | Path,
    options: PredictOptions | None = None,
    *,
    model: str | Path | None = None,
    classifier: Classifier | None = None,
    output: str | Path | None = None,
    stream: IO[str] | None = None,
    stream_format: str | None = None,
    study_output: str | Path | None = None,
    overwrite: bool = False,
    on_record: Callable[[Prediction], None] | None = None,
) -> PredictSummary:
    """Predict files, folders (recursive), globs and CSV path lists; write records (``output``: .csv, .json,
    .jsonl; ``stream``: a text stream in ``stream_format``) and, with ``options.group_by``, study records
    (``study_output``).  Returns the :class:`PredictSummary` (its ``studies`` too)."""
    job = PredictJob(
        inputs,  # a single path is taken as a list of one, as PredictJob does
        options,
        model=model,
        classifier=classifier,
        output=output,
        stream=stream,
        stream_format=stream_format,
        study_output=study_output,
        overwrite=overwrite,
    )
    return job.run(on_record)
