"""Training the phase-2 segmenter (Lightning): Mask R-CNN losses, AdamW, warm-up + cosine, checkpoints."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import lr_lambda
from ..errors import MalError
from ..runtime import (
    build_trainer,
    fit_resumable,
    launcher_world,
    quiet_lightning,
    resolve_precision,
)
from .data import InstanceMasks, class_map, collate, load_instances, select_classes
from .model import SegmenterConfig, build_segmenter, save_segmenter

log = logging.getLogger("mal")


@dataclass
class SegmentTrainConfig:
    # 1e-3, not 2e-4: the heads start from scratch. Person-only retention on coco2017_mini (frozen
    # backbone, 300 steps): 0.044 mask AP against 0.019 at 2e-4 (250 steps); 3e-3 broke the box head.
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1     # the pretrained backbone moves slower than the new heads
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    total_steps: int = 1000            # set by train_segmenter from epochs x batches


class SegmenterModule(L.LightningModule):
    def __init__(self, config: dict, optim: dict, weights: str | None = None, strict_weights: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.config = SegmenterConfig(**config)
        self.optim = SegmentTrainConfig(**optim)
        self.model = build_segmenter(self.config, weights=weights, strict=strict_weights)

    start_step: int | None = None  # the step training (re)started from, for the closing log line

    def on_train_start(self) -> None:
        self.start_step = self.global_step

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        if not torch.isfinite(loss):  # stop at once: AdamW would spread the NaN into every weight
            terms = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
            hint = (" Under bf16 autocast the heads' losses can overflow; try --precision 32."
                    if "bf16" in str(self.trainer.precision) else " Try a lower --lr.")
            raise MalError(f"segmenter training stopped at step {self.global_step}: the loss is not "
                           f"finite ({terms}).{hint}")
        self.log_dict({k: v.detach() for k, v in losses.items()}, batch_size=len(images))
        self.log("loss", loss.detach(), prog_bar=True, batch_size=len(images))
        return loss

    def configure_optimizers(self):
        o = self.optim
        backbone, heads = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (backbone if name.startswith(("backbone.encoder.", "backbone.body.")) else heads).append(p)
        groups = [{"params": heads, "lr": o.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": o.lr * o.backbone_lr_scale})
        opt = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_lambda(s, o.warmup_steps, o.total_steps, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_segmenter(images: str | Path, annotations: str | Path | dict, out: str | Path, *,
                    config: SegmenterConfig | None = None, optim: SegmentTrainConfig | None = None,
                    class_agnostic: bool = False, image_ids: set[int] | None = None,
                    classes: list[str | int] | None = None, top_classes: int = 0,
                    weights: str | Path | None = None, strict_weights: bool = True,
                    epochs: int = 12, max_steps: int = -1, batch_size: int = 2, precision: str = "auto",
                    accelerator: str = "auto", devices: int | str = "auto", num_workers: int = 1,
                    seed: int = 0, resume: bool = False, progress: bool = True) -> Path:
    """Train a Mask R-CNN on the masks of a COCO file; returns the run directory.

    ``image_ids`` restricts training to those images (the retention split); ``classes`` (names or
    COCO ids) or ``top_classes`` (the N most frequent on those images) to a class subset: other
    classes' instances are dropped from the targets and the kept ids are saved in the config
    (``category_ids``), so that evaluation scores those classes only. The run directory
    gets ``checkpoints/last.ckpt`` (``resume`` continues from it), ``logs/`` (CSV) and, at the end,
    ``segmenter.safetensors`` + ``segmenter.json`` for ``mal segment eval``.
    """
    quiet_lightning()
    out = Path(out)
    L.seed_everything(seed, workers=True, verbose=False)
    data = load_instances(images, annotations)
    ids = {e["id"] for e in data.coco["images"]} if image_ids is None else set(image_ids)
    keep = select_classes(data.coco, classes, top_classes, ids)
    cats, cat_to_label = class_map(data.coco["categories"], class_agnostic, keep)
    cfg = config or SegmenterConfig()
    source = annotations if not isinstance(annotations, dict) else "annotations"
    ds = InstanceMasks(data, ids, cat_to_label, flip=True, source=str(source))
    if len(ds) == 0:
        raise MalError(f"{source}: no training image has an instance" + (" of the kept classes" if keep else ""))
    # Room for every object of the densest images (nuclei: up to hundreds), never below torchvision's 100.
    dets = cfg.detections_per_image or max(100, math.ceil(1.5 * max(len(r) for _, r in ds.groups)))
    cfg = SegmenterConfig(**{**asdict(cfg), "categories": cats, "class_agnostic": class_agnostic,
                             "category_ids": keep, "detections_per_image": dets})
    loader = DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=True,
                        collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0)
    steps = max_steps if max_steps > 0 else epochs * len(loader)
    o = optim or SegmentTrainConfig()
    o = SegmentTrainConfig(**{**asdict(o), "total_steps": steps,
                              "warmup_steps": min(o.warmup_steps, max(1, steps // 5))})
    log.info("training the segmenter (%s, %s, %d classes) on %d images, %d steps", cfg.arch, cfg.backbone,
             len(cats), len(ds), steps)

    acc = accelerator if accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    # auto is fp32 on a CPU even where bf16 is fast: Mask R-CNN's losses overflowed under CPU bf16
    # autocast (NaN within 30 steps on nuclei) while fp32 was as fast.
    prec = resolve_precision(precision, torch.device("cuda" if acc == "gpu" else "cpu"), cpu_bf16=False)
    module = SegmenterModule(asdict(cfg), asdict(o), weights=str(weights) if weights else None,
                             strict_weights=strict_weights)
    every = 200  # checkpoint cadence (steps); fixed, so a resumed run with other --max-steps matches it
    devices, num_nodes = launcher_world(devices, 1)
    trainer = build_trainer(out, accelerator=acc, precision=prec, devices=devices, num_nodes=num_nodes,
                            epochs=epochs, max_steps=steps, every=every, progress=progress)
    t0 = time.perf_counter()
    fit_resumable(trainer, module, loader, out, resume=resume, every=every)
    if trainer.is_global_zero:
        save_segmenter(module.model, cfg, out)
        secs = time.perf_counter() - t0
        done = trainer.global_step - (trainer.global_step if module.start_step is None else module.start_step)
        if done:
            log.info("segmenter trained %d steps in %.0f s (%.2f images/s); saved to %s", done, secs,
                     done * loader.batch_size / max(secs, 1e-9), out)
        else:  # a resumed run that had already finished
            log.info("segmenter already trained (%d steps): %s", trainer.global_step, out)
    return out
