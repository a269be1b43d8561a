"""Helpers shared by the SAM parity tests and ``bench/mobile_sam_parity.py``: mal's masks against a
reference implementation's (segment-anything's or MobileSAM's ``SamPredictor``) on the same image and boxes."""
from __future__ import annotations

import cv2
import numpy as np

from .data.crops import box_mask

# A pixel whose reference logit lies this close to the threshold is a tie that float rounding decides (seen:
# 1.2e-7 on an AMX Xeon, where two fp32 paths sum in another order), not a difference.
TIE = 1e-5


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 image of blurred noise: edges everywhere, so random SAM weights give non-trivial masks."""
    img = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.uint8)
    return cv2.GaussianBlur(img, (15, 15), 5)


def mask_differences(mask: np.ndarray, box_xyxy, ref_logits: np.ndarray,
                     threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compare ``mask`` (HxW bool, mal's) with the reference mask ``ref_logits > threshold`` inside the box
    (mal's masks are clipped to their box by design). Returns HxW bool maps (inside, differing, ties):
    the box's pixels, the pixels that differ, and those of them that are ties (within :data:`TIE`)."""
    h, w = mask.shape
    inside = box_mask(box_xyxy, h, w) > 0
    differing = (mask != ((ref_logits > threshold) & inside)) & inside
    ties = differing & (np.abs(ref_logits - threshold) < TIE)
    return inside, differing, ties
