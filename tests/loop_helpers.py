"""Made-up loops for tests: videos encoded on the fly from the sample images, and ultrasound cine DICOM objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def sample_frames(size: tuple[int, int] = (96, 80), mode: str = "RGB") -> list[np.ndarray]:
    """The sample images (xu-liver, held out of the shipped model's training) at ``size`` (width, height)."""
    return [np.asarray(Image.open(p).convert(mode).resize(size)) for p in sorted(EXAMPLES.glob("*/*.jpg"))]


def make_video(
    path: Path,
    n: int = 40,
    fps: int = 10,
    hold: int = 5,
    size: tuple[int, int] = (96, 80),
    start: int = 0,
    blank: range = range(0),
) -> Path:
    """An H.264 video (index at the front, so a cut-off copy still opens) of ``n`` frames: each sample image
    from the ``start``-th on held for ``hold`` frames (the held copies are frozen repeats); the frames (0-based)
    in ``blank`` are black."""
    import av

    images = sample_frames(size)
    options = {"movflags": "faststart"} if path.suffix == ".mp4" else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            pixels = images[(start + i // hold) % len(images)]
            frame = av.VideoFrame.from_ndarray(pixels * 0 if i in blank else pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_in_half(path: Path, target: Path) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def write_cine(path: Path, n: int = 12, hold: int = 3, frame_time_ms: float = 100.0) -> str:
    """A US Multi-frame Image (MONOCHROME2) cine of ``n`` sample frames with a frame time; its SOP Instance UID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.tag import Tag
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    images = sample_frames((120, 100), "L")
    pixels = np.stack([images[(i // hold) % len(images)] for i in range(n)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P-77", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "S1", "A1", "20260101", "120000"
    ds.ReferringPhysicianName, ds.InstitutionName = "", "General Hospital"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "US", 1, 1, "maker"
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = n, frame_time_ms, Tag("FrameTime")
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)
