"""liverscan: liver B-mode ultrasound classification (normal / fatty liver / tumor).

Importing the package is cheap: TensorFlow/Keras are only imported by the
functions that need them.  The public API:

- :class:`Classifier` / :class:`Prediction` — predict new images (``liverscan predict``);
- :func:`load_config` / :class:`Config` — the one configuration schema;
- :func:`prepare_dataset`, :func:`train_run`, :func:`evaluate`, :func:`write_report`,
  :func:`export_model` — the stages behind the other commands;
- :func:`load_run` / :class:`ModelCard` — a trained run and its card;
- :class:`LiverscanError` — the base of every error liverscan reports.
"""

from importlib import import_module
from typing import Any

__version__ = "0.6.0"

_EXPORTS = {
    "Classifier": "liverscan.serving",
    "Prediction": "liverscan.serving",
    "export_model": "liverscan.serving",
    "Config": "liverscan.core.config",
    "load_config": "liverscan.core.config",
    "LiverscanError": "liverscan.core.errors",
    "ModelCard": "liverscan.core.artifacts",
    "load_run": "liverscan.core.artifacts",
    "prepare_dataset": "liverscan.preparation",
    "train_run": "liverscan.training",
    "evaluate": "liverscan.evaluation",
    "write_report": "liverscan.evaluation",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: `import liverscan` stays cheap; each API loads on first use
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'liverscan' has no attribute {name!r}")
