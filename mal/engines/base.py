"""The interface every labeling engine implements, and one labeling loop for all of them.

An engine turns one image and its boxes into one mask (and a score) per box. Reading and validating
the COCO file, reading images in worker processes, clipping masks to their boxes, fallbacks, the
progress bar and the atomic output are the same for every engine, so they live here once, built on
the same pieces as :func:`mal.label.label`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.coco import BoxDataset, BoxRecord, load_boxes
from ..data.crops import box_mask, xywh_to_xyxy
from ..data.dataset import collate_single, read_image_item
from ..label import LabelSummary, annotation_out, skip_bad_image, write_labels

log = logging.getLogger("mal")

__all__ = ["Engine", "label_with_engine"]


@runtime_checkable
class Engine(Protocol):
    """A zero-shot box -> mask labeler."""

    name: str

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """image HxWx3 uint8 RGB; boxes (N,4) float x0,y0,x1,y1 pixel-edge coords.
        Returns N boolean HxW masks and N scores in [0,1]."""
        ...


class _ImageReader(Dataset):
    """One item per image: the COCO entry, its records and the decoded RGB image, or ``error`` (str)
    naming the file when it cannot be read or its size disagrees with the COCO file (as
    :class:`mal.data.dataset.ImageCrops` does), so the loop can report or skip it."""

    def __init__(self, groups: list[tuple[dict, list[BoxRecord]]], data: BoxDataset):
        self.groups = groups
        self.data = data

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        entry, records = self.groups[i]
        return read_image_item(self.data, entry, records)


def _check_output(engine: Engine, masks, scores, n: int, H: int, W: int, file_name: str):
    name = getattr(engine, "name", type(engine).__name__)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(masks) != n or len(scores) != n:
        raise RuntimeError(f"engine {name!r} returned {len(masks)} masks and {len(scores)} scores "
                           f"for {n} boxes of {file_name}")
    for m in masks:
        if np.shape(m) != (H, W):
            raise RuntimeError(f"engine {name!r} returned a mask of shape {np.shape(m)} for "
                               f"{file_name}, expected {(H, W)}")
    return masks, scores


def label_with_engine(engine: Engine, images: str | Path, annotations: str | Path | dict,
                      out: str | Path, *, num_workers: int = 1, skip_bad_images: bool = False,
                      progress: bool = True) -> LabelSummary:
    """Give every box in ``annotations`` a mask from ``engine`` and write a COCO file to ``out``.

    Images are read in ``num_workers`` DataLoader worker processes; the engine runs in this process.
    Every mask is clipped to its box (the box is ground truth); a mask that is empty after clipping
    is replaced by the filled box, scored 0 and flagged ``"mal_fallback": "box"``. The output is the
    input COCO dict with its annotations replaced (same order), written once, atomically, at the end.
    An unreadable image raises :class:`mal.label.LabelError` naming it, unless ``skip_bad_images``
    (then its annotations are left out and it is listed in the summary).
    """
    t0 = time.perf_counter()
    data = load_boxes(annotations, images, skip_crowd=False)
    anns_by_id = {a["id"]: a for a in data.coco["annotations"]}
    loader = DataLoader(_ImageReader(data.by_image(), data), batch_size=1, collate_fn=collate_single,
                        num_workers=num_workers)
    summary = LabelSummary(out=Path(out))
    results: dict[int, dict] = {}
    pbar = tqdm(total=len(data.records), desc=f"labeling ({getattr(engine, 'name', 'engine')})",
                unit="box", disable=not progress)
    try:
        for item in loader:
            entry, records = item["image"], item["records"]
            if "error" in item:
                skip_bad_image(item, summary, skip_bad_images, pbar)
                continue
            H, W = int(entry["height"]), int(entry["width"])
            boxes = np.stack([xywh_to_xyxy(r.bbox) for r in records])
            masks, scores = engine.predict(item["pixels"], boxes)
            masks, scores = _check_output(engine, masks, scores, len(records), H, W, entry["file_name"])
            for r, box, m, s in zip(records, boxes, masks, scores):
                inside = box_mask(box, H, W) > 0
                mask = np.asarray(m, dtype=bool) & inside
                fallback = None
                if not mask.any():
                    mask, s, fallback = inside, 0.0, "box"
                    summary.fallbacks += 1
                results[r.ann_id] = annotation_out(anns_by_id[r.ann_id], mask, float(s), fallback)
            summary.images += 1
            summary.boxes += len(records)
            pbar.update(len(records))
    finally:
        pbar.close()

    write_labels(data, results, out)
    summary.seconds = time.perf_counter() - t0
    return summary
