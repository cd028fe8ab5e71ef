"""Atomic file writes and hashing helpers.

Every output is written to a temporary file in the destination folder and then
renamed into place, so a killed command never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def naming(exc: OSError, path: str | Path) -> OSError:
    """``exc`` as the error of writing ``path`` ("out.csv: No space left on device"), whatever file (a temporary
    one) or none (a failed write or fsync) the system call named."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name next to ``path`` for a writer that takes a file name (Keras, NumPy); renamed onto ``path``
    when the block ends, removed when it fails. An ``OSError`` (a full disk, a read-only folder) names ``path``.
    ``suffix``: what the temporary name ends with, for writers that insist on one (``.keras``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # its error names the folder that cannot be made
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise naming(exc, path) from exc
    tmp = Path(name)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise naming(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename (an ``OSError`` names ``path``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def npy_bytes(array: Any) -> bytes:
    """``array`` in NumPy's ``.npy`` format (for :func:`write_bytes_atomic`)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz_bytes(*arrays: Any, **named: Any) -> bytes:
    """``arrays`` (``arr_0``, ...) and ``named`` arrays as a compressed ``.npz`` (for :func:`write_bytes_atomic`)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, *arrays, **named)
    return buf.getvalue()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Render rows as CSV text with Unix line endings (byte-stable)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_text_atomic(path, csv_text(header, rows))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file (a ``.tsv`` file: tab-separated) as dicts by header; blank lines are skipped.

    A malformed file raises ``csv.Error`` saying where and what (``line 2: unterminated quote``, ``line 3: 1
    field, the header has 2``): Python's reader would take an unterminated quote as the rest of the file in one
    field, and give a short row's missing cells as None, so a broken file would be read as other data.
    """
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        header: list[str] | None = None
        rows: list[dict[str, str]] = []
        while True:
            start = reader.line_num + 1  # the line the next record begins on
            try:
                row = next(reader)
            except StopIteration:
                return rows
            except csv.Error as exc:
                what = "unterminated quote" if "unexpected end of data" in str(exc) else str(exc)
                raise csv.Error(f"line {start}: {what}") from None
            if not row:
                continue
            if header is None:
                header = row
            elif len(row) != len(header):
                raise csv.Error(
                    f"line {start}: {len(row)} field{'s' if len(row) != 1 else ''}, the header has {len(header)}"
                )
            else:
                rows.append(dict(zip(header, row)))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
