"""Training of the mask labeler from boxes only: student + EMA teacher, MIL + CRF losses (Lightning).

:func:`train_labeler` builds the run (data, Trainer, :class:`MALModule`) and saves the EMA teacher;
``mal train`` and :func:`mal.api.train` are this function. The run directory's Trainer, checkpoint
and --resume are shared with phase 2 (:mod:`mal.runtime`).

About 350 lines: the training step and the run that drives it are kept in one file, as phase 2's
``segment/train.py`` keeps ``SegmenterModule`` with ``train_segmenter``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import LabelerConfig, Schedule, TrainConfig, recipe
from .data.coco import BoxDataset, load_boxes
from .data.dataset import TrainCrops, TrainImages, collate_images
from .data.given_masks import GivenMasks, load_given_masks
from .losses import crf_loss, dice_loss, mask_loss, mil_loss
from .modeling.encoder import freeze_leading
from .modeling.labeler import MaskLabeler, build_labeler, keep_reference, sam_weight_files, save_labeler
from .modeling.lora import add_lora, is_adapter
from .modeling.weights import WeightsError
from .runtime import (build_trainer, fit_resumable, launcher_world, quiet_lightning, resolve_precision,
                      tensors_sha256)

log = logging.getLogger("mal")

BOXES_PER_IMAGE = 8  # view "image": boxes drawn from each training image per step


def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for parameters and float buffers.

    Not timm's ModelEmaV3, although its update is bit-identical here (measured, fixed decay): it
    holds its copy as ``.module``, which would rename the teacher's weights in every checkpoint
    (``teacher.module.*``), so load_labeler(.ckpt), --resume of existing runs and the replica digest
    would change."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.lerp_(s.detach(), 1.0 - momentum)
        for t, s in zip(teacher.buffers(), student.buffers()):
            if t.dtype.is_floating_point:
                t.lerp_(s, 1.0 - momentum)
            else:
                t.copy_(s)


def freeze_unused(model: MaskLabeler) -> list[str]:
    """Freeze the parameters that take no part in the forward pass (e.g. the norm of a timm classifier
    head that the encoder skips) and return their names. They would never change anyway (no gradient),
    but DDP refuses to train with them unless it searches the graph for them on every step."""
    was_training = model.training
    model.eval()  # no BatchNorm statistics are updated by this probe
    S = model.config.crop_size
    logits, iou = model(torch.zeros(1, 3, S, S), torch.tensor([[S / 4, S / 4, 3 * S / 4, 3 * S / 4]]))
    (logits.float().sum() + (0 if iou is None else iou.float().sum())).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks (B, h, w) -> (B,); 1 when both are empty."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class MALModule(L.LightningModule):
    """Student trained by gradient; teacher = EMA of the student, used for the CRF target and
    exported as the final labeler. ``given_masks``: the identity of ``mal train --masks``'s files
    (:meth:`GivenMasks.identity`), kept in the checkpoint for --resume to compare."""

    def __init__(self, labeler: dict, train: dict, weights: str | None = None, strict_weights: bool = True,
                 neck_weights: str | None = None, decoder_weights: str | None = None,
                 given_masks: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.labeler_config = LabelerConfig(**labeler)
        self.cfg = TrainConfig(**train)
        self.schedule = Schedule.of(self.cfg)
        self.student: MaskLabeler = build_labeler(self.labeler_config, weights=weights, strict=strict_weights,
                                                  neck_weights=neck_weights, decoder_weights=decoder_weights)
        freeze_leading(self.student.encoder, self.cfg.freeze_encoder)
        if self.cfg.lora_rank > 0:
            names = add_lora(self.student.encoder, self.cfg.lora_rank)
            log.info("LoRA rank %d on %d attention layers of the encoder", self.cfg.lora_rank, len(names))
        unused = freeze_unused(self.student)
        if unused:
            log.debug("not trained (unused by the forward pass): %s", ", ".join(unused))
        if self.labeler_config.decoder == "sam" and self.cfg.freeze_encoder >= 1:
            self.student.neck.requires_grad_(False)  # the whole image side stays SAM's
        if self.labeler_config.decoder == "sam" and self.cfg.iou_weight <= 0:
            self.student.decoder.mask_decoder.iou_prediction_head.requires_grad_(False)  # no loss: no use
        self.teacher: MaskLabeler = copy.deepcopy(self.student, self._shared_image_side())
        self.teacher.requires_grad_(False)
        # The starting model, frozen: an anchor that keeps a pretrained decoder from drifting (e.g.
        # towards the filled box, which satisfies the MIL loss). Not saved when unused.
        self.anchor = (copy.deepcopy(self.student, self._shared_image_side()).requires_grad_(False)
                       if self.cfg.anchor_weight > 0 else None)
        # The starting decoder again, for the saved labeler's score (TrainConfig.reference_score): the
        # anchor's when there is one, else a frozen copy (in the checkpoint, so --resume keeps it).
        self.start_decoder = (copy.deepcopy(self.student.decoder).requires_grad_(False)
                              if self.keeps_reference() and self.anchor is None else None)
        self.embed_cache = None  # set up by on_fit_start when TrainConfig.embed_cache_gb asks for one

    def keeps_reference(self) -> bool:
        """Whether the saved labeler scores with its starting decoder too (TrainConfig.reference_score)."""
        return self.cfg.reference_score and self.labeler_config.decoder == "sam"

    def saved_labeler(self) -> MaskLabeler:
        """What ``mal train`` saves: the EMA teacher, with its starting decoder (the anchor's, or the
        frozen copy) beside it for the score when :meth:`keeps_reference`."""
        if not self.keeps_reference():
            return self.teacher
        return keep_reference(self.teacher, self.anchor.decoder if self.anchor is not None else self.start_decoder)

    def _shared_image_side(self) -> dict:
        """A deepcopy memo under which a frozen image side is not copied: student, teacher and anchor then
        hold one set of its weights (a ViT-H encoder is 2.5 GB; its EMA would never move it anyway)."""
        if not self.frozen_image_side():
            return {}
        return {id(t): t for n, t in [*self.student.named_parameters(), *self.student.named_buffers()]
                if not n.startswith("decoder.")}

    def frozen_image_side(self) -> bool:
        """True when no encoder/neck weight trains: student, teacher and anchor then share one
        embedding of each view, computed without gradient."""
        return not any(p.requires_grad for n, p in self.student.named_parameters()
                       if not n.startswith("decoder."))

    def _probs(self, model: MaskLabeler, crops: torch.Tensor, feats: torch.Tensor | None,
               batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``model``'s foreground probabilities for the batch's boxes in their loss windows (N, m, m),
        and its IoU prediction (N,) or None; from the shared features ``feats`` when given.

        Probabilities, not logits, are resampled into the windows: a window past the frame's edge then
        reads 0 (background, as SAM's padding) there rather than sigmoid(0) = 0.5."""
        S = crops.shape[-1]
        boxes, index = batch.get("boxes"), batch.get("index")
        logits, iou = model(crops, boxes, index) if feats is None else model.decode(feats, boxes, S, index)
        probs = self._in_windows(torch.sigmoid(logits.float())[:, None], batch, S / logits.shape[-1])
        return probs[:, 0], iou

    @staticmethod
    def _in_windows(maps: torch.Tensor, batch: dict, stride: float, per_box: bool = True) -> torch.Tensor:
        """View "image": resample maps (N, C, h, w) of each box (``per_box``; else (B, C, h, w) of each
        image), at ``stride`` frame pixels per cell, into each box's loss window -> (N, C, m, m).
        View "crop": the maps are crop-space already and come back as they are."""
        if "windows" not in batch:
            return maps
        from torchvision.ops import roi_align
        m = batch["box_mask"].shape[-1]
        index = torch.arange(len(batch["windows"]), device=maps.device) if per_box else batch["index"]
        rois = torch.cat([index[:, None].to(maps.dtype), batch["windows"].to(maps.dtype)], 1)
        # Per-box mask maps are smooth (2 samples per bin); the image is averaged over each bin (adaptive).
        return roi_align(maps, rois, (m, m), spatial_scale=1.0 / stride, sampling_ratio=2 if per_box else -1,
                         aligned=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        c = self.cfg
        box = batch["box_mask"].float()
        feats = feats_aug = None
        if self.frozen_image_side():
            feats_aug, feats = self._frozen_embeddings(batch)
        student_p, student_iou = self._probs(self.student, batch["image_aug"], feats_aug, batch)
        with torch.no_grad():
            self.teacher.eval()
            teacher_p = self._probs(self.teacher, batch["image"], feats, batch)[0]

        # Boxes given a human mask (batch "has_mask", with --masks) are trained on it; the others, on
        # their box. Each loss is summed over its boxes / all boxes: with no masks, the usual means.
        has = batch.get("has_mask")
        keep = None if has is None else ~has
        n = box.shape[0]

        def over_boxes(v: torch.Tensor) -> torch.Tensor:
            return v.mean() if keep is None else v[keep].sum() / n

        mil = over_boxes(mil_loss(student_p, box))
        # CRF colour features: the clean, normalised crop (or the box's window) at the mask's resolution.
        clean = self.student.normalize(batch["image"])
        small = (self._in_windows(clean, batch, 1.0, per_box=False) if "windows" in batch else
                 F.interpolate(clean, size=student_p.shape[-2:], mode="bilinear", align_corners=False,
                               antialias=True))
        crf, target = crf_loss(student_p, teacher_p, small, box, zeta=c.crf_zeta, iters=c.crf_iters,
                               kernel_size=c.crf_kernel, clamp=tuple(c.crf_clamp))
        crf = over_boxes(crf)
        w_mil = c.mil_weight * self.schedule.mil_factor(self.global_step)
        w_crf = c.crf_weight * self.schedule.crf_factor(self.global_step)
        loss = w_mil * mil + w_crf * crf
        logs = {"mil": mil, "crf": crf}
        if has is not None:
            given = batch["given_mask"].float()
            supervised = mask_loss(student_p[has], given[has]).sum() / n
            loss = loss + c.mask_weight * supervised
            logs["mask"] = supervised
            # The IoU head learns the IoU with the given mask where there is one.
            target = torch.where(has[:, None, None], (given > 0.5).to(target.dtype), target)
        if self.anchor is not None:
            with torch.no_grad():
                self.anchor.eval()
                a_prob = self._probs(self.anchor, batch["image"], feats, batch)[0]
            anchor = over_boxes(dice_loss(student_p, (a_prob > 0.5).float() * box))
            loss = loss + c.anchor_weight * anchor
            logs["anchor"] = anchor
        if student_iou is not None and c.iou_weight > 0:
            iou_head = F.mse_loss(student_iou.float(), mask_iou(student_p.detach() > 0.5, target > 0.5))
            loss = loss + c.iou_weight * iou_head
            logs["iou_head"] = iou_head
        self.log_dict({"loss": loss, **logs}, prog_bar=True, on_step=True,
                      batch_size=box.shape[0], sync_dist=False)
        return loss

    def on_fit_start(self) -> None:
        c = self.cfg
        self.embed_cache = None
        if (c.embed_cache_gb > 0 or c.embed_cache_disk_gb > 0) and self.frozen_image_side():
            from .embedding_cache import EmbeddingCache
            folder = Path(self.trainer.default_root_dir) / "embeddings" / f"rank{self.global_rank}"
            self.embed_cache = EmbeddingCache(c.embed_cache_gb * 2**30, c.embed_cache_disk_gb * 2**30, folder)

    def on_fit_end(self) -> None:
        if self.embed_cache is not None:
            log.info("embedding cache: %d images (%d hits, %d misses)", len(self.embed_cache),
                     self.embed_cache.hits, self.embed_cache.misses)
            self.embed_cache.clear()

    def _frozen_embeddings(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(student's, teacher's) features of a frozen image side: of the augmented and the clean image,
        or, with the embedding cache (view image), the clean image's for both, computed once per image."""
        with torch.no_grad():
            if self.embed_cache is not None and "frame_id" in batch:
                feats = self.embed_cache.get(batch["frame_id"].tolist(),
                                             lambda i: self.student.embed(batch["image"][i.to(self.device)]),
                                             self.device)
                return feats, feats
            return self.student.embed(batch["image_aug"]), self.student.embed(batch["image"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # The EMA follows each optimizer step here rather than in on_train_batch_end, which Lightning
        # runs after the checkpoint callback: checkpoints would hold a teacher one update behind its
        # student, and every --resume would lose an update.
        ema_update(self.teacher, self.student, self.schedule.ema_momentum)

    def configure_optimizers(self):
        c = self.cfg
        # The pretrained image side (encoder, and SAM's neck) moves slower than the decoder; LoRA's
        # weights are new (B starts at zero) and learn at the decoder's rate.
        trained = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        enc = [p for n, p in trained if not (n.startswith("decoder.") or is_adapter(n))]
        dec = [p for n, p in trained if n.startswith("decoder.") or is_adapter(n)]
        groups = [{"params": dec, "lr": c.lr}]
        if enc:
            groups.append({"params": enc, "lr": c.lr * c.encoder_lr_scale})
        opt = torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.schedule.lr_factor(s, c.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def module_kwargs(labeler: LabelerConfig, train: TrainConfig, **kw) -> dict:
    return dict(labeler=asdict(labeler), train=asdict(train), **kw)


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter's name and bytes, in definition order: equal
    digests = identical weights. The same hash as label.weights_sha256 over another selection
    (that one: the sorted state dict, buffers included), kept so digests logged by earlier runs
    stay comparable."""
    return tensors_sha256(module.named_parameters())[:16]


class ReplicaSyncError(RuntimeError):
    """The training processes ended with different weights."""


class ReplicaSyncCheck(L.Callback):
    """At the end of training, every process logs the digest of its (student + teacher) weights and
    all processes compare them. DDP keeps replicas identical only if nothing rank-dependent touches
    the weights (initialisation, un-synchronised buffers, the EMA teacher); if something does, rank
    0 would silently export its own model as if it were everyone's, so this fails loudly instead."""

    start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume's restore: the digest and step this run starts from.
        self.start_step = trainer.global_step
        self.start_digest = parameter_digest(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = parameter_digest(pl_module)
        rank, world = trainer.global_rank, trainer.world_size
        log.log(logging.INFO if world > 1 else logging.DEBUG,
                "rank %d/%d: parameter digest %s after step %d (%s at the start of this run)",
                rank, world, digest, trainer.global_step, self.start_digest)
        if world == 1:
            return
        # 15 hex digits = 60 bits: fits an int64 tensor, which every backend (gloo, nccl) gathers.
        mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64,
                            device=next(pl_module.parameters()).device)
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        torch.distributed.all_gather(gathered, mine)
        every = [f"{int(t.item()):015x}" for t in gathered]
        if len(set(every)) > 1:
            raise ReplicaSyncError("training processes ended with different weights (digest per rank: "
                                   + ", ".join(f"{r}: {d}" for r, d in enumerate(every)) + ")")
        if rank == 0:
            log.info("replicas in sync: all %d processes end with parameter digest %s", world, digest)


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


def train_dataset(data: BoxDataset, labeler: LabelerConfig, batch_size: int, *, min_area: float,
                  max_margin: float, masks: GivenMasks | None = None
                  ) -> tuple[TrainCrops | TrainImages, int, int, Callable | None]:
    """The training set of ``labeler``'s view -> (dataset, items per batch, boxes trained on, collate).

    View "crop": one item per box. View "image": one item per image, with up to BOXES_PER_IMAGE
    of its boxes, so ``batch_size`` (which counts boxes) becomes images per batch. (Not a
    LightningDataModule: the loader's batch size and the schedule's length are needed before fit(),
    when a DataModule's hooks have not run, so it would only move these lines behind them.)
    ``masks``: human masks of some boxes (``--masks``), trained on whatever their area."""
    if labeler.view == "image":
        ds = TrainImages(data, labeler.crop_size, min_area=min_area, max_margin=max_margin,
                         boxes_per_image=BOXES_PER_IMAGE, box_frame=labeler.box_frame, masks=masks)
        return ds, max(1, batch_size // BOXES_PER_IMAGE), ds.num_boxes, collate_images
    ds = TrainCrops(data, labeler.crop_size, min_area=min_area, max_margin=max_margin, masks=masks)
    return ds, batch_size, len(ds), None


def train_labeler(images: str | Path, annotations: str | Path | dict, out: str | Path, *,
                  labeler: LabelerConfig | None = None, train_config: TrainConfig | None = None,
                  weights: str | Path | None = None, strict_weights: bool = True,
                  neck_weights: str | Path | None = None, decoder_weights: str | Path | None = None,
                  epochs: int | None = None, max_steps: int | None = None, batch_size: int = 16,
                  min_area: float | None = None, max_margin: float = 1.2, precision: str = "auto",
                  accelerator: str = "auto", devices: int | str = "auto", num_nodes: int = 1,
                  num_workers: int = 1, seed: int = 0, resume: bool = False, strict: bool = False,
                  progress: bool = True, masks: str | Path | dict | list | None = None,
                  masks_reviewed_only: bool = False) -> Path:
    """Train a mask labeler on the boxes of a COCO file; returns the run directory.

    ``labeler`` / ``train_config`` default to the decoder's recipe (:data:`mal.config.RECIPES`), for
    the sam decoder when SAM's files are in shared/weights.

    The run directory gets Lightning checkpoints (``checkpoints/last.ckpt``, used by ``resume``),
    and, at the end, ``model.safetensors`` + ``config.json`` (the EMA teacher) for ``mal label``.
    With several devices or nodes (or under torchrun) it trains with DDP: ``batch_size`` is per
    process, each process sees its own share of the boxes, and only rank 0 writes files.
    ``strict`` turns clipped boxes and unreadable images (otherwise skipped) into errors.
    ``epochs`` and ``min_area`` (boxes smaller than this are not trained on, but all are labeled)
    default to the decoder's recipe. ``max_steps``: that many steps; None: ``epochs``, capped at the
    recipe's ``max_steps`` (the sam recipe's bounds a CPU run on dense data, where tiles multiply the frames);
    -1: ``epochs``, uncapped.
    ``masks``: a COCO file (or dict, or a list of them: review rounds in order) of human masks for
    some of the boxes (same annotation ids and boxes, see :mod:`mal.data.given_masks`): those boxes
    are trained on their mask (BCE + Dice, weighted by ``TrainConfig.mask_weight``) instead of MIL +
    CRF; ``masks_reviewed_only`` keeps only the masks marked ``mal_reviewed: true`` (by ``mal import``:
    changed by a person).
    """
    out = Path(out)
    for flag, f in (("--weights", weights), ("--neck-weights", neck_weights), ("--decoder-weights", decoder_weights)):
        if f is not None and not Path(f).is_file():  # before any work: not after the training banner
            raise WeightsError(f"{f}: {flag} file not found")
    quiet_lightning()  # our encoders keep BatchNorm in eval on purpose (see Encoder.train)
    labeler = labeler or recipe(resolve_decoder("auto", LabelerConfig.backbone, neck_weights,
                                                decoder_weights)).labeler
    defaults = recipe(labeler.decoder)
    cfg = train_config or defaults.train
    epochs = defaults.epochs if epochs is None else epochs
    min_area = defaults.min_area if min_area is None else min_area
    cap = defaults.max_steps if max_steps is None else -1  # the recipe's cap applies to its own schedule
    max_steps = -1 if max_steps is None else max_steps
    L.seed_everything(seed, workers=True, verbose=False)
    data = load_boxes(annotations, images, skip_crowd=True, strict=strict)
    given = None if masks is None else load_given_masks(masks, data, reviewed_only=masks_reviewed_only)
    ds, batch_size, n_boxes, collate = train_dataset(data, labeler, batch_size, min_area=min_area,
                                                     max_margin=max_margin, masks=given)

    acc = accelerator if accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    prec = resolve_precision(precision, torch.device("cuda" if acc == "gpu" else "cpu"))
    devices, num_nodes = launcher_world(devices, num_nodes)
    every = max(1, min(500, max_steps)) if max_steps > 0 else 500  # checkpoint cadence (steps)
    sync = ReplicaSyncCheck()
    trainer = build_trainer(out, accelerator=acc, precision=prec, devices=devices, num_nodes=num_nodes,
                            epochs=epochs, max_steps=max_steps, every=every, progress=progress,
                            callbacks=[sync])
    # Lightning gives each process a 1/world share of the boxes (DistributedSampler), so batches
    # and the schedule's length are counted per process. Counted here, not by Lightning's
    # trainer.estimated_stepping_batches: that is only right once fit() has started the processes
    # (trainer.world_size is set then), and the schedule is needed before (module, log, checkpoint).
    world = trainer.num_devices * trainer.num_nodes
    per_process = math.ceil(len(ds) / world)
    loader = DataLoader(ds, batch_size=min(batch_size, per_process), shuffle=True, drop_last=True,
                        num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=collate)
    steps = max_steps if max_steps > 0 else epochs * (per_process // loader.batch_size)
    if max_steps <= 0 and 0 < cap < steps:
        log.info("%d epochs would take %d steps: capped at the recipe's %d (--max-steps sets the length)",
                 epochs, steps, cap)
        steps = trainer.fit_loop.epoch_loop.max_steps = cap
    cfg = replace(cfg, total_steps=steps)
    unit = "images" if labeler.view == "image" else "crops"
    log.info("training on %d of %d boxes (area >= %g px), %d steps of %d x %d %s", n_boxes,
             len(data.records), min_area, steps, world, loader.batch_size, unit)
    if isinstance(ds, TrainImages) and labeler.box_frame > 0:
        zoomed, whole = ds.zoomed_images()
        log.info("%d frames: %d of %d images cut into zoomed tiles (their boxes are small: --box-frame %g), "
                 "the others whole", len(ds.frames), zoomed, zoomed + whole, labeler.box_frame)
    log.info("images are decoded as training reaches them: an unreadable one is %s then",
             "an error" if strict else "skipped and reported")
    if given is not None:
        log.info("%d of them with a human mask from %s (BCE + Dice, weight %g)", len(given.rles),
                 given.source, cfg.mask_weight)
    sch = Schedule.of(cfg)
    log.info("schedule: warm-up %d steps, MIL ramp %d, CRF ramp %d, teacher EMA momentum %.4f",
             sch.warmup, sch.mil_ramp, sch.crf_ramp, sch.ema_momentum)

    if labeler.decoder == "sam":
        weights, neck_weights, decoder_weights = sam_weight_files(weights, neck_weights, decoder_weights)
    module = MALModule(**module_kwargs(labeler, cfg, weights=str(weights) if weights else None,
                                       strict_weights=strict_weights,
                                       neck_weights=str(neck_weights) if neck_weights else None,
                                       decoder_weights=str(decoder_weights) if decoder_weights else None,
                                       given_masks=None if given is None else given.identity()))
    t0 = time.perf_counter()
    fit_resumable(trainer, module, loader, out, resume=resume, every=every)
    if trainer.is_global_zero:
        save_labeler(module.saved_labeler(), out)
        secs = time.perf_counter() - t0
        done = trainer.global_step - sync.start_step
        log.info("trained %d steps (to step %d) in %.0f s (%.2f %s/s); labeler saved to %s", done,
                 trainer.global_step, secs, done * loader.batch_size * world / max(secs, 1e-9), unit, out)
    return out
