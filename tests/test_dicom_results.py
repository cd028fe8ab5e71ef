"""DICOM SEG and SR results for a multi-frame (cine) DICOM input, read back with pydicom and highdicom; a cine whose
frames span batches gives the same results as one batch."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

hd = pytest.importorskip("highdicom")

from liverscan.serving.records import Prediction  # noqa: E402
from loop_helpers import EXAMPLES, write_cine  # noqa: E402

MODEL = ("liverscan test", "0.0")


def _records(path, uid: str, frames) -> list[Prediction]:
    """Predicted records of the given frames of a DICOM object, as the model fills them."""
    return [
        Prediction(
            str(path),
            predicted_class="tumor" if k % 2 else "normal",
            confidence=0.5 + k / 100,
            decision="tumor" if k % 2 else "normal",
            in_distribution=True,
            ood_score=k / 10,
            frame=k,
            sop_instance_uid=uid,
        )
        for k in frames
    ]


def _findings(sr_path) -> list[tuple[int, str, float]]:
    """(frame, finding, probability) of each measurement group of an SR."""
    sr = hd.sr.srread(sr_path)
    out = []
    for container in (item for item in sr.ContentSequence if item.ValueType == "CONTAINER"):
        for group in container.ContentSequence:
            texts = {c.ConceptNameCodeSequence[0].CodeMeaning: c for c in group.ContentSequence}
            out.append(
                (
                    int(texts["Tracking Identifier"].TextValue.split()[-1]),
                    texts["Finding"].ConceptCodeSequence[0].CodeMeaning,
                    round(float(texts["Class probability"].MeasuredValueSequence[0].NumericValue), 4),
                )
            )
    return out


def test_an_sr_waits_for_the_last_frame_of_a_cine_whose_frames_span_batches(tmp_path):
    from liverscan.serving.dicom_results import DicomResultWriter

    uid = write_cine(tmp_path / "cine.dcm", n=6, hold=1)
    arr = np.zeros((8, 8, 3), np.uint8)
    items = [(0, rec, arr) for rec in _records(tmp_path / "cine.dcm", uid, range(1, 7))]
    after = (1, Prediction(str(tmp_path / "next.png")), arr)  # the next input
    split = DicomResultWriter(None, tmp_path / "split", MODEL)
    assert split.batch(items[:2], None, keep_arrays=False) == []
    assert split.batch(items[2:4], None, keep_arrays=False) == []
    assert not list((tmp_path / "split").glob("*"))  # held: the SR is not written before the last frame
    out = split.batch(items[4:] + [after], None)
    assert [k for k, _, _ in out] == [0] * 6 + [1] and [r for _, r, _ in out[:6]] == [r for _, r, _ in items]
    assert [a is None for _, _, a in out] == [True] * 4 + [False] * 3  # kept without arrays when asked
    assert split.close() == []

    whole = DicomResultWriter(None, tmp_path / "whole", MODEL)
    assert whole.batch([*items, after], None) == [*items, after] and whole.close() == []
    [split_sr], [whole_sr] = (list((tmp_path / d).glob("cine-*-sr.dcm")) for d in ("split", "whole"))
    assert (
        _findings(split_sr)
        == _findings(whole_sr)
        == [(k, "Neoplasm" if k % 2 else "Normal", 0.5 + k / 100) for k in range(1, 7)]
    )


def test_an_sr_that_cannot_be_made_marks_every_record_of_its_object_across_batches(tmp_path):
    from liverscan.serving.dicom_results import DicomResultWriter
    from test_dicom import write_dicom

    uid = write_dicom(tmp_path / "bare.dcm", np.zeros((3, 48, 64), np.uint8), "MONOCHROME2", frames=3)  # no study
    arr = np.zeros((8, 8, 3), np.uint8)
    recs = _records(tmp_path / "bare.dcm", uid, (1, 2, 3))
    writer = DicomResultWriter(None, tmp_path / "sr", MODEL)
    assert writer.batch([(0, recs[0], arr)], None) == []
    assert writer.batch([(0, r, arr) for r in recs[1:]], None) == []
    assert [r for _, r, _ in writer.close()] == recs
    assert all((r.error or "").startswith("no DICOM result written (") for r in recs)
    assert not list((tmp_path / "sr").glob("*"))  # nothing written (the folder is made for the first object)


def test_a_frame_whose_seg_cannot_be_made_gets_the_error_and_is_left_out_of_the_sr(tmp_path):
    from liverscan.serving.dicom_results import DicomResultWriter

    uid = write_cine(tmp_path / "cine.dcm", n=3, hold=1)
    recs = _records(tmp_path / "cine.dcm", uid, (1, 2, 3))
    lesion = np.zeros((8, 8), np.float32)
    lesion[2:6, 2:6] = 0.9
    maps = [lesion, np.full((4, 6), 0.9, np.float32), np.zeros((8, 8), np.float32)]  # frame 2's is not square
    writer = DicomResultWriter(tmp_path / "seg", tmp_path / "sr", MODEL)
    for rec, lesion_map in zip(recs, maps):
        writer.add(rec, lesion_map)
    writer.flush()
    assert recs[1].error == "no DICOM result written (ValueError: a lesion map must be square (S, S), not (4, 6))"
    assert recs[0].error is None and recs[2].error is None
    segs = {int(p.name.split("-frame")[1].split("-")[0]): hd.seg.segread(p) for p in (tmp_path / "seg").iterdir()}
    assert sorted(segs) == [1, 3]
    assert segs[1].pixel_array.any() and not segs[3].pixel_array.any()  # each frame's own mask
    [sr] = list((tmp_path / "sr").iterdir())
    assert [frame for frame, _, _ in _findings(sr)] == [1, 3]


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


@pytest.mark.slow
def test_a_cine_split_across_batches_gives_the_same_records_seg_and_sr(tmp_path):
    from liverscan.serving import PredictOptions, predict_files

    write_cine(tmp_path / "cine.dcm", n=8, hold=2, frame_time_ms=100.0)
    runs = {}
    for batch in (32, 3):  # one batch, and batches of 3, 3 and 2 frames
        out = tmp_path / f"b{batch}"
        options = PredictOptions(frame_step=1, batch_size=batch, dicom_seg=out / "seg", dicom_sr=out / "sr")
        records: list[Prediction] = []
        predict_files([str(tmp_path / "cine.dcm")], options, on_record=records.append)
        segs = {
            int(p.name.split("-frame")[1].split("-")[0]): hd.seg.segread(p).pixel_array
            for p in (out / "seg").glob("*.dcm")
        }
        [sr] = list((out / "sr").glob("*.dcm"))
        runs[batch] = (records, segs, _findings(sr))
    (one, one_segs, one_sr), (split, split_segs, split_sr) = runs[32], runs[3]
    assert [r.frame for r in one] == [r.frame for r in split] == list(range(1, 9)) and all(r.ok for r in split)
    for a, b in zip(one, split):
        assert (a.predicted_class, a.decision, a.in_distribution, a.duplicate_of) == (
            b.predicted_class, b.decision, b.in_distribution, b.duplicate_of,
        )  # fmt: skip
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
    assert sorted(one_segs) == sorted(split_segs) == list(range(1, 9))
    assert all(np.array_equal(one_segs[k], split_segs[k]) for k in one_segs)
    assert [f[:2] for f in one_sr] == [f[:2] for f in split_sr] and len(split_sr) == 8


def test_dicom_results_asked_for_without_dicom_input_are_said_and_make_no_folder(tmp_path):
    """--dicom-seg / --dicom-sr with only JPEG input: nothing to write, and the run says so; no folder is made."""
    from typer.testing import CliRunner

    from liverscan.faces.cli import app

    seg, sr = tmp_path / "seg", tmp_path / "sr"
    args = ["predict", str(EXAMPLES / "Normal" / "xu-92.jpg"), "--dicom-seg", str(seg), "--dicom-sr", str(sr)]
    r = CliRunner().invoke(app, [*args, "-f", "csv"])
    assert r.exit_code == 0, r.output
    assert "note: no input was a DICOM object, so --dicom-seg and --dicom-sr wrote nothing" in " ".join(
        r.stderr.split()
    )
    assert not seg.exists() and not sr.exists()


def test_an_out_of_distribution_frame_gets_no_seg_and_no_lesion_area_in_its_sr(tmp_path):
    """The lesion map of a frame the guard found out of distribution is no finding: no SEG for it, and its SR
    measurement group carries no lesion area."""
    from liverscan.core.lesion import LesionRule
    from liverscan.serving.dicom_results import DicomResultWriter
    from liverscan.serving.lesion import find_lesion

    uid = write_cine(tmp_path / "cine.dcm", n=2, hold=1)
    recs = _records(tmp_path / "cine.dcm", uid, (1, 2))
    lesion = np.zeros((8, 8), np.float32)
    lesion[2:6, 2:6] = 0.9
    for rec in recs:
        rec.lesion = find_lesion(lesion, 120, 100, LesionRule())
    recs[1].decision, recs[1].in_distribution = "out_of_distribution", False
    recs[1].lesion = recs[1].lesion.withhold("out of distribution")
    writer = DicomResultWriter(tmp_path / "seg", tmp_path / "sr", MODEL)
    for rec in recs:
        writer.add(rec, lesion)
    writer.flush()
    assert recs[0].error is None and recs[1].error is None
    assert [int(p.name.split("-frame")[1].split("-")[0]) for p in (tmp_path / "seg").iterdir()] == [1]
    (sr_path,) = (tmp_path / "sr").iterdir()
    areas = []
    for container in (item for item in hd.sr.srread(sr_path).ContentSequence if item.ValueType == "CONTAINER"):
        for group in container.ContentSequence:
            areas.append(any(c.ConceptNameCodeSequence[0].CodeMeaning == "Area" for c in group.ContentSequence))
    assert areas == [True, False]
