"""Stage: metrics with confidence intervals, calibration, operating points and reports of a trained run."""

from liverscan.evaluation.eval_dir import EvalResult
from liverscan.evaluation.evaluate import evaluate
from liverscan.evaluation.report import (
    COMPARE_COLUMNS,
    OVERALL_METRICS,
    overall_cells,
    write_compare,
    write_report,
)
from liverscan.evaluation.results import EvalMetrics, Scores, format_value, format_with_ci

__all__ = [
    "COMPARE_COLUMNS",
    "OVERALL_METRICS",
    "EvalMetrics",
    "EvalResult",
    "Scores",
    "evaluate",
    "format_value",
    "format_with_ci",
    "overall_cells",
    "write_compare",
    "write_report",
]
