"""Robust image reading: any common file -> H x W x 3 uint8 RGB array.

Real datasets contain grayscale scans, palette PNGs, CMYK JPEGs, 16-bit
medical/industrial images and phone photos whose pixels are stored sideways
with an EXIF orientation tag. Everything downstream expects plain 8-bit RGB in
the orientation a human sees (which is also the orientation the COCO boxes
were drawn in), so all of that is normalised here, once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MalError

log = logging.getLogger("mal")

__all__ = ["ImageError", "read_rgb"]


class ImageError(MalError):
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


def read_sized_image(path: str | os.PathLike, width: int, height: int, *, strict: bool = False) -> dict:
    """``{"pixels": HxWx3 uint8}`` of the image at ``path`` whose COCO size is ``width`` x ``height``,
    or ``{"error": message naming the file}`` when it cannot be read or its size disagrees.

    EXIF orientation is applied (COCO sizes and boxes normally refer to the upright image, as viewers
    show it). Some annotation tools ignore the tag, though, and record the stored size: when only the
    stored pixels match the COCO size, they are used and the result carries a ``"warning"`` (an
    ``"error"`` if ``strict``), since those are the pixels the boxes were drawn on. Needs no
    :class:`BoxDataset`, so viewers (mal.show) read images exactly as labeling does."""
    W, H = int(width), int(height)
    item: dict = {}
    try:
        pixels = read_rgb(path)
        if pixels.shape[:2] == (W, H) != (H, W):
            stored = read_rgb(path, orient=False)
            if stored.shape[:2] == (H, W):
                msg = (f"{path}: its EXIF orientation turns it to {H}x{W}, but the COCO file says {W}x{H}, "
                       "its size as stored (the annotation tool ignored the orientation)")
                if strict:
                    return {"error": msg + "; not using the stored pixels because of --strict"}
                item["warning"] = msg + "; using the stored pixels, on which the boxes were drawn"
                log.warning(item["warning"])
                pixels = stored
    except ValueError as e:  # ImageError names the file
        return {"error": str(e)}
    if pixels.shape[:2] != (H, W):
        return {"error": (f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but the COCO file "
                          f"says {W}x{H}")}
    item["pixels"] = pixels
    return item


def as_rgb(image) -> np.ndarray:
    """An in-memory image (numpy HxW / HxWx1 / HxWx3 / HxWx4 of uint8 or uint16, a PIL image) or a path
    -> HxWx3 uint8 RGB, converted the way files are (:func:`read_rgb`: gray replicated, alpha dropped,
    16 bit scaled)."""
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 uint8/uint16 image, got shape {a.shape} "
                         f"and dtype {a.dtype}")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)  # as 16-bit files are read: the top 8 bits
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)))
