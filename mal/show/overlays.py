"""The page's pictures: a PNG per (row, file), the crop around the box with the mask tinted and outlined."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..coco_masks import to_rle
from ..data.images import ImageError, read_sized_image
from .rows import Row

__all__ = ["ALPHA", "BOX_RGB", "EXPAND", "MASK_RGB", "THUMB", "overlay", "overlay_name", "write_overlays"]

THUMB = 256  # overlay long side, px
EXPAND = 1.3  # context: crop = box scaled by this around its centre (a viewing choice, not the labeler's)
MIN_SIDE = 8.0  # px: a tiny box still gets some context around it
MASK_RGB = (255, 0, 255)  # translucent fill + contour
BOX_RGB = (255, 220, 0)  # box outline
ALPHA = 0.5


def _crop_box(bbox, h: int, w: int) -> tuple[int, int, int, int]:
    """Box [x, y, bw, bh] expanded EXPAND x around its centre (at least MIN_SIDE px), clipped to the
    (h, w) image -> x0, y0, x1, y1 (non-empty).

    Not :func:`mal.data.crops.expand_box`: this window must stay inside the image (it slices pixels;
    the labeler's may leave it and is filled), needs the minimum side, and is centred at ``x + bw / 2``:
    expand_box's ``(x0 + x1) / 2`` from xyxy rounds differently on about 1 in 3,000 fractional COCO
    boxes (measured), which would move those overlays by a pixel.
    """
    x, y, bw, bh = (float(v) for v in bbox)
    cx, cy = x + bw / 2, y + bh / 2
    hw, hh = max(bw * EXPAND, MIN_SIDE) / 2, max(bh * EXPAND, MIN_SIDE) / 2
    x0, y0 = int(np.clip(np.floor(cx - hw), 0, w - 1)), int(np.clip(np.floor(cy - hh), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(cx + hw), x0 + 1, w)), int(np.clip(np.ceil(cy + hh), y0 + 1, h))
    return x0, y0, x1, y1


def overlay(img: np.ndarray, mask: np.ndarray | None, bbox) -> np.ndarray:
    """(h, w, 3) uint8 RGB image, (h, w) bool mask or None, [x, y, w, h] box or None (whole image) ->
    BGR thumbnail (long side THUMB) of the crop around the box, the mask tinted and outlined, the box drawn."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = _crop_box(bbox, h, w) if bbox is not None else (0, 0, w, h)
    crop = img[y0:y1, x0:x1]
    s = THUMB / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    out = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    colour, box_colour = MASK_RGB[::-1], BOX_RGB[::-1]
    if mask is not None:
        m = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        tint = np.array(colour, np.float32)
        out[m] = (out[m].astype(np.float32) * (1 - ALPHA) + tint * ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        # A dark halo under each line keeps it visible on any background colour.
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3)
        cv2.drawContours(out, contours, -1, colour, 1)
    if bbox is not None:
        bx, by, bw, bh = (float(v) for v in bbox)
        p0 = (int(round((bx - x0) * s)), int(round((by - y0) * s)))
        p1 = (int(round((bx + bw - x0) * s)) - 1, int(round((by + bh - y0) * s)) - 1)
        cv2.rectangle(out, p0, p1, (0, 0, 0), 3)
        cv2.rectangle(out, p0, p1, box_colour, 1)
    return out


def overlay_name(i: int, row: Row, column: int | str) -> str:
    """File name (under overlays/) of row ``i``'s picture for prediction file ``column`` or "gt"."""
    stem = f"{i:05d}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(row.id))[:40]}"  # ids are any JSON value
    return f"{stem}_gt.png" if column == "gt" else f"{stem}_p{column}.png"


def _read(images_dir: Path, im: dict) -> tuple[np.ndarray, str | None]:
    """An image's pixels as `mal label` reads them, and its EXIF warning if any; ImageError if unusable."""
    item = read_sized_image(images_dir / im["file_name"], im["width"], im["height"])
    if "error" in item:
        raise ImageError(item["error"])
    return item["pixels"], item.get("warning")


def write_overlays(rows: list[Row], order: list[int], images: dict, images_dir: Path, rles: list[dict],
                   gt_anns: dict | None, ov_dir: Path) -> list[str]:
    """PNGs (:func:`overlay_name`) of the rows in ``order``, one per file in ``rles`` (and the ground
    truth ``gt_anns``, ``{annotation id: annotation}``), reading each image once. Returns the images'
    EXIF warnings."""
    by_image: dict[Any, list[int]] = defaultdict(list)
    for i in order:
        by_image[rows[i].image_id].append(i)
    warnings = []
    for iid, idxs in by_image.items():
        img, warning = _read(images_dir, images[iid])
        if warning:
            warnings.append(warning)
        for i in idxs:
            r = rows[i]
            for j, masks in enumerate(rles):
                mask = mask_utils.decode(masks[r.id]).astype(bool)
                cv2.imwrite(str(ov_dir / overlay_name(i, r, j)), overlay(img, mask, r.bbox))
            if gt_anns is not None:
                seg = gt_anns[r.id].get("segmentation")
                gm = mask_utils.decode(to_rle(seg, img.shape[0], img.shape[1], r.id, "ground truth")).astype(bool)
                cv2.imwrite(str(ov_dir / overlay_name(i, r, "gt")), overlay(img, gm, r.bbox))
    return warnings
