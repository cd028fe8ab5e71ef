"""DICOM SEG and SR results for a multi-frame (cine) DICOM input, read back with pydicom and highdicom."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

hd = pytest.importorskip("highdicom")

from loop_helpers import EXAMPLES, write_cine  # noqa: E402


@pytest.mark.slow
def test_seg_and_sr_of_a_cine_reference_the_source_and_hold_mask_and_findings(tmp_path):
    from liverscan.serving import PredictOptions, predict_files

    uid = write_cine(tmp_path / "cine.dcm", n=12, hold=3, frame_time_ms=100.0)
    options = PredictOptions(
        frame_step=3, dicom_seg=tmp_path / "seg", dicom_sr=tmp_path / "sr", lesion_masks=tmp_path / "masks"
    )
    records = []
    predict_files([str(tmp_path / "cine.dcm")], options, on_record=records.append)
    assert [r.frame for r in records] == [1, 4, 7, 10] and all(r.ok and r.lesion for r in records)

    segs = sorted((tmp_path / "seg").glob("*.dcm"))
    assert len(segs) == 4
    for rec in records:
        [path] = [p for p in segs if f"-frame{rec.frame}-" in p.name]
        seg = hd.seg.segread(path)
        assert (seg.PatientID, seg.PatientName) == ("P-77", "Doe^Jane") and "InstitutionName" not in seg
        ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == uid and ref.ReferencedFrameNumber == rec.frame
        assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
        mask = seg.pixel_array.reshape(100, 120) > 0  # the lesion mask at the frame's size, as the PNG has it
        png = np.asarray(Image.open(rec.lesion_mask)) > 0
        assert np.array_equal(mask, png) and mask.any() == bool(rec.lesion.found)
        assert seg.SegmentSequence[0].SegmentLabel == "lesion"

    [sr_path] = list((tmp_path / "sr").glob("*.dcm"))
    sr = hd.sr.srread(sr_path)
    assert (sr.PatientID, sr.StudyInstanceUID) == ("P-77", records[0].study_instance_uid)
    assert "InstitutionName" not in sr
    items = [item for item in sr.ContentSequence if item.ValueType == "CONTAINER"]
    found = []
    for container in items:
        for group in container.ContentSequence:
            texts = {c.ConceptNameCodeSequence[0].CodeMeaning: c for c in group.ContentSequence}
            frame = int(texts["Tracking Identifier"].TextValue.split()[-1])
            rec = next(r for r in records if r.frame == frame)
            probability = texts["Class probability"].MeasuredValueSequence[0].NumericValue
            finding = texts["Finding"].ConceptCodeSequence[0].CodeMeaning
            area = texts["Area"].MeasuredValueSequence[0].NumericValue
            [image] = [c for c in group.ContentSequence if c.ValueType == "IMAGE"]
            ref = image.ReferencedSOPSequence[0]
            assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (uid, frame)
            found.append((frame, finding, round(float(probability), 4), round(float(area), 3)))
            assert float(probability) == pytest.approx(rec.confidence, abs=1e-6)
            assert {"normal": "Normal", "tumor": "Neoplasm"}[rec.predicted_class] == finding
            assert float(area) == pytest.approx(100 * rec.lesion.area_fraction, abs=1e-6)
    assert sorted(f[0] for f in found) == [1, 4, 7, 10]
    if shutil.which("dciodvfy"):  # the DICOM standard's own validator, where installed
        for path in [*segs, sr_path]:
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert "Error" not in out.stdout + out.stderr, out.stderr


@pytest.mark.slow
def test_an_object_that_cannot_be_described_is_an_error_record_and_the_run_goes_on(tmp_path):
    from liverscan.serving import PredictOptions, predict_files
    from test_dicom import write_dicom

    frame = np.asarray(Image.open(sorted(EXAMPLES.glob("*/*.jpg"))[0]).convert("L").resize((64, 48)))
    write_dicom(tmp_path / "bare.dcm", frame, "MONOCHROME2")  # no study or series UIDs: no SR can refer to it
    write_cine(tmp_path / "cine.dcm", n=3, hold=1)
    records = []
    summary = predict_files(
        [str(tmp_path / "bare.dcm"), str(tmp_path / "cine.dcm")],
        PredictOptions(dicom_sr=tmp_path / "sr"),
        on_record=records.append,
    )
    assert summary.failed == 1 and records[0].error.startswith("no DICOM result written (")
    assert all(r.ok for r in records[1:]) and len(list((tmp_path / "sr").glob("cine-*-sr.dcm"))) == 1
