"""Finding input files: folder walks and globs find each file once, never follow a link loop, and count what
they leave out (links to folders, folders that cannot be read) with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli_helpers import OsProxy
from liverscan.core import files
from liverscan.core.files import LINK_LOOP, UNREADABLE_FOLDER, Skipped, glob_files, walk_files


def _looped(root: Path) -> Path:
    """L/normal/a.jpg, L/tumor/b.jpg, L/tumor/deep/c.jpg, and two links in L/normal back to L/normal."""
    lab = root / "L"
    for sub in ("normal", "tumor/deep"):
        (lab / sub).mkdir(parents=True)
    for name in ("normal/a.jpg", "tumor/b.jpg", "tumor/deep/c.jpg"):
        (lab / name).write_bytes(b"x")
    os.symlink(".", lab / "normal" / "a")
    os.symlink(".", lab / "normal" / "b")
    return lab


def test_recursive_glob_finds_each_file_once_through_link_loops(tmp_path):
    """In a child process with a time limit: Python's own recursive glob never ends on these two links."""
    lab = _looped(tmp_path)
    code = (
        "import sys; from liverscan.core.files import Skipped, glob_files; s = Skipped(); "
        "print('\\n'.join(glob_files(sys.argv[1], s))); print(s.counts())"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, f"{lab}/**/*.jpg"], capture_output=True, text=True, timeout=60, check=True
    )
    *found, counts = r.stdout.splitlines()
    assert found == [f"{lab}/normal/a.jpg", f"{lab}/tumor/b.jpg", f"{lab}/tumor/deep/c.jpg"]
    assert counts == str({LINK_LOOP: 2})


def test_glob_matches_as_glob_does_without_loops(tmp_path, monkeypatch):
    lab = _looped(tmp_path)
    os.unlink(lab / "normal" / "a")
    os.unlink(lab / "normal" / "b")
    (lab / ".hidden").mkdir()
    (lab / ".hidden" / "h.jpg").write_bytes(b"x")
    import glob

    monkeypatch.chdir(tmp_path)
    for pattern in ("L/**/*.jpg", "L/**", "**/*.jpg", "L/*/*.jpg", "L/**/deep/*.jpg", "L/**/tumor/**/*.jpg"):
        expected = sorted(m for m in glob.glob(pattern, recursive=True) if not os.path.isdir(m))
        assert glob_files(pattern) == expected, pattern
    assert glob_files("L/nothing/**/*.jpg") == []


def test_unreadable_folder_is_reported_not_dropped(tmp_path, monkeypatch):
    root = tmp_path / "in"
    (root / "open").mkdir(parents=True)
    (root / "closed").mkdir()
    (root / "open" / "a.png").write_bytes(b"x")
    (root / "closed" / "b.png").write_bytes(b"x")
    os.chmod(root / "closed", 0)
    simulated = os.access(root / "closed", os.R_OK)
    try:
        if simulated:  # root reads anyway: the walk's listing of the folder is refused instead

            def scandir(path):
                if Path(path) == root / "closed":
                    raise PermissionError(13, "Permission denied", str(path))
                return os.scandir(path)

            monkeypatch.setattr(files, "os", OsProxy(os, scandir=scandir))
        skipped = Skipped()
        assert list(walk_files(root, {".png"}, skipped)) == [root / "open" / "a.png"]
        assert skipped.counts() == {f"{UNREADABLE_FOLDER}: permission denied": 1}
        assert "1 unreadable folder: permission denied (closed)" in skipped.summary()
        skipped = Skipped()
        found = glob_files(f"{root}/**/*.png", skipped)
        assert found == [str(root / "open" / "a.png")] or simulated  # (glob itself still lists it as root)
        assert skipped.by_reason == {f"{UNREADABLE_FOLDER}: permission denied": [str(root / "closed")]}
    finally:
        os.chmod(root / "closed", 0o755)
