"""Shared fixtures - small datasets and tiny runs the tests make themselves - and the session's checks: no
process a test started may outlive the run, and no test of the fast tier (not marked ``slow``) may take longer
than ``LIVERSCAN_TEST_TIME_LIMIT`` seconds (8 by default; 0 turns the check off)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# every process the tests start inherits this mark, so the session can check that none outlives it
SESSION_MARK = f"LIVERSCAN_TEST_SESSION={os.getpid()}"
os.environ["LIVERSCAN_TEST_SESSION"] = str(os.getpid())


def _processes_started_by_this_session() -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if SESSION_MARK.encode() in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "resource_tracker import main" in cmdline:  # multiprocessing's / joblib's helper: ends with pytest
                    continue
                found.append(f"{proc.name}: {cmdline[:120]}")
        except OSError:  # gone, or a zombie
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a fast test went over the time limit, or when a server or any other process started
    by a test is still running."""
    if _over_time_limit:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not Path("/proc/self/environ").exists():
        return
    import time

    deadline = time.monotonic() + 10
    while (left := _processes_started_by_this_session()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        print("\nprocesses started by the tests are still running:\n  " + "\n  ".join(left))
        session.exitstatus = 1


def noise_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A random-texture image; different seeds give perceptually different images."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    img = Image.fromarray(base, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-10, 10, size=(size, size))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    return img.convert(mode)


def class_image(cls_index: int, seed: int, size: int = 48) -> Image.Image:
    """A separable synthetic 'ultrasound': class 0 dark, 1 bright, 2 mid-grey with coarse checkers."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    if cls_index == 0:
        pattern = 35 + 20 * (np.sin(y / 3.0) > 0)
    elif cls_index == 1:
        pattern = 200 + 30 * (np.sin(x / 3.0) > 0)
    else:
        pattern = 70 + 110 * (((x // 12) + (y // 12)) % 2)
    arr = pattern + rng.normal(0, 8, size=(size, size))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def near_duplicate(img: Image.Image, seed: int) -> Image.Image:
    """Same image with slight noise and brightness change (a neighbouring frame)."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img).astype(np.int16) + 3 + rng.integers(-2, 3, size=np.asarray(img).shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode=img.mode)


def write_corrupt_files(folder: Path) -> dict[str, str]:
    """Corrupt / truncated / empty / non-image files; returns name -> expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_tmp.jpg"
    noise_image(999, 96).save(good, quality=90)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return {"truncated.jpg": "", "empty.png": "empty", "notes.jpg": "not a recognised image", "garbage.png": ""}


@pytest.fixture
def two_source_dataset(tmp_path: Path) -> dict:
    """Two sources, five categories, corrupt files, duplicates and a label conflict.

    Source A (folder): Normal, Steatosis, Benign, Malignant
    Source B (CSV with patient column): normal, fatty, hcc
    """
    root = tmp_path / "data"
    a = root / "siteA"
    cats_a = {"Normal": 0, "Steatosis": 100, "Benign": 200, "Malignant": 300}
    for cat, base in cats_a.items():
        (a / cat).mkdir(parents=True)
        for k in range(12):
            noise_image(base + k).save(a / cat / f"img{k:02d}.png")
    # near-duplicates of Normal/img00 (frames of one scan)
    ref = Image.open(a / "Normal" / "img00.png").convert("RGB")
    near_duplicate(ref, 1).save(a / "Normal" / "img00_frame2.png")
    near_duplicate(ref, 2).save(a / "Normal" / "img00_frame3.png")
    # exact duplicate inside the same class
    shutil.copy(a / "Benign" / "img01.png", a / "Benign" / "copy_of_img01.png")
    # same image under two labels -> conflict
    shutil.copy(a / "Malignant" / "img02.png", a / "Normal" / "mislabelled.png")
    # corrupt files in a category folder
    corrupt = write_corrupt_files(a / "Steatosis")
    # a non-image file that must be ignored, not rejected
    (a / "Benign" / "annotation.json").write_text("{}")

    b = root / "siteB"
    (b / "imgs").mkdir(parents=True)
    rows = []
    cats_b = {"normal": 400, "fatty": 500, "hcc": 600}
    for cat, base in cats_b.items():
        for k in range(10):
            name = f"imgs/{cat}_{k:02d}.png"
            noise_image(base + k).save(b / name)
            rows.append({"file": name, "patient": f"p{cat}{k // 2}", "label": cat})
    # exact duplicate across sources (same class: fatty vs Steatosis)
    shutil.copy(a / "Steatosis" / "img03.png", b / "imgs" / "dup_from_a.png")
    rows.append({"file": "imgs/dup_from_a.png", "patient": "pdup", "label": "fatty"})
    with open(b / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient", "label"])
        w.writeheader()
        w.writerows(rows)
    return {"root": root, "a": a, "b": b, "csv": b / "labels.csv", "corrupt": corrupt}


@pytest.fixture
def separable_dataset(tmp_path: Path) -> Path:
    """Three classes of easily separable synthetic images, one folder per class."""
    root = tmp_path / "sep"
    for ci, cat in enumerate(["normal", "fatty", "tumor"]):
        (root / cat).mkdir(parents=True)
        for k in range(24):
            class_image(ci, seed=1000 * ci + k).save(root / cat / f"{cat}_{k:02d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def _keras_imported():
    """Import Keras (and TensorFlow) once, before the first test: a session's cost, not one test's time."""
    from liverscan.core.keras_env import import_keras

    import_keras().ops.convert_to_tensor(0.0)


# ------------------------------------------------------------------ shared tiny runs (built once per session)

#: a short C grid for the linear probe in tests whose subject is not the choice of C (the full grid's large-C
#: fits dominate the run time on 1280 features)
SHORT_C_GRID = np.logspace(-4, -2, 3)


def tiny_config(data: Path):
    """The configuration of the shared tiny runs: 32x32 inputs, random backbone, the paper's head, one view,
    two epochs, no exported runtime."""
    from liverscan.core.config import Config, SourceSpec

    cfg = Config()
    cfg.data.sources = [SourceSpec(str(data))]
    cfg.data.near_duplicate_distance = -1
    cfg.data.sweep_correlation = 2.0  # the synthetic images of a class look alike by design: no sweep linking
    cfg.preprocess.image_size = 32
    cfg.model.weights = "none"
    cfg.model.head = "mlp"
    cfg.train.views = 1
    cfg.train.epochs = 2
    cfg.train.export_runtime = "none"
    return cfg


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """Three separable classes, 20 images each, in class folders (``data``) and prepared at 32x32 (``prep``)."""
    from liverscan.preparation.prepare import prepare_dataset

    base = tmp_path_factory.mktemp("tinydata")
    data = base / "data"
    for ci, cat in enumerate(["normal", "fatty", "tumor"]):
        (data / cat).mkdir(parents=True)
        for k in range(20):
            class_image(ci, seed=1000 * ci + k).save(data / cat / f"{cat}_{k:02d}.png")
    prepare_dataset(tiny_config(data), base / "prep")
    return {"data": data, "prep": base / "prep", "base": base}


def _tiny_train(tiny_data: dict, run: Path, head: str) -> dict:
    from liverscan.core import probe
    from liverscan.core.config import load_config
    from liverscan.training.train import train_run

    cfg = load_config(tiny_data["prep"] / "config.yaml")
    cfg.model.head = head
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "C_GRID", SHORT_C_GRID)
        train_run(cfg, tiny_data["prep"], run)
    return {**tiny_data, "run": run}


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> dict:
    """A trained run of the paper's head (two epochs on ``tiny_data``): for tests that need what training
    gives - epochs, history, curves, the mlp head, a baseline to compare with. Read-only: copy it to change it."""
    return _tiny_train(tiny_data, tmp_path_factory.mktemp("tinyrun") / "run", "mlp")


@pytest.fixture(scope="session")
def probe_run(tiny_data, tmp_path_factory) -> dict:
    """A run whose head is the linear probe, set in closed form on ``tiny_data``'s features (no epochs, and
    ``evaluate`` reuses it as its own baseline): for tests that only need a working run - predict, evaluate,
    export, guard, damaged files. Same keys (and data) as ``tiny_run``; read-only: copy it to change it."""
    return _tiny_train(tiny_data, tmp_path_factory.mktemp("proberun") / "run", "linear")


@pytest.fixture(scope="session")
def evaluated_tiny_run(tiny_run, tmp_path_factory) -> dict:
    """A copy of ``tiny_run`` evaluated once on its test split with an operating point ("balanced", 30
    resamples): ``run`` and ``result``. Read-only: copy the run to change it."""
    from liverscan.core import probe
    from liverscan.evaluation import evaluate

    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(tiny_run["run"], run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "C_GRID", SHORT_C_GRID)  # the baseline's probe
        result = evaluate(run, operating_point="balanced", bootstrap=30)
    return {"run": run, "result": result}


@pytest.fixture
def short_c_grid(monkeypatch):
    """The linear probe tries three values of C instead of nine."""
    from liverscan.core import probe

    monkeypatch.setattr(probe, "C_GRID", SHORT_C_GRID)


# ------------------------------------------------------------------ the time limit of the fast tier

TIME_LIMIT_VAR = "LIVERSCAN_TEST_TIME_LIMIT"
DEFAULT_TIME_LIMIT = 8.0
_over_time_limit: list[str] = []


def time_limit() -> float:
    """Seconds an unmarked test's call may take (``LIVERSCAN_TEST_TIME_LIMIT``; 0 turns the check off)."""
    value = os.environ.get(TIME_LIMIT_VAR, "").strip()
    try:
        return float(value) if value else DEFAULT_TIME_LIMIT
    except ValueError:
        raise pytest.UsageError(f"{TIME_LIMIT_VAR}={value!r} is not a number of seconds") from None


def pytest_configure(config):
    time_limit()  # a malformed value stops the run at once


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A passing test of the fast tier whose call took longer than the limit fails, with how to fix it."""
    outcome = yield
    report = outcome.get_result()
    limit = time_limit()
    if (
        call.when != "call"
        or limit <= 0
        or item.get_closest_marker("slow") is not None
        or not report.passed
        or hasattr(report, "wasxfail")
        or call.duration <= limit
    ):
        return
    message = (
        f"{item.nodeid} took {call.duration:.1f} s, over the {limit:g} s limit of the fast test tier: "
        f"speed it up (smaller images, fewer of them, a shared session fixture) or mark it "
        f"@pytest.mark.slow (limit: {TIME_LIMIT_VAR}, 0 turns the check off)"
    )
    _over_time_limit.append(message)
    report.outcome = "failed"
    report.longrepr = f"too slow for the fast tier: {message}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _over_time_limit:
        terminalreporter.section("tests over the fast tier's time limit", sep="=", red=True, bold=True)
        for message in _over_time_limit:
            terminalreporter.line(message)
