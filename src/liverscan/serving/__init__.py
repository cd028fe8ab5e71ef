"""Stage: predictions for new images — the Classifier, runtimes, explanations, outputs and export."""

from liverscan.serving.dicom import check_tag_names
from liverscan.serving.distributed import (
    SHARD_FORMATS,
    RayRunSummary,
    predict_dataset,
    read_shard_rows,
    record_columns,
    run_ray_predict,
    shard_files,
)
from liverscan.serving.explain import overlay
from liverscan.serving.export import export_model
from liverscan.serving.inputs import default_model_dir, expand_inputs, read_path_list, resolve_model
from liverscan.serving.outputs import (
    FORMATS,
    OutputBusyError,
    RecordWriter,
    check_output,
    csv_header,
    csv_row,
    format_for,
    partial_path,
)
from liverscan.serving.predict import DECODERS, Classifier
from liverscan.serving.records import Prediction
from liverscan.serving.studies import Study, StudyAggregator, group_key, write_studies

__all__ = [
    "DECODERS",
    "SHARD_FORMATS",
    "RayRunSummary",
    "predict_dataset",
    "read_shard_rows",
    "record_columns",
    "run_ray_predict",
    "shard_files",
    "FORMATS",
    "Classifier",
    "Prediction",
    "RecordWriter",
    "check_tag_names",
    "read_path_list",
    "Study",
    "StudyAggregator",
    "group_key",
    "write_studies",
    "OutputBusyError",
    "check_output",
    "partial_path",
    "csv_header",
    "csv_row",
    "default_model_dir",
    "expand_inputs",
    "export_model",
    "format_for",
    "overlay",
    "resolve_model",
]
