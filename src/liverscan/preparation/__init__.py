"""Stage: turn labelled image sources into a validated, de-duplicated, audited and split prepared dataset."""

from liverscan.preparation.prepare import PrepareResult, prepare_dataset

__all__ = ["PrepareResult", "prepare_dataset"]
