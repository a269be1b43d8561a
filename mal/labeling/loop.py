"""The one labeling loop, for every labeler (words: :mod:`mal.labeling`).

:func:`label_in_chunks` streams the images of one shard through an :class:`ImageLabeler`, writes the
results in durable chunks, skips chunks already done (``resume``) and merges the output file once
every shard is done, returning a :class:`LabelSummary`. The labelers (:mod:`mal.labeling.labelers`):
the trained MAL model and any engine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torch.utils.data import DataLoader, Dataset

from ..data.coco import BoxDataset, ImageGroup
from ..data.dataset import collate_single
from ..data.given_masks import GivenMasks
from ..errors import MalError
from ..progress import progress as progress_bar
from .manifest import job_manifest, open_for_labeling
from .merge import MergeOutcome, merge_and_clean
from .plan import ChunkPlan, parse_shard
from .record import human_annotation

log = logging.getLogger("mal")


class LabelError(MalError, RuntimeError):
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


class ImageLabeler(Protocol):
    """Turns decoded images into output annotations (:func:`mal.labeling.record.annotation_out`) for
    :func:`label_in_chunks`."""

    name: str
    identity: dict  # everything that decides the masks (model weights, settings), for job.json

    def dataset(self, groups: list[ImageGroup]) -> Dataset:
        """One item per group, read in DataLoader workers (an ``error`` item for an unreadable image)."""
        ...

    def add(self, item: dict) -> list[dict]:
        """Label one image's item; returns the output annotations finished so far (may batch
        several images, so possibly none yet, or those of earlier images)."""
        ...

    def flush(self) -> list[dict]:
        """Finish every image added so far (called at the end of each chunk)."""
        ...


def label_in_chunks(labeler: ImageLabeler, data: BoxDataset, out: str | Path, *, num_workers: int = 1,
                    skip_bad_images: bool = False, progress: bool = True,
                    shard: str | tuple[int, int] | None = None, resume: bool = False,
                    work_dir: str | Path | None = None, chunk_images: int = 64,
                    keep_parts: bool = False, keep_masks: GivenMasks | None = None) -> LabelSummary:
    """Label shard ``shard`` (``"i/N"``, ``(i, N)``, or None: torchrun's RANK/WORLD_SIZE or the
    whole job) of ``data`` into chunks of ``chunk_images`` images in ``work_dir`` (default
    ``<out>.parts``), then, if every shard is done, merge them into ``out`` and remove the work
    dir (unless ``keep_parts``).

    Only the current chunk's results are held in memory, and only images of chunks not yet written
    are read, so ``resume`` redoes nothing that was finished. The job's manifest (the input's hash,
    the labeler's identity, N and ``chunk_images``) must be matched by resuming runs and other
    shards. The labeler is flushed at every chunk end, so a chunk's content does not depend on
    where earlier runs stopped, nor on the batch size.
    """
    t0 = time.perf_counter()
    i, n = parse_shard(shard)
    work_dir = Path(work_dir) if work_dir is not None else Path(str(out) + ".parts")
    plan = ChunkPlan(data.groups, n, chunk_images)
    job = job_manifest(data, labeler.identity, n, chunk_images, None if keep_masks is None else keep_masks.identity())
    store = open_for_labeling(work_dir, plan, job, i, resume)
    chunks = plan.chunks(i)
    todo = store.todo(i)
    boxes = [sum(len(records) for _, records in chunk) for chunk in chunks]
    if resume and len(todo) < len(chunks):
        log.info("resuming shard %d/%d: %d of %d chunks already done", i, n, len(chunks) - len(todo), len(chunks))
    loader = DataLoader(labeler.dataset([g for k in todo for g in chunks[k]]), batch_size=1,
                        collate_fn=collate_single, num_workers=num_workers)
    desc = "labeling" + (f" ({labeler.name})" if labeler.name != "mal" else "") + (f" shard {i}/{n}" if n > 1 else "")
    pbar = progress_bar(sum(boxes), initial=sum(boxes) - sum(boxes[k] for k in todo), desc=desc, unit="box",
                        enabled=progress)
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
            if keep_masks is not None:  # people's masks replace the labeler's, verbatim
                anns = [a if (m := keep_masks.decode(a["id"])) is None else human_annotation(a, m) for a in anns]
            store.write_chunk(i, k, anns, skipped)
            new_boxes, kept = new_boxes + len(anns), kept + 1
    except BaseException:
        if n == 1 and not kept:  # nothing to resume from, and no other shard uses the work dir
            store.remove_if_empty()
        raise
    finally:
        pbar.close()

    summary = LabelSummary(out=Path(out), new_boxes=new_boxes, shard=(i, n), work_dir=work_dir)
    totals = store.totals(i)  # before a merge removes the work dir
    result = merge_and_clean(store, data.coco, out, keep_parts=keep_parts, only_if_complete=True)
    if result.written:
        totals = result.totals
    else:
        summary.merged = False
        summary.waiting_for = sorted(store.missing()) if result.outcome is MergeOutcome.WAITING else []
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

