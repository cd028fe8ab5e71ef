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
LINKED_FOLDER = "link to a folder (not followed)"
LINK_LOOP = "link to a folder containing it (a loop, not followed)"
UNREADABLE_FOLDER = "unreadable folder"


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
        """'3 files in the given inputs left out: 2 not a supported file type (a.gif, b.webp), 1 hidden (.DS_Store)'."""
        parts = []
        for reason, paths in sorted(self.by_reason.items()):
            names = ", ".join(Path(p).name for p in paths[:examples]) + (", ..." if len(paths) > examples else "")
            parts.append(f"{len(paths)} {reason} ({names})")
        noun = "file" if self.total == 1 else "files"
        return f"{self.total} {noun} in the given inputs left out: " + "; ".join(parts)


def walk_files(root: str | Path, suffixes: Iterable[str], skipped: Skipped | None = None) -> Iterator[Path]:
    """Files under ``root`` (recursive, sorted) whose suffix is wanted; the rest are counted in ``skipped``.

    Hidden files and folders (``.name``), files of other types, broken links,
    special files (FIFOs, devices), links to folders (never followed, so a link
    loop cannot make the walk endless) and folders that cannot be listed are left
    out and recorded with their reason.
    """
    wanted = {s.lower() for s in suffixes}
    skipped = skipped if skipped is not None else Skipped()
    for sub, kind in _tree(Path(root), skipped):
        if kind == "hidden":
            skipped.add(HIDDEN, sub)
        elif kind == "file":
            problem = file_problem(sub)
            if problem is not None:
                skipped.add(problem, sub)
            elif sub.suffix.lower() not in wanted:
                skipped.add(UNSUPPORTED, sub)
            else:
                yield sub


def _tree(folder: Path, skipped: Skipped) -> Iterator[tuple[Path, str]]:
    """(path, "folder" | "file" | "hidden") for everything under ``folder``, depth first in name order (the order
    of ``sorted(folder.rglob("*"))``).  Hidden entries are not entered; links to folders are not followed and,
    like folders that cannot be listed, are recorded in ``skipped``."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.add(f"{UNREADABLE_FOLDER}: {(exc.strerror or exc.__class__.__name__).lower()}", folder)
        return
    for entry in entries:
        sub = folder / entry.name
        if entry.name.startswith("."):
            yield sub, "hidden"  # a hidden folder is counted once, not walked
            continue
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_folder = False
        if is_folder:
            yield sub, "folder"
            yield from _tree(sub, skipped)
        elif entry.is_symlink() and os.path.isdir(sub):
            skipped.add(LINK_LOOP if _is_loop(sub, folder) else LINKED_FOLDER, sub)
        else:
            yield sub, "file"


def _is_loop(link: Path, folder: Path) -> bool:
    """Whether ``link`` (in ``folder``) points at ``folder`` or a folder containing it."""
    target, here = os.path.realpath(link), os.path.realpath(folder)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def glob_files(pattern: str, skipped: Skipped | None = None) -> list[str]:
    """The files (not folders) ``pattern`` matches, sorted, as ``glob.glob(pattern, recursive=True)`` finds them,
    except that ``**`` walks folders as :func:`walk_files` does: links to folders are not followed (a link loop
    would make the search endless, or find each file again and again) and are counted in ``skipped``, as are
    folders that cannot be listed."""
    import glob as globlib

    skipped = skipped if skipped is not None else Skipped()
    parts = pattern.split("/")
    if "**" not in parts:
        return sorted(m for m in globlib.glob(pattern) if not os.path.isdir(m))
    cut = parts.index("**")
    head, rest = "/".join(parts[:cut]) or ("/" if cut else ""), "/".join(parts[cut + 1 :]) or "*"
    found: set[str] = set()
    for base in sorted(globlib.glob(head)) if globlib.has_magic(head) else [head]:
        top = Path(base or ".")
        if not top.is_dir():
            continue
        for folder in [top] + [p for p, kind in _tree(top, skipped) if kind == "folder"]:
            here = "" if folder == top and not base else globlib.escape(str(folder))
            found.update(glob_files(os.path.join(here, rest), skipped))
    return sorted(found)
