"""What the benchmarks' ``--smoke`` modes share (not a benchmark itself)."""

from __future__ import annotations

from pathlib import Path


def subset(data: Path, target: Path, per_class: int) -> Path:
    """A small copy of a class-folder dataset (links to the first images of each class), for a smoke run."""
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        images = sorted((cls / "image").glob("*.*")) or sorted(p for p in cls.glob("*.*") if p.is_file())
        (target / cls.name).mkdir(parents=True, exist_ok=True)
        for img in images[:per_class]:
            (target / cls.name / img.name).symlink_to(img.resolve())
    return target
