"""What labels the images of a job, as the loop's :class:`~mal.labeling.loop.ImageLabeler`: the trained
MAL model (:class:`ModelLabeler`, its masks :mod:`mal.predictor`'s) or any engine
(:class:`EngineLabeler`); and each one's identity, which the job's manifest records
(:func:`weights_sha256`, :func:`engine_identity`)."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.coco import BoxDataset, ImageGroup
from ..data.crops import xywh_to_xyxy
from ..data.dataset import ImageCrops, ImageReader
from ..modeling.labeler import MaskLabeler
from ..modeling.load import is_labeler, load_labeler
from ..predictor import engine_masks, item_masks
from ..runtime import resolve_device, resolve_precision, tensors_sha256
from .record import annotation_out


def is_engine(labeler) -> bool:
    """An engine (:class:`mal.engines.Engine`: ``predict(image, boxes)``), not a trained labeler or a
    path to one."""
    return not is_labeler(labeler) and callable(getattr(labeler, "predict", None))


class ModelLabeler:
    """The trained MAL model as an :class:`~mal.labeling.loop.ImageLabeler`: the crops of every image
    (one per box, or the whole image for view "image"), encoded and decoded in batches of
    ``batch_size`` that span images, pasted back and thresholded; scored by SAM's IoU head when the
    model has one (:func:`mal.predictor.item_masks`). ``tta``: see :func:`mal.labeling.label.label`."""

    name = "mal"

    def __init__(self, model: MaskLabeler, data: BoxDataset, device: torch.device, precision: str,
                 batch_size: int, threshold: float, expand: float, tta: bool = False):
        self.model, self.data, self.device, self.precision = model, data, device, precision
        self.batch_size, self.threshold, self.expand, self.tta = batch_size, threshold, expand, tta
        self.pending: list[dict] = []  # images whose crops wait for a full batch
        self.identity = {"model": "mal", "weights_sha256": weights_sha256(model),
                         "config": asdict(model.config), "threshold": threshold, "expand": expand,
                         **({"tta": "flip"} if tta else {})}  # absent when off: older jobs resume

    @classmethod
    def load(cls, model: MaskLabeler | str | Path, data: BoxDataset, *, device: str, precision: str,
             batch_size: int, threshold: float, expand: float | None, tta: bool = False) -> "ModelLabeler":
        """``model`` (a labeler, or a path :func:`~mal.modeling.load.load_labeler` reads) on
        ``device`` ("auto": under torchrun, this process's GPU) in eval mode; ``expand`` None: the
        model's ``label_expand``."""
        if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per local process
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        if not is_labeler(model):
            model = load_labeler(model)
        model = model.to(dev).eval()
        expand = model.config.label_expand if expand is None else expand
        return cls(model, data, dev, prec, batch_size, threshold, expand, tta)

    def dataset(self, groups: list[ImageGroup]) -> Dataset:
        cfg = self.model.config
        return ImageCrops(groups, self.data, cfg.crop_size, self.expand, cfg.view, cfg.box_frame, self.tta)

    def add(self, item: dict) -> list[dict]:
        self.pending.append(item)
        if sum(len(it["records"]) for it in self.pending) >= self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[dict]:
        if not self.pending:
            return []
        records = [r for it in self.pending for r in it["records"]]
        results = item_masks(self.model, self.pending, self.device, self.precision, self.batch_size, self.threshold)
        out = [annotation_out(r.ann, *res) for r, res in zip(records, results)]
        self.pending.clear()
        return out


class EngineLabeler:
    """An engine (:class:`mal.engines.Engine`) as an :class:`~mal.labeling.loop.ImageLabeler`: one
    ``predict`` call per image; every mask clipped to its box, an empty one replaced by the filled box
    (score 0, flagged) (:func:`mal.predictor.engine_masks`, which :class:`mal.predictor.MaskPredictor`
    uses too)."""

    def __init__(self, engine, data: BoxDataset):
        self.engine, self.data = engine, data
        self.name = getattr(engine, "name", type(engine).__name__)
        self.identity = engine_identity(engine)

    def dataset(self, groups: list[ImageGroup]) -> Dataset:
        return ImageReader(groups, self.data)

    def add(self, item: dict) -> list[dict]:
        records = item["records"]
        boxes = np.stack([xywh_to_xyxy(r.bbox) for r in records])
        results = engine_masks(self.engine, item["pixels"], boxes, item["image"]["file_name"])
        return [annotation_out(r.ann, mask, score, fb)
                for r, (mask, score, fb) in zip(records, results)]

    def flush(self) -> list[dict]:
        return []  # every image is finished by add()


def engine_identity(engine) -> dict:
    """What decides an engine's masks, for the job manifest: its ``identity`` dict if it has one,
    else its name and the name and size of every model file it holds (e.g. SAM's ONNX pair)."""
    ident = {"engine": getattr(engine, "name", type(engine).__name__)}
    if isinstance(getattr(engine, "identity", None), dict):
        return {**ident, **engine.identity}
    for key, value in sorted(vars(engine).items()):
        if isinstance(value, Path) and value.is_file():
            ident[key] = f"{value.name} ({value.stat().st_size} bytes)"
    return ident


def weights_sha256(model) -> str:
    """sha256 over a model's state dict (names and raw tensor bytes): the same weights, whatever
    file or object they came from, give the same hash (the MAL model's part of its identity); an
    ONNX export's is over its files. ``model``: a torch module or an
    :class:`~mal.modeling.onnx_labeler.OnnxLabeler`."""
    if hasattr(model, "sha256"):
        return model.sha256
    return tensors_sha256(sorted(model.state_dict().items()))
