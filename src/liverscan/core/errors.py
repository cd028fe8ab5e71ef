"""Exception types that carry enough context for a one-line message."""

from __future__ import annotations

from pathlib import Path


class LiverscanError(Exception):
    """Base class for every error liverscan reports to a user."""


class ImageDecodeError(LiverscanError):
    """A file could not be turned into a model input image."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(LiverscanError):
    """Invalid configuration or a bad request: unknown keys, wrong types, bad option values, options that do not
    go together. The command line reports it as a usage error (exit code 2, as for Click's own)."""


class DataError(LiverscanError):
    """A dataset problem that stops a command (e.g. unmapped categories)."""


class RunDirError(LiverscanError):
    """A run or prepared directory is missing, incomplete or would be overwritten."""


class ModelError(LiverscanError):
    """A model file or its weights cannot be loaded, or does not match its card."""


class ExportError(LiverscanError):
    """An export format is unavailable, fails to convert, or disagrees with the Keras model."""


class TrainingError(LiverscanError):
    """Training cannot start or stopped on a fault (e.g. a non-finite loss)."""


class AnnotationError(DataError):
    """A lesion / liver / fan annotation (polygon JSON or mask image) cannot be read or does not fit its image."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
