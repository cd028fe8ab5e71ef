from __future__ import annotations

import re
import sys

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


def test_a_damaged_frame_time_is_an_error_record_and_the_batch_goes_on(clf, tmp_path):
    from PIL import Image

    write_dicom(tmp_path / "cine.dcm", np.zeros((4, 32, 32), np.uint8), "MONOCHROME2", frames=4, FrameTime=125.5)
    data = (tmp_path / "cine.dcm").read_bytes()
    assert data.count(b"125.5 ") == 1
    (tmp_path / "cine.dcm").write_bytes(data.replace(b"125.5 ", b"abcd  "))  # FrameTime no longer a number
    noise = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "after.png")
    cine, png = clf.predict([str(tmp_path / "cine.dcm"), str(tmp_path / "after.png")], batch_size=8)
    assert cine.error == "FrameTime 'abcd' is not a number"
    assert png.path.endswith("after.png") and png.ok and png.predicted_class in clf.classes


@pytest.mark.parametrize("missing", ["pydicom", "pydicom.pixels"])  # not installed; before pydicom 3
def test_without_pydicom_3_the_error_names_the_extra(tmp_path, monkeypatch, missing):
    from liverscan.serving.inputs import load_input

    write_dicom(tmp_path / "one.dcm", np.zeros((8, 8), np.uint8), "MONOCHROME2")
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # an import of it or of any of its modules fails
    with pytest.raises(ImageDecodeError, match=re.escape("pip install 'liverscan[dicom]'")):
        read_dicom(tmp_path / "one.dcm", 8)
    [(rec, arr)] = load_input(str(tmp_path / "one.dcm"), 8)
    assert arr is None and rec.error.endswith("pip install 'liverscan[dicom]'")


def test_a_negative_frame_count_is_an_error_record(tmp_path):
    from liverscan.serving.inputs import load_input

    frames = np.zeros((2, 8, 8), np.uint8)
    write_dicom(tmp_path / "neg.dcm", frames, "MONOCHROME2", frames=2, NumberOfFrames=-3)
    [(rec, arr)] = list(load_input(str(tmp_path / "neg.dcm"), 8))
    assert arr is None and rec.error == "NumberOfFrames -3 is not a frame count"


def test_a_header_declaring_frames_it_lacks_fails_fast_in_small_memory(tmp_path):
    """2,000,000 frames declared, 4 there: the frames to read are picked lazily (no list of millions)."""
    import time
    import tracemalloc

    from liverscan.core.frames import Sampling

    frames = np.zeros((4, 32, 32), np.uint8)
    write_dicom(tmp_path / "huge.dcm", frames, "MONOCHROME2", frames=4, NumberOfFrames=2_000_000, FrameTime=100.0)
    for sampling, stop in ((Sampling(frame_step=1), 5), (Sampling(), 6)):  # every frame; 4 a second: 1, 4, 6
        start = time.perf_counter()
        tracemalloc.start()
        try:
            with pytest.raises(ImageDecodeError, match=f"stops at frame {stop} of 2000000 "):
                read_dicom(tmp_path / "huge.dcm", 32, sampling=sampling)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 5e6, f"peak {peak / 1e6:.1f} MB: the frames were listed up front"
        assert time.perf_counter() - start < 2.0


def _cine_bytes(tmp_path, n: int = 10) -> bytes:
    from loop_helpers import write_cine

    write_cine(tmp_path / "cine.dcm", n=n, hold=1)
    return (tmp_path / "cine.dcm").read_bytes()


def test_a_cut_off_cine_streams_its_frames_then_one_error_record(tmp_path):
    from liverscan.core.frames import Sampling
    from liverscan.serving.dicom import DicomFrames
    from liverscan.serving.inputs import load_bytes, load_input

    data = _cine_bytes(tmp_path, n=10)  # 120 x 100 frames of 12,000 bytes
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 4 * 12_000 - 6_000])  # frame 6 half there
    every = Sampling(frame_step=1)
    stream = load_input(str(tmp_path / "cut.dcm"), 32, sampling=every)
    assert isinstance(stream, DicomFrames)  # a multi-frame object streams, as a video does
    for pairs in (list(stream), load_bytes("cut.dcm", (tmp_path / "cut.dcm").read_bytes(), 32, sampling=every)):
        assert [r.frame for r, a in pairs if a is not None] == [1, 2, 3, 4, 5]
        assert all(r.ok and r.sop_instance_uid for r, _ in pairs[:5])
        [(last, arr)] = pairs[5:]
        assert arr is None and last.error.startswith("the pixel data stops at frame 6 of 10 (")
        assert "\n" not in last.error
    with pytest.raises(ImageDecodeError, match="stops at frame 6"):
        read_dicom(tmp_path / "cut.dcm", 32, sampling=every)


def test_a_cine_is_decoded_a_frame_at_a_time(tmp_path):
    import tracemalloc

    from liverscan.core.frames import Sampling
    from liverscan.serving.dicom import iter_dicom

    frames = np.random.default_rng(2).integers(0, 255, size=(240, 240, 320), dtype=np.uint8)  # 18 MB
    write_dicom(tmp_path / "long.dcm", frames, "MONOCHROME2", frames=240)
    tracemalloc.start()
    try:
        got = [f.frame for f in iter_dicom(tmp_path / "long.dcm", 64, sampling=Sampling(frame_step=20))]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == list(range(1, 241, 20))
    assert peak < frames.nbytes / 10, f"peak {peak / 1e6:.1f} MB: the pixel data was read whole"


def test_only_sampled_frames_are_decoded(tmp_path):
    """A JPEG cine whose second frame is damaged: read every other frame it is whole; read every frame it stops."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from liverscan.core.frames import Sampling

    frames = [np.full((48, 64), 40 * k, np.uint8) for k in range(4)]
    write_dicom(tmp_path / "j.dcm", np.stack(frames), "MONOCHROME2", frames=4)
    jpegs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    jpegs[1] = b"\xff\xd8" + b"\0" * 64 + b"\xff\xd9"
    ds = pydicom.dcmread(tmp_path / "j.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate(jpegs)
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "j.dcm")
    odd = read_dicom(tmp_path / "j.dcm", 16, sampling=Sampling(frame_step=2))
    assert [(f.frame, int(f.array[0, 0, 0])) for f in odd] == [(1, 0), (3, 80)]
    with pytest.raises(ImageDecodeError, match="stops at frame 2 of 4"):
        read_dicom(tmp_path / "j.dcm", 16)


def test_a_single_frame_object_is_read_whatever_the_loop_sampling(tmp_path):
    from liverscan.core.frames import Sampling

    write_dicom(tmp_path / "one.dcm", np.zeros((8, 8), np.uint8), "MONOCHROME2")
    assert [f.frame for f in read_dicom(tmp_path / "one.dcm", 8, sampling=Sampling(fps=2.0))] == [1]
    write_dicom(tmp_path / "untimed.dcm", np.zeros((3, 8, 8), np.uint8), "MONOCHROME2", frames=3)
    with pytest.raises(ImageDecodeError, match="--fps needs a frame time"):
        read_dicom(tmp_path / "untimed.dcm", 8, sampling=Sampling(fps=2.0))


def test_a_file_without_file_meta_information_is_a_clear_error_record(tmp_path):
    """A 128-byte preamble and 'DICM', then a data set with no file meta group: no Transfer Syntax UID to decode
    its pixel data by."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from liverscan.serving.inputs import load_input

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.PhotometricInterpretation, ds.SamplesPerPixel = 8, 8, "MONOCHROME2", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((8, 8), np.uint8).tobytes()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    (tmp_path / "nometa.dcm").write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue())
    reason = "DICOM file without file meta information (no Transfer Syntax UID)"
    with pytest.raises(ImageDecodeError, match=re.escape(reason)):
        read_dicom(tmp_path / "nometa.dcm", 8)
    [(rec, arr)] = list(load_input(str(tmp_path / "nometa.dcm"), 8))
    assert arr is None and rec.error == reason


@pytest.mark.parametrize(
    ("tag", "number", "stored", "damaged", "reason"),
    [
        ("FrameTime", 125.5, b"125.5 ", b"abc   ", "FrameTime 'abc' is not a number"),
        (
            "FrameTimeVector",
            [0.0, 40.0, 40.0],
            b"0.0\\40.0\\40.0",
            b"0.0\\abcd\\40.0",
            "FrameTimeVector 'abcd' is not a number",
        ),
    ],
)
def test_a_frame_time_that_is_not_a_number_is_a_clear_error_record(tmp_path, tag, number, stored, damaged, reason):
    from liverscan.serving.inputs import load_input

    path = tmp_path / "cine.dcm"
    write_dicom(path, np.zeros((3, 8, 8), np.uint8), "MONOCHROME2", frames=3, **{tag: number})
    data = path.read_bytes()
    assert data.count(stored) == 1 and len(damaged) == len(stored)  # the same length: no offset moves
    path.write_bytes(data.replace(stored, damaged))
    [(rec, arr)] = list(load_input(str(path), 8))
    assert arr is None and rec.error == reason
