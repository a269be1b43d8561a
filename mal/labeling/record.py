"""One annotation of the labeled COCO file ``mal label`` writes (README, "Output"): the input
annotation (``segmentation`` replaced) with the mask as compressed RLE, its true ``area``, the
labeler's ``score`` and, for a mask that came from a fallback, ``mal_fallback``."""
from __future__ import annotations

import numpy as np

from ..coco_masks import encode_rle


def annotation_out(ann: dict, mask: np.ndarray, score: float, fallback: str | None) -> dict:
    """The input annotation ``ann`` with ``segmentation`` (RLE of ``mask``, HxW bool), true mask
    ``area`` and ``score`` (clipped to [0, 1], 4 decimals); ``iscrowd`` 0 unless the input has it."""
    out = {k: v for k, v in ann.items() if k != "segmentation"}
    out["segmentation"] = encode_rle(mask)
    out["area"] = int(mask.sum())
    out["score"] = round(float(np.clip(score, 0.0, 1.0)), 4)
    out.setdefault("iscrowd", 0)
    if fallback:
        out["mal_fallback"] = fallback
    return out
