"""Every prediction says where: the lesion head in serving - findings in original pixels, records, CSV / JSON,
lesion masks, overlays, studies, the CLI and the app's helpers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lesion_helpers import DISC_LEVEL, attach_head, disc_image
from liverscan.core.errors import ConfigError, ModelError, RunDirError
from liverscan.core.lesion import LesionRule
from liverscan.faces.cli import app
from liverscan.serving import Classifier, PredictOptions, predict_files
from liverscan.serving.lesion import LesionFinding, find_lesion, mask_image
from liverscan.serving.records import Prediction, record_columns
from liverscan.serving.studies import StudyAggregator

runner = CliRunner()

#: the disc of the non-square test image (x, y, radius) in its own pixels
DISC = (60.0, 30.0, 12.0)
#: ``predict``'s CSV header for a three-class model without a lesion head (kept byte-identical)
PLAIN_HEADER = (
    "path,frame,time_s,duplicate_of,sop_instance_uid,predicted_class,confidence,p_normal,p_fatty,p_tumor,decision_rule,decision,"
    "in_distribution,ood_score,ood_reason,needs_review,error,explanation"
)
LESION_COLUMNS = [
    "lesion_found",
    "lesion_probability",
    "lesion_peak_x",
    "lesion_peak_y",
    "lesion_bbox_x0",
    "lesion_bbox_y0",
    "lesion_bbox_x1",
    "lesion_bbox_y1",
    "lesion_area_fraction",
    "lesion_count",
    "lesion_mask",
]


def wide_disc_image(width: int = 96, height: int = 64, disc=DISC, seed: int = 0) -> Image.Image:
    """A speckled grey ``width`` x ``height`` image with a bright disc (x, y, r), or none when ``disc`` is None."""
    rng = np.random.default_rng(seed)
    arr = rng.normal(90, 18, size=(height, width))
    if disc is not None:
        y, x = np.mgrid[0:height, 0:width] + 0.5
        arr[(x - disc[0]) ** 2 + (y - disc[1]) ** 2 <= disc[2] ** 2] = DISC_LEVEL
    return Image.fromarray(np.clip(arr, 0, 200 if disc is None else 255).astype(np.uint8), "L").convert("RGB")


@pytest.fixture(scope="module")
def head_run(probe_run, tmp_path_factory) -> Path:
    return attach_head(probe_run["run"], tmp_path_factory.mktemp("lesionrun") / "run")


@pytest.fixture(scope="module")
def clf(head_run) -> Classifier:
    return Classifier.load(head_run, ood=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A non-square disc image, a square one, and a plain image (no disc), in one folder."""
    folder = tmp_path_factory.mktemp("lesionimages")
    paths = {"wide": folder / "wide.png", "square": folder / "square.png", "plain": folder / "plain.png"}
    wide_disc_image().save(paths["wide"])
    disc_image(48, (14.0, 30.0), 8.0, seed=3).save(paths["square"])
    wide_disc_image(disc=None, seed=4).save(paths["plain"])
    return paths


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ findings on known maps (no model)


def test_finding_of_a_known_map_is_in_original_pixels():
    prob = np.zeros((32, 32), np.float32)
    prob[8:16, 4:12] = 0.9  # rows 8..15, columns 4..11 of the map
    prob[10, 6] = 0.97
    f = find_lesion(prob, 96, 64)  # the image was squashed 3x across, 2x down
    assert f.found and f.count == 1 and f.probability == pytest.approx(0.97)
    assert f.bbox == pytest.approx((12.0, 16.0, 36.0, 32.0))
    assert f.peak == pytest.approx((6.5 * 3, 10.5 * 2))
    assert f.area_fraction == pytest.approx(64 / 1024)
    outline = np.asarray(f.outline)
    assert outline[:, 0].min() >= 12 and outline[:, 0].max() <= 36 and outline[:, 1].max() <= 32


def test_no_region_means_no_lesion_but_the_peak_is_still_said():
    prob = np.full((32, 32), 0.1, np.float32)
    prob[30, 2] = 0.12
    prob[0, 0] = 0.9  # one pixel over the threshold: smaller than min_area, dropped
    f = find_lesion(prob, 64, 64, LesionRule(threshold=0.5, min_area=0.002))
    assert not f.found and f.count == 0 and f.bbox is None and f.outline == () and f.area_fraction == 0
    assert f.probability == pytest.approx(0.9) and f.peak == pytest.approx((1.0, 1.0))
    assert f.caption() == "no lesion found (max probability 0.90)"
    assert find_lesion(prob, 64, 64, LesionRule(min_area=0)).found  # kept without a minimum area


def test_mask_image_is_the_input_size_and_binary():
    prob = np.zeros((32, 32), np.float32)
    prob[8:16, 4:12] = 1.0
    m = mask_image(prob, 96, 64)
    arr = np.asarray(m)
    assert m.mode == "L" and m.size == (96, 64) and set(np.unique(arr)) == {0, 255}
    ys, xs = np.nonzero(arr)
    assert abs(xs.min() - 12) <= 2 and abs(xs.max() - 35) <= 2 and abs(ys.min() - 16) <= 1 and abs(ys.max() - 31) <= 1
    with pytest.raises(ValueError, match="square"):
        find_lesion(np.zeros((4, 5)), 10, 10)


# ------------------------------------------------------------------ the head through the Classifier


def test_finding_points_at_the_disc_of_a_non_square_image(clf, images):
    assert clf.has_lesion and clf.lesion is not None and clf.lesion.kind == "keras"
    wide, plain = clf.predict([images["wide"], images["plain"]])
    f = wide.lesion
    assert isinstance(f, LesionFinding) and f.found and f.count == 1 and f.probability > 0.9
    cx, cy, r = DISC
    assert np.hypot(f.peak[0] - cx, f.peak[1] - cy) < r  # the peak is inside the disc, in the image's pixels
    x0, y0, x1, y1 = f.bbox
    assert abs(x0 - (cx - r)) <= 4 and abs(x1 - (cx + r)) <= 4  # one map pixel is 3 image pixels across
    assert abs(y0 - (cy - r)) <= 3 and abs(y1 - (cy + r)) <= 3  # and 2 down
    assert f.area_fraction == pytest.approx(np.pi * r * r / (96 * 64), rel=0.3)
    pts = np.asarray(f.outline)
    dist = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    assert np.all(np.abs(dist - r) < 4)  # the outline runs along the disc's edge
    assert not plain.lesion.found and plain.lesion.probability < 0.5
    # the in-memory API agrees (an array keeps its own size)
    (arr_rec,) = clf.predict([np.asarray(Image.open(images["wide"]))])
    assert arr_rec.lesion == wide.lesion


def test_records_and_outputs_carry_the_finding(clf, images, tmp_path):
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    paths = [str(images["wide"]), str(images["plain"])]
    predict_files(paths, classifier=clf, output=out_csv)
    predict_files(paths, classifier=clf, output=out_json)
    header = out_csv.read_text().splitlines()[0]
    assert header == PLAIN_HEADER + "," + ",".join(LESION_COLUMNS)
    wide, plain = _read_csv(out_csv)
    assert wide["lesion_found"] == "true" and plain["lesion_found"] == "false"
    assert float(wide["lesion_probability"]) > 0.9 and wide["lesion_count"] == "1"
    assert (
        abs(float(wide["lesion_peak_x"]) - DISC[0]) < DISC[2] and abs(float(wide["lesion_peak_y"]) - DISC[1]) < DISC[2]
    )
    assert plain["lesion_bbox_x0"] == "" and plain["lesion_mask"] == "" and wide["lesion_mask"] == ""
    records = json.loads(out_json.read_text())
    les = records[0]["lesion"]
    assert les["found"] is True and len(les["bbox"]) == 4 and len(les["outline"]) >= 8
    assert les["peak"] == [
        pytest.approx(float(wide["lesion_peak_x"]), abs=1e-5),
        pytest.approx(float(wide["lesion_peak_y"]), abs=1e-5),
    ]
    assert records[1]["lesion"]["found"] is False and records[1]["lesion"]["outline"] == []
    assert "lesion_mask" in records[0] and "source_size" not in records[0]


def _sharing(clf: Classifier, **changes) -> Classifier:
    """A classifier on the same loaded model and lesion head with other options (no second model load)."""
    options = clf.options.replace(**changes)
    return Classifier(clf.card, clf.source, clf.model_path, model=clf.model, options=options, lesion=clf.lesion)


def test_lesion_masks_are_written_at_the_image_size(clf, images, tmp_path):
    twin = tmp_path / "other" / "wide.png"  # same name, another folder: another mask
    twin.parent.mkdir()
    wide_disc_image(disc=(30.0, 20.0, 10.0)).save(twin)
    masks = tmp_path / "masks"
    inputs = [str(images["wide"]), str(images["square"]), str(images["plain"]), str(twin)]
    records = list(_sharing(clf, lesion_masks=masks).iter_predict(inputs))
    named = [Path(rec.lesion_mask or "") for rec in records]
    assert len(set(named)) == 4 and all(p.parent == masks and p.is_file() for p in named)
    assert not list(masks.glob(".*.tmp"))  # written atomically: no temporary file left
    assert [Image.open(p).size for p in named] == [(96, 64), (48, 48), (96, 64), (96, 64)]
    wide = np.asarray(Image.open(named[0]))
    assert Image.open(named[0]).mode == "L" and set(np.unique(wide)) == {0, 255}
    y, x = np.mgrid[0:64, 0:96] + 0.5
    disc = (x - DISC[0]) ** 2 + (y - DISC[1]) ** 2 <= DISC[2] ** 2
    assert np.logical_and(wide > 0, disc).sum() / np.logical_or(wide > 0, disc).sum() > 0.75
    assert not np.asarray(Image.open(named[2])).any()  # the plain image: nothing
    assert records[0].lesion is not None and records[0].lesion.found
    assert records[2].lesion is not None and not records[2].lesion.found


def test_the_classifiers_answer_opens_the_rules_gate(clf, images, tmp_path):
    """A faint map is a lesion only when the classifier gives the gate's classes enough probability: the record,
    its mask and its overlay all follow the head's rule."""
    import copy

    (plain,) = clf.iter_predict([str(images["plain"])])
    cls = plain.predicted_class
    p = plain.probabilities[cls]

    def gated_at(gate: float, folder: str):
        head = copy.copy(clf.lesion)
        head.rule = LesionRule(threshold=0.999, extent=0.5, floor=0.0, gate=gate, gate_classes=(cls,))
        options = clf.options.replace(lesion_masks=tmp_path / folder, explain_dir=None)
        c = Classifier(clf.card, clf.source, clf.model_path, model=clf.model, options=options, lesion=head)
        (rec,) = c.iter_predict([str(images["plain"])], explain_dir=tmp_path / f"{folder}-cams")
        return rec, np.asarray(Image.open(rec.lesion_mask)) > 0, Image.open(rec.explanation).text["caption"]

    opened, mask, caption = gated_at(p - 1e-4, "open")
    assert plain.lesion is not None and not plain.lesion.found  # the default rule: nothing on the plain image
    assert opened.lesion.found and opened.lesion.probability < 0.999 and opened.lesion.count >= 1
    assert mask.any() and mask.mean() == pytest.approx(opened.lesion.area_fraction, abs=0.05)
    # the caption says the outline is the classifier's doing on a faint map (the record says so too: gated)
    assert opened.lesion.gated and f"faint lesion map (peak {opened.lesion.probability:.2f} < 0.999)" in caption
    assert caption.endswith(f"outlined because the classifier gives {cls} p >= {p - 1e-4:g}")
    shut, mask, caption = gated_at(min(1.0, p + 1e-3), "shut")
    assert not shut.lesion.found and not mask.any() and "no lesion found" in caption


def test_cli_writes_masks_and_says_which_lesion_head(head_run, images, tmp_path):
    masks = tmp_path / "masks"
    args = ["predict", str(images["wide"]), "--model", str(head_run), "--lesion-masks", str(masks), "-f", "jsonl"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "lesion head: keras, outline p >= 0.5" in r.output
    (rec,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert Image.open(rec["lesion_mask"]).size == (96, 64) and Path(rec["lesion_mask"]).parent == masks
    assert rec["lesion"]["found"] and len(rec["lesion"]["outline"]) >= 8


def test_overlays_show_the_lesion_map_or_say_nothing_was_found(clf, images, tmp_path):
    wide, plain = clf.iter_predict([str(images["wide"]), str(images["plain"])], explain_dir=tmp_path / "cams")
    shown = {rec.path: Image.open(rec.explanation) for rec in (wide, plain)}
    caption = shown[wide.path].text["caption"]
    assert caption == (
        f"{wide.predicted_class} {wide.confidence:.2f} | lesion, peak {wide.lesion.probability:.2f} (outline p >= 0.5)"
    )
    assert plain.lesion is not None and shown[plain.path].text["caption"].endswith(
        f"| no lesion found (max probability {plain.lesion.probability:.2f})"
    )
    # the outline is drawn in white over the disc's edge of the shown image (the caption strip is below it)
    white = np.all(np.asarray(shown[wide.path].convert("RGB"))[:64, :96] >= 250, axis=-1)
    ys, xs = np.nonzero(white)
    assert len(xs) > 20 and np.all(np.abs(np.hypot(xs + 0.5 - DISC[0], ys + 0.5 - DISC[1]) - DISC[2]) < 5)
    assert not np.all(np.asarray(shown[plain.path].convert("RGB"))[:64, :96] >= 250, axis=-1).any()


def test_gradcam_stays_available_and_an_all_zero_map_is_said(clf, images, tmp_path):
    from liverscan.serving.explain import gradcam_caption

    assert gradcam_caption("tumor 0.90", "normal", np.zeros((4, 4))) == (
        "tumor 0.90 | Grad-CAM: nothing to show for 'normal' (all-zero map)"
    )
    assert gradcam_caption("tumor 0.90", "tumor", np.eye(4)) == "tumor 0.90 | Grad-CAM of 'tumor'"
    cam = _sharing(clf, explain_method="gradcam")
    logits = clf.model.get_layer("head").get_layer("logits")
    weights = logits.get_weights()
    try:
        logits.set_weights([np.zeros_like(w) for w in weights])  # every class's gradient is zero: nothing to show
        (rec,) = cam.iter_predict([str(images["wide"])], explain_dir=tmp_path / "cams")
    finally:
        logits.set_weights(weights)
    caption = Image.open(rec.explanation).text["caption"]
    said = f"{rec.predicted_class} {rec.confidence:.2f}"  # the caption says the record's answer too
    assert caption == f"{said} | Grad-CAM: nothing to show for '{rec.predicted_class}' (all-zero map)"
    assert rec.lesion is not None and rec.lesion.found  # the finding is still in the record


@pytest.mark.slow
def test_no_lesion_keeps_todays_columns(head_run, images, tmp_path):
    out = tmp_path / "off.csv"
    r = runner.invoke(app, ["predict", str(images["wide"]), "--model", str(head_run), "--no-lesion", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "lesion head: off" in r.output and out.read_text().splitlines()[0] == PLAIN_HEADER


@pytest.mark.slow
def test_a_model_without_a_head_keeps_todays_records(probe_run, images, tmp_path):
    plain = Classifier.load(probe_run["run"], ood=False)
    assert not plain.has_lesion and plain.lesion_status is None
    out_csv, out_json = tmp_path / "none.csv", tmp_path / "none.json"
    predict_files([str(images["wide"])], classifier=plain, output=out_csv)
    predict_files([str(images["wide"])], classifier=plain, output=out_json)
    assert out_csv.read_text().splitlines()[0] == PLAIN_HEADER
    (rec,) = json.loads(out_json.read_text())
    assert "lesion" not in rec and "lesion_mask" not in rec
    assert [c.name for c in record_columns(["normal", "fatty", "tumor"])] == PLAIN_HEADER.split(",")


def test_lesion_options_refuse_what_cannot_work(probe_run, head_run, tmp_path, images):
    with pytest.raises(ConfigError, match="--lesion-masks needs the lesion head"):
        PredictOptions(lesion=False, lesion_masks=tmp_path / "m")
    with pytest.raises(ConfigError, match="--explain-method must be one of"):
        PredictOptions(explain_method="saliency")
    with pytest.raises(RunDirError, match="no lesion head, which --lesion-masks needs"):
        Classifier.load(probe_run["run"], lesion_masks=tmp_path / "m")
    r = runner.invoke(
        app, ["predict", str(images["wide"]), "--model", str(probe_run["run"]), "--explain-method", "lesion"]
    )
    assert r.exit_code == 1 and "no lesion head, which --explain-method lesion needs" in r.output


@pytest.mark.slow
def test_a_damaged_lesion_head_is_one_line_and_can_be_skipped(head_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(head_run, broken)
    (broken / "lesion.keras").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"lesion\.keras: cannot load model .*--no-lesion"):
        Classifier.load(broken)
    assert Classifier.load(broken, lesion=False).lesion is None  # the classifier still works without it


# ------------------------------------------------------------------ studies


def _finding(p: float) -> LesionFinding:
    return LesionFinding(p >= 0.5, p, (1.0, 2.0), (0.0, 0.0, 2.0, 4.0) if p >= 0.5 else None, 0.1, (), int(p >= 0.5))


def test_study_carries_the_lesion_of_its_most_suspicious_frame():
    """The study's lesion is that of the frame its answer points to (most suspicious), not of the frame whose
    lesion map peaks highest: a faint map there is still the study's lesion, and says so."""
    classes = ["normal", "tumor"]
    agg = StudyAggregator(classes, lambda rec: "s1")
    for frame, (p_tumor, p_lesion) in enumerate([(0.9, 0.3), (0.6, 0.95), (0.7, 0.8)], start=1):
        rec = Prediction("cine.dcm", frame=frame, probabilities={"normal": 1 - p_tumor, "tumor": p_tumor})
        rec.lesion, rec.lesion_mask = _finding(p_lesion), f"m{frame}.png"
        agg.add(rec)
    agg.add(Prediction("cine.dcm", frame=4, error="unreadable"))
    (study,) = agg.studies()
    assert study.most_suspicious_frame == 1  # by the class probabilities
    assert study.lesion == _finding(0.3) and study.lesion_frame == 1 and study.lesion_mask == "m1.png"
    d = study.to_dict()
    assert d["lesion"]["probability"] == 0.3 and not d["lesion"]["found"] and d["lesion_path"] == "cine.dcm"


def test_an_out_of_distribution_study_or_frame_carries_no_lesion():
    """A study decided out of distribution, or whose most suspicious frame's map was withheld, carries no lesion."""
    classes = ["normal", "tumor"]
    agg = StudyAggregator(classes, lambda rec: rec.path)
    for path, outside, p_tumor in [("a", True, 0.99), ("a", True, 0.98), ("a", False, 0.2), ("b", False, 0.9)]:
        rec = Prediction(path, probabilities={"normal": 1 - p_tumor, "tumor": p_tumor}, in_distribution=not outside)
        rec.lesion = _finding(0.97).withhold("out of distribution") if outside else _finding(0.97)
        agg.add(rec)
    a, b = agg.studies()
    assert a.decision == "out_of_distribution" and a.lesion is None and a.lesion_path is None
    assert "lesion_path" not in a.to_dict() and "lesion" not in a.to_dict()
    assert b.lesion is not None and b.lesion.found and b.lesion_path == "b"


def test_study_output_names_the_frame_with_the_lesion(clf, images, tmp_path):
    out = tmp_path / "studies.csv"
    paths = [str(images["plain"]), str(images["wide"])]
    summary = predict_files(paths, PredictOptions(group_by="folder", ood=False), classifier=clf, study_output=out)
    (study,) = summary.studies or []
    assert study.lesion is not None and study.lesion.found and study.lesion_path == str(images["wide"])
    (row,) = _read_csv(out)
    assert row["lesion_path"] == str(images["wide"]) and row["lesion_found"] == "true"
    assert float(row["lesion_probability"]) == pytest.approx(study.lesion.probability, abs=1e-6)


# ------------------------------------------------------------------ the app's helpers and the Ray schema


def test_app_draws_the_outline_and_says_where(clf, images):
    pytest.importorskip("streamlit")
    from liverscan.faces.app import lesion_text, results_csv, with_outline

    data = images["wide"].read_bytes()
    ((rec, arr),) = clf.predict_bytes("wide.png", data)
    assert rec.source_size == (96, 64) and rec.lesion is not None
    shown = np.asarray(with_outline(rec, Image.open(images["wide"]).convert("RGB")))
    white = np.all(shown >= 250, axis=-1)  # the fan never reaches white; the outline is white
    ys, xs = np.nonzero(white)
    assert len(xs) > 20 and np.all(np.abs(np.hypot(xs + 0.5 - DISC[0], ys + 0.5 - DISC[1]) - DISC[2]) < 5)
    small = np.asarray(with_outline(rec, arr))  # the model input (S x S): the outline is scaled onto it
    assert small.shape == arr.shape and np.all(small >= 250, axis=-1).any()
    x, y = rec.lesion.peak
    where = f"Lesion: probability {rec.lesion.probability:.2f} at ({x:.0f}, {y:.0f}), "
    assert lesion_text(rec.lesion) == where + f"{rec.lesion.area_fraction:.1%} of the image"
    assert lesion_text(_finding(0.12)) == "No lesion found (max probability 0.12)"
    header = results_csv(clf, [rec]).splitlines()[0]
    assert header.endswith(",".join(LESION_COLUMNS))


@pytest.mark.slow
def test_ray_actor_rows_carry_the_finding_through_the_shared_schema(head_run, images):
    pa = pytest.importorskip("pyarrow")
    from liverscan.serving.distributed import BatchPredictor

    predictor = BatchPredictor(str(head_run), PredictOptions(runtime="keras", batch_size=4, workers=1, ood=False))
    table = predictor(pa.table({"index": [0, 1], "path": [str(images["wide"]), str(images["plain"])]}))
    assert table.schema.names[-len(LESION_COLUMNS) :] == LESION_COLUMNS
    assert table.schema.field("lesion_count").type == pa.int64()
    wide, plain = table.to_pylist()
    assert wide["lesion_found"] is True and plain["lesion_found"] is False and plain["lesion_bbox_x0"] is None
    assert abs(wide["lesion_peak_x"] - DISC[0]) < DISC[2] and wide["lesion_count"] == 1
    r = runner.invoke(app, ["predict", str(images["wide"]), "--engine", "ray", "--lesion-masks", "m", "-o", "out"])
    assert r.exit_code == 2 and "--lesion-masks cannot be used with --engine ray" in r.output


def test_terminal_table_says_where(clf, images):
    from rich.console import Console

    from liverscan.faces.terminal import lesion_cell, predictions_table

    records = clf.predict([images["wide"], images["plain"], images["wide"].with_name("missing.png")])
    console = Console(width=250, record=True)
    console.print(predictions_table(records, clf.classes, len(records)))
    text = console.export_text()
    x, y = records[0].lesion.peak
    assert "lesion" in text.split("\n", 3)[2]  # the header row
    assert f"@ {x:.0f},{y:.0f}" in text and lesion_cell(records[1].lesion) in text
    assert lesion_cell(records[1].lesion).startswith("none (max 0.") and lesion_cell(None) == ""


@pytest.mark.slow
def test_an_exported_head_runs_where_the_runtime_says(head_run, clf, images, tmp_path):
    from liverscan.serving import export, runtime
    from liverscan.serving.lesion import LesionHead

    if not runtime.available() or not hasattr(runtime, "MapRunner") or not hasattr(export, "write_lesion"):
        pytest.skip("no TFLite runtime or lesion export")
    run = tmp_path / "run"
    shutil.copytree(head_run, run)
    assert clf.lesion is not None
    export.write_lesion(clf.lesion._model, run / "lesion.tflite", "tflite", np.zeros((2, 32, 32, 3), np.float32))
    card, model_path = clf.card, run / "model.keras"
    assert LesionHead.load(card, model_path, "keras").kind == "keras"
    fast = LesionHead.load(card, model_path, "auto")
    assert fast is not None and fast.kind == "tflite" and fast.describe() == "tflite, outline p >= 0.5"
    (wide,) = clf.predict([images["wide"]])
    arr = np.asarray(Image.open(images["wide"]).resize((32, 32), Image.Resampling.BILINEAR), np.float32)[None]
    np.testing.assert_allclose(fast.maps(arr), clf.lesion.maps(arr), atol=1e-5)
    loaded = Classifier.load(run, ood=False)  # auto: the classifier on Keras (no model.tflite), the head on TFLite
    (rec,) = loaded.predict([images["wide"]])
    assert loaded.lesion is not None and loaded.lesion.kind == "tflite"
    assert rec.lesion is not None and wide.lesion is not None
    assert (rec.lesion.found, rec.lesion.bbox, rec.lesion.count) == (True, wide.lesion.bbox, wide.lesion.count)
    assert rec.lesion.probability == pytest.approx(wide.lesion.probability, abs=1e-5)


def test_a_dicom_frame_finding_is_in_the_frame_pixels(clf, tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    frames = np.stack([np.asarray(wide_disc_image(disc=d).convert("L")) for d in (DISC, None)])  # 2 frames, 96 x 64
    write_dicom(tmp_path / "cine.dcm", frames, "MONOCHROME2", frames=2)
    first, second = clf.predict([tmp_path / "cine.dcm"])
    assert (first.frame, first.source_size) == (1, (96, 64))
    assert first.lesion is not None and first.lesion.found and second.lesion is not None and not second.lesion.found
    assert np.hypot(first.lesion.peak[0] - DISC[0], first.lesion.peak[1] - DISC[1]) < DISC[2]


# ------------------------------------------------------------------ out of distribution: the map is no finding

EXAMPLE_TUMOUR = Path("examples/images/Malignant/xu-347.jpg")


def test_an_out_of_distribution_image_has_no_lesion_finding_anywhere(tmp_path):
    """A scan the guard finds out of distribution (here tinted, like a colour export of another scanner): the
    classifier's tumour probability is no evidence, so the record's lesion is no finding (found null, the reason
    given, no outline), no mask is written, the overlay's caption says what the record says, and its study carries
    no lesion."""
    scans = tmp_path / "scans"
    scans.mkdir()
    arr = np.asarray(Image.open(EXAMPLE_TUMOUR).convert("RGB")).astype(np.float32)
    Image.fromarray(np.clip(arr * [1.0, 0.55, 0.35], 0, 255).astype(np.uint8)).save(scans / "tinted.png")
    out, cams, masks, studies = tmp_path / "r.json", tmp_path / "cams", tmp_path / "masks", tmp_path / "s.json"
    args = ["predict", str(scans), "-o", str(out), "--explain", str(cams), "--lesion-masks", str(masks), "-q"]
    r = runner.invoke(app, args + ["--group-by", "folder", "--study-output", str(studies)])
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(out.read_text())
    assert rec["decision"] == "out_of_distribution" and rec["in_distribution"] is False
    lesion = rec["lesion"]
    assert lesion["found"] is None and "out of distribution" in lesion["withheld"]
    assert lesion["outline"] == [] and lesion["bbox"] is None and lesion["count"] == 0
    assert rec["lesion_mask"] is None and not list(masks.glob("*.png"))
    caption = Image.open(rec["explanation"]).text["caption"]
    assert caption.startswith(f"out of distribution (model output {rec['predicted_class']} ")
    assert "lesion map not a finding (out of distribution" in caption
    (study,) = json.loads(studies.read_text())
    assert study["decision"] == "out_of_distribution" and "lesion" not in study


def test_the_app_says_a_withheld_map_is_no_finding():
    pytest.importorskip("streamlit")
    from liverscan.faces.app import lesion_text

    withheld = _finding(0.97).withhold("out of distribution: the image is unlike the training images")
    assert lesion_text(withheld).startswith("Lesion map not a finding (out of distribution")
    assert withheld.found is None and withheld.outline == () and withheld.probability == 0.97
