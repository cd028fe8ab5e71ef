"""Advice in errors and warnings names commands that work, for the case at hand."""

from __future__ import annotations

import json

from cli_helpers import one_line_error, runner
from conftest import class_image
from liverscan.faces.cli import app


def test_operating_point_of_the_default_model_points_to_evaluating_a_run():
    text = one_line_error(runner.invoke(app, ["predict", "examples/images", "--use-operating-point"]), "default model")
    assert "site-packages" not in text and "liverscan evaluate RUN --fit-operating-point" in text


def test_unmapped_folder_points_to_prepare_map(probe_run, tmp_path):
    folders = tmp_path / "folders"
    (folders / "doppler").mkdir(parents=True)
    class_image(2, 1).save(folders / "doppler" / "a.png")
    text = one_line_error(runner.invoke(app, ["evaluate", str(probe_run["run"]), "--data", str(folders)]), "'doppler'")
    assert "liverscan prepare --map" in text and "Map them with --map" not in text


def test_grouping_warning_names_patients_not_near_duplicates(tmp_path):
    rows = ["path,label,patient"]
    for p in range(4):
        for f in range(3):
            name = f"p{p}_{f}.png"
            class_image(p % 2, 10 * p + f).save(tmp_path / name)
            rows.append(f"{name},{'normal' if p % 2 == 0 else 'tumor'},patient{p}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    r = runner.invoke(app, ["prepare", str(tmp_path / "labels.csv"), "-o", str(tmp_path / "prep")])
    assert r.exit_code == 0, r.output
    warnings = json.loads((tmp_path / "prep" / "summary.json").read_text())["warnings"]
    assert any(w.startswith("groups: 12 images in 4 groups") and "patients" in w for w in warnings), warnings
    assert not any(w.startswith("near-duplicates: 12") for w in warnings), warnings
