"""A labeling job's manifest, ``job.json`` in its work dir (words: :mod:`mal.labeling`): what decides
the job's chunks, so that resuming runs and other shards reuse them only for the same job.

Manifest: ``format`` (of the work dir), ``input`` (the annotations path, for people; never
compared), ``input_sha256`` (:attr:`mal.data.coco.BoxDataset.input_sha256`), ``labeler`` (its
``identity``: for the MAL model :func:`mal.labeling.labelers.weights_sha256` and its settings),
``shards`` (N) and ``chunk_images`` (K). Every key but ``input`` must match.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_file
from ..data.coco import BoxDataset, ImageGroup
from .plan import ChunkPlan
from .store import ChunkStore, PartsError

JOB_FILE = "job.json"
FORMAT = 2  # 2: chunk headers carry category ids and scores (the merge shifts scores by category)


def job_manifest(data: BoxDataset, labeler_identity: dict, shards: int, chunk_images: int,
                 kept_masks: dict | None = None) -> dict:
    """The manifest of labeling ``data`` with a labeler of ``labeler_identity`` (and people's masks
    kept, :meth:`mal.data.given_masks.GivenMasks.identity`), as it reads back from job.json (tuples
    become lists)."""
    job = {"format": FORMAT, "input": data.source, "input_sha256": data.input_sha256,
           "labeler": labeler_identity, "shards": shards, "chunk_images": chunk_images}
    if kept_masks is not None:
        job["kept_masks"] = kept_masks
    return json.loads(json.dumps(job))


def read_job(work_dir: str | Path) -> dict | None:
    """The manifest in ``work_dir``, or None when there is none."""
    try:
        return json.loads((Path(work_dir) / JOB_FILE).read_text())
    except FileNotFoundError:
        return None


def open_for_labeling(work_dir: str | Path, plan: ChunkPlan, job: dict, shard: int,
                      resume: bool) -> ChunkStore:
    """Create or reopen the work dir of ``job`` (:func:`job_manifest`) for labeling ``shard``. Refuses
    a work dir made for another job, and one where this shard already has chunks unless ``resume``."""
    store = ChunkStore(work_dir, plan)
    found = read_job(store.dir)
    if found is not None:
        _check_format(store.dir, found)
    if found is not None and _differences(found, job):
        raise PartsError(f"{store.dir} holds the parts of a different labeling job "
                         f"({'; '.join(_differences(found, job))}). Run the same job as before "
                         "(same input, labeler, --threshold, --shard N and --chunk-images), or "
                         "delete that folder (or pick another --work-dir) to start over")
    done = len(plan.chunks(shard)) - len(store.todo(shard))
    if done and not resume:
        raise PartsError(f"{store.dir} already holds {done} finished chunk(s) of shard "
                         f"{shard}/{plan.shards}: pass --resume to continue that job, or delete "
                         "the folder to start over")
    if found is None:
        store.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(store.dir / JOB_FILE) as f:  # concurrent shards write the same bytes
            f.write(json.dumps(job, indent=2, sort_keys=True).encode())
    store.remove_stale(shard)
    return store


def open_for_merge(work_dir: str | Path, groups: list[ImageGroup], input_sha256: str) -> ChunkStore:
    """Reopen a work dir to merge it; its manifest gives the shard count and chunk size."""
    work_dir = Path(work_dir)
    job = read_job(work_dir)
    if job is None:
        raise PartsError(f"{work_dir}: no labeling job here (no {JOB_FILE}); pass the --work-dir "
                         "that `mal label` used (default: the output path + '.parts')")
    if job.get("input_sha256") != input_sha256:
        raise PartsError(f"{work_dir} was labeled from a different annotations file "
                         f"({job.get('input')}); merge with that file")
    _check_format(work_dir, job)
    return ChunkStore(work_dir, ChunkPlan(groups, job["shards"], job["chunk_images"]))


def _check_format(work_dir: Path, found: dict) -> None:
    """Refuse a work dir whose manifest ``found`` another version of mal wrote (its chunks differ)."""
    if found.get("format") != FORMAT:
        raise PartsError(f"{work_dir} was written by another version of mal (work dir format "
                         f"{found.get('format')}, this one writes {FORMAT}): delete that folder "
                         "and label again (or label into another --work-dir)")


def _differences(found: dict, job: dict) -> list[str]:
    """Human-readable differences between two manifests (``input``, a path, is not compared)."""
    names = {"input_sha256": "annotations file content", "labeler": "labeler (model/engine/settings)",
             "shards": "shard count", "chunk_images": "--chunk-images", "kept_masks": "--keep-masks file(s)"}
    out = []
    for key in sorted((set(found) | set(job)) - {"input"}):
        if found.get(key) != job.get(key):
            what = names.get(key, key) + " differs"
            if key in ("shards", "chunk_images"):
                what += f": {found.get(key)} before, {job.get(key)} now"
            out.append(what)
    return out

