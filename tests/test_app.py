"""The Streamlit app: AppTest for behaviour, and a real headless browser end to end."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli_helpers import as_from_a_terminal, edit_card  # noqa: E402
from liverscan.faces.cli import app as cli_app  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "src" / "liverscan" / "faces" / "app.py"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
ARTIFACTS = Path(os.environ.get("LIVERSCAN_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _app(monkeypatch, model: str = "") -> AppTest:
    monkeypatch.setenv("LIVERSCAN_APP_MODEL", model)
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _upload(at: AppTest, *paths: Path, extra: list[tuple] = ()) -> None:
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in paths] + list(extra)
    at.file_uploader[0].set_value(files if len(files) > 1 else files[0])
    at.run()
    assert not at.exception, at.exception


@pytest.mark.slow
def test_upload_shows_prediction_and_model_card(monkeypatch):
    at = _app(monkeypatch)
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "normal, tumor" in sidebar and "Operating point" in sidebar
    assert any("not a medical device" in w.value for w in at.sidebar.warning)
    img = EXAMPLES / "Malignant" / "xu-347.jpg"
    _upload(at, img)
    shown = " ".join(m.value for m in at.markdown)
    assert "Prediction: **tumor**" in shown
    at.toggle[0].set_value(True).run()  # Grad-CAM overlay
    assert not at.exception


def test_out_of_distribution_upload_shows_a_warning_not_a_class(monkeypatch):
    import io

    from PIL import Image

    from test_guard import screenshot

    buf = io.BytesIO()
    Image.fromarray(screenshot()).save(buf, format="PNG")
    at = _app(monkeypatch)
    _upload(at, extra=[("screenshot.png", buf.getvalue(), "image/png")])
    assert any("Out of distribution" in e.value for e in at.error)
    assert "out of distribution" in " ".join(m.value for m in at.markdown)


def test_corrupt_upload_gets_a_message_and_app_keeps_working(monkeypatch):
    at = _app(monkeypatch)
    good = EXAMPLES / "Normal" / "xu-92.jpg"
    _upload(at, good, extra=[("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")])
    errors = " ".join(e.value for e in at.error)
    assert "broken.png" in errors
    assert "Prediction: **" in " ".join(m.value for m in at.markdown)


def test_batch_table_and_csv_match_cli(monkeypatch, tmp_path):
    at = _app(monkeypatch)
    paths = sorted(EXAMPLES.rglob("*.jpg"))[:3]
    _upload(at, *paths)
    assert len(at.dataframe) == 1
    app_csv = at.session_state["results_csv"]
    # the CLI on the same files, named the same way, gives the same CSV content
    work = tmp_path / "w"
    work.mkdir()
    for p in paths:
        shutil.copy(p, work / p.name)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        r = CliRunner().invoke(cli_app, ["predict", *[p.name for p in paths], "--output", "x.csv", "-q"])
        assert r.exit_code == 0, r.output
        cli_rows = list(csv.DictReader(open("x.csv")))
    finally:
        os.chdir(cwd)
    app_rows = list(csv.DictReader(io.StringIO(app_csv)))
    key = lambda rows: sorted(rows, key=lambda row: row["path"])  # noqa: E731
    assert key(app_rows) == key(cli_rows)


def test_uploads_marked_as_one_study_get_one_aggregated_answer(monkeypatch, tmp_path):
    at = _app(monkeypatch)
    paths = sorted((EXAMPLES / "Malignant").glob("*.jpg"))[:2] + [EXAMPLES / "Normal" / "xu-92.jpg"]
    _upload(at, *paths, extra=[("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")])
    assert not any("Study answer" in m.value for m in at.markdown)
    at.toggle[1].set_value(True).run()
    assert not at.exception, at.exception
    shown = " ".join(m.value for m in at.markdown)
    assert "3 of 4 images used" in shown
    # the same answer as the command line's study of the same three images (mean rule)
    for p in paths:
        shutil.copy(p, tmp_path / p.name)
    r = CliRunner().invoke(cli_app, ["predict", str(tmp_path), "--group-by", "folder", "--format", "jsonl", "-q"])
    probs = [__import__("json").loads(line)["probabilities"]["tumor"] for line in r.stdout.splitlines()]
    mean = sum(probs) / len(probs)
    cls = "tumor" if mean >= 0.5 else "normal"
    assert f"Study answer: **{cls}** (confidence {max(mean, 1 - mean):.3f})" in shown
    assert any("needs review" in w.value for w in at.warning)  # a failed image


def test_app_and_cli_give_the_same_study_answer_under_a_patient_level_operating_point(monkeypatch, tmp_path):
    """A patient-level point decides studies with the aggregation it was fitted with, in the app as in predict."""
    import json

    from liverscan.serving import default_model_dir

    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    point = {
        "spec": "tumor>=0.99",
        "level": "group",
        "group_rule": "max",  # not the default mean: the app must adopt it as predict does
        "temperature": 1.7,
        "rule": {"type": "threshold", "class_index": 1, "class": "tumor", "threshold": 0.35},
        "description": "tumor when the most suspicious image's calibrated p(tumor) >= 0.35 (test rule)",
    }
    edit_card(model, lambda card: card.update(operating_point=point))
    paths = [EXAMPLES / "Normal" / "xu-92.jpg", EXAMPLES / "Benign" / "xu-40.jpg"]
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in paths:
        shutil.copy(p, scans / p.name)
    out = tmp_path / "s.json"
    args = ["predict", str(scans), "-m", str(model), "--use-operating-point", "--group-by", "folder", "-q"]
    r = CliRunner().invoke(cli_app, args + ["--study-output", str(out)])
    assert r.exit_code == 0, r.output
    (cli_study,) = json.loads(out.read_text())
    assert cli_study["rule"] == "max" and cli_study["decision_rule"] == "operating point tumor>=0.99"
    monkeypatch.setenv("LIVERSCAN_APP_OPERATING_POINT", "1")
    at = _app(monkeypatch, str(model))
    _upload(at, *paths)
    at.toggle[1].set_value(True).run()
    assert not at.exception, at.exception
    shown = " ".join(m.value for m in at.markdown)
    answer = f"Study answer: **{cli_study['predicted_class']}** (confidence {cli_study['confidence']:.3f})"
    assert answer in shown and "rule: max" in shown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _wait_until_serving(port: int, seconds: float = 90) -> None:
    """Wait for the Streamlit server on ``port`` to answer its health check; fail the test if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail("the app did not start")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_end_to_end_in_a_real_browser():
    playwright = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "liverscan", "app", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_serving(port)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector("input[type=file]", state="attached", timeout=90_000)
            page.set_input_files("input[type=file]", str(EXAMPLES / "Malignant" / "xu-347.jpg"))
            page.get_by_text("Prediction:").wait_for(timeout=90_000)
            assert "tumor" in page.get_by_text("Prediction:").inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app-upload.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    # `liverscan app` became the Streamlit server (exec), so stopping it left nothing listening
    left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count(f"--server.port {port}")]
    assert [_cmdline(p) for p in left] == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow  # a real Streamlit server: seconds to start
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_app_stopped_by_a_signal_exits_as_every_command_does(sig, code):
    """Streamlit exits 0 however it is stopped; `liverscan app` says how: 130 for Ctrl+C, 143 for SIGTERM."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "liverscan", "app", "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_terminal(),
    )
    try:
        _wait_until_serving(port)
        server.send_signal(sig)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == code, out
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_video_upload_shows_the_loop_as_one_study_with_its_frame_and_strip(monkeypatch, tmp_path):
    pytest.importorskip("av")
    from loop_helpers import make_video

    at = _app(monkeypatch)
    loop = make_video(tmp_path / "loop.mp4", n=30, fps=10, hold=5)
    at.file_uploader[0].set_value(("loop.mp4", loop.read_bytes(), "video/mp4"))
    at.run()
    assert not at.exception, at.exception
    assert any(h.value == "Video: loop.mp4" for h in at.header)
    shown = " ".join(m.value for m in at.markdown)
    assert "Study answer" in shown and "12 of 12 images used" in shown  # 3 s at 4 frames a second
    assert any("sampled frames" in t.value and "voted" in t.value for t in at.text)
    assert len(at.get("vega_lite_chart")) == 1  # the probabilities over time
    assert len(at.get("image")) == 1  # the most suspicious frame, with its outline
