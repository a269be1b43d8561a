"""The interface every labeling engine implements, and how engines plug into the labeling loop.

An engine turns one image and its boxes into one mask (and a score) per box. Reading and validating
the COCO file, reading images in worker processes, the progress bar, chunked output, shards and
resume are the same for every engine and for the MAL model (:func:`mal.labeling.loop.label_in_chunks`);
:class:`EngineLabeler` adds what is engine-specific: clipping masks to their boxes and fallbacks
(:func:`mal.predictor.engine_masks`, which :class:`mal.predictor.MaskPredictor` uses too).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch.utils.data import Dataset

from ..data.coco import BoxDataset, ImageGroup, load_boxes
from ..data.crops import xywh_to_xyxy
from ..data.dataset import ImageReader
from ..labeling.loop import LabelSummary, check_strict, label_in_chunks
from ..labeling.record import annotation_out
from ..predictor import engine_masks

log = logging.getLogger("mal")

__all__ = ["Engine", "EngineLabeler", "engine_identity", "label_with_engine"]


@runtime_checkable
class Engine(Protocol):
    """A zero-shot box -> mask labeler."""

    name: str

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """image HxWx3 uint8 RGB; boxes (N,4) float x0,y0,x1,y1 pixel-edge coords.
        Returns N boolean HxW masks and N scores in [0,1]."""
        ...


class EngineLabeler:
    """An :class:`Engine` as a :class:`mal.labeling.loop.ImageLabeler`: one ``predict`` call per image; every
    mask clipped to its box, an empty one replaced by the filled box (score 0, flagged)."""

    def __init__(self, engine: Engine, data: BoxDataset):
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


def engine_identity(engine: Engine) -> dict:
    """What decides an engine's masks, for the job manifest: its ``identity`` dict if it has one,
    else its name and the name and size of every model file it holds (e.g. SAM's ONNX pair)."""
    ident = {"engine": getattr(engine, "name", type(engine).__name__)}
    if isinstance(getattr(engine, "identity", None), dict):
        return {**ident, **engine.identity}
    for key, value in sorted(vars(engine).items()):
        if isinstance(value, Path) and value.is_file():
            ident[key] = f"{value.name} ({value.stat().st_size} bytes)"
    return ident


def label_with_engine(engine: Engine, images: str | Path, annotations: str | Path | dict,
                      out: str | Path, *, num_workers: int = 1, skip_bad_images: bool = False,
                      progress: bool = True, shard: str | tuple[int, int] | None = None,
                      resume: bool = False, work_dir: str | Path | None = None,
                      chunk_images: int = 64, keep_parts: bool = False,
                      strict: bool = False) -> LabelSummary:
    """Give every box in ``annotations`` a mask from ``engine`` and write a COCO file to ``out``.

    Images are read in ``num_workers`` DataLoader worker processes; the engine runs in this process.
    Every mask is clipped to its box (the box is ground truth); a mask that is empty after clipping
    is replaced by the filled box, scored 0 and flagged ``"mal_fallback": "box"``. The output is the
    input COCO dict with its annotations replaced (same order), written atomically once every shard
    is done. An unreadable image raises :class:`mal.labeling.label.LabelError` naming it, unless
    ``skip_bad_images`` (then its annotations are left out and it is listed in the summary).
    ``shard``, ``resume``, ``work_dir``, ``chunk_images``, ``keep_parts``: see
    :func:`mal.labeling.loop.label_in_chunks`. ``strict``: as in :func:`mal.labeling.label.label`.
    """
    data = load_boxes(annotations, images, skip_crowd=False, strict=check_strict(strict, skip_bad_images))
    return label_in_chunks(EngineLabeler(engine, data), data, out, num_workers=num_workers,
                           skip_bad_images=skip_bad_images, progress=progress, shard=shard,
                           resume=resume, work_dir=work_dir, chunk_images=chunk_images,
                           keep_parts=keep_parts)
