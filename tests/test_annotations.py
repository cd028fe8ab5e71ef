"""Lesion / liver / fan annotations: polygon JSON and mask images, validation, layout and geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from liverscan.core import annotations as ann
from liverscan.core.errors import AnnotationError, DataError


def _image(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


SQUARE = [[10, 5], [20, 5], [20, 15], [10, 15]]


def test_rasterise_takes_pixels_whose_centre_is_inside():
    mask = ann.rasterise([np.array(SQUARE, float)], 40, 30)
    assert mask.shape == (30, 40) and mask.sum() == 100
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 10, 19)
    tri = np.array([[1, 1], [15, 3], [8, 18]], float)
    assert abs(ann.rasterise([tri], 20, 20).sum() - ann.polygon_area(tri)) <= 3


def test_several_polygons_are_a_union_and_empty_list_means_nothing_there(tmp_path):
    two = [SQUARE, [[25, 20], [30, 20], [30, 25]]]
    polys = ann.read_polygons(_json(tmp_path / "a.json", two), 40, 30)
    assert len(polys) == 2
    assert ann.rasterise(polys, 40, 30).sum() > 100
    a = ann.read_annotation(_json(tmp_path / "b.json", []), 40, 30)
    assert a.empty and a.mask.shape == (30, 40)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([[1, 1], [5, 5]], "2 points, a polygon needs at least 3"),
        ([[1, 1], [2, 2], [3, 3]], "encloses no area"),
        ([[1, 1], [50, 2], [3, 9]], "point (50.0, 2.0) outside the 40x30 image"),
        ({"points": []}, "expected a list"),
        ([[1, "a"], [2, 2], [3, 1]], "[x, y] number pairs"),
        ([SQUARE, [[1, 1], [2, 2]]], "polygon 2: 2 points"),
    ],
)
def test_bad_polygons_raise_one_line_errors_naming_the_file(tmp_path, data, reason):
    path = _json(tmp_path / "bad.json", data)
    with pytest.raises(AnnotationError) as err:
        ann.read_annotation(path, 40, 30)
    message = str(err.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message
    assert isinstance(err.value, DataError)


def test_points_just_outside_are_clipped_and_broken_json_is_reported(tmp_path):
    polys = ann.read_polygons(_json(tmp_path / "edge.json", [[-1, -1], [41, 0], [40, 31]]), 40, 30)
    assert polys[0].min() == 0 and polys[0][:, 0].max() == 40 and polys[0][:, 1].max() == 30
    (tmp_path / "broken.json").write_text("[[1, 2], ")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        ann.read_annotation(tmp_path / "broken.json", 40, 30)
    with pytest.raises(AnnotationError, match="file not found"):
        ann.read_annotation(tmp_path / "missing.json", 40, 30)
    with pytest.raises(AnnotationError, match="unsupported annotation type .txt"):
        ann.read_annotation(tmp_path / "notes.txt", 40, 30)


def test_mask_images_nonzero_is_inside_and_size_must_match(tmp_path):
    arr = np.zeros((30, 40), np.uint8)
    arr[5:15, 10:20] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    a = ann.read_annotation(tmp_path / "m.png", 40, 30)
    assert a.mask.sum() == 100 and a.polygons == ()
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[0, 0, 2] = 1
    Image.fromarray(rgb).save(tmp_path / "rgb.tiff")
    assert ann.read_annotation(tmp_path / "rgb.tiff", 40, 30).mask.sum() == 1
    with pytest.raises(AnnotationError, match="mask is 40x30 but its image is 50x30"):
        ann.read_annotation(tmp_path / "m.png", 50, 30)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(AnnotationError, match="cannot read mask image"):
        ann.read_annotation(tmp_path / "junk.png", 40, 30)


def test_xu_layout_is_found_automatically(tmp_path):
    img = _image(tmp_path / "Benign" / "image" / "7.jpg")
    _json(tmp_path / "Benign" / "segmentation" / "mass" / "7.json", SQUARE)
    _json(tmp_path / "Benign" / "segmentation" / "outline" / "7.json", [[0, 0], [40, 0], [40, 30], [0, 30]])
    lesion = ann.load_annotation(img, "lesion")
    assert lesion is not None and lesion.kind == "lesion" and lesion.mask.sum() == 100
    assert (lesion.width, lesion.height) == (40, 30)
    fan = ann.load_annotation(img, "fan")
    assert fan is not None and fan.mask.all()
    assert ann.load_annotation(img, "liver") is None
    assert ann.find_annotation(_image(tmp_path / "loose" / "7.jpg"), "lesion") is None
    with pytest.raises(ValueError, match="unknown annotation kind"):
        ann.find_annotation(img, "spleen")


def test_user_pattern_relative_to_image_or_root(tmp_path):
    img = _image(tmp_path / "scans" / "a1.png")
    arr = np.zeros((30, 40), np.uint8)
    arr[:3, :3] = 1
    (tmp_path / "scans" / "masks").mkdir()
    Image.fromarray(arr).save(tmp_path / "scans" / "masks" / "a1.png")
    a = ann.load_annotation(img, pattern="masks/{stem}.png")
    assert a is not None and a.mask.sum() == 9
    (tmp_path / "labels" / "lesion").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "labels" / "lesion" / "a1.png")
    assert ann.find_annotation(img, pattern="labels/{kind}/{stem}.png", root=tmp_path) is not None
    assert ann.load_annotation(img, pattern="masks/{stem}_x.png") is None


def test_resize_by_area_and_nearest_and_tiny_regions_survive():
    mask = np.zeros((300, 400), bool)
    mask[:150, :200] = True  # the top-left quarter
    area = ann.resize_mask(mask, 16)
    assert area.shape == (16, 16) and area[:8, :8].all() and area.sum() == 64
    assert ann.resize_mask(mask, 16, "nearest")[:8, :8].all()
    cover = ann.mask_coverage(mask, 16)
    assert cover.dtype == np.float32 and abs(cover.sum() - 64) < 1e-3
    tiny = np.zeros((300, 400), bool)
    tiny[100:103, 200:203] = True
    assert ann.resize_mask(tiny, 16).sum() == 1
    assert ann.resize_mask(tiny, 16, keep_small=False).sum() == 0
    with pytest.raises(ValueError, match="unknown resize method"):
        ann.resize_mask(mask, 16, "cubic")


def test_points_map_between_input_and_original_pixels():
    pts = np.array([[0, 0], [80, 40], [160, 160]], float)
    orig = ann.to_original(pts, 720, 576, 160)
    assert np.allclose(orig, [[0, 0], [360, 144], [720, 576]])
    assert np.allclose(ann.to_input(orig, 720, 576, 160), pts)
    mask = np.zeros((576, 720), bool)
    mask[144, 360] = True
    assert ann.contains(mask, *ann.to_original(np.array([[80.01, 40.01]]), 720, 576, 160)[0])
    assert not ann.contains(mask, -1.0, 3.0)
    assert ann.pixel_centre(2, 3) == (3.5, 2.5)


def test_image_size_applies_exif_orientation(tmp_path):
    im = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    im.save(tmp_path / "r.jpg", exif=exif)
    assert ann.image_size(tmp_path / "r.jpg") == (30, 40)
    with pytest.raises(AnnotationError, match="its image cannot be opened"):
        _json(tmp_path / "Normal" / "segmentation" / "mass" / "9.json", SQUARE)
        (tmp_path / "Normal" / "image").mkdir(parents=True)
        (tmp_path / "Normal" / "image" / "9.jpg").write_bytes(b"")
        ann.load_annotation(tmp_path / "Normal" / "image" / "9.jpg")
