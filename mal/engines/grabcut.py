"""GrabCut engine: OpenCV's ``cv2.grabCut`` initialised with the box, run on a padded window.

Everything outside the box is fixed background, everything inside starts as probable foreground;
GrabCut then alternates colour-GMM fitting and a graph cut. Only a window around the box (the box
plus a margin of background) is processed: the result is the same in spirit as on the whole image
and much faster for small boxes in large images.

Score (an honest proxy, not a calibrated confidence): the mean, over the mask's pixels, of the
foreground posterior under GrabCut's own two final colour models with equal priors,
``p_fg = L_fg / (L_fg + L_bg)``. It is high when the mask's colours are well explained by the
foreground model and badly by the background one (a distinct object), and near 0.5 when the two
models cannot tell them apart (camouflage, shadows), i.e. when GrabCut's answer rests on little
evidence. It ignores the smoothness term, so it says nothing about boundary accuracy. Boxes GrabCut
cannot run on (a side under 2 px, or no background pixels around the box) get the filled box with
score 0.5 ("no evidence either way" on the same scale).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..data.crops import box_mask
from ..errors import MalError

_K = 5  # OpenCV GrabCut uses 5 Gaussian components per model (bgdModel/fgdModel are 1 x 65 doubles)
_MIN_BG_PIXELS = 20  # k-means needs samples; fewer background pixels than this is no colour model


def _gmm_loglik(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log-likelihood of colours ``x`` (n,3) under an OpenCV GrabCut GMM (1 x 65: weights, means, covs)."""
    p = np.asarray(model, dtype=np.float64).reshape(-1)
    w, mu, cov = p[:_K], p[_K:4 * _K].reshape(_K, 3), p[4 * _K:13 * _K].reshape(_K, 3, 3)
    terms = []
    for k in range(_K):
        if w[k] <= 0:
            continue
        c = cov[k] + 0.01 * np.eye(3)  # OpenCV regularises near-singular covariances the same way
        inv = np.linalg.inv(c)
        _, logdet = np.linalg.slogdet(c)
        d = x - mu[k]
        maha = np.einsum("ni,ij,nj->n", d, inv, d)
        terms.append(math.log(w[k]) - 0.5 * (maha + logdet + 3 * math.log(2 * math.pi)))
    if not terms:
        return np.full(len(x), -np.inf)
    t = np.stack(terms)
    m = t.max(0)
    return m + np.log(np.exp(t - m).sum(0))


def _pixel_range(a0: float, a1: float, n: int) -> tuple[int, int]:
    """Pixels whose centre lies in [a0, a1) (as in :func:`mal.data.crops.box_mask`), clipped to [0, n)."""
    lo = min(max(int(math.ceil(a0 - 0.5)), 0), n)
    hi = min(max(int(math.ceil(a1 - 0.5)), 0), n)
    return lo, hi


class GrabCutEngine:
    name = "grabcut"

    def __init__(self, iterations: int = 5, margin: float = 0.25, min_margin: int = 10):
        """iterations: GrabCut iterations; the window around each box extends it by
        ``max(min_margin, margin * longest box side)`` pixels per side (clipped to the image)."""
        if iterations < 1:
            raise MalError(f"iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)
        self.margin = float(margin)
        self.min_margin = int(min_margin)

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        masks, scores = [], []
        for box in boxes:
            m, s = self._one(image, box)
            masks.append(m)
            scores.append(s)
        return masks, np.asarray(scores, dtype=np.float64)

    def _one(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        H, W = image.shape[:2]
        bx0, bx1 = _pixel_range(box[0], box[2], W)
        by0, by1 = _pixel_range(box[1], box[3], H)
        bw, bh = bx1 - bx0, by1 - by0
        if bw < 2 or bh < 2:
            return box_mask(box, H, W) > 0, 0.5
        pad = max(self.min_margin, int(round(self.margin * max(bw, bh))))
        wx0, wy0 = max(bx0 - pad, 0), max(by0 - pad, 0)
        wx1, wy1 = min(bx1 + pad, W), min(by1 + pad, H)
        win_area = (wx1 - wx0) * (wy1 - wy0)
        if win_area - bw * bh < _MIN_BG_PIXELS:  # the box leaves no background to learn from
            return box_mask(box, H, W) > 0, 0.5
        crop = np.ascontiguousarray(image[wy0:wy1, wx0:wx1])
        gc = np.zeros(crop.shape[:2], np.uint8)
        bgd, fgd = np.zeros((1, 13 * _K), np.float64), np.zeros((1, 13 * _K), np.float64)
        rect = (bx0 - wx0, by0 - wy0, bw, bh)
        try:
            cv2.grabCut(crop, gc, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:  # e.g. a flat window k-means cannot split
            return box_mask(box, H, W) > 0, 0.5
        fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        full = np.zeros((H, W), bool)
        full[wy0:wy1, wx0:wx1] = fg
        if not fg.any():
            return full, 0.0
        x = crop[fg].astype(np.float64)
        margin = _gmm_loglik(fgd, x) - _gmm_loglik(bgd, x)
        p_fg = 1.0 / (1.0 + np.exp(-np.clip(np.nan_to_num(margin, nan=0.0), -50, 50)))
        return full, float(np.clip(p_fg.mean(), 0.0, 1.0))
