"""Stage: metrics with confidence intervals, calibration, operating points and reports of a trained run."""

from liverscan.evaluation.evaluate import EvalResult, evaluate
from liverscan.evaluation.report import (
    COMPARE_COLUMNS,
    OVERALL_METRICS,
    overall_cells,
    write_compare,
    write_report,
)

__all__ = [
    "COMPARE_COLUMNS",
    "OVERALL_METRICS",
    "EvalResult",
    "evaluate",
    "overall_cells",
    "write_compare",
    "write_report",
]
