"""Finding input files: folder walks that count what they leave out, and why a path cannot be read."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

UNSUPPORTED = "not a supported file type"
HIDDEN = "hidden"
BROKEN_LINK = "broken symbolic link"
NOT_REGULAR = "not a regular file"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file (without opening it: a FIFO would block), or None."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return BROKEN_LINK if p.is_symlink() else "file not found"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(st.st_mode)
            else "a character device"
            if stat.S_ISCHR(st.st_mode)
            else "a block device"
            if stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a special file"
        )
        return f"{NOT_REGULAR} ({kind})"
    return None


@dataclass
class Skipped:
    """Files a folder walk left out, by reason (reported, never silently dropped)."""

    by_reason: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, path: str | Path) -> None:
        self.by_reason.setdefault(reason, []).append(str(path))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def counts(self) -> dict[str, int]:
        return {reason: len(paths) for reason, paths in sorted(self.by_reason.items())}

    def summary(self, examples: int = 2) -> str:
        """'3 files left out: 2 not a supported file type (a.gif, b.webp), 1 hidden (.DS_Store)'."""
        parts = []
        for reason, paths in sorted(self.by_reason.items()):
            names = ", ".join(Path(p).name for p in paths[:examples]) + (", ..." if len(paths) > examples else "")
            parts.append(f"{len(paths)} {reason} ({names})")
        noun = "file" if self.total == 1 else "files"
        return f"{self.total} {noun} in the given folders left out: " + "; ".join(parts)


def walk_files(root: str | Path, suffixes: Iterable[str], skipped: Skipped | None = None) -> Iterator[Path]:
    """Files under ``root`` (recursive, sorted) whose suffix is wanted; the rest are counted in ``skipped``.

    Hidden files and folders (``.name``), files of other types, broken links and
    special files (FIFOs, devices) are left out and recorded with their reason.
    """
    root = Path(root)
    wanted = {s.lower() for s in suffixes}
    skipped = skipped if skipped is not None else Skipped()
    for sub in sorted(root.rglob("*")):
        rel = sub.relative_to(root).parts
        if any(part.startswith(".") for part in rel[:-1]):
            continue  # inside a hidden folder: the folder itself is counted once
        if sub.name.startswith("."):
            skipped.add(HIDDEN, sub)
            continue
        if sub.is_dir() and not sub.is_symlink():
            continue
        problem = file_problem(sub)
        if problem == "is a directory":
            skipped.add("link to a folder (not followed)", sub)
        elif problem is not None:
            skipped.add(problem, sub)
        elif sub.suffix.lower() not in wanted:
            skipped.add(UNSUPPORTED, sub)
        else:
            yield sub
