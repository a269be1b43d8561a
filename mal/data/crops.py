"""Crop geometry: box expansion, crop + square resize, box mask in crop space, paste-back.

Coordinates are pixel-edge coordinates (a pixel (i, j) covers [j, j+1) x [i, i+1)), boxes are
``x0, y0, x1, y1`` floats. A crop window is an *integer* box in image pixels (it may extend past the
image); rounding the window to whole pixels makes crop -> paste-back an exact round trip.

Out-of-image pixels are filled with a constant (the ImageNet mean colour, i.e. zero after
normalisation). The official MAL code wraps around (reflects the image), which puts copies of the
object or its surroundings inside the crop; the MIL loss then sees foreground-like texture outside the
box, and the CRF target can leak onto it. A flat fill has no edges and no object colour, so it is
the neutral choice for both losses.
"""
from __future__ import annotations

import cv2
import numpy as np

# ImageNet mean in 0..255 RGB; SAM uses the same statistics.
FILL_RGB = (123.675, 116.28, 103.53)


def xywh_to_xyxy(b) -> np.ndarray:
    x, y, w, h = (float(v) for v in b)
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def mirror_boxes(boxes_xyxy: np.ndarray, width: int) -> np.ndarray:
    """Boxes (N, 4) x0,y0,x1,y1 of a ``width``-pixel image in its left-right mirror image (pixel edge
    x -> width - x; column j -> width - 1 - j)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)


def expand_box(box_xyxy, ratios) -> np.ndarray:
    """Grow a box around its centre and round outwards to an integer crop window.

    ratios: (left, top, right, bottom) scale of the half-extent on each side, e.g. 1.3 everywhere
    (labeling) or random values from :func:`random_ratios` (training). Returns int64 ``[x0, y0, x1, y1]`` with
    x1 > x0 and y1 > y0 (at least one pixel).
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
    rl, rt, rr, rb = ratios
    win = np.array([np.floor(cx - hw * rl), np.floor(cy - hh * rt),
                    np.ceil(cx + hw * rr), np.ceil(cy + hh * rb)], dtype=np.int64)
    win[2] = max(win[2], win[0] + 1)
    win[3] = max(win[3], win[1] + 1)
    return win


def random_ratios(rng: np.random.Generator, max_margin: float) -> tuple[float, float, float, float]:
    """Random per-side expansion ratios for training, paired across opposite sides.

    As in the official recipe: each side draws a margin in [0, max_margin] half-extents, and one gate g
    per axis splits them (left gets g, right 1 - g). So an axis grows by at most ``max_margin``
    half-extents in all (ratios 1..1+max_margin per side), and the box lands at a random place in
    the crop. Enough context matters: with little of it, "everything but a thin border" satisfies
    the MIL loss and the labeler degenerates into the filled box.
    """
    m = rng.uniform(0.0, max_margin, size=4)
    gx, gy = rng.uniform(size=2)
    return (1 + m[0] * gx, 1 + m[1] * gy, 1 + m[2] * (1 - gx), 1 + m[3] * (1 - gy))


def crop_and_resize(image: np.ndarray, window, size: int, fill=FILL_RGB) -> np.ndarray:
    """Cut ``window`` (int x0,y0,x1,y1, may leave the image) out of an HxWx3 uint8 image, fill the
    outside with ``fill`` (FILL_RGB), and resize it to ``size x size`` (aspect ratio is not kept, as in
    MAL). Also any HxW float map (e.g. a mask, with ``fill`` 0): see :func:`crop_mask`.
    """
    H, W = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in window)
    canvas = np.empty((y1 - y0, x1 - x0) + image.shape[2:], dtype=image.dtype)
    canvas[:] = np.round(fill).astype(np.uint8) if image.dtype == np.uint8 else fill
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    shrinking = canvas.shape[0] > size or canvas.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR  # area averaging avoids aliasing
    return cv2.resize(canvas, (size, size), interpolation=interp)


def crop_mask(mask: np.ndarray, window, size: int) -> np.ndarray:
    """An HxW mask cut to ``window`` and resized to ``size x size`` as :func:`crop_and_resize` does the
    image (0 outside the image): float32, fractional where the resize averages pixels."""
    return crop_and_resize(mask.astype(np.float32), window, size, fill=0.0)


def box_in_crop(box_xyxy, window, size: int) -> np.ndarray:
    """The box in the resized crop's pixel coordinates (float x0,y0,x1,y1)."""
    x0, y0, x1, y1 = (float(v) for v in window)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    b = np.asarray(box_xyxy, dtype=np.float64)
    return np.array([(b[0] - x0) * sx, (b[1] - y0) * sy, (b[2] - x0) * sx, (b[3] - y0) * sy])


def box_mask(box_xyxy, height: int, width: int) -> np.ndarray:
    """float32 HxW mask, 1 on pixels whose centre lies inside the box.

    At least the pixel holding the box centre is set, so a sub-pixel box still has a mask.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cols = (np.arange(width) + 0.5)
    rows = (np.arange(height) + 0.5)
    mx = (cols >= x0) & (cols < x1)
    my = (rows >= y0) & (rows < y1)
    if not mx.any():
        mx[int(np.clip((x0 + x1) / 2, 0, width - 1))] = True
    if not my.any():
        my[int(np.clip((y0 + y1) / 2, 0, height - 1))] = True
    return (my[:, None] & mx[None, :]).astype(np.float32)


def paste_mask(prob: np.ndarray, window, height: int, width: int,
               box_xyxy=None) -> np.ndarray:
    """Paste a crop-space probability map back into the full image.

    prob: h x w float map over the crop window (any resolution, e.g. the decoder's stride-4 output).
    Returns a float32 (height x width) map: resized to the window's pixel size, clipped to the image,
    and zero outside ``box_xyxy`` when given (the box is ground truth: the object cannot leave it).
    """
    x0, y0, x1, y1 = (int(v) for v in window)
    full = np.zeros((height, width), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 <= sx0 or sy1 <= sy0:
        return full
    # Resize only the part of the window that is inside the image: cheaper for big windows.
    up = cv2.resize(prob.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    full[sy0:sy1, sx0:sx1] = up[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    if box_xyxy is not None:
        full *= box_mask(box_xyxy, height, width)
    return full


def _resize_axis(src: np.ndarray, axis: int, n_in: int, n_out: int, lo: int, hi: int, first: int = 0) -> np.ndarray:
    """Samples lo..hi-1 along ``axis`` of a bilinear resize (align_corners=False, as F.interpolate and
    SAM) of an axis of ``n_in`` samples to ``n_out``, from ``src`` holding that axis's samples first.. on."""
    s = np.maximum((np.arange(lo, hi, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                   - np.float32(0.5), np.float32(0))
    i0 = np.minimum(s.astype(np.int64), n_in - 1)  # s >= 0: truncation is floor
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (s - i0).astype(np.float32).reshape((-1, 1) if axis == 0 else (1, -1))
    return np.take(src, i0 - first, axis) * (1 - lam) + np.take(src, i1 - first, axis) * lam


def _needed(n_in: int, n_out: int, lo: int, hi: int) -> tuple[int, int]:
    """The input samples (first, last + 1) that output samples lo..hi-1 of such a resize read."""
    s = lambda d: max(0.0, (d + 0.5) * (n_in / n_out) - 0.5)  # noqa: E731
    return min(int(s(lo)), n_in - 1), min(int(s(hi - 1)) + 1, n_in - 1) + 1


def upsample_in_box(low: np.ndarray, box_xyxy, resized_hw: tuple[int, int], image_hw: tuple[int, int],
                    size: int = 1024) -> np.ndarray:
    """SAM's mask postprocessing, computed only for the pixels of the box: low-res logits (n, n) over the
    padded ``size`` frame -> bilinear to ``size`` -> crop to the resized image ``resized_hw`` -> bilinear
    to ``image_hw``. Returns an HxW float32 map, that postprocessing inside the box's pixel rectangle and 0
    outside it. Separable (rows, then columns), each step reading only the samples it needs, so the cost
    is the box's, not the image's."""
    (h, w), (H, W) = resized_hw, image_hw
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    r0, r1 = max(0, int(np.floor(y0))), min(H, int(np.ceil(y1)))
    c0, c1 = max(0, int(np.floor(x0))), min(W, int(np.ceil(x1)))
    out = np.zeros((H, W), np.float32)
    if r1 <= r0 or c1 <= c0:
        return out
    low = np.asarray(low, dtype=np.float32)
    n = low.shape[-1]
    R0, R1 = _needed(h, H, r0, r1)  # rows of the size x size map that the box's image rows read
    C0, C1 = _needed(w, W, c0, c1)
    Q0, Q1 = _needed(n, size, R0, R1)  # rows of the low-res map that those read
    P0, P1 = _needed(n, size, C0, C1)
    big = _resize_axis(_resize_axis(low[Q0:Q1, P0:P1], 0, n, size, R0, R1, Q0), 1, n, size, C0, C1, P0)
    out[r0:r1, c0:c1] = _resize_axis(_resize_axis(big, 0, h, H, r0, r1, R0), 1, w, W, c0, c1, C0)
    return out
