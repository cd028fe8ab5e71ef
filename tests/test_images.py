from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, write_corrupt_files
from liverscan.core.errors import ImageDecodeError
from liverscan.core.images import decode, load_image


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_png_resized_bilinear(tmp_path):
    img = noise_image(1, 100)
    p = save(img, tmp_path / "a.png")
    arr = load_image(p, size=160)
    assert arr.shape == (160, 160, 3) and arr.dtype == np.uint8
    expected = np.asarray(img.resize((160, 160), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(arr, expected)


def test_grayscale_replicated_to_three_channels(tmp_path):
    p = save(noise_image(2, 64, "L"), tmp_path / "g.png")
    arr = load_image(p, size=32)
    assert arr.shape == (32, 32, 3)
    np.testing.assert_array_equal(arr[..., 0], arr[..., 1])
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_16bit_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    p = tmp_path / "sixteen.png"
    Image.fromarray(ramp).save(p)
    arr = decode(p, size=64).array[..., 0]
    # full range preserved: darkest ~0, brightest ~255, monotone, not saturated at 255
    assert arr.min() <= 1 and arr.max() >= 254
    assert (arr == 255).mean() < 0.05
    expected = np.round(ramp / 257.0)
    assert np.abs(arr.astype(int) - expected).max() <= 1


def test_rgba_alpha_dropped(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[..., 3] = 0  # fully transparent: colours must survive
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    arr = load_image(p, size=20)
    assert tuple(arr[5, 5]) == (200, 100, 50)


def test_palette_and_cmyk(tmp_path):
    pal = noise_image(3, 40).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p1 = save(pal, tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(p1, size=40), np.asarray(pal.convert("RGB")))
    cmyk = Image.new("CMYK", (30, 30), (0, 255, 255, 0))  # pure red
    p2 = save(cmyk, tmp_path / "c.jpg", quality=95)
    arr = load_image(p2, size=30)
    assert arr[15, 15, 0] > 200 and arr[15, 15, 1] < 60 and arr[15, 15, 2] < 60


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white, landscape 80x40
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    d = decode(p, size=40)
    assert (d.width, d.height) == (40, 80)  # portrait after orientation
    top, bottom = d.array[:10].mean(), d.array[-10:].mean()
    assert top > 200 and bottom < 50  # white half ends up on top


def test_bmp_and_tiff_supported(tmp_path):
    img = noise_image(4, 32)
    for name in ("x.bmp", "x.tif"):
        np.testing.assert_array_equal(load_image(save(img, tmp_path / name), size=32), np.asarray(img))


def test_bytes_input_matches_file(tmp_path):
    p = save(noise_image(5, 50), tmp_path / "a.jpg", quality=90)
    np.testing.assert_array_equal(decode(p.read_bytes()).array, load_image(p))


@pytest.mark.parametrize("name", ["truncated.jpg", "empty.png", "notes.jpg", "garbage.png"])
def test_broken_files_raise_one_error_type_with_path(tmp_path, name):
    expected = write_corrupt_files(tmp_path)
    with pytest.raises(ImageDecodeError) as info:
        load_image(tmp_path / name)
    assert info.value.path.endswith(name)
    assert expected[name] in info.value.reason
    assert str(info.value).startswith(str(tmp_path / name))


def test_unsupported_format(tmp_path):
    p = tmp_path / "a.gif"
    noise_image(6, 20).save(p)
    with pytest.raises(ImageDecodeError, match="unsupported image format GIF"):
        load_image(p)


def test_decompression_bomb_guard(tmp_path):
    p = save(Image.new("L", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode(p, max_pixels=10_000)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_large_jpeg_draft_keeps_quality(tmp_path):
    img = noise_image(7, 1024)
    p = save(img, tmp_path / "big.jpg", quality=95)
    fast = load_image(p, size=160)
    full = np.asarray(img.resize((160, 160), Image.Resampling.BILINEAR))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4
    assert decode(p).width == 1024


def test_a_jpeg_decodes_at_the_smallest_dct_scale_that_keeps_twice_the_model_size(tmp_path, monkeypatch):
    from liverscan.core import images

    p = save(noise_image(3, 1024).resize((1024, 768)), tmp_path / "scan.jpg", quality=90)
    seen = []
    real = images._to_uint8_rgb
    monkeypatch.setattr(images, "_to_uint8_rgb", lambda im: seen.append(im.size) or real(im))
    decoded = decode(p, size=160)
    assert seen == [(512, 384)]  # 1/2 scale: 1/4 would leave the short side at 192 < 2 x 160
    assert (decoded.width, decoded.height) == (1024, 768)
    full = np.asarray(Image.open(p).convert("RGB").resize((160, 160), Image.Resampling.BILINEAR))
    assert np.abs(decoded.array.astype(int) - full.astype(int)).mean() < 2
    seen.clear()
    decode(p, size=96)
    assert seen == [(256, 192)]


def test_large_images_decode_close_to_the_full_path_one_at_a_time(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from liverscan.core import images

    y, x = np.mgrid[0:2600, 0:2000]
    grey = ((x // 9 + y // 7) % 256).astype(np.uint8)
    sources = {
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "palette.png": Image.fromarray(grey).convert("P"),
        "rgba.png": Image.fromarray(np.stack([grey, grey, grey, grey], -1)),
    }
    for name, im in sources.items():
        im.save(tmp_path / name)
    active, peak = {"n": 0}, {"n": 0}
    real_reduced = images._reduced

    def counting(im, size):
        active["n"] += 1
        peak["n"] = max(peak["n"], active["n"])
        try:
            out = real_reduced(im, size)
            assert max(out.size) <= 1000, "a large image was not reduced"
            return out
        finally:
            active["n"] -= 1

    monkeypatch.setattr(images, "_reduced", counting)
    with ThreadPoolExecutor(3) as pool:
        reduced = list(pool.map(lambda n: images.load_image(tmp_path / n), sources))
    assert peak["n"] == 1
    monkeypatch.setattr(images, "_reduced", real_reduced)
    monkeypatch.setattr(images, "REDUCE_ABOVE_PIXELS", 10**12)
    for name, got in zip(sources, reduced):
        full = images.load_image(tmp_path / name).astype(int)
        assert np.abs(got.astype(int) - full).mean() < 1.0, name


def test_large_images_keep_their_exif_orientation(tmp_path, monkeypatch):
    from liverscan.core import images

    y, x = np.mgrid[0:2400, 0:2000]
    grey = ((x // 9 + y // 5) % 200).astype(np.uint8)
    grey[:600, :500] = 255  # a bright corner shows where "up" is
    im = Image.fromarray(grey)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    im.save(tmp_path / "rotated.png", exif=exif.tobytes())
    reduced = images.load_image(tmp_path / "rotated.png").astype(int)
    monkeypatch.setattr(images, "REDUCE_ABOVE_PIXELS", 10**12)
    full = images.load_image(tmp_path / "rotated.png").astype(int)
    assert np.abs(reduced - full).mean() < 1.0
    assert reduced[:30, -30:].mean() > 240  # the bright corner is now top right, as the viewer shows it


def test_multi_page_tiff_pages_counted_and_read_in_order(tmp_path):
    from liverscan.core.images import decode_pages

    pages = [Image.new("L", (20 + k, 10), 40 * (k + 1)) for k in range(4)]
    pages[0].save(tmp_path / "cine.tiff", save_all=True, append_images=pages[1:])
    first = decode(tmp_path / "cine.tiff", size=8)
    assert first.pages == 4 and first.array.mean() == 40
    read = list(decode_pages(tmp_path / "cine.tiff", size=8))
    assert [(p.width, int(p.array.mean())) for p in read] == [(20, 40), (21, 80), (22, 120), (23, 160)]
    assert [p.pages for p in decode_pages((tmp_path / "cine.tiff").read_bytes(), size=8)] == [4] * 4
    pages[0].save(tmp_path / "one.png")
    assert [p.pages for p in decode_pages(tmp_path / "one.png", size=8)] == [1]
