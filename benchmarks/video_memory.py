"""Peak memory of predicting a short and a long loop: decoding streams, so the long one costs no more.

Makes two made-up loops of each kind from the sample images (each image slowly panned, 320x240): a short
one (``--short`` seconds) and a long one (``--long`` seconds, ten minutes by default), as a video (H.264,
25 frames a second) and as an ultrasound DICOM cine (JPEG baseline, YBR_FULL_422, 4 frames a second: 40 and
2,400 frames); then runs ``predict`` on each — default model, guard, lesion head, one study per loop, records
and the study written to JSON Lines — in a fresh process per run, and prints the median peak resident memory
(VmHWM), time and record count of ``--repeats`` runs side by side, beside what the loop's frames take
decoded all at once.

    python benchmarks/video_memory.py [--repeats 3] [--short 10] [--long 600] [--only video|cine]
    python benchmarks/video_memory.py --smoke     # 2 s and 8 s loops, one run: checks that it runs

Needs ``liverscan[video]`` (PyAV) and ``liverscan[dicom]``.  A run that fails stops the benchmark with its exit
code and error output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"

CHILD = r"""
import json, resource, sys, time
from liverscan.serving import PredictOptions, predict_files
video, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
s = predict_files([video], PredictOptions(group_by="object"), output=out + ".jsonl", study_output=out + "-s.jsonl",
                  overwrite=True)
seconds = time.perf_counter() - t0
try:  # VmHWM is this program's own peak
    peak_mb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
except OSError:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak_mb, "seconds": seconds, "records": s.records, "studies": len(s.studies or [])}))
"""


#: frames a second of the made-up DICOM cine (the default sampling reads every one of them)
CINE_FPS = 4
#: width and height of the made-up loops' frames
SIZE = (320, 240)


def loop_frames(seconds: float, fps: int, size: tuple[int, int]):
    """RGB frames of the sample images, each shown for two seconds while it pans a pixel per frame."""
    import numpy as np
    from PIL import Image

    w, h = size
    images = [np.asarray(Image.open(p).convert("RGB").resize((w + 64, h))) for p in sorted(EXAMPLES.glob("*/*.jpg"))]
    for i in range(int(seconds * fps)):
        image, shift = images[(i // (2 * fps)) % len(images)], i % (2 * fps) % 64
        yield np.ascontiguousarray(image[:, shift : shift + w])


def make_loop(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = SIZE) -> Path:
    """An H.264 loop of :func:`loop_frames`."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for pixels in loop_frames(seconds, fps, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_cine(path: Path, seconds: float, fps: int = CINE_FPS, size: tuple[int, int] = SIZE) -> Path:
    """An Ultrasound Multi-frame Image of :func:`loop_frames`: JPEG baseline (YBR_FULL_422) with a frame time."""
    import io

    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.tag import Tag
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    frames = []
    for pixels in loop_frames(seconds, fps, size):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90, subsampling=1)  # 4:2:2
        frames.append(buf.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), JPEGBaseline8Bit
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = size[1], size[0], 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = len(frames), 1000.0 / fps, Tag("FrameTime")
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(path, enforce_file_format=True)
    return path


def run_once(video: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(video), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--short", type=float, default=10.0, help="seconds of the short loop")
    ap.add_argument("--long", type=float, default=600.0, help="seconds of the long loop")
    ap.add_argument("--only", choices=("video", "cine"), help="one kind of loop (default: both)")
    ap.add_argument("--smoke", action="store_true", help="2 s and 8 s loops, one run each")
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.short, args.long = 1, 2.0, 8.0
    makers = {"video": (make_loop, ".mp4", 25), "cine": (make_cine, ".dcm", CINE_FPS)}
    kinds = [args.only] if args.only else list(makers)
    seconds = {"short": args.short, "long": args.long}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for kind in kinds:
            make, suffix, fps = makers[kind]
            for name, length in seconds.items():
                loop = make(folder / f"{kind}-{name}{suffix}", length)
                runs = [run_once(loop, folder / f"{kind}-{name}-{k}") for k in range(args.repeats)]
                rows[kind, name] = (
                    statistics.median(r["peak_mb"] for r in runs),
                    statistics.median(r["seconds"] for r in runs),
                    runs[0]["records"],
                    runs[0]["studies"],
                    int(length * fps) * SIZE[0] * SIZE[1] * 3 / 1e6,  # every frame decoded at once (RGB)
                    loop.stat().st_size / 1e6,
                )
                loop.unlink()
    print(
        f"{'loop':<6} {'length':<6} {'s':>5} {'file MB':>8} {'all decoded MB':>15} {'records':>8} {'studies':>8} "
        f"{'peak MB':>8} {'time s':>7}"
    )
    for (kind, name), (peak, secs, records, studies, decoded, size) in rows.items():
        print(
            f"{kind:<6} {name:<6} {seconds[name]:>5.0f} {size:>8.1f} {decoded:>15.0f} {records:>8} {studies:>8} "
            f"{peak:>8.0f} {secs:>7.1f}"
        )
    for kind in kinds:
        ratio = rows[kind, "long"][0] / rows[kind, "short"][0]
        print(f"{kind}: peak memory, long / short: {ratio:.2f} (median of {args.repeats} runs each)")


if __name__ == "__main__":
    main()
