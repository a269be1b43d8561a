"""The chunk files of a labeling job's work dir (words: :mod:`mal.labeling`), laid out by its
:class:`~mal.labeling.plan.ChunkPlan`.

A chunk file is written once, whole, through an fsync'ed temporary file and an atomic rename: it is
complete or absent, and its presence means all its images are done.

Chunk file, JSON lines. Line 1, the header: ``shard``, ``shards``, ``chunk``, ``image_ids`` (every
image of the chunk), ``skipped`` (``[{"image_id", "boxes", "error"}]``, images that could not be
read), ``ann_ids``, ``category_ids`` and ``scores`` (one each per following line; the score null for a
fallback mask or a person's) and ``fallbacks``.
Then one output annotation per line.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_file
from ..errors import MalError
from .plan import ChunkPlan


class PartsError(MalError):
    """The work dir does not belong to this job, or is not complete; the message says what to do."""


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
                  "category_ids": [a["category_id"] for a in annotations],
                  "scores": [None if "mal_fallback" in a or "mal_human" in a else a["score"] for a in annotations],
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
