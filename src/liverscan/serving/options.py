"""What a prediction run is asked to do, typed: how the model is loaded and applied, and how inputs flow.

One :class:`PredictOptions` travels from the CLI, the app, the Python API and the Ray engine's
actors to :meth:`~liverscan.serving.predict.Classifier.load` and
:func:`~liverscan.serving.batch.predict_files`; it is checked once, before any work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverscan.core.aggregate import RULES
from liverscan.core.errors import ConfigError
from liverscan.core.images import DEFAULT_MAX_PIXELS
from liverscan.core.operating_point import REVIEW_CONFIDENCE

if TYPE_CHECKING:
    from liverscan.core.config import Config
    from liverscan.core.frames import Sampling

RUNTIMES = ("auto", "keras", "tflite", "onnx")
DECODERS = ("auto", "threads", "processes")
EXPLAIN_METHODS = ("auto", "gradcam", "lesion")
#: the options that change what a record says (the rest only change how fast it is made)
MODEL_FIELDS = (
    "use_operating_point",
    "review_confidence",
    "include_dicom_tags",
    "runtime",
    "max_pixels",
    "ood",
    "ood_retention",
    "lesion",
)


@dataclass(frozen=True)
class PredictOptions:
    """How to load and apply a model, and how inputs are decoded, batched and grouped.

    ``use_operating_point``: decide by the operating point stored in the model card (else argmax);
    ``review_confidence``: flag ``needs_review`` below this confidence; ``include_dicom_tags``: DICOM
    tags copied into records; ``runtime``: ``auto`` (an exported ``model.tflite``, else ``model.onnx``,
    when present), ``keras``, ``tflite`` or ``onnx``; ``ood``: the out-of-distribution guard on;
    ``ood_retention``: recompute the guard's threshold for this retention (None: the model's own);
    ``ood_k`` / ``ood_method``: the guard settings asked for (None: the model's own; they are fixed when the
    model is trained, so another value is refused when the model loads);
    ``decode``: decoding ``threads``, ``processes`` or ``auto`` (processes from 4 ``workers`` on);
    ``group_by`` / ``group_rule``: one answer per study (see :mod:`liverscan.serving.studies`; the rule
    defaults to the one a patient-level operating point was fitted with, else ``mean``);
    ``lesion``: apply the model's lesion head when it has one (every record says where); ``lesion_masks``: write
    each image's predicted lesion mask there (an 8-bit PNG at the image's size, 255 = lesion);
    ``explain_method``: what ``explain_dir`` overlays show - ``lesion`` (the lesion probability map and its
    outline), ``gradcam``, or ``auto`` (lesion when the model has a head, else Grad-CAM);
    ``frame_step`` / ``fps``: how loops (videos, DICOM cine) are sampled (see :mod:`liverscan.core.frames`);
    ``dicom_seg`` / ``dicom_sr``: folders for a DICOM Segmentation / Structured Report per DICOM input
    (see :mod:`liverscan.serving.dicom_results`).
    """

    use_operating_point: bool = False
    review_confidence: float = REVIEW_CONFIDENCE
    include_dicom_tags: tuple[str, ...] = ()
    runtime: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    ood: bool = True
    ood_retention: float | None = None
    ood_k: int | None = None
    ood_method: str | None = None
    batch_size: int = 32
    workers: int = 2
    decode: str = "auto"
    explain_dir: Path | None = None
    group_by: str | None = None
    group_rule: str | None = None
    lesion: bool = True
    lesion_masks: Path | None = None
    explain_method: str = "auto"
    frame_step: int | None = None
    fps: float | None = None
    dicom_seg: Path | None = None
    dicom_sr: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "include_dicom_tags", tuple(self.include_dicom_tags))
        for key in ("explain_dir", "lesion_masks", "dicom_seg", "dicom_sr"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, Path(getattr(self, key)))
        self.check()

    def check(self) -> None:
        """One-line errors for values no run could use."""
        from liverscan.serving.dicom import check_tag_names

        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.runtime!r} ({', '.join(RUNTIMES)})")
        if self.decode not in DECODERS:
            raise ConfigError(f"--decode must be one of {', '.join(DECODERS)}")
        if self.group_rule is not None and self.group_rule not in RULES:
            raise ConfigError(f"unknown aggregation rule {self.group_rule!r} (one of {', '.join(RULES)})")
        if not 0 <= self.review_confidence <= 1:
            raise ConfigError(f"review confidence must be in [0, 1], not {self.review_confidence}")
        if self.ood_retention is not None and not 0.5 <= self.ood_retention <= 1:
            raise ConfigError(f"out-of-distribution retention must be in [0.5, 1], not {self.ood_retention}")
        if self.explain_method not in EXPLAIN_METHODS:
            raise ConfigError(f"--explain-method must be one of {', '.join(EXPLAIN_METHODS)}")
        if not self.lesion and self.lesion_masks is not None:
            raise ConfigError("--lesion-masks needs the lesion head: drop --no-lesion")
        if not self.lesion and self.explain_method == "lesion":
            raise ConfigError("--explain-method lesion needs the lesion head: drop --no-lesion")
        if self.batch_size < 1 or self.workers < 1:
            raise ConfigError("batch size and workers must be at least 1")
        if not self.lesion and self.dicom_seg is not None:
            raise ConfigError("--dicom-seg needs the lesion head: drop --no-lesion")
        self.sampling  # noqa: B018 - checks frame_step and fps
        check_tag_names(self.include_dicom_tags)

    @classmethod
    def from_config(cls, cfg: Config, *, retention_given: bool = False, grouped: bool = False, **fields: Any):
        """Options from a configuration (review threshold, decoding limit, guard) and explicit ``fields``.

        The guard keeps the model's own threshold unless ``retention_given`` (the user asked for a
        retention); the configured study rule counts for ``grouped`` runs when it is not the default (else
        the rule a patient-level operating point was fitted with, else mean)."""
        from liverscan.core.config import Config

        default = Config()
        rule = cfg.eval.group_rule if grouped and cfg.eval.group_rule != default.eval.group_rule else None
        settings: dict[str, Any] = dict(
            review_confidence=cfg.eval.review_confidence,
            max_pixels=cfg.preprocess.max_pixels,
            ood=cfg.ood.enabled,
            ood_retention=cfg.ood.retention if retention_given else None,
            # the guard's k and method are the model's; one set away from the default is checked against it
            ood_k=cfg.ood.k if cfg.ood.k != default.ood.k else None,
            ood_method=cfg.ood.method if cfg.ood.method != default.ood.method else None,
            group_rule=rule,
        )
        return cls(**{**settings, **fields})

    @property
    def sampling(self) -> Sampling:
        """How loops are sampled."""
        from liverscan.core.frames import Sampling

        return Sampling(self.frame_step, self.fps)

    def replace(self, **changes: Any) -> PredictOptions:
        return dataclasses.replace(self, **changes)

    def model_settings(self) -> dict[str, Any]:
        """The options that change what a record says, as JSON values (the Ray engine's resume check)."""
        out = {k: getattr(self, k) for k in MODEL_FIELDS}
        out["include_dicom_tags"] = list(self.include_dicom_tags)
        return out
