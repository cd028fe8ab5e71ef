"""Messages as bytes: a flat mapping of names to arrays, numbers and text, as a plain ``.npz`` (no pickle)."""

from __future__ import annotations

import io

import numpy as np


def to_bytes(message: dict) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in message.items()}
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
