"""The interface every labeling engine implements, and how engines label a COCO file.

An engine turns one image and its boxes into one mask (and a score) per box. Reading and validating
the COCO file, reading images in worker processes, the progress bar, chunked output, shards and
resume are the same for every engine and for the MAL model (:func:`mal.labeling.label.label`, which
:func:`label_with_engine` calls); :class:`mal.labeling.labelers.EngineLabeler` adds what is
engine-specific: clipping masks to their boxes and fallbacks (:func:`mal.predictor.engine_masks`,
which :class:`mal.predictor.MaskPredictor` uses too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..labeling.label import label
from ..labeling.loop import LabelSummary

__all__ = ["Engine", "label_with_engine"]


@runtime_checkable
class Engine(Protocol):
    """A zero-shot box -> mask labeler."""

    name: str

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """image HxWx3 uint8 RGB; boxes (N,4) float x0,y0,x1,y1 pixel-edge coords.
        Returns N boolean HxW masks and N scores in [0,1]."""
        ...


def label_with_engine(engine: Engine, images: str | Path, annotations: str | Path | dict,
                      out: str | Path, *, num_workers: int = 1, skip_bad_images: bool = False,
                      progress: bool = True, shard: str | tuple[int, int] | None = None,
                      resume: bool = False, work_dir: str | Path | None = None,
                      chunk_images: int = 64, keep_parts: bool = False,
                      strict: bool = False, keep_masks: str | Path | dict | list | None = None) -> LabelSummary:
    """Give every box in ``annotations`` a mask from ``engine`` and write a COCO file to ``out``.

    Images are read in ``num_workers`` DataLoader worker processes; the engine runs in this process.
    Every mask is clipped to its box (the box is ground truth); a mask that is empty after clipping
    is replaced by the filled box, scored 0 and flagged ``"mal_fallback": "box"``. The output is the
    input COCO dict with its annotations replaced (same order), written atomically once every shard
    is done. An unreadable image raises :class:`mal.labeling.label.LabelError` naming it, unless
    ``skip_bad_images`` (then its annotations are left out and it is listed in the summary).
    ``shard``, ``resume``, ``work_dir``, ``chunk_images``, ``keep_parts``: see
    :func:`mal.labeling.loop.label_in_chunks`. ``strict``, ``keep_masks``: as in
    :func:`mal.labeling.label.label`.
    """
    return label(engine, images, annotations, out, num_workers=num_workers, skip_bad_images=skip_bad_images,
                 progress=progress, shard=shard, resume=resume, work_dir=work_dir, chunk_images=chunk_images,
                 keep_parts=keep_parts, strict=strict, keep_masks=keep_masks)
