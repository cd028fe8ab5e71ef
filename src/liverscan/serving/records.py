"""The prediction record: one image, or one DICOM frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OUT_OF_DISTRIBUTION = "out_of_distribution"


@dataclass
class Prediction:
    """One prediction record (one image, or one DICOM frame)."""

    path: str
    predicted_class: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    decision_rule: str = "argmax"
    #: the answer to act on: the predicted class, or "out_of_distribution" when the guard says the
    #: image is unlike the training data (the probabilities stay in the record); None on error
    decision: str | None = None
    in_distribution: bool | None = None  # None: the guard is off or the model has no reference
    ood_score: float | None = None
    ood_reason: str | None = None
    needs_review: bool = False
    error: str | None = None
    frame: int | None = None
    sop_instance_uid: str | None = None
    dicom_tags: dict[str, str] | None = None
    explanation: str | None = None  # path of the Grad-CAM overlay, when written
    group: str | None = None  # the study / patient it belongs to, with predict --group-by
    #: DICOM study and series UIDs, read for --group-by study|series; written only as a group key
    study_instance_uid: str | None = field(default=None, repr=False)
    series_instance_uid: str | None = field(default=None, repr=False)
    #: the guard's image checks, run where the image was decoded: None not run yet, "" passed, else the reason
    image_check: str | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("study_instance_uid", "series_instance_uid", "image_check"):
            d.pop(key)
        for key in ("dicom_tags", "group"):
            if d[key] is None:
                d.pop(key)
        return d
