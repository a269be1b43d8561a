"""Robust image reading: any common file -> H x W x 3 uint8 RGB array.

Real datasets contain grayscale scans, palette PNGs, CMYK JPEGs, 16-bit
medical/industrial images and phone photos whose pixels are stored sideways
with an EXIF orientation tag. Everything downstream expects plain 8-bit RGB in
the orientation a human sees (which is also the orientation the COCO boxes
were drawn in), so all of that is normalised here, once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "read_rgb"]


class ImageError(ValueError):
    """An image could not be read; the message always names the file."""


# Modes holding more than 8 bits per sample; Image.convert("RGB") would clip
# them to 0..255 instead of rescaling, turning most pixels white.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_depth_to_rgb(img: Image.Image) -> np.ndarray:
    """Scale a >8-bit single-channel image to uint8 and replicate to RGB."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        # True 16-bit container: keep the top 8 bits.
        out = arr.astype(np.uint16) >> 8
    else:
        # "I" (int32) and "F" (float32) do not record the real bit depth.
        # 16-bit PNGs/TIFFs often arrive as "I", so values above 255 are
        # taken as 16-bit data; float images within 0..1 (the usual float
        # convention) are stretched to 0..255; anything else is kept as is.
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
        if a.size and a.max() > 255:
            a = a / 256.0
        elif img.mode == "F" and a.size and a.min() >= 0 and 0 < a.max() <= 1:
            a = a * 255.0
        out = np.floor(a)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert an already-decoded PIL image of any mode to an RGB uint8 array."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(img)
    if img.mode in ("P", "PA"):
        # Palette transparency is dropped; going via RGBA avoids Pillow's
        # "palette images with transparency" warning and unsupported PA->RGB.
        img = img.convert("RGBA")
    # Covers L, LA, 1, RGBA (alpha simply dropped), CMYK, YCbCr, RGBX, ...
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_rgb(path: str | os.PathLike, *, orient: bool = True) -> np.ndarray:
    """Read an image file as an ``H x W x 3`` uint8 RGB array.

    With ``orient`` (default) EXIF orientation is applied, so the array matches
    what viewers (and most box annotators) display; ``orient=False`` gives the
    pixels as stored. Raises :class:`ImageError` naming the file when it is
    missing, empty, not an image, or truncated/corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file (a directory?)")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            # Force the full decode now: PIL decodes lazily, so a truncated
            # file would otherwise fail later, far from the file name.
            img.load()
            if orient:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except MemoryError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (format not recognised)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ... on bad data
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{path}: cannot decode image (truncated or corrupt?): {reason}") from exc
