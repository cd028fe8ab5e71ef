"""Stage: metrics with confidence intervals, calibration, operating points and reports of a trained run.

Importing the package is cheap (no scikit-learn, no Keras): each name loads its module on first use, so
the terminal can read typed results and format them without paying for the evaluation code.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EvalResult": "liverscan.evaluation.eval_dir",
    "evaluate": "liverscan.evaluation.evaluate_split",
    "EvalMetrics": "liverscan.evaluation.results",
    "GroupLevel": "liverscan.evaluation.results",
    "OodResult": "liverscan.evaluation.results",
    "Scores": "liverscan.evaluation.results",
    "format_value": "liverscan.evaluation.results",
    "format_with_ci": "liverscan.evaluation.results",
    "COMPARE_COLUMNS": "liverscan.evaluation.report",
    "OVERALL_METRICS": "liverscan.evaluation.report",
    "confusion_rows": "liverscan.evaluation.report",
    "overall_cells": "liverscan.evaluation.report",
    "overall_rows": "liverscan.evaluation.report",
    "per_class_rows": "liverscan.evaluation.report",
    "result_variants": "liverscan.evaluation.report",
    "write_compare": "liverscan.evaluation.report",
    "write_report": "liverscan.evaluation.report",
}

__all__ = [
    "COMPARE_COLUMNS",
    "EvalMetrics",
    "EvalResult",
    "GroupLevel",
    "OVERALL_METRICS",
    "OodResult",
    "Scores",
    "confusion_rows",
    "evaluate",
    "format_value",
    "format_with_ci",
    "overall_cells",
    "overall_rows",
    "per_class_rows",
    "result_variants",
    "write_compare",
    "write_report",
]

if TYPE_CHECKING:  # the names, for type checkers and editors
    from liverscan.evaluation.eval_dir import EvalResult
    from liverscan.evaluation.evaluate_split import evaluate
    from liverscan.evaluation.report import (
        COMPARE_COLUMNS,
        OVERALL_METRICS,
        confusion_rows,
        overall_cells,
        overall_rows,
        per_class_rows,
        result_variants,
        write_compare,
        write_report,
    )
    from liverscan.evaluation.results import (
        EvalMetrics,
        GroupLevel,
        OodResult,
        Scores,
        format_value,
        format_with_ci,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'liverscan.evaluation' has no attribute {name!r}")
