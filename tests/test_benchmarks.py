"""Benchmarks cannot rot: each has a --smoke mode, and CI runs every one of them in it."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def _options(script: Path) -> set[str]:
    """The option strings the script declares with ``add_argument`` (read from its source, not imported)."""
    found = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def _ci_smoke_runs() -> set[str]:
    """Names of the benchmarks that .ci/run calls with --smoke (continued lines joined, comments left out)."""
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    return {m.group(1) for line in lines if (m := re.search(r"\bbenchmarks/(\w+)\.py\b.*\s--smoke\b", line))}


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 10, BENCHMARKS


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_benchmark_has_a_smoke_mode_that_ci_runs(script):
    assert "--smoke" in _options(script), f"{script.name} has no --smoke option"
    assert script.stem in _ci_smoke_runs(), f".ci/run does not call benchmarks/{script.name} with --smoke"


def test_the_readme_lists_every_benchmark():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Benchmarks", 1)[1].split("\n## ", 1)[0]
    for script in [*BENCHMARKS, *(REPO / "benchmarks").glob("*.sh")]:
        assert f"| `{script.name}` |" in table, f"README's benchmark table does not list {script.name}"


def test_the_ci_check_reads_what_it_should(tmp_path):
    # the parser itself: a commented-out call, or one without --smoke, does not count
    assert "predict_speed" in _ci_smoke_runs()
    script = tmp_path / "b.py"
    script.write_text('import argparse\nap = argparse.ArgumentParser()\nap.add_argument("--fast")\n')
    assert "--smoke" not in _options(script)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.sh")), ids=lambda p: p.name)
def test_shell_benchmarks_parse(script):
    # benchmarks/gpu_check.sh needs a GPU, so CI cannot run it: at least its syntax is checked
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
