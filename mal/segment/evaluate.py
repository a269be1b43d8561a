"""COCO box and mask AP of a trained segmenter on held-out images (pycocotools)."""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from ..data.coco import BoxDataset, CocoError
from ..data.dataset import ImageReader, collate_single
from ..runtime import autocast, resolve_device, resolve_precision
from .data import AGNOSTIC, load_instances
from .model import SegmenterConfig, load_segmenter

log = logging.getLogger("mal")

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predict(model: MaskRCNN, cfg: SegmenterConfig, data: BoxDataset, image_ids: set[int], *,
            device: str = "auto", precision: str = "auto", mask_threshold: float = 0.5,
            num_workers: int = 1, progress: bool = True) -> list[dict]:
    """COCO detection results (bbox xywh, RLE segmentation, score, category_id) for ``image_ids``."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    entries = [e for e in data.coco["images"] if e["id"] in image_ids]
    loader = DataLoader(ImageReader([(e, []) for e in entries], data), batch_size=1, collate_fn=collate_single,
                        num_workers=num_workers)
    results: list[dict] = []
    for item in tqdm(loader, total=len(entries), desc="segmenting", unit="img", disable=not progress):
        if "error" in item:
            raise CocoError(item["error"])
        image = torch.from_numpy(np.array(item["pixels"])).permute(2, 0, 1).float() / 255
        with torch.inference_mode(), autocast(dev, prec):
            out = model([image.to(dev)])[0]
        boxes = out["boxes"].float().cpu().numpy()
        if len(boxes) == 0:
            continue
        masks = (out["masks"][:, 0].float().cpu().numpy() > mask_threshold).astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for box, label, score, rle in zip(boxes, out["labels"].tolist(), out["scores"].tolist(), rles):
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = box.tolist()
            results.append({"image_id": item["image"]["id"], "category_id": cfg.categories[label - 1]["id"],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                            "segmentation": rle})
    return results


def coco_ap(gt: dict, results: list[dict], image_ids: set[int], *, class_agnostic: bool) -> dict:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} over ``image_ids`` (crowd regions are ignored
    regions, as in COCO). Class-agnostic models are scored against gt with every class -> "object"."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = [a for a in gt["annotations"] if a["image_id"] in image_ids]
    cats = gt["categories"]
    if class_agnostic:
        anns, cats = [{**a, "category_id": 1} for a in anns], AGNOSTIC
    coco_gt = COCO()
    coco_gt.dataset = {"images": [im for im in gt["images"] if im["id"] in image_ids],
                       "annotations": anns, "categories": cats}
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
        coco_gt.createIndex()
        for iou_type in ("bbox", "segm"):
            if not results:  # loadRes fails on an empty list: nothing detected is AP 0
                out[iou_type] = dict.fromkeys(METRICS, 0.0)
                continue
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType=iou_type)
            ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[iou_type] = {k: (float(v) if v >= 0 else None) for k, v in zip(METRICS, ev.stats[:6])}
    return out


def evaluate_segmenter(model: str | Path | tuple[MaskRCNN, SegmenterConfig], images: str | Path,
                       gt: str | Path | dict, *, image_ids: set[int] | None = None, device: str = "auto",
                       precision: str = "auto", num_workers: int = 1, progress: bool = True) -> dict:
    """Box and mask AP of a segmenter (run directory or (model, config)) on ``gt``'s images
    (or the subset ``image_ids``). Returns {"bbox": {...}, "segm": {...}, "images", "seconds"}."""
    t0 = time.perf_counter()
    model, cfg = load_segmenter(model) if isinstance(model, (str, Path)) else model
    data = load_instances(images, gt)
    ids = {e["id"] for e in data.coco["images"]} if image_ids is None else set(image_ids)
    results = predict(model, cfg, data, ids, device=device, precision=precision,
                      num_workers=num_workers, progress=progress)
    report = coco_ap(data.coco, results, ids, class_agnostic=cfg.class_agnostic)
    report.update(images=len(ids), detections=len(results), seconds=round(time.perf_counter() - t0, 1))
    return report


def format_ap(report: dict) -> str:
    rows = [f"{'':6}" + "".join(f"{k:>8}" for k in METRICS)]
    for t in ("bbox", "segm"):
        rows.append(f"{t:6}" + "".join(f"{'-' if v is None else f'{v:.3f}':>8}" for v in report[t].values()))
    return "\n".join(rows)
