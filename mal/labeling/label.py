"""Label every box of a COCO file with a trained MAL labeler (:func:`label`) and write a COCO file
with RLE masks.

:class:`ModelLabeler` adapts the model to the labeling loop (:func:`mal.labeling.loop.label_in_chunks`,
which also serves the engines and does chunks, shards and resume); the masks are
:mod:`mal.predictor`'s. The public names of labeling are importable from here: :func:`label`,
:func:`merge`, :class:`LabelError`, :class:`LabelSummary`, :func:`annotation_out` (the output
format, :mod:`mal.labeling.record`) and :func:`weights_sha256` (the model's identity, :mod:`mal.labeling.manifest`).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data.coco import BoxDataset, ImageGroup, load_boxes
from ..data.crops import xywh_to_xyxy
from ..data.dataset import ImageCrops
from .manifest import weights_sha256
from .loop import LabelError, LabelSummary, check_strict, label_in_chunks, merge
from ..modeling.labeler import MaskLabeler, is_labeler, load_labeler
from .record import annotation_out
from ..predictor import decode_maps, to_mask
from ..runtime import resolve_device, resolve_precision

__all__ = ["LabelError", "LabelSummary", "ModelLabeler", "annotation_out", "label", "merge",
           "weights_sha256"]


class ModelLabeler:
    """The trained MAL model as an :class:`~mal.labeling.loop.ImageLabeler`: the crops of every image
    (one per box, or the whole image for view "image"), encoded and decoded in batches of
    ``batch_size`` that span images, pasted back and thresholded; scored by SAM's IoU head when the
    model has one."""

    name = "mal"

    def __init__(self, model: MaskLabeler, data: BoxDataset, device: torch.device, precision: str,
                 batch_size: int, threshold: float, expand: float):
        self.model, self.data, self.device, self.precision = model, data, device, precision
        self.batch_size, self.threshold, self.expand = batch_size, threshold, expand
        self.pending: list[dict] = []  # images whose crops wait for a full batch
        self.identity = {"model": "mal", "weights_sha256": weights_sha256(model),
                         "config": asdict(model.config), "threshold": threshold, "expand": expand}

    def dataset(self, groups: list[ImageGroup]) -> Dataset:
        cfg = self.model.config
        return ImageCrops(groups, self.data, cfg.crop_size, self.expand, cfg.view, cfg.box_frame)

    def add(self, item: dict) -> list[dict]:
        self.pending.append(item)
        if sum(len(it["records"]) for it in self.pending) >= self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[dict]:
        if not self.pending:
            return []
        maps, ious = decode_maps(self.model, self.pending, self.device, self.precision, self.batch_size)
        frame = self.model.config.crop_size if self.model.config.view == "image" else None
        out, j = [], 0
        for it in self.pending:
            H, W = it["image"]["height"], it["image"]["width"]
            for r, win in zip(it["records"], it["windows"]):
                mask, score, fb = to_mask(maps[j], win, xywh_to_xyxy(r.bbox), H, W, self.threshold,
                                          None if ious is None else ious[j], frame)
                out.append(annotation_out(r.ann, mask, score, fb))
                j += 1
        self.pending.clear()
        return out


def label(model: MaskLabeler | str | Path, images: str | Path, annotations: str | Path | dict,
          out: str | Path, *, batch_size: int = 16, num_workers: int = 1, device: str = "auto",
          precision: str = "auto", threshold: float = 0.5, expand: float | None = None,
          skip_bad_images: bool = False, progress: bool = True,
          shard: str | tuple[int, int] | None = None, resume: bool = False,
          work_dir: str | Path | None = None, chunk_images: int = 64,
          keep_parts: bool = False, strict: bool = False) -> LabelSummary:
    """Give every box in ``annotations`` a mask and write a COCO file to ``out``.

    Only boxes are read from the input; any ``segmentation`` there is ignored. The output keeps the
    input's images, categories and annotation ids, and is written atomically once every shard is
    done. ``shard``, ``resume``, ``work_dir``, ``chunk_images`` and ``keep_parts``: see
    :func:`~mal.labeling.loop.label_in_chunks`. ``strict``: every skip or fallback on bad input (a
    clipped box, an image whose COCO size is its stored, un-rotated size) is an error.
    """
    data = load_boxes(annotations, images, skip_crowd=False, strict=check_strict(strict, skip_bad_images))
    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per local process
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if not is_labeler(model):
        model = load_labeler(model)
    model = model.to(dev).eval()
    expand = model.config.label_expand if expand is None else expand
    labeler = ModelLabeler(model, data, dev, prec, batch_size, threshold, expand)
    return label_in_chunks(labeler, data, out, num_workers=num_workers, skip_bad_images=skip_bad_images,
                           progress=progress, shard=shard, resume=resume, work_dir=work_dir,
                           chunk_images=chunk_images, keep_parts=keep_parts)
