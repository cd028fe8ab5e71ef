"""DICOM results for DICOM inputs (optional extra ``liverscan[dicom]``, highdicom): SEG and SR objects.

- ``--dicom-seg DIR``: a DICOM Segmentation per predicted frame, its one segment the lesion head's mask
  at the frame's size (binary), referencing the source instance and frame (one object per frame: an
  ultrasound object has no frame of reference, so a segmentation covers one of its frames).
- ``--dicom-sr DIR``: a DICOM Structured Report per source object (a Comprehensive 3D SR holding a TID 1500
  measurement report), one measurement group per predicted frame: the class, its probability, the decision,
  the out-of-distribution status and the lesion area (percent of the frame), made by the model named by
  its card and version.

Patient and study identifiers come from the source object (new series and instances); nothing else of
the source is copied.  highdicom checks each object as it builds it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liverscan.core.errors import LiverscanError
from liverscan.serving.dicom import frame_count
from liverscan.serving.records import OUT_OF_DISTRIBUTION, Prediction

INSTALL_HINT = "DICOM results need the optional extra: pip install 'liverscan[dicom]'"
#: series numbers of what liverscan writes (a viewer lists them after the source series)
SEG_SERIES, SR_SERIES = 9701, 9702
#: codes of classes SNOMED CT names; any other class gets a code of liverscan's own scheme
_CLASS_CODES = {"normal": ("17621005", "SCT", "Normal"), "tumor": ("108369006", "SCT", "Neoplasm")}
LOCAL_SCHEME = "99LIVERSCAN"


def require_highdicom():
    try:
        import highdicom
    except ImportError:
        raise LiverscanError(INSTALL_HINT) from None
    return highdicom


@dataclass
class _Source:
    """The DICOM object whose frames are arriving: its header (without pixel data) and its records for the SR."""

    key: object  # the input it came from
    path: str
    header: Any = None
    failure: str | None = None  # the error of its records when its header cannot be read
    records: list[Prediction] = field(default_factory=list)


class DicomResultWriter:
    """Writes the DICOM results of each DICOM input as its frames arrive, in input order (a long cine's frames
    span batches): a frame's SEG at once, the object's SR when its last frame has been seen (a record of the
    next input, or :meth:`flush`).  A frame whose SEG cannot be made, or an object whose SR cannot be, gets the
    reason as the error of its record(s); the run goes on.

    ``model``: the model's name and version as written into the objects; ``rule``: the lesion head's
    :class:`~liverscan.core.lesion.LesionRule` (default ``p >= 0.5``).
    """

    def __init__(
        self,
        seg_dir: Path | None,
        sr_dir: Path | None,
        model: tuple[str, str],
        rule=None,
    ):
        require_highdicom()
        self.seg_dir, self.sr_dir, self.model = seg_dir, sr_dir, model
        from liverscan.core.lesion import LesionRule

        self.rule = rule or LesionRule(min_area=0.0)
        self._current: _Source | None = None
        self._held: list[tuple[Any, Prediction, np.ndarray | None]] = []
        self.objects = 0  # DICOM objects seen (their folders are made for the first)

    def add(self, rec: Prediction, lesion_map: np.ndarray | None, key: object = None) -> None:
        """One record of input ``key`` (default: its path) and its lesion map; a DICOM frame's SEG is written
        now and its record kept for the object's SR (anything else is left out).  A record of another input
        first ends the current object (:meth:`flush`)."""
        from liverscan.serving.dicom import read_header
        from liverscan.serving.predict import output_stem

        key = rec.path if key is None else key
        if self._current is not None and self._current.key != key:
            self.flush()
        if rec.sop_instance_uid is None or rec.error:
            return
        if self._current is None:
            self._current = _Source(key, rec.path)
            self.objects += 1
        source = self._current
        if source.header is None and source.failure is None:
            try:
                source.header = read_header(source.path, source.path)
            except LiverscanError as exc:
                source.failure = _failure(exc)
        if source.failure is not None:
            rec.fail(source.failure)
            return
        if self.seg_dir is not None and lesion_map is not None and not rec.lesion_withheld:
            try:
                seg = self._segmentation(source.header, rec, lesion_map)
                _save(seg, self.seg_dir / f"{output_stem(rec)}-seg.dcm")
            except Exception as exc:  # noqa: BLE001 - a frame that cannot be described never stops the run
                rec.fail(_failure(exc))
                return
        if self.sr_dir is not None:
            source.records.append(rec)

    def flush(self) -> None:
        """End the current object: write its SR."""
        source, self._current = self._current, None
        if source is None or not source.records or self.sr_dir is None:
            return
        from liverscan.serving.predict import output_stem

        try:
            report = self._report(source.header, source.records)
            _save(report, self.sr_dir / f"{output_stem(Prediction(source.path))}-sr.dcm")
        except Exception as exc:  # noqa: BLE001 - one object that cannot be described never stops the run
            for rec in source.records:
                rec.fail(_failure(exc))

    def batch(self, items: list, maps: np.ndarray | None, keep_arrays: bool = True) -> list:
        """Take one predicted batch of (input, record, model input or None) items and their lesion maps (one
        per item with a model input); returns the items that may go on: all but those of an object whose SR
        waits for more frames, which are held (without their model input unless ``keep_arrays``) until it is
        written, so an SR that cannot be made still marks every record of its object."""
        good = iter(maps if maps is not None else ())
        for key, rec, arr in items:
            self.add(rec, None if arr is None else next(good, None), key)
        self._held.extend(items)
        waiting = self._current.key if self._current is not None and self._current.records else None
        cut = len(self._held)
        while waiting is not None and cut and self._held[cut - 1][0] == waiting:
            cut -= 1
        ready, held = self._held[:cut], self._held[cut:]
        self._held = held if keep_arrays else [(key, rec, None) for key, rec, _ in held]
        return ready

    def close(self) -> list:
        """Write the last object's SR; returns the items still held."""
        self.flush()
        held, self._held = self._held, []
        return held

    # -- the objects -------------------------------------------------------------------

    def _algorithm(self):
        import highdicom as hd
        from pydicom.sr.codedict import codes

        name, version = self.model
        return hd.AlgorithmIdentificationSequence(
            name=name, version=version, family=codes.cid7162.ArtificialIntelligence
        )

    def _segmentation(self, ds, rec: Prediction, lesion_map: np.ndarray):
        import highdicom as hd
        from pydicom.sr.codedict import codes

        from liverscan.serving.lesion import mask_image

        width, height = int(ds.Columns), int(ds.Rows)
        gated = self.rule.lesion_probability(rec.probabilities)
        mask = np.asarray(mask_image(lesion_map, width, height, self.rule, gated)) > 0
        segment = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=self._algorithm(),
        )
        seg = hd.seg.Segmentation(
            source_images=[_one_frame(ds)],
            pixel_array=mask[np.newaxis].astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES,
            sop_instance_uid=hd.UID(),
            instance_number=rec.frame or 1,
            manufacturer="liverscan",
            manufacturer_model_name=self.model[0],
            software_versions=self.model[1],
            device_serial_number="none",
            series_description="liverscan lesion segmentation",
            omit_empty_frames=False,
        )
        _refer_to_frame(seg, ds, rec.frame if frame_count(ds) > 1 else None)
        if (
            "PatientOrientation" not in seg
        ):  # General Image, type 2C: required (may be empty) without a frame of reference
            seg.PatientOrientation = ds.get("PatientOrientation", "")
        return seg

    def _report(self, ds, records: list[Prediction]):
        import highdicom as hd
        from highdicom import sr
        from pydicom.sr.codedict import codes

        name, version = self.model
        device = sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=name, manufacturer_name="liverscan", model_name=name, serial_number=version
        )
        context = sr.ObservationContext(
            observer_device_context=sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        )
        groups = [self._group(ds, rec, frame_count(ds) > 1) for rec in records]
        report = sr.MeasurementReport(
            observation_context=context,
            procedure_reported=hd.sr.CodedConcept("45036003", "SCT", "Ultrasonography of abdomen"),
            imaging_measurements=groups,
        )
        return sr.Comprehensive3DSR(
            evidence=[ds],
            content=report,
            series_number=SR_SERIES,
            series_instance_uid=hd.UID(),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="liverscan",
            series_description="liverscan findings",
        )

    def _group(self, ds, rec: Prediction, multi: bool):
        import highdicom as hd
        from highdicom import sr
        from pydicom.sr.codedict import codes

        frames = [rec.frame] if multi and rec.frame is not None else None
        source = sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            referenced_frame_numbers=frames,
        )
        no_units = hd.sr.CodedConcept("1", "UCUM", "no units")
        measurements = [
            sr.Measurement(name=_local("probability", "Class probability"), value=rec.confidence or 0.0, unit=no_units)
        ]
        if rec.ood_score is not None:
            measurements.append(
                sr.Measurement(
                    name=_local("ood_score", "Out-of-distribution score"), value=rec.ood_score, unit=no_units
                )
            )
        if rec.lesion is not None and not rec.lesion_withheld:
            area = 100.0 * float(rec.lesion.area_fraction or 0.0)
            measurements.append(sr.Measurement(name=codes.SCT.Area, value=area, unit=codes.UCUM.Percent))
        outside = rec.in_distribution is False
        evaluations = [
            sr.QualitativeEvaluation(name=codes.DCM.Finding, value=_class_code(rec.predicted_class or "")),
            sr.QualitativeEvaluation(
                name=_local("decision", "Decision"),
                value=_local(OUT_OF_DISTRIBUTION, "Out of distribution")
                if rec.decision == OUT_OF_DISTRIBUTION
                else _class_code(rec.decision or ""),
            ),
            sr.QualitativeEvaluation(
                name=_local("in_distribution", "In distribution"),
                value=codes.SCT.No
                if outside
                else (codes.SCT.Yes if rec.in_distribution else _local("unknown", "Unknown")),
            ),
        ]
        label = f"frame {rec.frame}" if rec.frame is not None else "image"
        return sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
            source_images=[source],
            measurements=measurements,
            qualitative_evaluations=evaluations,
            finding_sites=[sr.FindingSite(anatomic_location=codes.SCT.Liver)],
        )


def _local(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value[:16], LOCAL_SCHEME, meaning)


def _class_code(name: str):
    import highdicom as hd

    known = _CLASS_CODES.get(name.lower())
    return hd.sr.CodedConcept(*known) if known else _local(name, name)


def _failure(exc: Exception) -> str:
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return f"no DICOM result written ({exc.__class__.__name__}: {first_line})"


#: the single-frame counterpart of a legacy multi-frame ultrasound object (what highdicom builds a frame's SEG on)
_SINGLE_FRAME_CLASS = {"1.2.840.10008.5.1.4.1.1.3.1": "1.2.840.10008.5.1.4.1.1.6.1"}


def _one_frame(ds):
    """The source header as a single-frame object: highdicom builds segmentations of legacy multi-frame objects
    (no functional groups, no frame of reference) only from those; :func:`_refer_to_frame` turns the
    references back to the real object and frame."""
    proxy = copy.deepcopy(ds)  # a header only (read without pixel data)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector"):
        if keyword in proxy:
            delattr(proxy, keyword)
    proxy.SOPClassUID = _SINGLE_FRAME_CLASS.get(str(ds.SOPClassUID), ds.SOPClassUID)
    return proxy


def _refer_to_frame(seg, ds, frame: int | None) -> None:
    """Point every reference to the source instance in ``seg`` at its real SOP class (and frame)."""

    def walk(dataset, derived: bool) -> None:
        for element in dataset:
            if element.VR != "SQ":
                continue
            for item in element.value:
                if getattr(item, "ReferencedSOPInstanceUID", None) == ds.SOPInstanceUID:
                    item.ReferencedSOPClassUID = ds.SOPClassUID
                    if frame is not None and derived and element.keyword == "SourceImageSequence":
                        item.ReferencedFrameNumber = frame
                walk(item, derived or element.keyword == "DerivationImageSequence")

    walk(seg, False)


def _save(dataset, target: Path) -> None:
    """Write a DICOM object atomically."""
    import io

    from liverscan.core.fileio import write_bytes_atomic

    buf = io.BytesIO()
    dataset.save_as(buf, enforce_file_format=True)
    write_bytes_atomic(target, buf.getvalue())
