"""Helpers for tests that run liverscan commands, in process or as child processes, and check what they leave."""

from __future__ import annotations

import contextlib
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

runner = CliRunner()
LIVERSCAN = [sys.executable, "-m", "liverscan"]


def one_line_error(result, fragment: str, code: int = 1) -> str:
    """The command failed with ``code`` and one 'error:' line holding ``fragment``, no traceback."""
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == code if hasattr(result, "exit_code") else result.returncode == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    joined = " ".join(err.split())  # Rich wraps long lines in narrow terminals
    assert fragment in joined, err
    return joined


def run_cli(*args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    """``liverscan ARGS`` in a child process (killed after ``timeout`` seconds: a hang fails, never blocks)."""
    return subprocess.run([*LIVERSCAN, *args], capture_output=True, text=True, timeout=timeout, **kw)


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_whole_records(path: Path) -> int:
    """Every row of a CSV output has the header's width (no record cut); returns the record count."""
    rows = csv_rows(path)
    assert rows and rows[0][0] == "path"
    assert {len(r) for r in rows} == {len(rows[0])}, "a record was cut"
    assert path.read_bytes().endswith(b"\n")
    return len(rows) - 1


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "32k", read_only: bool = False):
    """A small tmpfs at ``path`` (yields True), or nothing mounted (yields False) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


class OsProxy:
    """The ``os`` module as one module sees it, with some calls replaced (the rest of the process unaffected)."""

    def __init__(self, module, **replaced):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def as_from_a_terminal(*ignored: int):
    """A ``preexec_fn`` giving the child Ctrl+C, SIGTERM and SIGHUP their defaults as a terminal does (a test run
    started in the background, as CI starts its slow tier, passes SIGINT on ignored; one started under nohup,
    SIGHUP), and ignoring the signals ``ignored`` (as nohup does)."""
    import signal

    def reset() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)

    return reset


def start_predict(folder: Path, out: Path, *extra: str, ignored: tuple[int, ...] = (), **popen) -> subprocess.Popen:
    """``liverscan predict FOLDER -o OUT`` (the default model) in a child process, in batches of 8."""
    return subprocess.Popen(
        [*LIVERSCAN, "predict", str(folder), "-o", str(out), "-q", "--batch-size", "8", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal(*ignored),
        **popen,
    )


def wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 180, every: float = 0.05) -> None:
    """Poll ``ready()`` while ``proc`` runs; fail (and kill ``proc``) when it exits first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(every)


def record_count(path: Path) -> int:
    """Whole lines (records plus header) written so far to ``path``; 0 while it does not exist."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_records(partial: Path, proc: subprocess.Popen, n: int = 20, timeout: float = 180) -> None:
    """Wait until predict has written more than ``n`` records to ``partial`` (so it is mid-run, handlers set)."""
    wait_until(lambda: record_count(partial) > n, proc, f"{n} records in {partial.name}", timeout)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for ``proc`` to exit and return its stderr; kill it and fail after ``timeout`` seconds."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the process did not exit within {timeout:g} s:\n{err}")
    return err or ""


def edit_card(folder: Path, change) -> None:
    """Change a run's model card JSON with ``change(card_dict)`` and write it back as liverscan writes a card (its
    decision rules sealed anew: what evaluate does when it fits an operating point)."""
    import json

    from liverscan.core.artifacts import read_card, write_card

    path = Path(folder) / "model_card.json"
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))
    write_card(folder, read_card(folder))
