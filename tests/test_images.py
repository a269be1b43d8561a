"""read_rgb: every common mode/format becomes H x W x 3 uint8 RGB; bad files name themselves."""

from __future__ import annotations

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
    with pytest.raises(ImageError, match="notes.png: cannot decode image"):
        read_rgb(p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg: file not found"):
        read_rgb(p)
