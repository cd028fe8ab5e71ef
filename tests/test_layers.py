"""The package's shape: core <- stages side by side <- faces; no stage imports another."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "liverscan"
STAGES = {"preparation", "training", "evaluation", "serving"}
FACES = {"faces"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every liverscan import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("liverscan"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("liverscan")]
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def test_layout_has_core_stages_and_faces():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"core", "faces"} | STAGES <= folders


def test_core_imports_no_stage_and_no_stage_imports_another():
    problems = []
    for path in ROOT.rglob("*.py"):
        here = path.relative_to(ROOT).parts[0]
        for module, names in _imports(path):
            targets = {_layer(module)} | ({_layer(f"{module}.{n}") for n in names} if module == "liverscan" else set())
            for target in targets:
                if here == "core" and target in STAGES | FACES:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
                if here in STAGES and target in (STAGES | FACES) - {here}:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert problems == []


def test_faces_use_only_public_names_of_stages():
    problems = []
    for path in (ROOT / "faces").glob("*.py"):
        for module, names in _imports(path):
            layer = _layer(module)
            if layer not in STAGES:
                continue
            public = set(importlib.import_module(f"liverscan.{layer}").__all__)
            if module != f"liverscan.{layer}" or not set(names) <= public:
                problems.append(f"{path.name}: from {module} import {', '.join(names)}")
    assert problems == []


def test_importing_the_app_runs_nothing():
    import sys

    import pytest

    pytest.importorskip("streamlit")
    sys.modules.pop("liverscan.faces.app", None)
    module = importlib.import_module("liverscan.faces.app")
    assert callable(module.main)
