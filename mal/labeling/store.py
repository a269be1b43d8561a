"""Labeling results on disk in durable chunks, so that a labeling job can run as N shards (processes
or machines), be killed at any moment, resume without redoing finished work, and end as one COCO file.

The words, used with these meanings only (here, in :mod:`mal.labeling.manifest`, :mod:`mal.labeling.merge` and
:mod:`mal.labeling.loop`):

- **job**: labeling one annotations file with one labeler (and its settings) into one output file.
- **work dir**: the folder holding a job's files until the merge (default ``<out>.parts/``; "parts",
  as in ``--keep-parts`` and :class:`PartsError`, always means this folder).
- **shard**: one of the N slices of a job's images, each labeled by one process (``--shard i/N``).
- **chunk**: up to K consecutive images of one shard (``--chunk-images K``), and the one file that
  holds their results.
- **merge**: writing the output file from every chunk of every shard, once all are written.

Work dir::

    job.json                          the job's manifest (mal.labeling.manifest): input hash, labeler identity, N, K
    shard-0-of-2/chunk-00000.jsonl    one chunk (this module: ChunkStore)
    merge.lock                        flock'ed while a finished shard checks for completion and merges
                                      (mal.labeling.merge)

Which image goes where depends on the input alone (:class:`ChunkPlan`): images in the box index's
order (:meth:`mal.data.coco.BoxDataset.by_image`); shard i of N takes images i, i+N, i+2N, ...
(round robin, so every shard gets a similar mix of the file's images); chunk k of a shard holds its
images [k*K, (k+1)*K). A chunk file is written once, whole, through an fsync'ed temporary file and
an atomic rename: it is complete or absent, and its presence means all its images are done.

Chunk file, JSON lines. Line 1, the header: ``shard``, ``shards``, ``chunk``, ``image_ids`` (every
image of the chunk), ``skipped`` (``[{"image_id", "boxes", "error"}]``, images that could not be
read), ``ann_ids`` (one per following line) and ``fallbacks``. Then one output annotation per line.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..data.coco import ImageGroup
from ..errors import MalError


class PartsError(MalError):
    """The work dir does not belong to this job, or is not complete; the message says what to do."""


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/N"`` or ``(i, N)`` -> ``(i, N)`` with 0 <= i < N. ``None``: torchrun's ``RANK`` /
    ``WORLD_SIZE`` when both are set, else ``(0, 1)`` (the whole job in this process)."""
    if spec is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return parse_shard((int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])))
        return 0, 1
    if isinstance(spec, str):
        head, sep, tail = spec.partition("/")
        try:
            i, n = int(head), int(tail)
        except ValueError:
            raise MalError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
        if not sep:
            raise MalError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}")
    else:
        i, n = (int(v) for v in spec)
    if n < 1 or not 0 <= i < n:
        raise MalError(f"shard {i}/{n} does not exist: shards are numbered 0 to N-1 (N >= 1)")
    return i, n


class ChunkPlan:
    """Which images each chunk of each shard holds (see the module docstring)."""

    def __init__(self, groups: list[ImageGroup], shards: int, chunk_images: int):
        if chunk_images < 1:
            raise MalError(f"--chunk-images must be at least 1, got {chunk_images}")
        self.groups, self.shards, self.chunk_images = groups, shards, chunk_images
        self._chunks: dict[int, list[list[ImageGroup]]] = {}

    def chunks(self, shard: int) -> list[list[ImageGroup]]:
        """Shard ``shard``'s chunks, each a list of up to ``chunk_images`` groups."""
        if shard not in self._chunks:
            mine, K = self.groups[shard::self.shards], self.chunk_images
            self._chunks[shard] = [mine[s:s + K] for s in range(0, len(mine), K)]
        return self._chunks[shard]


@dataclass
class Totals:
    """What a set of chunks holds: labeled images and boxes, fallbacks, skipped images' errors."""
    images: int = 0
    boxes: int = 0
    fallbacks: int = 0
    skipped: list[str] = field(default_factory=list)

    def add(self, header: dict) -> None:
        self.images += len(header["image_ids"]) - len(header["skipped"])
        self.boxes += len(header["ann_ids"])
        self.fallbacks += header["fallbacks"]
        self.skipped += [s["error"] for s in header["skipped"]]


class ChunkStore:
    """The chunk files of one work dir, laid out by ``plan``: where each lives, whether it is written,
    writing one (whole or not at all), reading their headers."""

    def __init__(self, work_dir: str | Path, plan: ChunkPlan):
        self.dir = Path(work_dir)
        self.plan = plan

    def shard_dir(self, shard: int) -> Path:
        return self.dir / f"shard-{shard}-of-{self.plan.shards}"

    def chunk_path(self, shard: int, k: int) -> Path:
        return self.shard_dir(shard) / f"chunk-{k:05d}.jsonl"

    def has_chunk(self, shard: int, k: int) -> bool:
        return self.chunk_path(shard, k).is_file()

    def todo(self, shard: int) -> list[int]:
        """Indices of ``shard``'s chunks not written yet."""
        return [k for k in range(len(self.plan.chunks(shard))) if not self.has_chunk(shard, k)]

    def missing(self) -> dict[int, list[int]]:
        """``{shard: [chunk indices not written yet]}`` for every shard with something left to do."""
        return {i: left for i in range(self.plan.shards) if (left := self.todo(i))}

    def write_chunk(self, shard: int, k: int, annotations: list[dict], skipped: list[dict]) -> None:
        """Write chunk k of ``shard``: ``annotations`` (output dicts, in record order) and ``skipped``
        images (``{"image_id", "boxes", "error"}``) together cover all the chunk's images."""
        image_ids = [entry["id"] for entry, _ in self.plan.chunks(shard)[k]]
        header = {"shard": shard, "shards": self.plan.shards, "chunk": k, "image_ids": image_ids,
                  "skipped": skipped, "ann_ids": [a["id"] for a in annotations],
                  "fallbacks": sum("mal_fallback" in a for a in annotations)}
        with atomic_file(self.chunk_path(shard, k)) as f:
            f.write(json.dumps(header).encode() + b"\n")
            for a in annotations:
                f.write(json.dumps(a).encode() + b"\n")

    def totals(self, shard: int) -> Totals:
        """Totals of the chunks ``shard`` has written so far (reads only their header lines)."""
        t = Totals()
        for k in range(len(self.plan.chunks(shard))):
            if self.has_chunk(shard, k):
                with open(self.chunk_path(shard, k), "rb") as f:
                    t.add(json.loads(f.readline()))
        return t

    def remove_stale(self, shard: int) -> None:
        """Remove the temporary files a killed run of ``shard`` left behind."""
        for stale in self.shard_dir(shard).glob("*.tmp"):
            stale.unlink(missing_ok=True)

    def remove_if_empty(self) -> None:
        """Remove the work dir if it holds no chunk of any shard (a run that failed before its first
        chunk leaves nothing behind). Only for single-process jobs: another shard may be starting."""
        if not any(self.dir.glob("shard-*/chunk-*.jsonl")):
            shutil.rmtree(self.dir, ignore_errors=True)
