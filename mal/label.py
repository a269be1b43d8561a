"""Label every box of a COCO file with a trained mask labeler and write a COCO file with RLE masks."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.coco import BoxDataset, load_boxes
from .data.crops import box_mask, paste_mask, xywh_to_xyxy
from .data.dataset import ImageCrops, collate_single
from .masks import encode_rle, write_json_atomic
from .modeling.labeler import MaskLabeler, load_labeler
from .runtime import autocast, resolve_device, resolve_precision

log = logging.getLogger("mal")


class LabelError(RuntimeError):
    """Labeling cannot go on (e.g. an unreadable image without --skip-bad-images)."""


@dataclass
class LabelSummary:
    out: Path
    images: int = 0
    boxes: int = 0
    fallbacks: int = 0                       # boxes whose mask came from a fallback (flagged)
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        s = (f"labeled {self.boxes} boxes in {self.images} images -> {self.out} "
             f"({self.boxes / max(self.seconds, 1e-9):.1f} boxes/s)")
        if self.fallbacks:
            s += f"; {self.fallbacks} empty masks replaced by a fallback (flagged 'mal_fallback')"
        if self.skipped_images:
            s += f"; skipped {len(self.skipped_images)} unreadable images"
        return s


def mask_from_prob(prob: np.ndarray, box_xyxy, threshold: float = 0.5) -> tuple[np.ndarray, float, str | None]:
    """Binarise a full-image probability map (already zero outside the box).

    Returns (mask, score, fallback). score = mean probability over the mask ("maskness"): high when
    the model is sure of every pixel it calls object. An empty mask is never returned: first the
    threshold is lowered to half the peak probability in the box, then the filled box is used; both
    are flagged by ``fallback`` and scored by the (low) peak probability.
    """
    mask = prob > threshold
    if mask.any():
        return mask, float(prob[mask].mean()), None
    peak = float(prob.max())
    if peak > 0:
        return prob >= 0.5 * peak, peak, "relative_threshold"
    H, W = prob.shape
    return box_mask(box_xyxy, H, W) > 0, 0.0, "box"


def annotation_out(ann: dict, mask: np.ndarray, score: float, fallback: str | None) -> dict:
    """The input annotation with ``segmentation`` (RLE), true mask ``area`` and ``score``."""
    out = {k: v for k, v in ann.items() if k != "segmentation"}
    out["segmentation"] = encode_rle(mask)
    out["area"] = int(mask.sum())
    out["score"] = round(float(np.clip(score, 0.0, 1.0)), 4)
    out.setdefault("iscrowd", 0)
    if fallback:
        out["mal_fallback"] = fallback
    return out


def skip_bad_image(item: dict, summary: LabelSummary, skip: bool, pbar) -> None:
    """An unreadable image: stop with its name (nothing written yet), or, with ``skip``, report it."""
    if not skip:
        raise LabelError(item["error"] + " (nothing was written; use --skip-bad-images to skip such "
                         "images and report them)")
    log.warning("skipping image: %s", item["error"])
    summary.skipped_images.append(item["error"])
    pbar.update(len(item["records"]))


def write_labels(data: BoxDataset, results: dict[int, dict], out: str | Path) -> None:
    """The input COCO file with its annotations replaced by ``results`` (same order), atomically.
    Annotations of skipped images are left out (they are reported in the summary)."""
    coco = {k: v for k, v in data.coco.items() if k != "annotations"}
    coco["annotations"] = [results[a["id"]] for a in data.coco["annotations"] if a["id"] in results]
    write_json_atomic(coco, out)


def label(model: MaskLabeler | str | Path, images: str | Path, annotations: str | Path | dict,
          out: str | Path, *, batch_size: int = 16, num_workers: int = 1, device: str = "auto",
          precision: str = "auto", threshold: float = 0.5, expand: float = 1.3,
          skip_bad_images: bool = False, progress: bool = True) -> LabelSummary:
    """Give every box in ``annotations`` a mask and write a COCO file to ``out``.

    Only boxes are read from the input; any ``segmentation`` there is ignored. The output keeps the
    input's images, categories and annotation ids; it is written once, atomically, at the end.
    """
    t0 = time.perf_counter()
    data: BoxDataset = load_boxes(annotations, images, skip_crowd=False)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if not isinstance(model, MaskLabeler):
        model = load_labeler(model)
    model = model.to(dev).eval()
    S = model.config.crop_size

    anns_by_id = {a["id"]: a for a in data.coco["annotations"]}
    groups = data.by_image()
    loader = DataLoader(ImageCrops(groups, data, S, expand), batch_size=1, collate_fn=collate_single,
                        num_workers=num_workers)
    summary = LabelSummary(out=Path(out))
    results: dict[int, dict] = {}
    pbar = tqdm(total=len(data.records), desc="labeling", unit="box", disable=not progress)
    pending: list[dict] = []  # images whose crops wait for a full batch (batches span images)

    def flush() -> None:
        crops = torch.cat([it["crops"] for it in pending])
        with torch.inference_mode(), autocast(dev, prec):
            probs = torch.cat([torch.sigmoid(model(c.to(dev)).float()).cpu()
                               for c in crops.split(batch_size)]).numpy()
        start = 0
        for it in pending:
            entry, records = it["image"], it["records"]
            H, W = entry["height"], entry["width"]
            for r, p, win in zip(records, probs[start:start + len(records)], it["windows"]):
                box = xywh_to_xyxy(r.bbox)
                mask, score, fb = mask_from_prob(paste_mask(p, win, H, W, box), box, threshold)
                summary.fallbacks += fb is not None
                results[r.ann_id] = annotation_out(anns_by_id[r.ann_id], mask, score, fb)
            start += len(records)
            summary.images += 1
            summary.boxes += len(records)
            pbar.update(len(records))
        pending.clear()

    for item in loader:
        if "error" in item:
            skip_bad_image(item, summary, skip_bad_images, pbar)
            continue
        pending.append(item)
        if sum(len(it["records"]) for it in pending) >= batch_size:
            flush()
    if pending:
        flush()
    pbar.close()

    write_labels(data, results, out)
    summary.seconds = time.perf_counter() - t0
    return summary

