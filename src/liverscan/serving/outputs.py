"""Writing prediction records as CSV, JSON or JSON Lines — streamed, and atomic for files."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO

try:  # POSIX: one writer per output file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from liverscan.core.errors import ConfigError, LiverscanError
from liverscan.core.fileio import naming
from liverscan.serving.records import Prediction, csv_cells, record_columns

FORMATS = ("csv", "json", "jsonl")


def format_for(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ConfigError(f"{path}: output must end in .csv, .json or .jsonl")
    return ext


class OutputBusyError(LiverscanError):
    """The output file exists, or another process is writing it (not a usage error: the same command may work later)."""


class RecordWriter:
    """Streams records to ``FILE.partial`` (renamed to ``FILE`` on success) or to a text stream.

    Each record is written with one ``os.write`` as soon as it is known, so a killed run
    (SIGKILL included) leaves ``FILE.partial`` holding whole records only; a failed write
    (a full disk) cuts the file back to the last whole record.  The ``.partial`` file is
    locked while it is written, so two runs never write the same output.  An existing
    ``FILE`` or a ``FILE.partial`` left by a stopped run is replaced only with ``overwrite``.
    ``lesion``: the model has a lesion head (the CSV gets its columns).
    """

    def __init__(
        self,
        fmt: str,
        classes: list[str],
        path: str | Path | None = None,
        stream: IO[str] | None = None,
        dicom_tags: tuple[str, ...] = (),
        overwrite: bool = False,
        group_column: bool = False,
        lesion: bool = False,
    ):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r} (csv, json, jsonl)")
        self.fmt, self.classes, self.path, self.tags = fmt, classes, Path(path) if path else None, list(dicom_tags)
        self.stream, self.group_column, self.overwrite = stream, group_column, overwrite
        self.columns = record_columns(classes, self.tags, group_column, lesion)
        self.count = 0
        self._fd: int | None = None
        self._good = 0  # bytes of whole records on disk
        if self.path is not None:
            self.partial = partial_path(self.path)
            self._fd = _open_locked(self.path, self.partial, overwrite)

    def __enter__(self) -> RecordWriter:
        if self.fmt == "csv":
            self._emit(_csv_line([c.name for c in self.columns]))
        elif self.fmt == "json":
            self._emit("[")
        return self

    def write(self, rec: Prediction) -> None:
        if self.fmt == "csv":
            text = _csv_line(csv_cells(rec, self.columns))
        elif self.fmt == "jsonl":
            text = json.dumps(rec.to_dict()) + "\n"
        else:
            text = ("," if self.count else "") + "\n  " + json.dumps(rec.to_dict())
        self._emit(text)
        self.count += 1

    def _emit(self, text: str) -> None:
        if self._fd is None:
            assert self.stream is not None  # a writer has a path or a stream
            self.stream.write(text)
            self.stream.flush()
            return
        data = text.encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            os.ftruncate(self._fd, self._good)  # never leave a cut record behind
            os.lseek(self._fd, self._good, os.SEEK_SET)
            raise naming(exc, self.partial) from exc
        self._good += len(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            if self.fmt == "json" and (exc_type is None or self.count == 0):  # valid JSON, even when empty
                self._emit("\n]\n")
            return
        assert self.path is not None  # a file descriptor is opened for a path only
        try:
            if exc_type is None:
                if self.fmt == "json":
                    self._emit("\n]\n")
                try:
                    os.fsync(self._fd)  # a full disk may say so only now
                except OSError as exc:
                    raise naming(exc, self.partial) from exc
                if self.path.exists() and not self.overwrite:  # appeared while this run was writing
                    raise OutputBusyError(
                        f"{self.path}: appeared while this run was writing; its records are kept in {self.partial}"
                    )
                os.replace(self.partial, self.path)
            elif self.count == 0:  # stopped before any record: nothing to keep
                self.partial.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # releases the lock; on failure FILE.partial keeps every whole record


def partial_path(path: str | Path) -> Path:
    """Where records are streamed while a run writes ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _csv_line(row: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def check_output(path: str | Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is a folder, exists, or has a kept ``.partial`` beside it."""
    path = Path(path)
    format_for(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; the output must be a file name ending in .csv, .json or .jsonl")
    if path.exists() and not overwrite:
        raise OutputBusyError(f"{path}: already exists (pass --overwrite to replace it)")
    partial = partial_path(path)
    if partial.exists() and partial.stat().st_size and not overwrite:
        raise OutputBusyError(
            f"{partial}: kept from an interrupted or running liverscan predict; "
            "move it away or pass --overwrite to replace it"
        )


def check_not_an_input(path: str | Path, inputs: list[str]) -> None:
    """Refuse an output file that is one of the run's inputs (a CSV path list, an image named on the command
    line): an input is never an output."""
    target = Path(path).resolve()
    for item in inputs:
        if item != "-" and Path(item).resolve() == target:
            raise ConfigError(f"{path}: is an input of this run; an input is never an output, choose another file")


def check_output_folder(folder: str | Path, flag: str, inputs: list[str], overwrite: bool = False) -> None:
    """Refuse, before any work, a folder for the pictures or objects a run writes (``flag`` names it) that is a
    file, that holds files already (an earlier run's, whose records point at them; replaced only with
    ``overwrite``), or that lies inside an input folder (the next run over that folder would read them)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; {flag} needs a folder")
    where = folder.resolve()
    for item in inputs:
        given = Path(item)
        if item != "-" and given.is_dir() and where.is_relative_to(given.resolve()):
            raise ConfigError(
                f"{folder}: is inside the input folder {item}, where a later run would read what {flag} writes "
                "as scans; choose a folder outside the inputs"
            )
    if folder.is_dir() and not overwrite:
        try:
            taken = next((entry.name for entry in os.scandir(folder) if not entry.name.startswith(".")), None)
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot be listed ({exc.strerror or exc}); {flag} needs a folder") from None
        if taken is not None:
            raise OutputBusyError(
                f"{folder}: already holds files ({taken}, ...), perhaps an earlier run's whose records point at them; "
                f"choose an empty folder for {flag} or pass --overwrite to write over them"
            )


def _open_locked(path: Path, partial: Path, overwrite: bool) -> int:
    """Open ``partial`` for writing under an exclusive lock, refusing to clobber results."""
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o666)
        if fcntl is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"{partial}: another liverscan process is writing this output") from None
        try:  # locked the file still at that name? (another run may have just renamed it to FILE)
            if os.fstat(fd).st_ino == os.stat(partial).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    else:
        raise OutputBusyError(f"{partial}: another liverscan process keeps replacing this output")
    try:
        if os.fstat(fd).st_size and not overwrite:  # appeared since check_output
            raise OutputBusyError(f"{partial}: kept from an interrupted run; move it away or pass --overwrite")
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd
