"""The merge of a labeling job (words: :mod:`mal.labeling`): every chunk of every shard into the one
output COCO file, under ``merge.lock`` so that shards finishing together merge once.

:func:`merge_and_clean` says what happened in a :class:`MergeResult`: this process wrote the output
(with the whole job's :class:`~mal.labeling.store.Totals`), another process already had (and removed the
work dir), or some shard is not done yet.
"""
from __future__ import annotations

import enum
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .manifest import read_job
from .store import ChunkStore, PartsError, Totals

LOCK_FILE = "merge.lock"


class MergeOutcome(enum.Enum):
    WRITTEN = "written"                    # this process wrote the output
    MERGED_ELSEWHERE = "merged elsewhere"  # another process did, and removed the work dir
    WAITING = "waiting"                    # some shard is not done yet (``only_if_complete``)


@dataclass(frozen=True)
class MergeResult:
    outcome: MergeOutcome
    totals: Totals | None = None  # the whole job's, when WRITTEN

    @property
    def written(self) -> bool:
        return self.outcome is MergeOutcome.WRITTEN


def logit(scores):
    """log(s / (1 - s)), the scores clipped to [1e-4, 1 - 1e-4] (they are written to 4 decimals)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(s / (1 - s))


def category_offsets(category_ids: np.ndarray, scores: np.ndarray) -> dict:
    """``{category id: its boxes' mean score logit - every box's mean score logit}``, the shift
    :func:`shifted_score` adds; NaN scores (fallback masks, scored by their peak probability, and
    people's masks) are left out.

    Why: the IoU heads see one box and not its class; their scores spread within a class but are
    compressed across classes, so a class whose masks are mostly poor (chairs, dining tables) still
    scores near the rest. Adding the class's own mean offset ranks the job's masks better across classes
    (BENCHMARKS.md, Confidence). In logits the scores stay inside [0, 1] without clipping, so the order
    within a class is never reversed (scores are written to 4 decimals: near 0 or 1 two may come to tie),
    and COCO AP stays as it was. With one class, or classes of equal means, there is no offset ({}): the
    scores are the heads' own."""
    ok = ~np.isnan(scores)
    cats, inverse = np.unique(category_ids[ok], return_inverse=True)
    if len(cats) < 2:
        return {}
    z = logit(scores[ok])
    means = np.bincount(inverse, weights=z) / np.bincount(inverse)
    offsets = {int(c): float(m - z.mean()) for c, m in zip(cats, means)}
    return offsets if max(abs(v) for v in offsets.values()) > 1e-9 else {}


def shifted_score(score: float, offset: float) -> float:
    """``score`` moved by ``offset`` in logits (:func:`category_offsets`), to 4 decimals."""
    if offset == 0:  # a category at the mean keeps its scores, 0 and 1 included
        return score
    return round(float(1.0 / (1.0 + np.exp(-(logit(score) + offset)))), 4)


def shifted_line(line: bytes, offset: float) -> bytes:
    """An annotation line of a chunk with its score shifted by ``offset`` (:func:`shifted_score`)."""
    ann = json.loads(line)
    ann["score"] = shifted_score(ann["score"], offset)
    return json.dumps(ann).encode()


def merge_chunks(store: ChunkStore, coco: dict, out: str | Path) -> Totals:
    """Write ``coco`` with its annotations replaced by the chunks' (input order; annotations of
    skipped images left out) to ``out``, atomically, each score shifted by its category's offset
    (:func:`category_offsets`). Annotations are copied as lines from the chunk files, located through
    arrays of (file, offset, length) per input annotation, so memory stays small whatever the size of
    the job."""
    plan = store.plan
    missing = store.missing()
    if missing:
        raise PartsError(f"{store.dir}: not every shard is done: " + "; ".join(
            f"shard {i}/{plan.shards} lacks {len(ks)} of {len(plan.chunks(i))} chunks"
            for i, ks in missing.items()) + " (run `mal label ... --shard i/N --resume` for those)")
    anns = coco["annotations"]
    ids = np.fromiter((a["id"] for a in anns), dtype=np.int64, count=len(anns))
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    where = np.full(len(anns), -1, dtype=np.int64)  # chunk file number per input annotation
    offset = np.zeros(len(anns), dtype=np.int64)
    length = np.zeros(len(anns), dtype=np.int64)
    category = np.zeros(len(anns), dtype=np.int64)
    score = np.zeros(len(anns), dtype=np.float64)
    files: list[Path] = []
    totals = Totals()
    skipped_boxes = 0
    for i in range(plan.shards):
        for k, groups in enumerate(plan.chunks(i)):
            path = store.chunk_path(i, k)
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
            category[pos] = header["category_ids"]
            score[pos] = np.array(header["scores"], dtype=np.float64)  # null (a fallback, a person's mask) -> NaN
            files.append(path)
            totals.add(header)
            skipped_boxes += sum(s["boxes"] for s in header["skipped"])
    if int((where < 0).sum()) != skipped_boxes:
        raise PartsError(f"{store.dir}: {int((where < 0).sum()) - skipped_boxes} input annotations "
                         "have no result in any chunk")

    done = where >= 0
    offsets = category_offsets(category[done], score[done])

    # Keep the input's key order, with the annotations streamed in where they were.
    keys = list(coco)
    at_ann = keys.index("annotations")
    before = [f"{json.dumps(k)}: {json.dumps(coco[k])}" for k in keys[:at_ann]]
    after = [f"{json.dumps(k)}: {json.dumps(coco[k])}" for k in keys[at_ann + 1:]]
    head = "{" + "".join(s + ", " for s in before) + '"annotations": ['
    tail = "]" + "".join(", " + s for s in after) + "}"
    with atomic_file(Path(out)) as f, _OpenFiles(files) as chunk_fd:
        f.write(head.encode())
        for n, p in enumerate(np.flatnonzero(done)):
            if n:
                f.write(b", ")
            line = os.pread(chunk_fd(int(where[p])), int(length[p]), int(offset[p]))
            shift = offsets and not np.isnan(score[p])  # a fallback or a person's mask keeps its score
            f.write(shifted_line(line, offsets.get(int(category[p]), 0.0)) if shift else line)
        f.write(tail.encode())
    return totals


def merge_and_clean(store: ChunkStore, coco: dict, out: str | Path, *, keep_parts: bool = False,
                    only_if_complete: bool = False) -> MergeResult:
    """:func:`merge_chunks`, then remove the work dir unless ``keep_parts``, all under ``merge.lock``:
    shards that finish together merge in turn, and the later ones find the work dir gone (or, with
    ``keep_parts``, merge again to the same bytes). With ``only_if_complete``, a job with a shard not
    done yet is WAITING rather than a :class:`PartsError`."""
    import fcntl
    try:
        lock = open(store.dir / LOCK_FILE, "a")
    except FileNotFoundError:
        return MergeResult(MergeOutcome.MERGED_ELSEWHERE)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if read_job(store.dir) is None:
            return MergeResult(MergeOutcome.MERGED_ELSEWHERE)
        if only_if_complete and store.missing():
            return MergeResult(MergeOutcome.WAITING)
        totals = merge_chunks(store, coco, out)
        if not keep_parts:
            shutil.rmtree(store.dir)
        return MergeResult(MergeOutcome.WRITTEN, totals)


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
