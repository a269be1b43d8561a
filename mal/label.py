"""Label every box of a COCO file with a trained mask labeler and write a COCO file with RLE masks.

:func:`label_in_chunks` is the one labeling loop, for the MAL model (:func:`label`) and the peer
engines (:func:`mal.engines.label_with_engine`): it streams the images of one shard, writes results
in durable chunks (:mod:`mal.chunks`), skips chunks already done (``resume``), and merges the one
COCO file once every shard is done.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .chunks import FORMAT, ChunkPlan, Group, LabelParts, Totals, fingerprint, parse_shard
from .data.coco import BoxDataset, load_boxes
from .data.crops import xywh_to_xyxy
from .data.dataset import ImageCrops, collate_single
from .masks import encode_rle
from .modeling.labeler import MaskLabeler, load_labeler
from .predictor import decode_probs, to_mask
from .runtime import resolve_device, resolve_precision

log = logging.getLogger("mal")


class LabelError(RuntimeError):
    """Labeling cannot go on (e.g. an unreadable image without --skip-bad-images)."""


@dataclass
class LabelSummary:
    """What a labeling call did. ``images``/``boxes``/``fallbacks``/``skipped_images`` count the
    whole job when this call wrote ``out`` (``merged``), else this call's shard so far."""
    out: Path
    images: int = 0
    boxes: int = 0
    fallbacks: int = 0                       # boxes whose mask came from a fallback (flagged)
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    new_boxes: int = 0                       # boxes labeled by this call (the rest were done before)
    shard: tuple[int, int] = (0, 1)
    merged: bool = True                      # this call wrote ``out``
    waiting_for: list[int] = field(default_factory=list)  # shards not done yet (when not merged)
    work_dir: Path | None = None

    def __str__(self) -> str:
        i, n = self.shard
        where = str(self.out) if self.merged else f"{self.work_dir} (shard {i}/{n})"
        s = f"labeled {self.boxes} boxes in {self.images} images -> {where}"
        if self.new_boxes:
            s += f" ({self.new_boxes / max(self.seconds, 1e-9):.1f} boxes/s"
            s += ")" if self.new_boxes == self.boxes else f" over the {self.new_boxes} labeled now)"
        if self.fallbacks:
            s += f"; {self.fallbacks} empty masks replaced by a fallback (flagged 'mal_fallback')"
        if self.skipped_images:
            s += f"; skipped {len(self.skipped_images)} unreadable images"
        if not self.merged:
            if self.waiting_for:
                w = self.waiting_for
                s += (f"; {self.out} is written when shard{'s' * (len(w) > 1)} "
                      f"{', '.join(map(str, w))} {'are' if len(w) > 1 else 'is'} done")
            else:
                s += f"; another process merged the shards into {self.out}"
        return s


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


class ImageLabeler(Protocol):
    """Turns decoded images into output annotations for :func:`label_in_chunks`."""

    name: str
    identity: dict  # everything that decides the masks (model weights, settings), for job.json

    def dataset(self, groups: list[Group]) -> Dataset:
        """One item per group, read in DataLoader workers (an ``error`` item for an unreadable image)."""
        ...

    def add(self, item: dict) -> list[dict]:
        """Label one image's item; returns the output annotations finished so far (may batch
        several images, so possibly none yet, or those of earlier images)."""
        ...

    def flush(self) -> list[dict]:
        """Finish every image added so far (called at the end of each chunk)."""
        ...


def label_in_chunks(labeler: ImageLabeler, data: BoxDataset, annotations: str | Path | dict,
                    out: str | Path, *, num_workers: int = 1, skip_bad_images: bool = False,
                    progress: bool = True, shard: str | tuple[int, int] | None = None,
                    resume: bool = False, work_dir: str | Path | None = None, chunk_images: int = 64,
                    keep_parts: bool = False) -> LabelSummary:
    """Label shard ``shard`` (``"i/N"``, ``(i, N)``, or None: torchrun's RANK/WORLD_SIZE or the
    whole job) of ``data`` into chunks of ``chunk_images`` images in ``work_dir`` (default
    ``<out>.parts``), then, if every shard is done, merge them into ``out`` and remove the work
    dir (unless ``keep_parts``).

    Only the current chunk's results are held in memory, and only images of chunks not yet written
    are read, so ``resume`` redoes nothing that was finished. ``annotations`` is hashed into the
    job manifest (with the labeler's identity, N and ``chunk_images``) that resuming and other
    shards must match. The labeler is flushed at every chunk end, so a chunk's content does not
    depend on where earlier runs stopped, nor on the batch size.
    """
    t0 = time.perf_counter()
    i, n = parse_shard(shard)
    work_dir = Path(work_dir) if work_dir is not None else Path(str(out) + ".parts")
    plan = ChunkPlan(data.by_image(), n, chunk_images)
    job = {"format": FORMAT, "input": "<dict>" if isinstance(annotations, dict) else str(annotations),
           "input_sha256": fingerprint(annotations), "labeler": labeler.identity, "shards": n,
           "chunk_images": chunk_images}
    parts = LabelParts.for_labeling(work_dir, plan, job, i, resume)
    chunks = plan.chunks(i)
    todo = [k for k in range(len(chunks)) if not parts.has_chunk(i, k)]
    boxes = [sum(len(records) for _, records in chunk) for chunk in chunks]
    if resume and len(todo) < len(chunks):
        log.info("resuming shard %d/%d: %d of %d chunks already done", i, n, len(chunks) - len(todo), len(chunks))
    loader = DataLoader(labeler.dataset([g for k in todo for g in chunks[k]]), batch_size=1,
                        collate_fn=collate_single, num_workers=num_workers)
    desc = "labeling" + (f" ({labeler.name})" if labeler.name != "mal" else "") + (f" shard {i}/{n}" if n > 1 else "")
    pbar = tqdm(total=sum(boxes), initial=sum(boxes) - sum(boxes[k] for k in todo), desc=desc,
                unit="box", disable=not progress)
    new_boxes, kept = 0, len(chunks) - len(todo)
    try:
        items = iter(loader) if todo else iter(())  # no worker processes when nothing is left
        for k in todo:
            anns: list[dict] = []
            skipped: list[dict] = []
            for _ in chunks[k]:
                item = next(items)
                if "error" in item:
                    skipped.append(_skip_bad_image(item, skip_bad_images, work_dir, kept))
                    pbar.update(len(item["records"]))
                    continue
                done = labeler.add(item)
                anns += done
                pbar.update(len(done))
            done = labeler.flush()
            anns += done
            pbar.update(len(done))
            parts.write_chunk(i, k, anns, skipped)
            new_boxes, kept = new_boxes + len(anns), kept + 1
    except BaseException:
        if n == 1 and not kept:  # nothing to resume from, and no other shard uses the work dir
            parts.remove_if_empty()
        raise
    finally:
        pbar.close()

    summary = LabelSummary(out=Path(out), new_boxes=new_boxes, shard=(i, n), work_dir=work_dir)
    totals = parts.totals(i)  # before a merge removes the work dir
    merged = parts.merge_and_clean(data.coco, out, keep_parts=keep_parts, only_if_complete=True)
    if isinstance(merged, Totals):
        totals = merged
    else:
        summary.merged = False
        summary.waiting_for = sorted(parts.missing()) if merged is None else []
    summary.images, summary.boxes = totals.images, totals.boxes
    summary.fallbacks, summary.skipped_images = totals.fallbacks, totals.skipped
    summary.seconds = time.perf_counter() - t0
    return summary


def _skip_bad_image(item: dict, skip: bool, work_dir: Path, kept: int) -> dict:
    """An unreadable image: stop with its name, or, with ``skip``, return its ``skipped`` entry."""
    if not skip:
        resume = (f"; {kept} finished chunk(s) are kept in {work_dir}: rerun with --resume to reuse "
                  "them" if kept else "")
        raise LabelError(item["error"] + f" (the output was not written{resume}; use --skip-bad-images "
                         "to skip such images and report them)")
    log.warning("skipping image: %s", item["error"])
    return {"image_id": item["image"]["id"], "boxes": len(item["records"]), "error": item["error"]}


def merge(annotations: str | Path | dict, out: str | Path, *, work_dir: str | Path | None = None,
          keep_parts: bool = False) -> LabelSummary:
    """Merge the chunks of a finished (sharded) labeling job of ``annotations`` into ``out``."""
    t0 = time.perf_counter()
    data = load_boxes(annotations, ".", check_files=False, skip_crowd=False)
    work_dir = Path(work_dir) if work_dir is not None else Path(str(out) + ".parts")
    parts = LabelParts.for_merge(work_dir, data.by_image(), fingerprint(annotations))
    totals = parts.merge_and_clean(data.coco, out, keep_parts=keep_parts)
    if not isinstance(totals, Totals):
        raise LabelError(f"{work_dir} was merged and removed by another process meanwhile")
    return LabelSummary(out=Path(out), images=totals.images, boxes=totals.boxes,
                        fallbacks=totals.fallbacks, skipped_images=totals.skipped,
                        seconds=time.perf_counter() - t0, shard=(0, parts.plan.shards), work_dir=work_dir)


class ModelLabeler:
    """The trained MAL model as an :class:`ImageLabeler`: the crops of every image (one per box, or the
    whole image for view "image"), encoded and decoded in batches of ``batch_size`` that span images,
    pasted back and thresholded; scored by SAM's IoU head when the model has one."""

    name = "mal"

    def __init__(self, model: MaskLabeler, data: BoxDataset, device: torch.device, precision: str,
                 batch_size: int, threshold: float, expand: float):
        self.model, self.data, self.device, self.precision = model, data, device, precision
        self.batch_size, self.threshold, self.expand = batch_size, threshold, expand
        self.anns_by_id = {a["id"]: a for a in data.coco["annotations"]}
        self.pending: list[dict] = []  # images whose crops wait for a full batch
        self.identity = {"model": "mal", "weights_sha256": weights_sha256(model),
                         "config": asdict(model.config), "threshold": threshold, "expand": expand}

    def dataset(self, groups: list[Group]) -> Dataset:
        return ImageCrops(groups, self.data, self.model.config.crop_size, self.expand, self.model.config.view)

    def add(self, item: dict) -> list[dict]:
        self.pending.append(item)
        if sum(len(it["records"]) for it in self.pending) >= self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[dict]:
        if not self.pending:
            return []
        probs, ious = decode_probs(self.model, self.pending, self.device, self.precision, self.batch_size)
        out, j = [], 0
        for it in self.pending:
            H, W = it["image"]["height"], it["image"]["width"]
            for r, win in zip(it["records"], it["windows"]):
                mask, score, fb = to_mask(probs[j], win, xywh_to_xyxy(r.bbox), H, W, self.threshold,
                                          None if ious is None else ious[j])
                out.append(annotation_out(self.anns_by_id[r.ann_id], mask, score, fb))
                j += 1
        self.pending.clear()
        return out


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's state dict (names and raw tensor bytes): the same weights, whatever
    file or object they came from, give the same hash."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_strict(strict: bool, skip_bad_images: bool) -> bool:
    if strict and skip_bad_images:
        raise ValueError("--strict and --skip-bad-images contradict each other (--strict makes every "
                         "skip an error); pass one of them")
    return strict


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
    :func:`label_in_chunks`. ``strict``: every skip or fallback on bad input (a clipped box, an image
    whose COCO size is its stored, un-rotated size) is an error.
    """
    data: BoxDataset = load_boxes(annotations, images, skip_crowd=False, strict=check_strict(strict, skip_bad_images))
    if device == "auto" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per local process
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if not isinstance(model, MaskLabeler):
        model = load_labeler(model)
    model = model.to(dev).eval()
    expand = model.config.label_expand if expand is None else expand
    labeler = ModelLabeler(model, data, dev, prec, batch_size, threshold, expand)
    return label_in_chunks(labeler, data, annotations, out, num_workers=num_workers,
                           skip_bad_images=skip_bad_images, progress=progress, shard=shard,
                           resume=resume, work_dir=work_dir, chunk_images=chunk_images,
                           keep_parts=keep_parts)
