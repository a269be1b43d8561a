"""read_rgb: every common mode/format becomes H x W x 3 uint8 RGB; bad files name themselves."""

from __future__ import annotations

import io
import numpy as np
import pytest
from PIL import Image

from mal.data.images import ImageError, read_rgb


def _check(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)


def test_rgb_jpeg(tmp_path):
    p = tmp_path / "rgb.jpg"
    Image.new("RGB", (12, 8), (200, 30, 40)).save(p, quality=95)
    arr = read_rgb(p)
    _check(arr, 8, 12)
    assert np.allclose(arr[4, 6], (200, 30, 40), atol=6)


def test_grayscale_png(tmp_path):
    p = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 77, np.uint8), mode="L").save(p)
    arr = read_rgb(p)
    _check(arr, 5, 7)
    assert (arr == 77).all()


def test_rgba_png_drops_alpha(tmp_path):
    p = tmp_path / "rgba.png"
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(p)
    arr = read_rgb(p)
    _check(arr, 4, 6)
    assert (arr == (10, 20, 30)).all()


def test_palette_png(tmp_path):
    p = tmp_path / "pal.png"
    img = Image.new("P", (4, 3), 1)
    img.putpalette([0, 0, 0, 255, 128, 0] + [0] * (254 * 3))
    img.save(p)
    arr = read_rgb(p)
    _check(arr, 3, 4)
    assert (arr == (255, 128, 0)).all()


def test_16bit_png_scaled_by_bit_depth(tmp_path):
    p = tmp_path / "g16.png"
    vals = np.array([[0, 255, 256, 4096, 65535]], np.uint16)
    Image.fromarray(vals).save(p)
    arr = read_rgb(p)
    _check(arr, 1, 5)
    assert arr[0, :, 0].tolist() == [0, 0, 1, 16, 255]
    assert (arr[..., 0] == arr[..., 2]).all()


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (9, 6), (0, 0, 0, 0)).save(p)  # no ink -> white
    arr = read_rgb(p)
    _check(arr, 6, 9)
    assert arr.min() >= 245


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees
    img.save(p, exif=exif)
    _check(read_rgb(p), 20, 10)


def test_truncated_jpeg(tmp_path):
    src = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src)
    data = src.read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="trunc.jpg: cannot decode image"):
        read_rgb(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("definitely not a PNG")
    with pytest.raises(ImageError, match="notes.png: not an image file"):
        read_rgb(p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg: file not found"):
        read_rgb(p)


def test_la_and_palette_with_transparency(tmp_path):
    Image.new("LA", (5, 4), (100, 0)).save(tmp_path / "la.png")
    assert (read_rgb(tmp_path / "la.png") == 100).all()
    img = Image.new("P", (5, 4), 1)
    img.putpalette([0, 0, 0, 255, 128, 0] + [0] * (254 * 3))
    img.save(tmp_path / "pt.png", transparency=1)  # the colour itself is fully transparent
    assert (read_rgb(tmp_path / "pt.png") == (255, 128, 0)).all()


@pytest.mark.parametrize("values, mode_note, expected", [
    (np.full((3, 4), 100, np.int32), "32-bit ints within 0..255 kept", 100),
    (np.full((3, 4), 40000, np.int32), "32-bit ints above 255 read as 16-bit", 156),
    (np.full((3, 4), 0.5, np.float32), "float within 0..1 stretched", 127),
    (np.full((3, 4), 200.0, np.float32), "float above 1 kept", 200),
    (np.full((3, 4), 40000, np.dtype(">u2")), "big-endian 16-bit", 156),
])
def test_high_depth_tiff(tmp_path, values, mode_note, expected):
    p = tmp_path / "x.tif"
    Image.fromarray(values).save(p)
    arr = read_rgb(p)
    _check(arr, 3, 4)
    assert (arr == expected).all(), mode_note


@pytest.mark.parametrize("orientation, upright_marker", [
    # The stored 20x10 image has a white top-left pixel; where viewers show it (row, col) after the tag.
    (1, (0, 0)), (2, (0, 19)), (3, (9, 19)), (4, (9, 0)),
    (5, (0, 0)), (6, (0, 9)), (7, (19, 9)), (8, (19, 0)),
])
def test_every_exif_orientation(tmp_path, orientation, upright_marker):
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:2, :2] = 255
    p = tmp_path / "o.png"  # lossless, so the marker pixel is exact
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(p, exif=exif)
    arr = read_rgb(p)
    assert arr.shape[:2] == ((10, 20) if orientation <= 4 else (20, 10))
    assert (arr[upright_marker] == 255).all()
    assert np.array_equal(read_rgb(p, orient=False), stored)  # as stored


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: p.write_text("GIF89a but not really"), "not an image file"),
    (lambda p: p.write_bytes(_png_bytes()[:60] + bytes(200) + _png_bytes()[260:]), "cannot decode image"),
])
def test_other_bad_files(tmp_path, make, message):
    p = tmp_path / "bad.gif"
    make(p)
    with pytest.raises(ImageError) as e:
        read_rgb(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value)


def test_truncated_png(tmp_path):
    src = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src)
    p = tmp_path / "cut.png"
    p.write_bytes(src.read_bytes()[:-200])
    with pytest.raises(ImageError, match="cut.png: cannot decode image .truncated or corrupt"):
        read_rgb(p)
