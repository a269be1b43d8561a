"""Image embeddings of training images, computed once and reused across epochs (``mal train`` with a frozen
image side, view "image"): decoder training on a large SAM encoder then costs about one encoder pass per
image, not one per step.

Bounded: entries are kept in host memory up to ``memory_bytes``, then written to ``folder`` up to
``disk_bytes`` (one file per image, written atomically); an image past both budgets is embedded again each
time it comes. Nothing is ever evicted, so a full cache keeps a fixed set of images (in random-order
epochs an LRU cache smaller than the data set would miss nearly always).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch


class EmbeddingCache:
    def __init__(self, memory_bytes: float, disk_bytes: float = 0.0, folder: str | Path | None = None):
        self.memory_bytes, self.disk_bytes = float(memory_bytes), float(disk_bytes) if folder else 0.0
        self.folder = Path(folder) if folder else None
        self.memory: dict[int, torch.Tensor] = {}
        self.on_disk: set[int] = set()
        self.used_memory = self.used_disk = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.memory) + len(self.on_disk)

    def _path(self, key: int) -> Path:
        return self.folder / f"{key}.pt"

    def _lookup(self, key: int) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        if key in self.on_disk:
            return torch.load(self._path(key), map_location="cpu", weights_only=True)
        return None

    def _store(self, key: int, emb: torch.Tensor) -> None:
        size = emb.numel() * emb.element_size()
        if self.used_memory + size <= self.memory_bytes:
            self.memory[key] = emb
            self.used_memory += size
        elif self.folder is not None and self.used_disk + size <= self.disk_bytes:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(key).with_suffix(f".tmp{os.getpid()}")
            torch.save(emb, tmp)
            tmp.replace(self._path(key))
            self.on_disk.add(key)
            self.used_disk += size

    def get(self, keys: list[int], compute: Callable[[torch.Tensor], torch.Tensor],
            device: torch.device | str = "cpu") -> torch.Tensor:
        """Embeddings (B, C, h, w) on ``device`` of the images ``keys`` (B ids); those not cached are computed
        in one call of ``compute(positions)`` (a long tensor of their positions in ``keys``) and cached
        (a copy in host memory or on disk) if the budgets allow."""
        found = [self._lookup(int(k)) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            for i, emb in zip(todo, compute(torch.tensor(todo, dtype=torch.long))):
                found[i] = emb
                self._store(int(keys[i]), emb.detach().to("cpu", copy=True))
        return torch.stack([f.to(device) for f in found])

    def clear(self) -> None:
        """Forget every entry and delete the files written."""
        for key in self.on_disk:
            self._path(key).unlink(missing_ok=True)
        self.memory.clear()
        self.on_disk.clear()
        self.used_memory = self.used_disk = 0
