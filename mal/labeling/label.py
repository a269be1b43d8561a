"""The labeling job's entry: :func:`label` gives every box of a COCO file a mask, from the trained MAL
labeler or any engine, and writes a COCO file with RLE masks (``mal label``, :func:`mal.api.label`,
:func:`mal.engines.label_with_engine`); :func:`merge` writes the output of a finished sharded job
(``mal merge``). The way down: :mod:`mal.labeling.labelers` -> :mod:`mal.labeling.loop` (chunks,
shards, resume, merge); the package docstring (:mod:`mal.labeling`) lists every module.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data.coco import load_boxes
from ..data.given_masks import load_given_masks
from ..errors import MalError
from ..modeling.labeler import MaskLabeler
from ..predictor import TTA_ENGINE_ERROR
from .labelers import EngineLabeler, ModelLabeler, is_engine
from .loop import LabelError, LabelSummary, label_in_chunks
from .manifest import open_for_merge
from .merge import merge_and_clean

__all__ = ["LabelError", "LabelSummary", "check_strict", "label", "merge"]


def check_strict(strict: bool, skip_bad_images: bool) -> bool:
    """``strict``, refusing it together with ``skip_bad_images``."""
    if strict and skip_bad_images:
        raise MalError("--strict and --skip-bad-images contradict each other (--strict makes every "
                         "skip an error); pass one of them")
    return strict


def label(model: MaskLabeler | str | Path, images: str | Path, annotations: str | Path | dict,
          out: str | Path, *, batch_size: int = 16, num_workers: int = 1, device: str = "auto",
          precision: str = "auto", threshold: float = 0.5, expand: float | None = None,
          skip_bad_images: bool = False, progress: bool = True,
          shard: str | tuple[int, int] | None = None, resume: bool = False,
          work_dir: str | Path | None = None, chunk_images: int = 64,
          keep_parts: bool = False, strict: bool = False, tta: bool = False,
          keep_masks: str | Path | dict | list | None = None, keep_reviewed_only: bool = False) -> LabelSummary:
    """Give every box in ``annotations`` a mask and write a COCO file to ``out``.

    ``model``: the trained labeler (a :class:`~mal.modeling.labeler.MaskLabeler`, its ONNX export, or
    a path :func:`~mal.modeling.load.load_labeler` reads), or an engine (:class:`mal.engines.Engine`,
    which ignores ``batch_size``, ``device``, ``precision``, ``threshold`` and ``expand``; see
    :func:`mal.engines.label_with_engine`). Only boxes are read from the input; any ``segmentation``
    there is ignored. The output keeps the input's images, categories and annotation ids, and is
    written atomically once every shard is done. ``shard``, ``resume``, ``work_dir``,
    ``chunk_images`` and ``keep_parts``: see :func:`~mal.labeling.loop.label_in_chunks`. ``strict``:
    every skip or fallback on bad input (a clipped box, an image whose COCO size is its stored,
    un-rotated size) is an error. ``tta`` (trained labeler only): also decode each image's left-right
    mirror and average the two probabilities; about twice the time, for slightly better masks
    (BENCHMARKS.md). ``keep_masks``: a COCO file (or dict, or a list of them: review rounds in order)
    of masks people drew or corrected for some of the boxes (read as ``mal train --masks`` reads them,
    e.g. ``mal import``'s output): those boxes get that mask as it is, scored 1 and marked
    ``mal_human``, instead of the labeler's;
    ``keep_reviewed_only``: only those marked ``mal_reviewed: true`` (changed by a person).
    """
    if tta and is_engine(model):
        raise LabelError(TTA_ENGINE_ERROR)
    data = load_boxes(annotations, images, skip_crowd=False, strict=check_strict(strict, skip_bad_images))
    kept = None if keep_masks is None else load_given_masks(keep_masks, data, reviewed_only=keep_reviewed_only)
    if is_engine(model):
        labeler = EngineLabeler(model, data)
    else:
        labeler = ModelLabeler.load(model, data, device=device, precision=precision, batch_size=batch_size,
                                    threshold=threshold, expand=expand, tta=tta)
    return label_in_chunks(labeler, data, out, num_workers=num_workers, skip_bad_images=skip_bad_images,
                           progress=progress, shard=shard, resume=resume, work_dir=work_dir,
                           chunk_images=chunk_images, keep_parts=keep_parts, keep_masks=kept)


def merge(annotations: str | Path | dict, out: str | Path, *, work_dir: str | Path | None = None,
          keep_parts: bool = False) -> LabelSummary:
    """Merge the chunks of a finished (sharded) labeling job of ``annotations`` into ``out``."""
    t0 = time.perf_counter()
    data = load_boxes(annotations, ".", check_files=False, skip_crowd=False)
    work_dir = Path(work_dir) if work_dir is not None else Path(str(out) + ".parts")
    store = open_for_merge(work_dir, data.groups, data.input_sha256)
    result = merge_and_clean(store, data.coco, out, keep_parts=keep_parts)
    if not result.written:
        raise LabelError(f"{work_dir} was merged and removed by another process meanwhile")
    totals = result.totals
    return LabelSummary(out=Path(out), images=totals.images, boxes=totals.boxes,
                        fallbacks=totals.fallbacks, skipped_images=totals.skipped,
                        seconds=time.perf_counter() - t0, shard=(0, store.plan.shards), work_dir=work_dir)
