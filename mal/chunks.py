"""Labeling results on disk in durable chunks, so that a labeling job can run as N shards (processes
or machines), be killed at any moment, resume without redoing finished work, and end as one COCO file.

Work dir (default ``<out>.parts/``)::

    job.json                          what the job is: input hash, labeler identity, shards, chunk size
    shard-0-of-2/chunk-00000.jsonl    the results of one group of images
    merge.lock                        flock'ed while a finished shard checks for completion and merges

Which image goes where depends on the input alone: images in :meth:`BoxDataset.by_image` order; shard
i of N takes images i, i+N, i+2N, ... (round robin, so every shard gets a similar mix of the file's
images); chunk k of a shard holds its images [k*K, (k+1)*K). A chunk file is written once, whole,
through an fsync'ed temporary file and an atomic rename: it is complete or absent, and its presence
means all its images are done.

Chunk file, JSON lines. Line 1, the header: ``shard``, ``shards``, ``chunk``, ``image_ids`` (every
image of the chunk), ``skipped`` (``[{"image_id", "boxes", "error"}]``, images that could not be
read), ``ann_ids`` (one per following line) and ``fallbacks``. Then one output annotation per line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.coco import BoxRecord
from .masks import atomic_file

JOB_FILE = "job.json"
LOCK_FILE = "merge.lock"
FORMAT = 1
Group = tuple[dict, list[BoxRecord]]  # (COCO image entry, its box records), as BoxDataset.by_image()


class PartsError(ValueError):
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
            raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
        if not sep:
            raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}")
    else:
        i, n = (int(v) for v in spec)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n} does not exist: shards are numbered 0 to N-1 (N >= 1)")
    return i, n


def fingerprint(annotations: str | os.PathLike | dict) -> str:
    """sha256 of the input COCO file's bytes (or of a dict's canonical JSON), read in blocks."""
    h = hashlib.sha256()
    if isinstance(annotations, dict):
        for piece in json.JSONEncoder(sort_keys=True).iterencode(annotations):
            h.update(piece.encode())
    else:
        with open(annotations, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class ChunkPlan:
    """Which images each chunk of each shard holds (see the module docstring)."""

    def __init__(self, groups: list[Group], shards: int, chunk_images: int):
        if chunk_images < 1:
            raise ValueError(f"--chunk-images must be at least 1, got {chunk_images}")
        self.groups, self.shards, self.chunk_images = groups, shards, chunk_images
        self._chunks: dict[int, list[list[Group]]] = {}

    def chunks(self, shard: int) -> list[list[Group]]:
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


class LabelParts:
    """One job's work dir. ``job`` is the manifest: every key but ``input`` (the input's path, for
    people) must match for chunks to be reused or merged."""

    def __init__(self, work_dir: str | Path, plan: ChunkPlan, job: dict):
        self.dir = Path(work_dir)
        self.plan = plan
        self.job = job

    # ---------------------------------------------------------------- opening

    @classmethod
    def for_labeling(cls, work_dir: str | Path, plan: ChunkPlan, job: dict, shard: int,
                     resume: bool) -> LabelParts:
        """Create or reopen the work dir for labeling ``shard``. Refuses a work dir made for another
        job, and one where this shard already has chunks unless ``resume``."""
        job = json.loads(json.dumps(job))  # as it reads back from job.json (tuples become lists)
        parts = cls(work_dir, plan, job)
        found = parts.read_job()
        if found is not None and _differences(found, job):
            raise PartsError(f"{parts.dir} holds the parts of a different labeling job "
                             f"({'; '.join(_differences(found, job))}). Run the same job as before "
                             "(same input, labeler, --threshold, --shard N and --chunk-images), or "
                             "delete that folder (or pick another --work-dir) to start over")
        done = [k for k in range(len(plan.chunks(shard))) if parts.has_chunk(shard, k)]
        if done and not resume:
            raise PartsError(f"{parts.dir} already holds {len(done)} finished chunk(s) of shard "
                             f"{shard}/{plan.shards}: pass --resume to continue that job, or delete "
                             "the folder to start over")
        if found is None:
            parts.dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(parts.dir / JOB_FILE) as f:  # concurrent shards write the same bytes
                f.write(json.dumps(job, indent=2, sort_keys=True).encode())
        for stale in parts.shard_dir(shard).glob("*.tmp"):  # left by a killed run of this shard
            stale.unlink(missing_ok=True)
        return parts

    @classmethod
    def for_merge(cls, work_dir: str | Path, groups: list[Group], input_sha256: str) -> LabelParts:
        """Reopen a work dir to merge it; its job.json gives the shard count and chunk size."""
        parts = cls(work_dir, ChunkPlan(groups, 1, 1), {})
        job = parts.read_job()
        if job is None:
            raise PartsError(f"{parts.dir}: no labeling job here (no {JOB_FILE}); pass the --work-dir "
                             "that `mal label` used (default: the output path + '.parts')")
        if job.get("input_sha256") != input_sha256:
            raise PartsError(f"{parts.dir} was labeled from a different annotations file "
                             f"({job.get('input')}); merge with that file")
        parts.plan = ChunkPlan(groups, job["shards"], job["chunk_images"])
        parts.job = job
        return parts

    def read_job(self) -> dict | None:
        try:
            return json.loads((self.dir / JOB_FILE).read_text())
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------- chunks

    def shard_dir(self, shard: int) -> Path:
        return self.dir / f"shard-{shard}-of-{self.plan.shards}"

    def chunk_path(self, shard: int, k: int) -> Path:
        return self.shard_dir(shard) / f"chunk-{k:05d}.jsonl"

    def has_chunk(self, shard: int, k: int) -> bool:
        return self.chunk_path(shard, k).is_file()

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

    def missing(self) -> dict[int, list[int]]:
        """``{shard: [chunk indices not written yet]}`` for every shard with something left to do."""
        out = {}
        for i in range(self.plan.shards):
            left = [k for k in range(len(self.plan.chunks(i))) if not self.has_chunk(i, k)]
            if left:
                out[i] = left
        return out

    def totals(self, shard: int) -> Totals:
        """Totals of the chunks ``shard`` has written so far (reads only their header lines)."""
        t = Totals()
        for k in range(len(self.plan.chunks(shard))):
            if self.has_chunk(shard, k):
                with open(self.chunk_path(shard, k), "rb") as f:
                    t.add(json.loads(f.readline()))
        return t

    def remove_if_empty(self) -> None:
        """Remove the work dir if it holds no chunk of any shard (a run that failed before its first
        chunk leaves nothing behind). Only for single-process jobs: another shard may be starting."""
        if not any(self.dir.glob("shard-*/chunk-*.jsonl")):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- merge

    def merge(self, coco: dict, out: str | Path) -> Totals:
        """Write ``coco`` with its annotations replaced by the chunks' (input order; annotations of
        skipped images left out) to ``out``, atomically. Annotations are copied as raw lines from
        the chunk files, located through arrays of (file, offset, length) per input annotation, so
        memory stays small whatever the size of the job."""
        missing = self.missing()
        if missing:
            raise PartsError(f"{self.dir}: not every shard is done: " + "; ".join(
                f"shard {i}/{self.plan.shards} lacks {len(ks)} of {len(self.plan.chunks(i))} chunks"
                for i, ks in missing.items()) + " (run `mal label ... --shard i/N --resume` for those)")
        anns = coco["annotations"]
        ids = np.fromiter((a["id"] for a in anns), dtype=np.int64, count=len(anns))
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        where = np.full(len(anns), -1, dtype=np.int64)  # chunk file number per input annotation
        offset = np.zeros(len(anns), dtype=np.int64)
        length = np.zeros(len(anns), dtype=np.int64)
        files: list[Path] = []
        totals = Totals()
        skipped_boxes = 0
        for i in range(self.plan.shards):
            for k, groups in enumerate(self.plan.chunks(i)):
                path = self.chunk_path(i, k)
                lines = path.read_bytes().split(b"\n")[:-1]
                header = json.loads(lines[0])
                if header["image_ids"] != [e["id"] for e, _ in groups] or len(lines) - 1 != len(header["ann_ids"]):
                    raise PartsError(f"{path} does not hold the images this job expects there; "
                                     "delete it and run that shard again with --resume")
                chunk_ids = np.asarray(header["ann_ids"], dtype=np.int64)
                at = np.minimum(np.searchsorted(sorted_ids, chunk_ids), len(ids) - 1)
                if len(chunk_ids) and not np.array_equal(sorted_ids[at], chunk_ids):
                    raise PartsError(f"{path} holds annotation ids that are not in the input")
                pos = order[at]
                if (where[pos] >= 0).any():
                    raise PartsError(f"{path} repeats annotations of another chunk")
                sizes = np.array([len(s) for s in lines[1:]], dtype=np.int64)
                where[pos] = len(files)
                offset[pos] = len(lines[0]) + 1 + np.cumsum(sizes + 1) - (sizes + 1)  # line starts
                length[pos] = sizes
                files.append(path)
                totals.add(header)
                skipped_boxes += sum(s["boxes"] for s in header["skipped"])
        if int((where < 0).sum()) != skipped_boxes:
            raise PartsError(f"{self.dir}: {int((where < 0).sum()) - skipped_boxes} input annotations "
                             "have no result in any chunk")

        # Keep the input's key order, with the annotations streamed in where they were.
        keys = list(coco)
        at_ann = keys.index("annotations")
        before = [f"{json.dumps(k)}: {json.dumps(coco[k])}" for k in keys[:at_ann]]
        after = [f"{json.dumps(k)}: {json.dumps(coco[k])}" for k in keys[at_ann + 1:]]
        head = "{" + "".join(s + ", " for s in before) + '"annotations": ['
        tail = "]" + "".join(", " + s for s in after) + "}"
        with atomic_file(Path(out)) as f, _OpenFiles(files) as chunk_fd:
            f.write(head.encode())
            for n, p in enumerate(np.flatnonzero(where >= 0)):
                if n:
                    f.write(b", ")
                f.write(os.pread(chunk_fd(int(where[p])), int(length[p]), int(offset[p])))
            f.write(tail.encode())
        return totals

    def merge_and_clean(self, coco: dict, out: str | Path, *, keep_parts: bool = False,
                        only_if_complete: bool = False) -> Totals | str | None:
        """:meth:`merge`, then remove the work dir unless ``keep_parts``, all under ``merge.lock``:
        shards that finish together merge in turn, and the later ones find the work dir gone (or,
        with ``keep_parts``, merge again to the same bytes). Returns the totals when this process
        wrote ``out``; ``"merged"`` when another process already did; None when
        ``only_if_complete`` and some shard is not done yet."""
        import fcntl
        try:
            lock = open(self.dir / LOCK_FILE, "a")
        except FileNotFoundError:
            return "merged"
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if self.read_job() is None:
                return "merged"
            if only_if_complete and self.missing():
                return None
            totals = self.merge(coco, out)
            if not keep_parts:
                shutil.rmtree(self.dir)
            return totals


def _differences(found: dict, job: dict) -> list[str]:
    """Human-readable differences between two manifests (``input``, a path, is not compared)."""
    names = {"input_sha256": "annotations file content", "labeler": "labeler (model/engine/settings)",
             "shards": "shard count", "chunk_images": "--chunk-images", "format": "work dir format"}
    out = []
    for key in sorted((set(found) | set(job)) - {"input"}):
        if found.get(key) != job.get(key):
            what = names.get(key, key) + " differs"
            if key in ("shards", "chunk_images"):
                what += f": {found.get(key)} before, {job.get(key)} now"
            out.append(what)
    return out


class _OpenFiles:
    """``fd(n)`` = an open descriptor for ``paths[n]``, keeping at most ``limit`` open at once."""

    def __init__(self, paths: list[Path], limit: int = 64):
        self.paths, self.limit, self.open = paths, limit, OrderedDict()

    def __call__(self, n: int) -> int:
        if n in self.open:
            self.open.move_to_end(n)
        else:
            if len(self.open) >= self.limit:
                os.close(self.open.popitem(last=False)[1])
            self.open[n] = os.open(self.paths[n], os.O_RDONLY)
        return self.open[n]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for fd in self.open.values():
            os.close(fd)
