from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "reproduce.py"


def _module():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fails_with_one_line_without_shared_data(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--shared", str(tmp_path), "--check"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 3  # nothing was reproduced: never reported as success
    assert out.stderr.startswith("error: nothing reproduced") and "not found" in out.stderr


def test_floors_are_below_measured_values_and_check_catches_regressions():
    mod = _module()
    floors = json.loads(mod.FLOORS.read_text())
    for name, metrics in floors["experiments"].items():
        assert name in mod.EXPERIMENTS
        for key, floor in metrics.items():
            assert floor < floors["measured"][name][key]
    good = {name: dict(values) for name, values in floors["measured"].items()}
    assert mod.check(good) == []
    bad = {name: dict(values) for name, values in floors["measured"].items()}
    bad["xu-tumor-vs-normal"]["accuracy"] = 0.5
    failures = mod.check(bad)
    assert len(failures) == 1 and "xu-tumor-vs-normal: accuracy" in failures[0]


def test_reproduction_without_data_fails_and_stops_the_chain(tmp_path):
    chain = (
        f"{sys.executable} examples/reproduce.py --shared {tmp_path} --out {tmp_path / 'r'} && "
        f"{sys.executable} examples/ship_default_model.py {tmp_path / 'r' / 'xu-tumor-vs-normal' / 'run'}"
    )
    r = subprocess.run(chain, shell=True, capture_output=True, text=True, timeout=180)
    assert r.returncode == 3 and "nothing reproduced" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "examples/ship_default_model.py", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
