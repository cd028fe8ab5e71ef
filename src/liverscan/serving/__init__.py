"""Stage: predictions for new images — what a Python user needs to screen scans.

``predict_files`` runs the whole loop (inputs → records and studies → files); ``Classifier`` predicts
in memory; ``PredictOptions`` says how; ``run_ray_predict`` / ``predict_dataset`` spread the work over
a Ray cluster; ``export_model`` writes the fast runtimes.
"""

from liverscan.serving.batch import PredictJob, PredictSummary, predict_files
from liverscan.serving.distributed import (
    SHARD_FORMATS,
    RayRunSummary,
    predict_dataset,
    read_shard_rows,
    run_ray_predict,
    shard_files,
)
from liverscan.serving.explain import gradcam_caption, headline, overlay
from liverscan.serving.export import export_model
from liverscan.serving.inputs import check_path_lists, default_model_dir, expand_inputs, resolve_model
from liverscan.serving.lesion import LesionFinding, draw_finding
from liverscan.serving.options import PredictOptions
from liverscan.serving.outputs import FORMATS
from liverscan.serving.predict import Classifier
from liverscan.serving.records import Prediction, records_csv
from liverscan.serving.studies import Study

__all__ = [
    "FORMATS",
    "SHARD_FORMATS",
    "Classifier",
    "LesionFinding",
    "PredictJob",
    "PredictOptions",
    "PredictSummary",
    "Prediction",
    "RayRunSummary",
    "Study",
    "check_path_lists",
    "default_model_dir",
    "draw_finding",
    "expand_inputs",
    "export_model",
    "gradcam_caption",
    "headline",
    "overlay",
    "predict_dataset",
    "predict_files",
    "read_shard_rows",
    "records_csv",
    "resolve_model",
    "run_ray_predict",
    "shard_files",
]
