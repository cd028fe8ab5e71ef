from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from liverscan.core.errors import ImageDecodeError  # noqa: E402
from liverscan.serving.dicom import is_dicom_path, read_dicom  # noqa: E402


def write_dicom(path, pixels: np.ndarray, photometric: str, frames: int = 1, bits: int = 8, **extra):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.Modality = "US"
    ds.Rows, ds.Columns = (
        pixels.shape[-3:-1]
        if pixels.ndim >= 3 and photometric != "MONOCHROME2" and photometric != "MONOCHROME1"
        else pixels.shape[-2:]
    )
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL") else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def test_monochrome2_and_monochrome1(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    uid = write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2")
    (f,) = read_dicom(tmp_path / "m2.dcm", size=64)
    assert f.sop_instance_uid == uid and f.frame == 1 and f.tags == {}
    np.testing.assert_array_equal(f.array[..., 0], ramp)
    write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1")
    (g,) = read_dicom(tmp_path / "m1.dcm", size=64)
    np.testing.assert_array_equal(g.array[..., 0], 255 - ramp)


def test_16bit_scaled_by_bits_stored(tmp_path):
    px = np.full((32, 32), 4095, np.uint16)
    px[:16] = 0
    write_dicom(tmp_path / "d.dcm", px, "MONOCHROME2", bits=12)
    (f,) = read_dicom(tmp_path / "d.dcm", size=32)
    assert f.array[0, 0, 0] == 0 and f.array[-1, -1, 0] == 255


def test_multiframe_rgb_and_ybr(tmp_path):
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    for i in range(3):
        frames[i, ..., 0] = 80 * i
    write_dicom(tmp_path / "cine.dcm", frames, "RGB", frames=3)
    out = read_dicom(tmp_path / "cine.dcm", size=16)
    assert [f.frame for f in out] == [1, 2, 3]
    assert [int(f.array[0, 0, 0]) for f in out] == [0, 80, 160]
    ybr = np.zeros((16, 16, 3), np.uint8)
    ybr[..., 0], ybr[..., 1], ybr[..., 2] = 76, 85, 255  # pure red in YCbCr
    write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL")
    (f,) = read_dicom(tmp_path / "ybr.dcm", size=16)
    r, g, b = (int(v) for v in f.array[8, 8])
    assert r > 230 and g < 30 and b < 30


def test_no_patient_tags_unless_asked_and_detection(tmp_path):
    px = np.zeros((8, 8), np.uint8)
    write_dicom(tmp_path / "noext", px, "MONOCHROME2")
    assert is_dicom_path(tmp_path / "noext")
    (f,) = read_dicom(tmp_path / "noext", size=8)
    assert "SECRET-123" not in repr(f.tags)
    (g,) = read_dicom(tmp_path / "noext", size=8, include_tags=("PatientID",))
    assert g.tags == {"PatientID": "SECRET-123"}


def test_broken_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(ImageDecodeError, match="DICOM"):
        read_dicom(tmp_path / "x.dcm")


@pytest.fixture(scope="module")
def clf(probe_run):
    from liverscan.serving.predict import Classifier

    return Classifier.load(probe_run["run"])


def test_dicom_through_classifier(clf, tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32), dtype=np.uint8)
    uid = write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME2", frames=2)
    recs = clf.predict([str(tmp_path / "cine.dcm")])
    assert [(r.frame, r.sop_instance_uid) for r in recs] == [(1, uid), (2, uid)]
    assert all(r.ok for r in recs)


def test_explain_keeps_frames_and_errors_aligned(clf, tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, size=(3, 32, 32), dtype=np.uint8)
    write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME2", frames=3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = clf.explain([str(tmp_path / "bad.png"), str(tmp_path / "cine.dcm")])
    assert [(r.path.rsplit("/", 1)[-1], r.frame) for r, _ in out] == [
        ("bad.png", None),
        ("cine.dcm", 1),
        ("cine.dcm", 2),
        ("cine.dcm", 3),
    ]
    assert out[0][0].error and out[0][1].max() == 0
    assert all(h.shape == (32, 32) and h.max() <= 1 for _, h in out[1:])
