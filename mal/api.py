"""The Python API: train(), label(), evaluate(). The CLI is a thin layer over these."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from .data.coco import load_boxes
from .data.dataset import TrainCrops, TrainImages, collate_images
from .evaluate import evaluate, format_report  # noqa: F401  (re-exported)
from .label import label, merge  # noqa: F401  (re-exported)
from .modeling.labeler import LabelerConfig, sam_weight_files, save_labeler
from .config import recipe
from .runtime import quiet_lightning, resolve_precision
from .train import (MALModule, ReplicaSyncCheck, Schedule, TrainConfig, build_trainer, fit_resumable,
                    module_kwargs)

log = logging.getLogger("mal")

BOXES_PER_IMAGE = 8  # view "image": boxes drawn from each training image per step


def launcher_world(devices: int | str, num_nodes: int) -> tuple[int | str, int]:
    """Devices per node and nodes: those of torchrun when it started us and nothing was asked for.

    Lightning needs ``devices`` x ``num_nodes`` to equal torchrun's world size; on CPU its "auto" is
    1 device, which under ``torchrun --nproc_per_node 2`` would train 2 unrelated models."""
    if (devices == "auto" and num_nodes == 1 and torch.distributed.is_available()
            and torch.distributed.is_torchelastic_launched()):
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    return devices, num_nodes


def resolve_decoder(decoder: str, backbone: str, neck_weights: str | Path | None = None,
                    decoder_weights: str | Path | None = None) -> str:
    """"auto" -> "sam" for SAM's trunk (tiny_vit_5m_sam) when SAM's neck and decoder files are given or
    in shared/weights (the better labeler, BENCHMARKS.md), else "kv" (any other backbone)."""
    if decoder != "auto":
        return decoder
    if backbone != "tiny_vit_5m_sam":
        return "kv"
    try:
        sam_weight_files(None, neck_weights, decoder_weights)
    except FileNotFoundError:
        return "kv"
    return "sam"


def train(images: str | Path, annotations: str | Path | dict, out: str | Path, *,
          labeler: LabelerConfig | None = None, train_config: TrainConfig | None = None,
          weights: str | Path | None = None, strict_weights: bool = True,
          neck_weights: str | Path | None = None, decoder_weights: str | Path | None = None,
          epochs: int | None = None, max_steps: int = -1, batch_size: int = 16, min_area: float | None = None,
          max_margin: float = 1.2, precision: str = "auto", accelerator: str = "auto",
          devices: int | str = "auto", num_nodes: int = 1, num_workers: int = 1, seed: int = 0,
          resume: bool = False, strict: bool = False, progress: bool = True) -> Path:
    """Train a mask labeler on the boxes of a COCO file; returns the run directory.

    ``labeler`` / ``train_config`` default to the decoder's recipe (:mod:`mal.recipes`), for the sam
    decoder when SAM's files are in shared/weights.

    The run directory gets Lightning checkpoints (``checkpoints/last.ckpt``, used by ``resume``),
    and, at the end, ``model.safetensors`` + ``config.json`` (the EMA teacher) for ``mal label``.
    With several devices or nodes (or under torchrun) it trains with DDP: ``batch_size`` is per
    process, each process sees its own share of the boxes, and only rank 0 writes files.
    ``strict`` turns clipped boxes and unreadable images (otherwise skipped) into errors.
    ``epochs`` and ``min_area`` (boxes smaller than this are not trained on, but all are labeled)
    default to the decoder's recipe.
    """
    out = Path(out)
    quiet_lightning()  # our encoders keep BatchNorm in eval on purpose (see Encoder.train)
    labeler = labeler or recipe(resolve_decoder("auto", LabelerConfig.backbone, neck_weights,
                                                decoder_weights)).labeler
    defaults = recipe(labeler.decoder)
    cfg = train_config or defaults.train
    epochs = defaults.epochs if epochs is None else epochs
    min_area = defaults.min_area if min_area is None else min_area
    L.seed_everything(seed, workers=True, verbose=False)
    data = load_boxes(annotations, images, skip_crowd=True, strict=strict)
    if labeler.view == "image":  # batch_size counts boxes: images of up to BOXES_PER_IMAGE boxes each
        ds = TrainImages(data, labeler.crop_size, min_area=min_area, max_margin=max_margin,
                         boxes_per_image=BOXES_PER_IMAGE)
        batch_size, collate, n_boxes = max(1, batch_size // BOXES_PER_IMAGE), collate_images, ds.num_boxes
    else:
        ds = TrainCrops(data, labeler.crop_size, min_area=min_area, max_margin=max_margin)
        collate, n_boxes = None, len(ds)

    acc = accelerator if accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    prec = resolve_precision(precision, torch.device("cuda" if acc == "gpu" else "cpu"))
    devices, num_nodes = launcher_world(devices, num_nodes)
    every = max(1, min(500, max_steps)) if max_steps > 0 else 500  # checkpoint cadence (steps)
    sync = ReplicaSyncCheck()
    trainer = build_trainer(out, accelerator=acc, precision=prec, devices=devices, num_nodes=num_nodes,
                            epochs=epochs, max_steps=max_steps, every=every, progress=progress,
                            callbacks=[sync])
    # Lightning gives each process a 1/world share of the boxes (DistributedSampler), so batches
    # and the schedule's length are counted per process.
    # (trainer.world_size is only set once fit() has started the processes.)
    world = trainer.num_devices * trainer.num_nodes
    per_process = math.ceil(len(ds) / world)
    loader = DataLoader(ds, batch_size=min(batch_size, per_process), shuffle=True, drop_last=True,
                        num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=collate)
    steps = max_steps if max_steps > 0 else epochs * (per_process // loader.batch_size)
    cfg = replace(cfg, total_steps=steps)
    unit = "images" if labeler.view == "image" else "crops"
    log.info("training on %d of %d boxes (area >= %g px), %d steps of %d x %d %s", n_boxes,
             len(data.records), min_area, steps, world, loader.batch_size, unit)
    sch = Schedule.of(cfg)
    log.info("schedule: warm-up %d steps, MIL ramp %d, CRF ramp %d, teacher EMA momentum %.4f",
             sch.warmup, sch.mil_ramp, sch.crf_ramp, sch.ema_momentum)

    if labeler.decoder == "sam":
        weights, neck_weights, decoder_weights = sam_weight_files(weights, neck_weights, decoder_weights)
    module = MALModule(**module_kwargs(labeler, cfg, weights=str(weights) if weights else None,
                                       strict_weights=strict_weights,
                                       neck_weights=str(neck_weights) if neck_weights else None,
                                       decoder_weights=str(decoder_weights) if decoder_weights else None))
    t0 = time.perf_counter()
    fit_resumable(trainer, module, loader, out, resume=resume, every=every)
    if trainer.is_global_zero:
        save_labeler(module.teacher, out)
        secs = time.perf_counter() - t0
        done = trainer.global_step - sync.start_step
        log.info("trained %d steps (to step %d) in %.0f s (%.2f %s/s); labeler saved to %s", done,
                 trainer.global_step, secs, done * loader.batch_size * world / max(secs, 1e-9), unit, out)
    return out
