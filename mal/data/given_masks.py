"""Human masks for some of the boxes (``mal train --masks FILE [FILE ...]``, ``mal label --keep-masks
FILE [FILE ...]``): read, matched to the boxes, checked.

A masks file is a COCO file (polygons or RLE) whose annotations are some of the boxes file's, by
annotation id, on the same image with the same box: e.g. a pilot's hand-drawn polygons, or the output
of ``mal import`` after a review. Every problem is a one-line :class:`MalError` naming the annotation,
raised before any training starts. ``mal_reviewed`` (written by ``mal import``) is true where a person
changed the mask; ``reviewed_only`` keeps only those. Several files (review rounds) are read in order:
a box's mask in a later file replaces the one in an earlier file (with ``reviewed_only``, a later mask
not marked reviewed is left out first, so it replaces nothing).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from ..coco_masks import BBOX_TOL, load_coco, to_rle
from ..errors import MalError
from .coco import BoxDataset, dict_sha256


@dataclass(frozen=True)
class GivenMasks:
    """``rles``: annotation id -> compressed COCO RLE at its image's size; ``sha256`` of the file's
    canonical JSON (of the files' hashes in order, for several; what --resume checks), ``source`` its
    name(s), ``reviewed_only`` how it was read."""
    rles: dict
    source: str
    sha256: str
    reviewed_only: bool = False

    def identity(self) -> dict:
        """What makes two runs' masks the same (saved with the run, compared by --resume)."""
        return {"sha256": self.sha256, "reviewed_only": self.reviewed_only, "count": len(self.rles)}

    def decode(self, ann_id: int) -> np.ndarray | None:
        """The HxW bool mask of box ``ann_id``, or None when it has none."""
        rle = self.rles.get(ann_id)
        return None if rle is None else mask_utils.decode(rle).astype(bool)


def load_given_masks(src: str | os.PathLike | dict | list | tuple, data: BoxDataset, *,
                     reviewed_only: bool = False) -> GivenMasks:
    """Read the masks file ``src`` (path or COCO dict), or several in order (a list: a later file's mask
    for a box replaces an earlier file's), against the training boxes ``data``."""
    srcs = list(src) if isinstance(src, (list, tuple)) else [src]
    rles: dict = {}
    names, hashes = [], []
    for one in srcs:
        coco, name = load_coco(one, "masks")
        rles.update(_read_masks(coco, name, data, reviewed_only))
        names.append(name)
        hashes.append(dict_sha256(coco))
    if not rles:
        which = " marked mal_reviewed: true" if reviewed_only else ""
        raise MalError(f"{', '.join(names)}: no masks{which} in {'it' if len(names) == 1 else 'them'}")
    sha = hashes[0] if len(hashes) == 1 else dict_sha256(hashes)  # one file: the same identity as ever
    return GivenMasks(rles, ", ".join(names), sha, reviewed_only)


def _read_masks(coco: dict, name: str, data: BoxDataset, reviewed_only: bool) -> dict:
    """One masks file's ``{annotation id: RLE}``, each checked against its box in ``data``."""
    boxes = {r.ann_id: r for r in data.records}
    rles: dict = {}
    for a in coco["annotations"]:
        aid = a.get("id") if isinstance(a, dict) else None
        if aid is None:
            raise MalError(f"{name}: an annotation has no 'id'")
        if reviewed_only and a.get("mal_reviewed") is not True:
            continue
        r = boxes.get(aid)
        if r is None:
            raise MalError(f"{name}: annotation {aid} is not a box of {data.source} "
                           "(an unknown id, or, for mal train, a crowd region)")
        if aid in rles:
            raise MalError(f"{name}: annotation {aid} appears twice")
        if a.get("image_id") != r.image_id:
            raise MalError(f"{name}: annotation {aid} is on image {a.get('image_id')!r}, "
                           f"in {data.source} on image {r.image_id}")
        bbox, want = a.get("bbox"), r.ann["bbox"]
        if not _same_box(bbox, want):
            raise MalError(f"{name}: annotation {aid} has box {bbox} but {want} in {data.source}: "
                           "a mask must belong to the same box")
        rles[aid] = to_rle(a.get("segmentation"), r.height, r.width, aid, name)  # checks the RLE's size
        try:  # here, not in a loader worker mid-run
            mask_utils.decode(rles[aid])
        except Exception as e:  # pycocotools' ValueError, or anything else on garbage
            raise MalError(f"{name}: annotation {aid}: cannot decode its RLE: {e}") from e
    return rles


def _same_box(a, b) -> bool:
    """Two COCO boxes equal within BBOX_TOL px (anything that is not 4 numbers is not the same box)."""
    try:
        return len(a) == len(b) == 4 and all(abs(float(x) - float(y)) <= BBOX_TOL for x, y in zip(a, b))
    except (TypeError, ValueError):
        return False
