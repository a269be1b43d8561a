"""One annotation of the labeled COCO file ``mal label`` writes (README, "Output"): the input
annotation (``segmentation`` replaced) with the mask as compressed RLE, its true ``area``, the
labeler's ``score`` and, for a mask that came from a fallback, ``mal_fallback``; or a person's mask
(``mal label --keep-masks``), scored 1 and marked ``mal_human``."""
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


def human_annotation(ann: dict, mask: np.ndarray) -> dict:
    """An output annotation ``ann`` with a person's mask (HxW bool) in place of the labeler's: score 1,
    ``mal_human: true``, no ``mal_fallback``."""
    out = annotation_out({k: v for k, v in ann.items() if k != "mal_fallback"}, mask, 1.0, None)
    out["mal_human"] = True
    return out
