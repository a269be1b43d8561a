"""The frames a whole-image labeler (view "image") sees: the whole image, or zoomed tiles of it.

SAM-style labelers encode a square frame at a fixed size S (1024) and predict masks on a grid of S/4
cells. A box's detail is therefore set by how many frame pixels it spans. When an image's boxes are small
relative to the image (nuclei in a microscope field, cars in an aerial photo), the image is cut into
overlapping square tiles, each resized to S, so that a typical box spans at least ``box_frame`` frame
pixels. The zoom follows the boxes of each image, never a data set's constants: images whose boxes are
already large enough (most photos) keep the whole-image frame.

Geometry, per image of H x W pixels with boxes of long sides b (pixels):

- tile side ``T = clamp(median(b) * S / box_frame, 4 * max(b), max(H, W))``: the median box spans
  ``box_frame`` frame pixels, and every box fits in a tile with context (T >= 4 x its side);
- tiles lie on a grid with at most T/2 between neighbours, starting at 0 and ending flush with the image's
  right and bottom edge (a tile larger than the image along an axis starts at 0 and extends past it,
  padded as SAM pads the whole-image frame);
- each box belongs to the tile whose centre is nearest its centre. Its centre is then at most T/4 from
  the tile's centre, so a box of side <= T/4 lies wholly inside with at least T/8 of context on each side.
- for labeling, boxes that would span at most ``box_frame / 2`` frame pixels in those tiles (a cup on a
  table, a distant car in a street photo) are planned again on their own, at the side their own median
  asks for, so that each box gets about the detail it needs whatever else shares its image (``nested``).
  Training keeps one side per image: on COCO photos, training on the nested frames too (996 frames instead
  of 459, the same 400 steps) labeled no better (0.757 vs 0.760 mIoU; BENCHMARKS.md).

With T = max(H, W) and no such small boxes this is exactly the whole-image frame (one tile at the origin).
"""
from __future__ import annotations

import numpy as np

from ..errors import MalError


def long_sides(boxes: np.ndarray) -> np.ndarray:
    """The longer side of each box (N, 4) x0,y0,x1,y1: what the zoom is measured on."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def tile_side(boxes_xyxy: np.ndarray, height: int, width: int, frame: int, box_frame: float) -> int:
    """The tile side T (image pixels) for an image's boxes (N, 4) x0,y0,x1,y1; ``box_frame`` <= 0: no zoom."""
    side = max(height, width)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if box_frame <= 0 or len(boxes) == 0:
        return side
    if box_frame > frame / 4:
        raise MalError(f"box_frame {box_frame:g} is more than a quarter of the {frame}-px frame: a box spans at "
                       "most a quarter of its tile (its context fills the rest)")
    long = long_sides(boxes)
    t = max(float(np.median(long)) * frame / box_frame, 4.0 * float(long.max()))
    return int(min(side, max(1, np.ceil(t))))


def tile_starts(length: int, t: int) -> np.ndarray:
    """Start offsets of tiles of side ``t`` along an axis of ``length`` pixels: 0 ... length - t, evenly
    spaced at most t/2 apart (one tile at 0 when t >= length)."""
    if t >= length:
        return np.zeros(1, dtype=np.int64)
    n = int(np.ceil((length - t) / (t / 2))) + 1
    return np.round(np.linspace(0, length - t, n)).astype(np.int64)


def plan_tiles(boxes_xyxy: np.ndarray, height: int, width: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of side ``t`` covering an H x W image and the tile of each box.

    Returns ``windows`` (M, 4) int64 x0,y0,x1,y1 of the tiles that hold at least one box (image pixels;
    x1 - x0 = y1 - y0 = t) and ``index`` (N,) int64, each box's tile in ``windows``.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    xs, ys = tile_starts(width, t), tile_starts(height, t)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = np.abs(cx[:, None] - (xs[None, :] + t / 2)).argmin(1)
    row = np.abs(cy[:, None] - (ys[None, :] + t / 2)).argmin(1)
    used, index = np.unique(row * len(xs) + col, return_inverse=True)
    r, c = np.divmod(used, len(xs))
    windows = np.stack([xs[c], ys[r], xs[c] + t, ys[r] + t], axis=1).astype(np.int64)
    return windows, index.astype(np.int64).reshape(-1)


def image_tiles(boxes_xyxy: np.ndarray, height: int, width: int, frame: int, box_frame: float,
                nested: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The frames of an image's boxes (N, 4): (windows (M, 4), index (N,)) as :func:`plan_tiles` gives them,
    at the side :func:`tile_side` picks for the boxes; ``nested``: again, at a smaller side, for the boxes
    that would span at most ``box_frame / 2`` frame pixels there (recursively)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    t = tile_side(boxes, height, width, frame, box_frame)
    small = (long_sides(boxes) * frame / t <= box_frame / 2) & (nested and box_frame > 0)
    if not small.any() or small.all():
        return plan_tiles(boxes, height, width, t)
    rest, fine = np.flatnonzero(~small), np.flatnonzero(small)
    w_rest, i_rest = image_tiles(boxes[rest], height, width, frame, box_frame)
    w_fine, i_fine = image_tiles(boxes[fine], height, width, frame, box_frame)
    index = np.empty(len(boxes), np.int64)
    index[rest], index[fine] = i_rest, i_fine + len(w_rest)
    return np.concatenate([w_rest, w_fine]), index
