"""Study-level prediction: grouping by each key, aggregation through the classifier, failed frames."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import edit_card, one_line_error
from conftest import class_image
from liverscan.core.errors import ConfigError
from liverscan.core.operating_point import OperatingPoint
from liverscan.faces.cli import app
from liverscan.serving import Classifier, Prediction
from liverscan.serving.records import study_columns
from liverscan.serving.studies import StudyAggregator, group_key

runner = CliRunner()
CLASSES = ["normal", "tumor"]
#: an operating point: tumor whenever its probability >= 0.2
LOW_TUMOUR_THRESHOLD = OperatingPoint(spec="tumor>=0.2", rule={"type": "threshold", "class_index": 1, "threshold": 0.2})


def rec(path: str, p_tumor: float | None, outside: bool = False, frame: int | None = None) -> Prediction:
    if p_tumor is None:
        return Prediction(path, error="corrupt image", frame=frame)
    return Prediction(
        path,
        predicted_class="tumor" if p_tumor >= 0.5 else "normal",
        probabilities={"normal": 1 - p_tumor, "tumor": p_tumor},
        in_distribution=not outside,
        frame=frame,
    )


def test_keys_folder_regex_column_object():
    r = rec("/data/patient7/visit2/img_003.png", 0.2)
    assert group_key("folder")(r) == "/data/patient7/visit2"
    assert group_key("object")(r) == r.path
    assert group_key(r"regex:(patient\d+)")(r) == "patient7"
    assert group_key(r"regex:nomatch(\d+)")(r) == r.path  # no match: its own group
    assert group_key("column:patient", {r.path: {"path": "x", "patient": "P-9"}})(r) == "P-9"
    with pytest.raises(ConfigError, match="no column 'study'"):
        group_key("column:study", {r.path: {"path": "x", "patient": "P-9"}})(r)
    for bad in ("regex:(", "patient", "column"):
        with pytest.raises(ConfigError):
            group_key(bad)


def test_aggregator_rules_ood_share_failed_frames_and_most_suspicious_frame():
    agg = StudyAggregator(CLASSES, group_key("folder"), "mean", review_confidence=0.55)
    for r in [
        rec("/a/1.png", 0.1),
        rec("/a/2.png", 0.3),
        rec("/a/3.png", 0.9),
        rec("/b/1.png", 0.2, outside=True),
        rec("/b/2.png", 0.4, outside=True),
        rec("/b/3.png", 0.6),
        rec("/c/1.png", None),
        rec("/d/1.png", None),
        rec("/d/2.png", 0.05),
    ]:
        agg.add(r)
    a, b, c, d = agg.studies()
    assert (a.group, a.n_frames, a.n_used, a.n_failed) == ("/a", 3, 3, 0)
    assert a.predicted_class == "normal" and a.probabilities["tumor"] == pytest.approx(1.3 / 3)
    assert a.most_suspicious_path == "/a/3.png" and a.needs_review is False
    # b: two of three frames outside -> the study is out of distribution (its probabilities: the frame inside)
    assert b.n_out_of_distribution == 2 and b.ood_share == pytest.approx(2 / 3, abs=1e-4) and b.n_voting == 1
    assert b.decision == "out_of_distribution" and b.needs_review and b.probabilities["tumor"] == pytest.approx(0.6)
    assert c.error and c.n_failed == 1 and c.predicted_class is None and c.needs_review
    assert d.n_failed == 1 and d.decision == "normal" and d.needs_review  # a failed frame needs review

    flag_any = StudyAggregator(CLASSES, group_key("folder"), "max")
    vote = StudyAggregator(CLASSES, group_key("folder"), "vote")
    for r in [rec("/a/1.png", 0.1), rec("/a/2.png", 0.3), rec("/a/3.png", 0.9)]:
        flag_any.add(r)
        vote.add(r)
    assert flag_any.studies()[0].decision == "tumor"  # any abnormal frame flags the study
    assert vote.studies()[0].probabilities == {"normal": pytest.approx(2 / 3), "tumor": pytest.approx(1 / 3)}


def test_decision_rule_of_the_classifier_decides_the_study():
    threshold_rule = StudyAggregator(CLASSES, group_key("folder"), operating_point=LOW_TUMOUR_THRESHOLD)
    threshold_rule.add(rec("/a/1.png", 0.25))
    assert threshold_rule.studies()[0].predicted_class == "tumor"


@pytest.mark.slow
def test_cli_group_by_folder_and_csv_column_with_failed_frames(tiny_run, tmp_path):
    root = tmp_path / "scans"
    for patient, cls in (("p1", "normal"), ("p2", "tumor")):
        (root / patient).mkdir(parents=True)
        for k in range(3):
            src = sorted((tiny_run["data"] / cls).glob("*.png"))[k]
            (root / patient / f"f{k}.png").write_bytes(src.read_bytes())
    (root / "p2" / "broken.png").write_bytes(b"not an image")
    run = str(tiny_run["run"])
    r = runner.invoke(
        app,
        ["predict", str(root), "-m", run, "--group-by", "folder", "--study-output", str(tmp_path / "s.csv")]
        + ["-o", str(tmp_path / "f.csv"), "-q"],
    )
    assert r.exit_code == 4, r.output  # one frame failed
    studies = {row["group"]: row for row in csv.DictReader(open(tmp_path / "s.csv"))}
    assert set(studies) == {str(root / "p1"), str(root / "p2")}
    p2 = studies[str(root / "p2")]
    assert (p2["n_frames"], p2["n_used"], p2["n_failed"], p2["needs_review"]) == ("4", "3", "1", "true")
    frames = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert {row["group"] for row in frames} == set(studies)
    used = [row for row in frames if row["group"] == str(root / "p2") and not row["error"]]
    used = [row for row in used if row["in_distribution"] != "false"] or used  # frames outside do not vote
    assert p2["n_voting"] == str(len(used))
    mean = {c: np.mean([float(row[f"p_{c}"]) for row in used]) for c in ("normal", "fatty", "tumor")}
    assert float(p2["p_tumor"]) == pytest.approx(mean["tumor"], abs=1e-6)

    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient"])
        for row in frames:
            w.writerow([row["path"], "P-" + row["path"].split("/")[-2][-1]])
    r = runner.invoke(app, ["predict", str(listing), "-m", run, "--group-by", "column:patient", "--format", "jsonl"])
    groups = {json.loads(line)["group"] for line in r.stdout.splitlines()}
    assert groups == {"P-1", "P-2"}


@pytest.mark.slow
def test_dicom_studies_series_and_cine_objects(tiny_run, tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    img = np.asarray(class_image(2, 1, size=32).convert("L"))
    cine = np.stack([img] * 4)
    write_dicom(tmp_path / "a1.dcm", img, "MONOCHROME2", StudyInstanceUID="1.2.3.1", SeriesInstanceUID="1.2.3.1.1")
    write_dicom(tmp_path / "a2.dcm", img, "MONOCHROME2", StudyInstanceUID="1.2.3.1", SeriesInstanceUID="1.2.3.1.2")
    write_dicom(
        tmp_path / "b.dcm", cine, "MONOCHROME2", frames=4, StudyInstanceUID="1.2.3.2", SeriesInstanceUID="1.2.3.2.1"
    )
    clf = Classifier.load(tiny_run["run"])

    def studies(spec: str):
        agg = clf.study_aggregator(group_key(spec))
        for r in clf.iter_predict([str(tmp_path / n) for n in ("a1.dcm", "a2.dcm", "b.dcm")]):
            agg.add(r)
        return {s.group: s.n_frames for s in agg.studies()}

    assert studies("study") == {"1.2.3.1": 2, "1.2.3.2": 4}
    assert studies("series") == {"1.2.3.1.1": 1, "1.2.3.1.2": 1, "1.2.3.2.1": 4}
    assert studies("object") == {str(tmp_path / "a1.dcm"): 1, str(tmp_path / "a2.dcm"): 1, str(tmp_path / "b.dcm"): 4}
    records = clf.predict([str(tmp_path / "b.dcm")])
    assert "study_instance_uid" not in records[0].to_dict()  # identifiers are not written by default


def test_vote_counts_the_frames_decisions_under_the_models_rule():
    agg = StudyAggregator(CLASSES, group_key("folder"), "vote", operating_point=LOW_TUMOUR_THRESHOLD)
    for k in range(3):
        agg.add(rec(f"/a/{k}.png", 0.3))
    (study,) = agg.studies()
    assert study.probabilities == {"normal": 0.0, "tumor": 1.0} and study.predicted_class == "tumor"


@pytest.mark.slow
def test_operating_point_and_explanations_reach_the_study(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    point = {
        "spec": "tumor>=0.99",
        "temperature": 1.0,
        "rule": {"type": "threshold", "class_index": 2, "class": "tumor", "threshold": 0.0},
        "description": "tumor whenever its probability >= 0 (test rule)",
    }
    edit_card(run, lambda card: card.update(operating_point=point))
    scans = tmp_path / "scans" / "p1"
    scans.mkdir(parents=True)
    for k, src in enumerate(sorted((tiny_run["data"] / "normal").glob("*.png"))[:3]):
        shutil.copy(src, scans / f"f{k}.png")
    r = runner.invoke(
        app,
        ["predict", str(scans.parent), "-m", str(run), "--use-operating-point", "--group-by", "folder", "-q"]
        + ["--explain", str(tmp_path / "cams"), "--study-output", str(tmp_path / "s.json"), "--no-ood"],
    )
    assert r.exit_code == 0, r.output
    (study,) = json.loads((tmp_path / "s.json").read_text())
    assert study["predicted_class"] == "tumor" and study["decision_rule"].startswith("operating point tumor>=0.99")
    assert study["explanation"] and Path(study["explanation"]).is_file()
    assert Path(study["most_suspicious_path"]).stem in Path(study["explanation"]).name


def test_vote_is_the_majority_of_the_frames_decisions_not_the_rule_applied_again():
    agg = StudyAggregator(CLASSES, group_key("folder"), "vote", operating_point=LOW_TUMOUR_THRESHOLD)
    for k, p in enumerate([0.3, 0.1, 0.1, 0.1, 0.1]):  # one frame of five flagged by the low threshold
        agg.add(rec(f"/a/{k}.png", p))
    (study,) = agg.studies()
    assert study.predicted_class == "normal" and study.probabilities["tumor"] == pytest.approx(0.2)


def test_grouping_by_a_column_needs_a_csv_path_list(tmp_path):
    """--group-by column:NAME with no CSV path list among the inputs would make one-image studies: a usage error."""
    class_image(0, 1).save(tmp_path / "a.png")
    r = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--group-by", "column:patient", "--no-lesion"])
    one_line_error(r, "reads a column of a CSV path list, and no input is one", code=2)


def test_the_share_of_out_of_distribution_frames_is_not_rounded():
    """2 of 52 frames out of distribution: ood_share is 2/52 (0.038462 in the CSV), not 0.0385 (0.038500)."""
    classes = ["normal", "tumor"]
    agg = StudyAggregator(classes, lambda rec: "s")
    for k in range(52):
        agg.add(Prediction(f"f{k}.png", probabilities={"normal": 0.9, "tumor": 0.1}, in_distribution=k >= 2))
    (study,) = agg.studies()
    assert study.ood_share == 2 / 52
    (cell,) = [c.cell(study) for c in study_columns(classes) if c.name == "ood_share"]
    assert cell == "0.038462"
