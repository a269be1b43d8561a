"""Which images each chunk of each shard of a labeling job holds (words: :mod:`mal.labeling`), and
the ``--shard i/N`` a process labels.

Which image goes where depends on the input alone (:class:`ChunkPlan`): images in the box index's
order (:meth:`mal.data.coco.BoxDataset.by_image`); shard i of N takes images i, i+N, i+2N, ...
(round robin, so every shard gets a similar mix of the file's images); chunk k of a shard holds its
images [k*K, (k+1)*K).
"""
from __future__ import annotations

import os

from ..data.coco import ImageGroup
from ..errors import MalError


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
