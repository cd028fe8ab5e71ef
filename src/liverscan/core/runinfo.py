"""Facts recorded into every output directory: versions, timestamps."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

PACKAGES = ("liverscan", "numpy", "pillow", "scikit-learn", "keras", "tensorflow", "jax", "torch", "imagehash")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions (read from package metadata; nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, str]:
    return {"platform": platform.platform(), "machine": platform.machine(), "executable": sys.executable}


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
