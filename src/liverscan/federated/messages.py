"""What travels between the coordinator and a site, and the check that no reply carries per-image data.

Every request and reply is a flat mapping of names to NumPy arrays, numbers or strings.  The schema below
lists, for each kind of request, every name a site may reply with and its shape in terms of the feature
count ``F``, the class count ``K``, the weight columns ``W`` (1 for two classes, else ``K``), the mlp head's
hidden units ``H``, the split
count ``S`` and the histogram bin counts ``P`` (probabilities) and ``O`` (out-of-distribution scores):
none depends on how many images a site holds, so no list of images, features or per-image scores fits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from liverscan.core.errors import LiverscanError

SPLIT_NAMES = ("train", "val", "test")

SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "hello": {"name": (), "classes": ("K",), "fingerprint": (), "counts": ("S", "K"), "n_features": ()},
    "moments": {"n": (), "mean": ("F",), "m2": ("F",)},
    "loss": {"loss": (), "grad_weights": ("F", "W"), "grad_bias": ("W",), "weight_sum": ()},
    "val_loss": {"loss": (), "n": ()},
    "mlp_train": {"w1": ("F", "H"), "b1": ("H",), "w2": ("H", "K"), "b2": ("K",), "n": (), "loss": ()},
    "mlp_val": {"loss": (), "n": (), "correct": ()},
    "guard_moments": {"counts": ("K",), "sums": ("K", "F"), "outer": ("F", "F")},
    "guard_histogram": {"counts": ("O",), "source": ()},
    "evaluate": {
        "confusion": ("K", "K"),
        "positive": ("K", "P"),
        "negative": ("K", "P"),
        "flagged": (),
        "alone_confusion": ("K", "K"),
        "alone_positive": ("K", "P"),
        "alone_negative": ("K", "P"),
        "alone_c": (),
    },
}


class MessageError(LiverscanError):
    """A message does not follow the federated protocol."""


def nbytes(message: Mapping[str, object]) -> int:
    """Bytes of a message's values (arrays by their buffers, text by its UTF-8 length, numbers 8)."""
    total = 0
    for value in message.values():
        if isinstance(value, str):
            total += len(value.encode())
        elif isinstance(value, np.ndarray):
            total += value.nbytes if value.dtype != object else sum(len(str(v).encode()) for v in value.ravel())
        else:
            total += 8
    return total


def check_reply(kind: str, reply: Mapping[str, object], dims: Mapping[str, int], site: str = "site") -> None:
    """Refuse a reply with a name or a shape the schema does not list for ``kind``."""
    schema = SCHEMA.get(kind)
    if schema is None:
        raise MessageError(f"{site}: unknown request kind {kind!r}")
    if set(reply) != set(schema):
        raise MessageError(f"{site}: reply to {kind} has fields {sorted(reply)}, expected {sorted(schema)}")
    for name, symbols in schema.items():
        shape = np.shape(np.asarray(reply[name]))
        want = tuple(dims[s] for s in symbols)
        if shape != want:
            raise MessageError(f"{site}: reply to {kind}: {name} has shape {shape}, expected {want}")
