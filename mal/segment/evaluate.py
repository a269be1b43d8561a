"""COCO box and mask AP of a trained segmenter on held-out images (pycocotools), under two protocols.

- ``full``: the model's own detections (boxes, classes, scores and masks): the usual COCO AP.
- ``mask_only``: the detections are the ground-truth boxes of the evaluation images (score 1, their
  class) and the masks come from the model's mask branch on those boxes, so only the mask head is
  measured (box AP is then 1 by construction). With equal scores COCOeval ranks detections in image
  and annotation order; mask AP then mostly measures the share of masks above each IoU threshold.

A model trained on a class subset (``SegmenterConfig.category_ids``) is scored on those classes
only: other classes' ground truth is dropped before pycocotools sees it (its images stay, so
detections there are false positives, as with a COCOeval ``catIds`` restriction).
"""
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
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.models.detection.transform import resize_boxes

from ..data.coco import BoxDataset, CocoError
from ..data.dataset import ImageReader, collate_single
from ..errors import MalError
from ..evaluate import coco_max_dets, coco_summary, to_rle
from ..progress import progress as progress_bar
from ..runtime import autocast, resolve_device, resolve_precision
from .data import AGNOSTIC, load_instances
from .intervals import accumulate_ap, match_tables, weighted_means
from .model import SegmenterConfig, load_segmenter

log = logging.getLogger("mal")

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PROTOCOLS = ("full", "mask_only")


def to_coco_results(image_id: int, boxes: np.ndarray, labels, scores, masks: np.ndarray,
                    cfg: SegmenterConfig) -> list[dict]:
    """COCO results (bbox xywh, RLE segmentation, score, category_id) of one image's detections:
    ``boxes`` (N, 4) x0,y0,x1,y1, ``labels`` class indices 1..K, ``masks`` (N, H, W) binary."""
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    out = []
    for box, label, score, rle in zip(boxes.tolist(), labels, scores, rles):
        rle["counts"] = rle["counts"].decode("ascii")
        x0, y0, x1, y1 = box
        out.append({"image_id": image_id, "category_id": cfg.categories[int(label) - 1]["id"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score), "segmentation": rle})
    return out


def class_labels(cfg: SegmenterConfig, gt_categories: list[dict]) -> dict[int, int]:
    """COCO category id -> the model's class index, for every class the model was trained on."""
    if not cfg.class_agnostic:
        return {c["id"]: i + 1 for i, c in enumerate(cfg.categories)}
    return dict.fromkeys(cfg.category_ids or [c["id"] for c in gt_categories], 1)


def gt_boxes(records, labels_of: dict[int, int]) -> tuple[np.ndarray, list[int], list[int]]:
    """(boxes (N, 4) x0,y0,x1,y1, class indices, annotation ids) of an image's ground-truth records of
    kept classes."""
    kept = [r for r in records if r.category_id in labels_of]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r.bbox for r in kept)], np.float32).reshape(-1, 4)
    return boxes, [labels_of[r.category_id] for r in kept], [r.ann_id for r in kept]


def masks_for_boxes(model: MaskRCNN, image: torch.Tensor, boxes: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Mask probabilities (N, 1, H, W) of the model's mask branch on given boxes (N, 4) x0,y0,x1,y1 in
    the image's frame, for the given class indices: as torchvision's eval path, but on these boxes
    (resized into the model's frame, then masks pasted back into the original image)."""
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    size, original = images.image_sizes[0], tuple(image.shape[-2:])
    rboxes = resize_boxes(boxes, original, size)
    rh = model.roi_heads
    logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, [rboxes], images.image_sizes)))
    probs = maskrcnn_inference(logits.float(), [labels])
    return model.transform.postprocess([{"boxes": rboxes, "masks": probs[0]}], images.image_sizes,
                                       [original])[0]["masks"]


def predict(model: MaskRCNN, cfg: SegmenterConfig, data: BoxDataset, image_ids: set[int], *,
            gt_boxes_only: bool = False, device: str = "auto", precision: str = "auto",
            mask_threshold: float = 0.5, num_workers: int = 1, progress: bool = True) -> list[dict]:
    """COCO detection results for ``image_ids``: the model's own detections, or with
    ``gt_boxes_only`` its masks for the ground-truth boxes of ``data`` (score 1, their class)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    records = {e["id"]: recs for e, recs in data.groups}
    labels_of = class_labels(cfg, data.coco["categories"])
    entries = [e for e in data.coco["images"] if e["id"] in image_ids]
    loader = DataLoader(ImageReader([(e, records.get(e["id"], [])) for e in entries], data), batch_size=1,
                        collate_fn=collate_single, num_workers=num_workers)
    results: list[dict] = []
    bar = progress_bar(len(entries), desc="segmenting", unit="img", enabled=progress)
    for item in loader:
        bar.update(1)
        if "error" in item:
            raise CocoError(item["error"])
        image = (torch.from_numpy(np.array(item["pixels"])).permute(2, 0, 1).float() / 255).to(dev)
        if gt_boxes_only:
            boxes, labels, ann_ids = gt_boxes(item["records"], labels_of)
            if not len(boxes):
                continue
            with torch.inference_mode(), autocast(dev, prec):
                probs = masks_for_boxes(model, image, torch.from_numpy(boxes).to(dev),
                                        torch.tensor(labels, device=dev))
            scores = [1.0] * len(labels)
        else:
            with torch.inference_mode(), autocast(dev, prec):
                out = model([image])[0]
            if not len(out["boxes"]):
                continue
            boxes, labels, scores, probs = (out["boxes"].float().cpu().numpy(), out["labels"].tolist(),
                                            out["scores"].tolist(), out["masks"])
        masks = (probs[:, 0] > mask_threshold).cpu().numpy()  # thresholded on the device: 4x less to copy
        found = to_coco_results(item["image"]["id"], boxes, labels, scores, masks, cfg)
        if gt_boxes_only:  # the annotation each mask is for (pycocotools ignores the extra key)
            for r, ann_id in zip(found, ann_ids):
                r["gt_id"] = ann_id
        results += found
    bar.close()
    return results


def mask_ious(data: BoxDataset, results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(image id (N,), IoU (N,)) of mask-only results (``gt_id``: one per ground-truth box) with their
    human masks; their mean is the mask head's quality without AP's ranking (with equal scores, AP
    falls with the square of the share of good masks)."""
    by_id = {r.ann_id: (e, r) for e, recs in data.groups for r in recs}
    image_ids, ious = [], []
    for res in results:
        e, r = by_id[res["gt_id"]]
        gt = to_rle(r.ann["segmentation"], int(e["height"]), int(e["width"]), r.ann_id, r.file_name)
        image_ids.append(int(e["id"]))
        ious.append(mask_utils.iou([res["segmentation"]], [gt], [0])[0, 0])
    return np.array(image_ids, np.int64), np.array(ious, float)


def coco_evals(gt: dict, results: list[dict], image_ids: set[int], *, class_agnostic: bool,
               category_ids: list[int] | None = None) -> dict:
    """{"bbox": COCOeval, "segm": COCOeval} after ``evaluate()`` over ``image_ids`` (None for an
    empty result list). Crowd regions are ignored regions, as in COCO; class-agnostic models are
    scored against gt with every class -> "object"; ``category_ids`` keeps only those classes' gt."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    keep = None if category_ids is None else set(category_ids)
    anns = [a for a in gt["annotations"] if a["image_id"] in image_ids and (keep is None or a["category_id"] in keep)]
    cats = [c for c in gt["categories"] if keep is None or c["id"] in keep]
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
                out[iou_type] = None
                continue
            ev = COCOeval(coco_gt, coco_gt.loadRes(results), iouType=iou_type)
            ev.params.imgIds = sorted(image_ids)
            ev.params.maxDets = coco_max_dets(anns)
            ev.evaluate()
            out[iou_type] = ev
    return out


def summarize(evals: dict) -> dict:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} of :func:`coco_evals` (COCOeval's precision table, read at
    the largest maxDets: see :func:`mal.evaluate.coco_max_dets`)."""
    out = {}
    for iou_type, ev in evals.items():
        if ev is None:
            out[iou_type] = dict.fromkeys(METRICS, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        out[iou_type] = coco_summary(ev)
    return out


def coco_ap(gt: dict, results: list[dict], image_ids: set[int], *, class_agnostic: bool,
            category_ids: list[int] | None = None) -> dict:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} over ``image_ids`` (see :func:`coco_evals`)."""
    return summarize(coco_evals(gt, results, image_ids, class_agnostic=class_agnostic, category_ids=category_ids))


def evaluate_segmenter(model: str | Path | tuple[MaskRCNN, SegmenterConfig], images: str | Path,
                       gt: str | Path | dict, *, image_ids: set[int] | None = None, protocol: str = "full",
                       resamples: np.ndarray | None = None, device: str = "auto", precision: str = "auto",
                       num_workers: int = 1, progress: bool = True) -> dict:
    """Box and mask AP of a segmenter (run directory or (model, config)) on ``gt``'s images (or the
    subset ``image_ids``) under ``protocol`` ("full" or "mask_only", see the module doc). Returns
    {"bbox": {...}, "segm": {...}, "protocol", "images", "detections", "seconds"}; with ``resamples``
    ((B, images) weights over the sorted image ids, from intervals.resample_weights) also
    "resampled": {"bbox"/"segm": (B, 3) numpy AP, AP50, AP75 per resample; mask_only: "mIoU" (B,)}
    (not JSON: callers pop it). mask_only adds "mIoU", the masks' mean IoU with the human masks."""
    if protocol not in PROTOCOLS:
        raise MalError(f"unknown evaluation protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    t0 = time.perf_counter()
    model, cfg = load_segmenter(model) if isinstance(model, (str, Path)) else model
    data = load_instances(images, gt)
    ids = {e["id"] for e in data.coco["images"]} if image_ids is None else set(image_ids)
    results = predict(model, cfg, data, ids, gt_boxes_only=protocol == "mask_only", device=device,
                      precision=precision, num_workers=num_workers, progress=progress)
    evals = coco_evals(data.coco, results, ids, class_agnostic=cfg.class_agnostic, category_ids=cfg.category_ids)
    report = summarize(evals)
    if resamples is not None:
        report["resampled"] = {t: np.zeros((len(resamples), 3)) if ev is None else accumulate_ap(match_tables(ev), resamples)
                               for t, ev in evals.items()}
    if protocol == "mask_only":
        image_of, ious = mask_ious(data, results)
        report["mIoU"] = float(ious.mean()) if len(ious) else None
        if resamples is not None:  # the resamples' weights are over the sorted image ids
            position = {i: k for k, i in enumerate(sorted(ids))}
            report["resampled"]["mIoU"] = weighted_means(ious, [position[i] for i in image_of], resamples)
    report.update(protocol=protocol, images=len(ids), detections=len(results),
                  seconds=round(time.perf_counter() - t0, 1))
    return report


def format_ap(report: dict) -> str:
    rows = [f"{'':6}" + "".join(f"{k:>8}" for k in METRICS)]
    for t in ("bbox", "segm"):
        rows.append(f"{t:6}" + "".join(f"{'-' if v is None else f'{v:.3f}':>8}" for v in report[t].values()))
    if "mIoU" in report:  # mask_only
        miou = report["mIoU"]
        rows.append("mask mIoU with the ground truth: " + ("-" if miou is None else f"{miou:.3f}"))
    return "\n".join(rows)
