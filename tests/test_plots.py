from __future__ import annotations

import subprocess
import sys


def test_figures_leave_the_users_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); "
        "from liverscan.core.plots import confusion_figure; "
        f"confusion_figure([[3, 1], [0, 4]], ['a', 'b'], r'{tmp_path / 'cm.png'}'); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
