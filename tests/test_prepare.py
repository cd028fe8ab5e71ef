from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import noise_image
from liverscan.core.config import Config, SourceSpec
from liverscan.core.errors import DataError, RunDirError
from liverscan.core.fileio import read_csv
from liverscan.core.images import load_image
from liverscan.preparation.prepare import prepare_dataset


def _cfg(*sources: SourceSpec, **data) -> Config:
    cfg = Config()
    cfg.data.sources = list(sources)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def prepared(two_source_dataset, tmp_path):
    ds = two_source_dataset
    before = _snapshot(ds["root"])
    cfg = _cfg(SourceSpec(str(ds["a"]), name="A"), SourceSpec(str(ds["csv"]), name="B"))
    res = prepare_dataset(cfg, tmp_path / "out")
    assert _snapshot(ds["root"]) == before, "prepare must not touch its inputs"
    return res, ds


def test_counts_rejections_and_duplicates(prepared):
    res, ds = prepared
    s = res.summary
    rows = read_csv(res.out_dir / "manifest.csv")
    assert s["n_images"] == len(rows) == 79
    assert Counter(r["class"] for r in rows) == {"normal": 24, "fatty": 22, "tumor": 33}
    assert s["classes"] == ["normal", "fatty", "tumor"]
    rejects = {Path(r["path"]).name: r["reason"] for r in read_csv(res.out_dir / "rejects.csv")}
    for name, fragment in ds["corrupt"].items():
        assert name in rejects and fragment in rejects[name]
    assert "truncated" in rejects["truncated.jpg"] or "corrupt" in rejects["truncated.jpg"]
    assert rejects["mislabelled.png"].startswith("label conflict") and rejects["img02.png"].startswith("label conflict")
    assert s["n_rejected"] == 6
    assert len(s["exact_duplicates_removed"]) == 2
    assert s["n_ignored_non_image_files"] == 1
    conflict = s["audit"]["label_conflicts"][0]
    assert conflict["classes"] == ["normal", "tumor"] and not conflict["kept"]
    assert set(rows[0]) == {
        "path",
        "content_hash",
        "source",
        "source_label",
        "class",
        "split",
        "group",
        "width",
        "height",
        "lesion_annotation",
        "liver_annotation",
        "fan_annotation",
    }
    assert {r["source"] for r in rows} == {"A", "B"}


def test_groups_stay_in_one_split(prepared):
    res, _ = prepared
    rows = read_csv(res.out_dir / "manifest.csv")
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in splits_of.values())
    frames = [r for r in rows if Path(r["path"]).name.startswith("img00") and r["source_label"] == "Normal"]
    assert len(frames) == 3 and len({r["group"] for r in frames}) == 1
    patients = Counter(r["group"] for r in rows if r["source"] == "B")
    assert patients["B/pnormal0"] == 2
    assert res.summary["audit"]["near_duplicates"]["largest"] >= 3
    assert res.summary["audit"]["groups_split_across"] == 0


def test_split_ratios_and_weights(prepared):
    res, _ = prepared
    counts = res.summary["counts"]
    for _cls, row in counts.items():
        n = sum(row.values())
        assert abs(row["train"] - 0.7 * n) <= 2.5  # within one group of the target
    train = {c: row["train"] for c, row in counts.items()}
    n = sum(train.values())
    for c, w in res.summary["class_weights"].items():
        assert w == pytest.approx(n / (3 * train[c]), abs=1e-3)


def test_deterministic_byte_identical(two_source_dataset, tmp_path):
    ds = two_source_dataset
    specs = (SourceSpec(str(ds["a"]), name="A"), SourceSpec(str(ds["csv"]), name="B"))
    r1 = prepare_dataset(_cfg(*specs, workers=1), tmp_path / "o1")
    r2 = prepare_dataset(_cfg(*specs, workers=3), tmp_path / "o2")
    for name in ("manifest.csv", "rejects.csv", "images.npy"):
        assert (r1.out_dir / name).read_bytes() == (r2.out_dir / name).read_bytes()
    assert r1.summary["manifest_hash"] == r2.summary["manifest_hash"]
    r3 = prepare_dataset(_cfg(*specs, seed=7), tmp_path / "o3")
    assert r3.summary["manifest_hash"] != r1.summary["manifest_hash"]


def test_cache_matches_decoding_path(prepared):
    res, _ = prepared
    rows = read_csv(res.out_dir / "manifest.csv")
    arr = np.load(res.out_dir / "images.npy", mmap_mode="r")
    assert arr.shape == (len(rows), 160, 160, 3)
    for i in (0, 17, len(rows) - 1):
        np.testing.assert_array_equal(arr[i], load_image(rows[i]["path"]))


def test_a_cache_made_under_other_decoding_rules_is_passed_over(prepared):
    from liverscan.core.dataset import PreparedData
    from liverscan.core.images import DECODER

    res, _ = prepared
    assert res.summary["decoder"] == DECODER
    cache = np.load(res.out_dir / "images.npy")
    stale = np.lib.format.open_memmap(res.out_dir / "images.npy", mode="r+")
    stale[:] = 0  # what an older decoder wrote is not what today's gives
    stale.flush()
    del stale
    assert not PreparedData(res.out_dir).split("all", 160).x.any()  # same rules: the cache is used
    summary = json.loads((res.out_dir / "summary.json").read_text())
    summary["decoder"] = DECODER - 1
    (res.out_dir / "summary.json").write_text(json.dumps(summary))
    again = PreparedData(res.out_dir)
    assert again.cache(160) is None
    np.testing.assert_array_equal(again.split("all", 160).x, cache)  # decoded again from the files


def test_outputs_and_overwrite_guard(prepared):
    res, _ = prepared
    out = res.out_dir
    for name in ("manifest.csv", "rejects.csv", "summary.json", "config.yaml", "images.npy"):
        assert (out / name).is_file()
    assert not list(out.glob(".*tmp*"))
    json.loads((out / "summary.json").read_text())
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_dataset(_cfg(SourceSpec(str(res.out_dir))), out)


def test_unmapped_categories_listed(tmp_path):
    root = tmp_path / "d"
    for cat in ("Normal", "Weird", "Odd"):
        (root / cat).mkdir(parents=True)
        noise_image(hash(cat) % 1000).save(root / cat / "a.png")
    with pytest.raises(DataError) as info:
        prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")
    msg = str(info.value)
    assert "'Odd'" in msg and "'Weird'" in msg and "--map" in msg
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_five_classes_and_glob_source(two_source_dataset, tmp_path):
    ds = two_source_dataset
    five = {
        "normal": "normal",
        "steatosis": "fatty",
        "benign": "benign",
        "malignant": "malignant",
        "hcc": "hcc",
        "fatty": "fatty",
    }
    cfg = _cfg(
        SourceSpec(str(ds["a"]) + "/{label}/*.png", name="A"), SourceSpec(str(ds["csv"]), name="B"), class_map=five
    )
    res = prepare_dataset(cfg, tmp_path / "five")
    assert res.summary["classes"] == ["normal", "fatty", "benign", "hcc", "malignant"]
    rows = read_csv(res.out_dir / "manifest.csv")
    assert {r["source_label"] for r in rows if r["source"] == "A"} == {"Normal", "Steatosis", "Benign", "Malignant"}
    assert res.summary["audit"]["single_source_classes"] == {"benign": "A", "hcc": "B", "malignant": "A"}


def test_keep_conflicts(two_source_dataset, tmp_path):
    cfg = _cfg(SourceSpec(str(two_source_dataset["a"])), keep_conflicts=True)
    res = prepare_dataset(cfg, tmp_path / "k")
    rows = read_csv(res.out_dir / "manifest.csv")
    (bad,) = [r for r in rows if Path(r["path"]).name == "mislabelled.png"]
    pair = [r for r in rows if r["content_hash"] == bad["content_hash"]]
    assert len(pair) == 2 and pair[0]["group"] == pair[1]["group"] and pair[0]["split"] == pair[1]["split"]
    assert res.summary["audit"]["label_conflicts"][0]["kept"] is True


def test_geometry_shortcut_detected(tmp_path):
    root = tmp_path / "geo"
    for cat, size in (("normal", (64, 48)), ("tumor", (120, 90))):
        (root / cat).mkdir(parents=True)
        for k in range(20):
            noise_image(k + (0 if cat == "normal" else 500), 64).resize(size).save(root / cat / f"{k}.png")
    res = prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")
    sc = res.summary["audit"]["shortcut"]
    assert sc["warning"] and sc["balanced_accuracy"] > 0.9 and sc["baseline_balanced_accuracy"] == pytest.approx(0.5)
    assert any("shortcut" in w for w in res.warnings)


def test_no_shortcut_when_geometry_is_uninformative(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(0)
    for cat in ("normal", "tumor"):
        (root / cat).mkdir(parents=True)
        for k in range(20):
            noise_image(int(rng.integers(1e6)), 64).save(root / cat / f"{k}.png")
    res = prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")
    assert not res.summary["audit"]["shortcut"]["warning"]


def _classes(root: Path, n: int = 4) -> Path:
    """root/normal and root/tumor with ``n`` distinct images each."""
    for k, cls in enumerate(("normal", "tumor")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            noise_image(100 * k + i).save(root / cls / f"{cls}{i}.png")
    return root


@pytest.mark.slow
def test_glob_source_through_link_loops_ends_and_counts_them(tmp_path):
    """In a child process with a time limit: before, the recursive glob never ended on these links."""
    from cli_helpers import run_cli

    lab = _classes(tmp_path / "L")
    os.symlink(".", lab / "normal" / "a")
    os.symlink(".", lab / "normal" / "b")
    out = tmp_path / "p"
    r = run_cli("prepare", f"{lab}/{{label}}/**/*.png", "--out", str(out), "--split-ratios", "50/25/25", timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 8 and summary["n_candidates"] == 8
    assert summary["ignored_files"] == {"link to a folder containing it (a loop, not followed)": 2}
    assert "2 files in the sources left out" in " ".join(r.stderr.split())


def test_csv_sources_binary_tsv_and_empty_paths(tmp_path):
    from cli_helpers import one_line_error, runner
    from liverscan.faces.cli import app

    data = _classes(tmp_path / "data")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(runner.invoke(app, ["prepare", str(binary), "--out", str(tmp_path / "p0")]), "binary.csv: not a")
    assert not (tmp_path / "p0").exists()

    rows = [f"{p.relative_to(tmp_path)}\t{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("path\tlabel\n" + "\n".join(rows[:3]) + "\n\ttumor\n" + "\n".join(rows[3:]) + "\n")
    r = runner.invoke(app, ["prepare", str(tsv), "--out", str(tmp_path / "p"), "--split-ratios", "50/25/25", "-q"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["n_images"] == 8 and summary["n_rejected"] == 1
    assert summary["reject_reasons"] == {"CSV row with an empty path": 1}
    rejects = read_csv(tmp_path / "p" / "rejects.csv")
    assert [(r["path"], r["source_label"], r["reason"]) for r in rejects] == [
        (f"{tsv}:5", "tumor", "CSV row with an empty path")
    ]


def test_images_outside_class_folders_are_reported(tmp_path):
    from cli_helpers import runner
    from liverscan.faces.cli import app

    data = _classes(tmp_path / "data")
    noise_image(7).save(data / "stray.png")
    (data / "README.txt").write_text("not an image: not reported")
    r = runner.invoke(app, ["prepare", str(data), "--out", str(tmp_path / "p"), "--split-ratios", "50/25/25"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["ignored_files"] == {"image outside the class sub-folders": 1} and summary["n_images"] == 8
    assert "1 file in the sources left out (image outside the class sub-folders: 1)" in " ".join(r.stderr.split())


def test_multi_page_tiff_uses_its_first_page_and_says_so(tmp_path):
    data = _classes(tmp_path / "data")
    pages = [noise_image(500 + k) for k in range(3)]
    pages[0].save(data / "tumor" / "cine.tif", save_all=True, append_images=pages[1:])
    res = prepare_dataset(_cfg(SourceSpec(str(data)), near_duplicate_distance=-1), tmp_path / "p")
    cine = str((data / "tumor" / "cine.tif").resolve())
    assert res.summary["multi_page_files"] == {cine: 3} and res.summary["n_images"] == 9
    assert f"{cine}: TIFF has 3 pages; only the first is used" in res.warnings
    row = next(i for i, r in enumerate(read_csv(tmp_path / "p" / "manifest.csv")) if r["path"] == cine)
    np.testing.assert_array_equal(np.load(tmp_path / "p" / "images.npy")[row], load_image(cine, size=160))


def test_prepare_never_writes_over_a_file_it_did_not_write(tmp_path):
    data = _classes(tmp_path / "data")
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="config.yaml: exists and was not written by liverscan prepare"):
            prepare_dataset(_cfg(SourceSpec(str(data))), out, overwrite=overwrite)
    assert (out / "config.yaml").read_text() == "mine: true\n" and sorted(os.listdir(out)) == ["config.yaml"]


def test_videos_as_sources_give_frames_grouped_by_video(tmp_path):
    pytest.importorskip("av")
    from loop_helpers import cut_in_half, make_video

    root = tmp_path / "loops"
    for k, label in enumerate(("Normal", "Malignant")):
        (root / label).mkdir(parents=True)
        for i in range(2):  # each video: two sample images of its own, each held for half a second
            make_video(root / label / f"{label}{i}.mp4", n=10, fps=10, hold=5, size=(64, 64), start=4 * k + 2 * i)
    cut_in_half(root / "Normal" / "Normal0.mp4", root / "Normal" / "cut.mp4")
    res = prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")
    rows = read_csv(res.out_dir / "manifest.csv")
    by_video: dict[str, set] = {}
    for r in rows:
        assert Path(r["path"]).parent.parent == res.out_dir / "frames" and r["path"].endswith(".png")
        assert r["class"] == {"Normal": "normal", "Malignant": "tumor"}[r["source_label"]]
        by_video.setdefault(Path(r["path"]).parent.name, set()).add((r["group"], r["split"]))
    # every video's frames: one group, one split (no video spans train and test)
    assert len(by_video) == 4 and all(len(v) == 1 for v in by_video.values())
    assert len(rows) == 8  # 4 frames a second of 1 s; frozen repeats left out (the cut copy's are duplicates)
    rejects = read_csv(res.out_dir / "rejects.csv")
    assert any(r["path"].endswith("cut.mp4") and "video" in r["reason"] for r in rejects)
    # replaced: the frames of a video no longer among the sources go once the new manifest is written
    (root / "Malignant" / "Malignant1.mp4").unlink()
    again = prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out", overwrite=True)
    kept = {Path(r["path"]) for r in read_csv(again.out_dir / "manifest.csv")}
    assert len(kept) == 6 and set((res.out_dir / "frames").glob("*/*.png")) == kept
    # a prepare stopped before its manifest leaves only its own frames: the next one goes ahead
    for f in res.out_dir.iterdir():
        if f.name != "frames":
            f.unlink()
    prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")
    (res.out_dir / "frames" / "notes.txt").write_text("mine")
    for f in res.out_dir.iterdir():
        if f.name != "frames":
            f.unlink()
    with pytest.raises(RunDirError, match="frames: exists and was not written"):
        prepare_dataset(_cfg(SourceSpec(str(root))), tmp_path / "out")


def test_empty_splits_and_classes_missing_from_val_or_test_are_warned_and_recorded(tmp_path):
    from cli_helpers import runner
    from conftest import class_image
    from liverscan.faces.cli import app

    three = tmp_path / "three"
    for ci, cls in enumerate(("normal", "fatty", "tumor")):  # one image per class: all of them go to train
        (three / cls).mkdir(parents=True)
        class_image(ci, ci).save(three / cls / "a.png")
    r = runner.invoke(app, ["prepare", str(three), "--out", str(tmp_path / "p3")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "p3" / "summary.json").read_text())
    assert summary["audit"]["splits"] == {
        "ratios": "70/15/15",
        "n_images": 3,
        "empty": ["val", "test"],
        "classes_missing": {},
    }
    [warning] = [w for w in summary["warnings"] if "empty" in w]
    assert warning.startswith("the val and test splits are empty (3 images, ratios 70/15/15)")
    assert "liverscan train --folds" in warning
    assert f"warning: {warning}" in " ".join(r.stderr.split())

    few = tmp_path / "few"  # 10 normal and 10 tumour images, 2 fatty: both fatty images go to train
    for ci, (cls, n) in enumerate((("normal", 10), ("fatty", 2), ("tumor", 10))):
        (few / cls).mkdir(parents=True)
        for k in range(n):
            class_image(ci, 100 * ci + k).save(few / cls / f"{k}.png")
    res = prepare_dataset(
        _cfg(SourceSpec(str(few)), near_duplicate_distance=-1, sweep_correlation=2.0), tmp_path / "pf"
    )
    gaps = res.summary["audit"]["splits"]
    assert gaps["empty"] == [] and gaps["classes_missing"] == {"fatty": ["val", "test"]}
    assert any(w.startswith("class 'fatty' has no images in the val and test splits") for w in res.warnings)

    no_val = prepare_dataset(  # a split the ratios leave empty on purpose (cross-validation) is not a problem
        _cfg(
            SourceSpec(str(few)),
            near_duplicate_distance=-1,
            sweep_correlation=2.0,
            train_ratio=1.0,
            val_ratio=0.0,
            test_ratio=0.0,
        ),
        tmp_path / "pcv",
    )
    gaps = no_val.summary["audit"]["splits"]
    assert gaps["ratios"] == "100/0/0" and gaps["empty"] == [] and gaps["classes_missing"] == {}
