"""``prepare`` with lesion / liver / fan annotations: found (xu layout, ``--masks``, CSV columns), validated against
their images (bad ones reported, images kept), counted, and covered by the manifest hash."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import one_line_error, runner
from conftest import noise_image
from lesion_helpers import disc_image, disc_polygon, make_xu_dataset
from liverscan.core.config import Config, SourceSpec
from liverscan.core.errors import DataError
from liverscan.core.fileio import read_csv
from liverscan.faces.cli import app
from liverscan.preparation.prepare import prepare_dataset

COLUMNS = {"lesion": "lesion_annotation", "liver": "liver_annotation", "fan": "fan_annotation"}


def _prepare(out: Path, *sources: str | Path, masks: str = "", overwrite: bool = False):
    cfg = Config()
    cfg.data.sources = [SourceSpec(str(s)) for s in sources]
    cfg.data.masks = masks
    cfg.data.workers = 2
    cfg.preprocess.image_size = 32
    res = prepare_dataset(cfg, out, overwrite=overwrite)
    rows = read_csv(out / "manifest.csv")
    rejects = read_csv(out / "rejects.csv")
    base = out.parent.resolve()  # rows by path below the test's folder, e.g. "xu/Normal/image/2.png"
    return res.summary, {Path(r["path"]).relative_to(base).as_posix(): r for r in rows}, rejects


def _counts(lesion: int, liver: int, fan: int, rejected: int = 0) -> dict[str, int]:
    return {"lesion": lesion, "liver": liver, "fan": fan, "rejected": rejected}


def _disc_mask(path: Path, size: int, centre=(20.0, 24.0), radius: float = 8.0, mode: str = "L") -> None:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((inside * 255).astype(np.uint8), "L").convert(mode).save(path)


def _images(folder: Path, names: list[str], seed: int, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        p = folder / name
        disc_image(size, (30.0, 30.0) if seed else None, 9.0, seed=seed * 100 + k).save(p)
        paths.append(p)
    return paths


def test_xu_layout_found_automatically(tmp_path):
    ds = make_xu_dataset(tmp_path / "xu", n_tumour=6, n_normal=4, size=64)
    summary, rows, rejects = _prepare(tmp_path / "out", ds["root"])
    assert summary["annotations"] == _counts(6, 10, 10)
    assert rejects == [] and summary["n_images"] == 10
    assert summary["ignored_files"] == {}  # the outlines are used, not files left out
    for r in rows.values():
        cls_dir = Path(r["path"]).parent.parent
        stem = Path(r["path"]).stem
        seg = cls_dir / "segmentation"
        assert r["liver_annotation"] == str(seg / "liver" / f"{stem}.json")
        assert r["fan_annotation"] == str(seg / "outline" / f"{stem}.json")
        if r["class"] == "tumor":
            assert r["lesion_annotation"] == str(seg / "mass" / f"{stem}.json")
            assert Path(r["lesion_annotation"]).is_absolute() and Path(r["lesion_annotation"]).is_file()
        else:
            assert r["lesion_annotation"] == ""


def test_masks_pattern_with_binary_png_masks_beside_the_images(tmp_path):
    data = tmp_path / "data"
    tumours = _images(data / "Malignant", [f"m{k}.png" for k in range(4)], seed=1)
    _images(data / "Normal", [f"n{k}.png" for k in range(4)], seed=0)
    for k, p in enumerate(tumours[:3]):  # m3 has no mask
        _disc_mask(data / "Malignant" / "masks" / f"{p.stem}.png", 64, mode=("L", "1", "RGB")[k])
    summary, rows, rejects = _prepare(tmp_path / "out", data, masks="masks/{stem}.png")
    # the masks are annotations, not images of the class folder they sit in, nor files left out
    assert set(rows) == {f"data/Malignant/m{k}.png" for k in range(4)} | {f"data/Normal/n{k}.png" for k in range(4)}
    assert summary["ignored_files"] == {}
    assert summary["annotations"] == _counts(3, 0, 0) and rejects == []
    assert rows["data/Malignant/m0.png"]["lesion_annotation"] == str((data / "Malignant/masks/m0.png").resolve())
    assert rows["data/Malignant/m3.png"]["lesion_annotation"] == rows["data/Normal/n0.png"]["lesion_annotation"] == ""


def test_masks_pattern_with_polygon_json_and_kind_placeholder(tmp_path):
    data = tmp_path / "data"
    tumours = _images(data / "Malignant", [f"m{k}.png" for k in range(3)], seed=1)
    _images(data / "Normal", ["n0.png", "n1.png"], seed=0)
    full = [[0, 0], [64, 0], [64, 64], [0, 64]]
    for p in tumours:
        for kind, poly in (("lesion", disc_polygon((30, 30), 9)), ("liver", full)):
            (tmp_path / "ann" / kind).mkdir(parents=True, exist_ok=True)
            (tmp_path / "ann" / kind / f"{p.stem}.json").write_text(json.dumps(poly))
    (tmp_path / "ann" / "fan").mkdir()
    (tmp_path / "ann" / "fan" / "n0.json").write_text(json.dumps(full))
    summary, rows, _ = _prepare(tmp_path / "out", data, masks="../../ann/{kind}/{stem}.json")
    assert summary["annotations"] == _counts(3, 3, 1)
    assert rows["data/Malignant/m2.png"]["liver_annotation"] == str((tmp_path / "ann" / "liver" / "m2.json").resolve())
    assert rows["data/Normal/n0.png"]["fan_annotation"] == str((tmp_path / "ann" / "fan" / "n0.json").resolve())


def test_pattern_without_kind_replaces_only_the_lesion_outlines_of_the_xu_layout(tmp_path):
    ds = make_xu_dataset(tmp_path / "xu", n_tumour=4, n_normal=3, size=64)
    alt = ds["root"] / "Malignant" / "alt"
    alt.mkdir()
    (alt / "2.json").write_text(json.dumps(disc_polygon((20, 20), 6)))
    summary, rows, _ = _prepare(tmp_path / "out", ds["root"], masks="../alt/{stem}.json")
    assert summary["annotations"] == _counts(1, 7, 7)
    lesions = {name for name, r in rows.items() if r["lesion_annotation"]}
    assert lesions == {"xu/Malignant/image/2.png"}
    assert rows["xu/Malignant/image/2.png"]["lesion_annotation"] == str((alt / "2.json").resolve())


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_csv_mask_columns(tmp_path):
    imgs = _images(tmp_path / "img", ["a.png", "b.png", "c.png"], seed=1) + _images(
        tmp_path / "img", ["d.png", "e.png"], seed=0
    )
    _disc_mask(tmp_path / "m" / "a_mask.png", 64)
    (tmp_path / "m" / "b.json").write_text(json.dumps(disc_polygon((30, 30), 9)))
    (tmp_path / "m" / "d_liver.json").write_text(json.dumps([[1, 1], [60, 1], [30, 60]]))
    table = [
        {"path": f"img/{p.name}", "label": "tumor" if i < 3 else "normal", "mask": "", "liver_mask": ""}
        for i, p in enumerate(imgs)
    ]
    table[0]["mask"], table[1]["mask"], table[3]["liver_mask"] = "m/a_mask.png", "m/b.json", "m/d_liver.json"
    summary, rows, rejects = _prepare(tmp_path / "out", _csv(tmp_path / "labels.csv", table))
    assert summary["annotations"] == _counts(2, 1, 0) and rejects == []
    assert rows["img/a.png"]["lesion_annotation"] == str((tmp_path / "m" / "a_mask.png").resolve())
    assert rows["img/b.png"]["lesion_annotation"] == str((tmp_path / "m" / "b.json").resolve())
    assert rows["img/c.png"]["lesion_annotation"] == "" and rows["img/d.png"]["lesion_annotation"] == ""
    assert rows["img/d.png"]["liver_annotation"] == str((tmp_path / "m" / "d_liver.json").resolve())


BAD = {
    "outside.json": ([[0, 0], [100, 0], [0, 10]], "point (100.0, 0.0) outside the 64x64 image"),
    "two.json": ([[0, 0], [10, 10]], "2 points, a polygon needs at least 3"),
    "line.json": ([[0, 0], [10, 10], [20, 20]], "encloses no area"),
    "small.png": (None, "mask is 32x32 but its image is 64x64"),
    "broken.json": ("{not json", "not valid JSON"),
    "missing.json": (None, "file not found"),
}


def test_bad_annotations_go_to_rejects_and_their_images_are_kept(tmp_path):
    names = [f"t{k}.png" for k in range(len(BAD) + 1)]
    imgs = _images(tmp_path / "img", names, seed=1) + _images(tmp_path / "img", ["n0.png", "n1.png"], seed=0)
    m = tmp_path / "m"
    m.mkdir()
    for name, (content, _) in BAD.items():
        if name == "small.png":
            _disc_mask(m / name, 32)
        elif isinstance(content, str):
            (m / name).write_text(content)
        elif content is not None:
            (m / name).write_text(json.dumps(content))
    (m / "good.json").write_text(json.dumps(disc_polygon((30, 30), 9)))
    masks = [*BAD, "good.json", "", ""]
    table = [
        {"path": str(p), "label": "tumor" if p.name[0] == "t" else "normal", "mask": f"m/{a}" if a else ""}
        for p, a in zip(imgs, masks)
    ]
    summary, rows, rejects = _prepare(tmp_path / "out", _csv(tmp_path / "labels.csv", table))

    assert summary["n_images"] == len(imgs) and summary["n_rejected"] == 0  # every image kept
    assert summary["annotations"] == _counts(1, 0, 0, rejected=len(BAD))
    assert summary["reject_reasons"] == {}
    by_file = {Path(r["path"]).name: r for r in rejects}
    assert set(by_file) == set(BAD)
    for (name, (_, fragment)), image in zip(BAD.items(), names):
        r = by_file[name]
        assert r["path"] == str((m / name).resolve())
        assert "lesion annotation rejected, the image is kept without it" in r["reason"], r
        assert fragment in r["reason"] and image in r["reason"], r
        assert rows[f"img/{image}"]["lesion_annotation"] == ""
    assert rows[f"img/{names[-1]}"]["lesion_annotation"] == str((m / "good.json").resolve())


def _old_manifest_hash(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['content_hash']},{r['class']},{r['split']},{r['group']}\n".encode())
    return h.hexdigest()


def test_manifest_hash_unchanged_without_annotations(tmp_path):
    for cls, base in (("Normal", 0), ("Malignant", 50)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for k in range(5):
            noise_image(base + k).save(tmp_path / "d" / cls / f"{k}.png")
    summary, rows, _ = _prepare(tmp_path / "out", tmp_path / "d")
    assert summary["annotations"] == _counts(0, 0, 0)
    manifest = read_csv(tmp_path / "out" / "manifest.csv")
    assert all(r[c] == "" for r in manifest for c in COLUMNS.values())
    assert summary["manifest_hash"] == _old_manifest_hash(manifest)


def test_manifest_hash_follows_annotation_content(tmp_path):
    ds = make_xu_dataset(tmp_path / "xu", n_tumour=4, n_normal=3, size=64)
    out = tmp_path / "out"
    s1, _, _ = _prepare(out, ds["root"])
    manifest1, cache1 = (out / "manifest.csv").read_bytes(), (out / "images.npy").read_bytes()
    assert s1["manifest_hash"] != _old_manifest_hash(read_csv(out / "manifest.csv"))
    s2, _, _ = _prepare(out, ds["root"], overwrite=True)
    assert s2["manifest_hash"] == s1["manifest_hash"]
    mass = ds["root"] / "Malignant" / "segmentation" / "mass" / "1.json"
    mass.write_text(json.dumps(disc_polygon((30, 30), 7)))  # still valid, different outline
    s3, _, _ = _prepare(out, ds["root"], overwrite=True)
    assert s3["manifest_hash"] != s1["manifest_hash"]
    assert (out / "manifest.csv").read_bytes() == manifest1 and (out / "images.npy").read_bytes() == cache1


def test_cli_prints_outline_counts_and_rejected_annotations(tmp_path):
    ds = make_xu_dataset(tmp_path / "xu", n_tumour=4, n_normal=3, size=64)
    (ds["root"] / "Normal" / "segmentation" / "outline" / "2.json").write_text("[[0, 0], [1, 1]]")
    r = runner.invoke(
        app, ["prepare", str(ds["root"]), "--out", str(tmp_path / "o"), "--set", "preprocess.image_size=32"]
    )
    assert r.exit_code == 0, r.output
    assert "Images with outlines: lesion 4, liver 7, fan 6" in r.stdout
    assert "1 annotation file rejected (see rejects.csv); their images were kept" in " ".join(r.stderr.split())
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["annotations"] == _counts(4, 7, 6, rejected=1) and summary["n_images"] == 7

    plain = tmp_path / "plain"
    for cls, base in (("Normal", 0), ("Malignant", 50)):
        (plain / cls).mkdir(parents=True)
        for k in range(3):
            noise_image(base + k).save(plain / cls / f"{k}.png")
    r = runner.invoke(app, ["prepare", str(plain), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "outlines" not in r.output and "annotation" not in r.output


def test_invalid_masks_pattern_is_a_one_line_error(tmp_path):
    ds = make_xu_dataset(tmp_path / "xu", n_tumour=1, n_normal=1, size=64)
    r = runner.invoke(app, ["prepare", str(ds["root"]), "-o", str(tmp_path / "o"), "--masks", "m/{stm}.png"])
    one_line_error(r, "data.masks 'm/{stm}.png' is not a valid pattern", code=2)  # a bad --masks: a usage error
    r = runner.invoke(app, ["prepare", str(ds["root"]), "-o", str(tmp_path / "o"), "--masks", "m/all.png"])
    one_line_error(r, "must contain {stem} or {name}", code=2)
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="--masks"):
        _prepare(tmp_path / "o2", ds["root"], masks="{kind")
