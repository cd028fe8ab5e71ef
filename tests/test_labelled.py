"""Evaluating on labelled images that were not prepared (folders, a CSV): the run's own splits stay in charge."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_helpers import runner
from conftest import class_image
from liverscan.faces.cli import app


@pytest.mark.slow
def test_operating_point_with_unprepared_data_is_fitted_on_the_runs_validation_split(probe_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_run["run"], run)
    folders = tmp_path / "external"
    for ci, cls in enumerate(("normal", "fatty", "tumor")):
        (folders / cls).mkdir(parents=True)
        for k in range(4):  # new images: copies of the run's own would be left out as seen
            class_image(ci, seed=6000 + 10 * ci + k).save(folders / cls / f"{cls}_{k}.png")
    r = runner.invoke(
        app,
        ["evaluate", str(run), "--data", str(folders), "--operating-point", "tumor>=0.9", "-q"]
        + ["--set", "eval.bootstrap=0"],
    )
    assert r.exit_code == 0, r.output
    fitted_on = json.loads((run / "model_card.json").read_text())["operating_point"]["fitted_on"]
    assert str(folders) not in fitted_on["data"] and "val" in fitted_on["data"]
