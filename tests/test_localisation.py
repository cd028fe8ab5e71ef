"""Scoring lesion maps against outlines (known answers), and ``evaluate`` / ``report`` with a lesion head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liverscan.core.lesion import LesionRule
from liverscan.evaluation.localisation import (
    CENTRE,
    HEAD,
    RANDOM,
    Case,
    LocalisationMetrics,
    bootstrap_intervals,
    cases_figure,
    pick_cases,
    score_localisation,
)


def disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def by_name(m: LocalisationMetrics, name: str):
    return next(s for s in m.maps if s.name == name)


def test_a_perfect_map_scores_one_and_a_shifted_map_misses():
    masks = [disc(64, 20, 24, 8), disc(64, 40, 40, 10)]
    perfect = score_localisation(
        [m.astype(np.float32) for m in masks], masks, [None, None], [False, False], bootstrap=0
    )
    h = perfect.head
    assert (h.dice_mean, h.dice_median, h.iou_mean, h.pointing, h.heat_in_lesion) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert h.false_lesion_rate is None and perfect.n_outlined == 2 and perfect.n_lesion_free == 0
    # the map points at the opposite corner: peak outside, no overlap, no heat in the lesion
    shifted = [np.roll(m, (30, 30), axis=(0, 1)).astype(np.float32) for m in masks]
    miss = score_localisation(shifted, masks, [None, None], [False, False], bootstrap=0).head
    assert (miss.pointing, miss.dice_mean, miss.iou_mean, miss.heat_in_lesion) == (0.0, 0.0, 0.0, 0.0)


def test_the_rule_and_the_classifiers_gate_decide_what_is_scored():
    """A faint map of the right place scores Dice 0 under ``p >= 0.5``; the peak-relative rule outlines it when the
    classifier says "tumour", and a faint map of a normal then counts as a false lesion."""
    masks = [disc(64, 20, 24, 8), None]
    faint = [0.4 * masks[0].astype(np.float32), np.full((64, 64), 0.1, np.float32)]
    faint[1][50, 50] = 0.3
    rule = LesionRule(extent=0.5, floor=0.1, gate=0.9, gate_classes=("tumor",))
    plain = score_localisation(faint, masks, [None, None], [False, True], bootstrap=0)
    assert plain.head.dice_mean == 0.0 and plain.head.pointing == 1.0 and plain.head.false_lesion_rate == 0.0
    unsure = score_localisation(faint, masks, [None, None], [False, True], rule=rule, lesion_probability=[0.6, 0.6])
    assert unsure.head.dice_mean == 0.0 and unsure.head.false_lesion_rate == 0.0
    said = score_localisation(faint, masks, [None, None], [False, True], rule=rule, lesion_probability=[0.95, 0.95])
    assert said.head.dice_mean == 1.0 and said.head.false_lesion_rate == 1.0
    assert said.rule == rule.describe() and "classifier gives tumor p >= 0.9" in said.describe()
    assert LocalisationMetrics.from_dict(said.to_dict()).rule == said.rule


def test_a_coarse_map_is_squashed_onto_the_original_image():
    """A 16x16 map of a lesion in a 48x96 (h x w) image: squashed back bilinearly, it still fits the outline."""
    y, x = np.mgrid[0:48, 0:96] + 0.5
    mask = ((x - 60) / 16) ** 2 + ((y - 20) / 8) ** 2 <= 1
    yy, xx = np.mgrid[0:16, 0:16] + 0.5
    coarse = (((xx - 60 / 6) / (16 / 6)) ** 2 + ((yy - 20 / 3) / (8 / 3)) ** 2 <= 1).astype(np.float32)
    h = score_localisation([coarse], [mask], [None], [False], bootstrap=0).head
    assert h.pointing == 1.0
    assert h.dice_mean is not None and h.dice_mean > 0.85


def test_false_lesions_on_lesion_free_images_and_min_area():
    empty = np.zeros((32, 32), np.float32)
    speck = empty.copy()
    speck[3, 3] = 0.9  # one pixel: under min_area (0.002 of 1024 pixels = 2 pixels), dropped
    blob = empty.copy()
    blob[10:20, 10:20] = 0.8
    lesion_mask = disc(32, 16, 16, 6)
    clean = score_localisation(
        [lesion_mask.astype(np.float32), empty, speck],
        [lesion_mask, None, None],
        [None] * 3,
        [False, True, True],
        bootstrap=0,
    )
    assert clean.head.false_lesion_rate == 0.0 and clean.n_lesion_free == 2
    noisy = score_localisation([empty, blob], [None, None], [None, None], [True, True], bootstrap=0)
    assert noisy.head.false_lesion_rate == 0.5
    assert noisy.n_outlined == 0 and noisy.head.dice_mean is None and noisy.head.pointing is None
    # an image of a lesion class without an outline is not scored at all; an explicitly empty outline is "nothing"
    unknown = score_localisation(
        [blob, blob], [None, np.zeros((32, 32), bool)], [None, None], [False, False], bootstrap=0
    )
    assert unknown.n_lesion_free == 1 and unknown.head.false_lesion_rate == 1.0


def test_baselines_centre_fan_share_and_saliency():
    lesion_mask = disc(40, 20, 20, 4)  # covers the centre
    off_centre = disc(40, 8, 8, 4)
    fan = np.zeros((40, 40), bool)
    fan[:, :20] = True  # half the image
    cam_hit = np.zeros((5, 5), np.float32)
    cam_hit[2, 2] = 1.0
    m = score_localisation(
        [lesion_mask.astype(np.float32), off_centre.astype(np.float32)],
        [lesion_mask, off_centre],
        [None, fan],
        [False, False],
        bootstrap=0,
        saliency={"Grad-CAM (tumor)": [cam_hit, cam_hit]},
    )
    assert [s.name for s in m.maps] == [HEAD, "Grad-CAM (tumor)", CENTRE, RANDOM]
    assert by_name(m, CENTRE).pointing == 0.5
    cam = by_name(m, "Grad-CAM (tumor)")
    assert cam.pointing == 0.5 and cam.dice_mean is None and cam.kind == "saliency"
    shares = [lesion_mask.sum() / lesion_mask.size, np.logical_and(off_centre, fan).sum() / fan.sum()]
    assert m.lesion_share_of_fan == pytest.approx(np.mean(shares))
    rnd = by_name(m, RANDOM)
    assert rnd.pointing == rnd.heat_in_lesion == pytest.approx(np.mean(shares))
    assert m.n_with_fan == 1


def test_group_bootstrap_brackets_the_mean_and_counts_groups():
    rng = np.random.default_rng(0)
    n = 40
    masks = [disc(32, 16, 16, 6)] * n
    # maps that hit or miss: the hits' share decides the pointing score
    hits = rng.random(n) < 0.6
    maps = [m.astype(np.float32) if hit else np.roll(m, 16, axis=1).astype(np.float32) for m, hit in zip(masks, hits)]
    groups = np.repeat(np.arange(n // 2), 2)  # pairs of frames
    m = score_localisation(maps, masks, [None] * n, [False] * n, groups=groups, bootstrap=400, seed=1)
    lo, hi = m.head.ci("pointing")
    assert lo < m.head.pointing < hi and 0 <= lo and hi <= 1
    assert m.resampled == "groups" and m.n_resamples == 400
    lo, hi = m.head.ci("dice_median")
    assert lo <= m.head.dice_median <= hi
    # the same seed gives the same intervals; images resampled alone without groups
    again = score_localisation(maps, masks, [None] * n, [False] * n, groups=groups, bootstrap=400, seed=1)
    assert again.head.intervals == m.head.intervals
    assert score_localisation(maps, masks, [None] * n, [False] * n, bootstrap=50).resampled == "images"


def test_whole_groups_are_resampled():
    """Two groups of identical values: every resample's mean is one of 0, 0.5, 1 - never a mix of single images."""
    values = np.array([0.0] * 5 + [1.0] * 5)
    groups = ["a"] * 5 + ["b"] * 5
    iv = bootstrap_intervals({"x": (values, False)}, groups, 200, seed=0)
    assert iv["x"] is not None and set(iv["x"]) <= {0.0, 0.5, 1.0}
    assert bootstrap_intervals({"x": (np.full(10, np.nan), False)}, None, 200)["x"] is None


def test_metrics_round_trip_and_table():
    masks = [disc(32, 10, 10, 5), disc(32, 20, 20, 6)]
    m = score_localisation([k.astype(np.float32) for k in masks], masks, [None, None], [False, False], bootstrap=30)
    back = LocalisationMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    header, rows = m.table()
    assert header[:3] == ["map", "pointing", "Dice mean"] and len(header) == 7
    assert rows[0][0] == HEAD and rows[0][1].startswith("1.000")
    assert rows[-2][2] == "-"  # the image centre has no Dice
    assert LocalisationMetrics.from_dict(None) is None and LocalisationMetrics.from_dict({}) is None


def test_cases_are_best_median_worst_and_drawn(tmp_path):
    assert [i for _, i in pick_cases(np.array([0.5, np.nan, 0.9, 0.1, 0.7, 0.3]))] == [2, 0, 3]
    assert [i for _, i in pick_cases(np.array([0.4]))] == [0]
    assert pick_cases(np.array([np.nan])) == []
    img = tmp_path / "a.png"
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(img)
    mask = np.zeros((30, 40), bool)
    mask[10:20, 15:25] = True
    cases_figure([Case("best (Dice 1.00)", str(img), mask.astype(np.float32), mask)], tmp_path / "cases.png")
    with Image.open(tmp_path / "cases.png") as fig:
        assert fig.width > 300


# ---------------------------------------------------------------------------------------------- evaluate / report


def bright_maps(images: np.ndarray) -> np.ndarray:
    """What ``lesion_helpers.bright_head`` answers, in NumPy: sigmoid((mean grey - 190) / 8)."""
    return (1 / (1 + np.exp(-(images.astype(np.float64).mean(-1) - 190) / 8))).astype(np.float32)


@pytest.fixture(scope="module")
def xu_prepared(tmp_path_factory) -> dict:
    """Made-up xu-layout images with disc lesions (12 tumour, 8 normal, 64 px), prepared at 32 px."""
    from conftest import tiny_config
    from lesion_helpers import make_xu_dataset
    from liverscan.preparation.prepare import prepare_dataset

    base = tmp_path_factory.mktemp("xu")
    info = make_xu_dataset(base / "data", n_tumour=12, n_normal=8, size=64)
    cfg = tiny_config(base / "data")
    cfg.data.train_ratio, cfg.data.val_ratio, cfg.data.test_ratio = 0.4, 0.2, 0.4
    prepare_dataset(cfg, base / "prep")
    return {**info, "base": base, "prep": base / "prep"}


@pytest.fixture(scope="module")
def xu_evaluated(xu_prepared, probe_run) -> dict:
    """The shared probe run with the known (bright) lesion head, evaluated once on the xu images' test split
    (``--data``: another prepared dataset; 50 resamples)."""
    from lesion_helpers import attach_head
    from liverscan.evaluation import evaluate

    run = attach_head(probe_run["run"], xu_prepared["base"] / "run")
    result = evaluate(run, data=xu_prepared["prep"], bootstrap=50)
    return {**xu_prepared, "run": run, "result": result}


@pytest.mark.slow
def test_evaluate_scores_the_head_on_the_outlines(xu_evaluated):
    from liverscan.core.artifacts import METRICS_FILE
    from liverscan.core.fileio import read_csv
    from liverscan.evaluation import EvalMetrics

    result = xu_evaluated["result"]
    loc = EvalMetrics.read(result.out_dir / METRICS_FILE).localisation
    assert loc is not None and loc == result.metrics.localisation
    test_rows = [r for r in read_csv(xu_evaluated["prep"] / "manifest.csv") if r["split"] == "test"]
    assert loc.n_outlined == sum(bool(r["lesion_annotation"]) for r in test_rows) > 0
    assert loc.n_lesion_free == sum(r["class"] == "normal" for r in test_rows) > 0
    head = loc.head
    assert head.pointing == 1.0 and head.dice_mean is not None and head.dice_mean > 0.8
    assert head.false_lesion_rate == 0.0 and head.heat_in_lesion is not None and head.heat_in_lesion > 0.7
    assert [m.name for m in loc.maps] == [HEAD, "Grad-CAM (tumor)", CENTRE, RANDOM]
    cam = loc.maps[1]
    assert cam.pointing is not None and cam.heat_in_lesion is not None and cam.dice_mean is None
    # a disc covers ~3-10 % of the fan: far below the head's heat in the lesion
    assert loc.lesion_share_of_fan is not None and loc.lesion_share_of_fan < 0.15
    assert loc.n_with_fan == loc.n_outlined and loc.figure == "localisation.png"
    assert loc.n_resamples == 50 and head.ci("dice_mean") is not None
    per_image = read_csv(result.out_dir / "localisation.csv")
    assert len(per_image) == loc.n_outlined + loc.n_lesion_free
    assert {r["role"] for r in per_image} == {"outlined", "lesion-free"}
    assert all(float(r["pointing"]) == 1.0 for r in per_image if r["role"] == "outlined")


def test_report_shows_the_table_and_links_the_cases_figure(xu_evaluated):
    from typer.testing import CliRunner

    from liverscan.cli import app

    run, eval_dir = xu_evaluated["run"], xu_evaluated["result"].out_dir
    out = CliRunner().invoke(app, ["report", str(run), "--eval", str(eval_dir)], terminal_width=200)
    assert out.exit_code == 0, out.output
    md = (run / "report.md").read_text()
    assert "## Lesion localisation" in md and f"]({eval_dir.name}/localisation.png)" in md
    assert "Grad-CAM (tumor)" in md and "random point in the fan" in md and "false lesions" in md
    assert "Best, median and worst image by Dice" in (run / "report.html").read_text()
    with Image.open(eval_dir / "localisation.png") as fig:
        assert fig.height > 600  # three cases, one row each


def test_terminal_prints_the_localisation_table(xu_evaluated):
    from rich.console import Console

    from liverscan.faces.terminal import print_evaluation

    console = Console(record=True, width=200)
    print_evaluation(xu_evaluated["result"].metrics, console)
    text = console.export_text()
    assert "Lesion localisation" in text and "random point in the fan" in text and "lesion head" in text
    assert "1.000" in text.split("Lesion localisation")[1]


def test_no_section_without_a_head_or_without_outlines(xu_prepared, probe_run, tmp_path):
    from lesion_helpers import attach_head
    from liverscan.core.artifacts import load_run
    from liverscan.evaluation.labelled import load_labelled
    from liverscan.evaluation.localisation import head_localisation

    plain = load_run(probe_run["run"])
    assert plain.card.lesion is None
    # model None: neither case gets as far as running a model
    assert head_localisation(plain, load_labelled(plain, xu_prepared["prep"], "test"), None, 10, 0) is None
    with_head = load_run(attach_head(probe_run["run"], tmp_path / "run"))
    no_outlines = load_labelled(with_head, None, "test")  # the probe run's own data: no outlines
    assert no_outlines.rows and head_localisation(with_head, no_outlines, None, 10, 0) is None


def test_an_unreadable_outline_leaves_its_image_out(xu_prepared):
    import shutil

    from liverscan.core.annotations import lesion_free_classes
    from liverscan.core.dataset import PreparedData
    from liverscan.evaluation.localisation import localise

    data = PreparedData(xu_prepared["prep"])
    rows = [dict(r) for r in data.rows]
    images = data.split("all", 32)
    broken = rows[0]["lesion_annotation"]
    copy = xu_prepared["base"] / "broken.json"
    shutil.copy(broken, copy)
    Path(copy).write_text("[[1, 2], [3")
    rows[0]["lesion_annotation"] = str(copy)
    found = localise(bright_maps(images.x), rows, lesion_free_classes(rows), None, LesionRule(), 0, 0, source="test")
    assert found.metrics.skipped == [(str(copy), found.metrics.skipped[0][1])]
    assert "JSON" in found.metrics.skipped[0][1]
    assert found.metrics.n_outlined == 11 and found.metrics.n_lesion_free == 8
    assert len(found.rows) == 19 and len(found.cases) == 3


def test_cross_validated_runs_score_the_out_of_fold_maps(xu_prepared, probe_run, tmp_path):
    """``lesion_oof.npz`` (paths, float16 maps at input size) against the prepared dataset's outlines."""
    import shutil

    from liverscan.core.artifacts import LESION_OOF_FILE, load_run
    from liverscan.core.dataset import PreparedData
    from liverscan.evaluation.localisation import oof_localisation, write_outputs

    shutil.copytree(probe_run["run"], tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert oof_localisation(run, 10, 0) is None  # no head, no maps
    run.card.lesion = {"file": "lesion.keras", "threshold": 0.5, "min_area": 0.002}
    run.card.data["prepared_dir"] = str(xu_prepared["prep"])
    assert oof_localisation(run, 10, 0) is None  # a head but no out-of-fold maps
    images = PreparedData(xu_prepared["prep"]).split("all", 32)
    maps = bright_maps(images.x).astype(np.float16)
    np.savez_compressed(run.run_dir / LESION_OOF_FILE, paths=np.asarray(images.paths, dtype=str), maps=maps)
    found = oof_localisation(run, 30, 0)
    assert found is not None
    loc = write_outputs(found, tmp_path / "eval-cv", figures=True)
    assert loc.source.startswith("out-of-fold") and loc.figure == "localisation.png"
    assert loc.n_outlined == 12 and loc.n_lesion_free == 8
    assert loc.head.pointing == 1.0 and loc.head.false_lesion_rate == 0.0
    assert [m.name for m in loc.maps] == [HEAD, CENTRE, RANDOM]  # no out-of-fold Grad-CAM
    assert loc.head.dice_mean is not None and loc.head.dice_mean > 0.8
    lo, hi = loc.head.ci("dice_mean")
    assert lo <= loc.head.dice_mean <= hi
    np.savez_compressed(run.run_dir / LESION_OOF_FILE, paths=np.asarray(images.paths[:3], dtype=str), maps=maps)
    from liverscan.core.errors import RunDirError

    with pytest.raises(RunDirError, match="lesion_oof.npz: expected maps"):
        oof_localisation(run, 10, 0)


@pytest.mark.slow
def test_evaluate_of_a_cross_validated_run_quotes_the_figures_in_the_card(xu_prepared, tmp_path):
    from conftest import SHORT_C_GRID
    from liverscan.core import probe
    from liverscan.core.artifacts import LESION_OOF_FILE, read_card, write_card
    from liverscan.core.config import load_config
    from liverscan.core.dataset import PreparedData
    from liverscan.evaluation import evaluate
    from liverscan.training import cross_validate

    cfg = load_config(xu_prepared["prep"] / "config.yaml")
    cfg.model.head, cfg.train.folds, cfg.lesion.head = "linear", 3, "off"
    run = tmp_path / "cv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "C_GRID", SHORT_C_GRID)
        cross_validate(cfg, xu_prepared["prep"], run)
    images = PreparedData(xu_prepared["prep"]).split("all", 32)
    maps = bright_maps(images.x).astype(np.float16)
    np.savez_compressed(run / LESION_OOF_FILE, paths=np.asarray(images.paths, dtype=str), maps=maps)
    card = read_card(run)
    card.lesion = {"file": "lesion.keras", "threshold": 0.5, "min_area": 0.002, "out_of_fold": {"folds": 3}}
    write_card(run, card)
    res = evaluate(run, bootstrap=30)
    loc = res.metrics.localisation
    assert loc is not None and loc.head.pointing == 1.0 and (res.out_dir / "localisation.png").is_file()
    quoted = read_card(run).lesion["out_of_fold"]
    assert quoted["folds"] == 3 and quoted["metrics"]["pointing"]["value"] == 1.0


def test_figures_by_lesion_size_quartile_show_where_small_lesions_fail():
    """A head that finds only large lesions: by size quartile, pointing and Dice are 0 in the small quarters and
    1 in the large ones, and the quartiles round-trip through metrics.json."""
    import json

    from liverscan.evaluation.localisation import LocalisationMetrics, score_localisation

    masks, maps = [], []
    for r in range(2, 18):  # 16 discs of growing radius; the map sees only those of radius >= 10
        y, x = np.mgrid[0:64, 0:64]
        m = (x - 32) ** 2 + (y - 32) ** 2 <= r * r
        masks.append(m)
        maps.append(m.astype(np.float32) if r >= 10 else np.zeros((64, 64), np.float32))
    loc = score_localisation(maps, masks, [None] * 16, [False] * 16, bootstrap=10)
    q = loc.by_size
    assert [b["n"] for b in q] == [4, 4, 4, 4] and q[0]["size_from"] < q[0]["size_to"] <= q[1]["size_from"]
    assert (q[0]["pointing"], q[0]["dice_mean"]) == (0.0, 0.0) and (q[3]["pointing"], q[3]["dice_mean"]) == (1.0, 1.0)
    header, rows = loc.size_table()
    assert header[2:] == ["pointing", "Dice (mean)"] and rows[3][2:] == ["1.000", "1.000"]
    back = LocalisationMetrics.from_dict(json.loads(json.dumps(loc.to_dict())))
    assert back is not None and back.by_size == q
