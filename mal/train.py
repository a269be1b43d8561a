"""Training of the mask labeler from boxes only: student + EMA teacher, MIL + CRF losses (Lightning)."""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from .config import LabelerConfig, Schedule, TrainConfig, lr_lambda  # noqa: F401  (lr_lambda: re-exported)
from .losses import crf_loss, dice_loss, mil_loss
from .modeling.labeler import MaskLabeler, build_labeler

log = logging.getLogger("mal")


def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for parameters and float buffers."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.lerp_(s.detach(), 1.0 - momentum)
        for t, s in zip(teacher.buffers(), student.buffers()):
            if t.dtype.is_floating_point:
                t.lerp_(s, 1.0 - momentum)
            else:
                t.copy_(s)


def freeze_leading(module: torch.nn.Module, fraction: float) -> int:
    """Freeze the first ``fraction`` of a module's parameters (by count, in definition order, which
    for backbones is input-to-output). Returns the number of frozen parameters."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    done = 0
    for p in params:
        if done >= fraction * total - 1e-9 or fraction <= 0:
            break
        p.requires_grad_(False)
        done += p.numel()
    return done


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
    exported as the final labeler."""

    def __init__(self, labeler: dict, train: dict, weights: str | None = None, strict_weights: bool = True,
                 neck_weights: str | None = None, decoder_weights: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.labeler_config = LabelerConfig(**labeler)
        self.cfg = TrainConfig(**train)
        self.schedule = Schedule.of(self.cfg)
        self.student: MaskLabeler = build_labeler(self.labeler_config, weights=weights, strict=strict_weights,
                                                  neck_weights=neck_weights, decoder_weights=decoder_weights)
        freeze_leading(self.student.encoder, self.cfg.freeze_encoder)
        unused = freeze_unused(self.student)
        if unused:
            log.debug("not trained (unused by the forward pass): %s", ", ".join(unused))
        if self.labeler_config.decoder == "sam" and self.cfg.freeze_encoder >= 1:
            self.student.neck.requires_grad_(False)  # the whole image side stays SAM's
        if self.labeler_config.decoder == "sam" and self.cfg.iou_weight <= 0:
            self.student.decoder.mask_decoder.iou_prediction_head.requires_grad_(False)  # no loss: no use
        self.teacher: MaskLabeler = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        # The starting model, frozen: an anchor that keeps a pretrained decoder from drifting (e.g.
        # towards the filled box, which satisfies the MIL loss). Not saved when unused.
        self.anchor = copy.deepcopy(self.student).requires_grad_(False) if self.cfg.anchor_weight > 0 else None

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
            with torch.no_grad():
                feats_aug, feats = self.student.embed(batch["image_aug"]), self.student.embed(batch["image"])
        student_p, student_iou = self._probs(self.student, batch["image_aug"], feats_aug, batch)
        with torch.no_grad():
            self.teacher.eval()
            teacher_p = self._probs(self.teacher, batch["image"], feats, batch)[0]

        mil = mil_loss(student_p, box).mean()
        # CRF colour features: the clean, normalised crop (or the box's window) at the mask's resolution.
        clean = self.student.normalize(batch["image"])
        small = (self._in_windows(clean, batch, 1.0, per_box=False) if "windows" in batch else
                 F.interpolate(clean, size=student_p.shape[-2:], mode="bilinear", align_corners=False,
                               antialias=True))
        crf, target = crf_loss(student_p, teacher_p, small, box, zeta=c.crf_zeta, iters=c.crf_iters,
                               kernel_size=c.crf_kernel, clamp=tuple(c.crf_clamp))
        crf = crf.mean()
        w_mil = c.mil_weight * self.schedule.mil_factor(self.global_step)
        w_crf = c.crf_weight * self.schedule.crf_factor(self.global_step)
        loss = w_mil * mil + w_crf * crf
        logs = {"mil": mil, "crf": crf}
        if self.anchor is not None:
            with torch.no_grad():
                self.anchor.eval()
                a_prob = self._probs(self.anchor, batch["image"], feats, batch)[0]
            anchor = dice_loss(student_p, (a_prob > 0.5).float() * box).mean()
            loss = loss + c.anchor_weight * anchor
            logs["anchor"] = anchor
        if student_iou is not None and c.iou_weight > 0:
            iou_head = F.mse_loss(student_iou.float(), mask_iou(student_p.detach() > 0.5, target > 0.5))
            loss = loss + c.iou_weight * iou_head
            logs["iou_head"] = iou_head
        self.log_dict({"loss": loss, **logs}, prog_bar=True, on_step=True,
                      batch_size=box.shape[0], sync_dist=False)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # The EMA follows each optimizer step here rather than in on_train_batch_end, which Lightning
        # runs after the checkpoint callback: checkpoints would hold a teacher one update behind its
        # student, and every --resume would lose an update.
        ema_update(self.teacher, self.student, self.schedule.ema_momentum)

    def configure_optimizers(self):
        c = self.cfg
        # The image side (encoder, and SAM's neck) moves slower than the decoder.
        enc = [p for n, p in self.student.named_parameters() if p.requires_grad and not n.startswith("decoder.")]
        dec = [p for p in self.student.decoder.parameters() if p.requires_grad]
        groups = [{"params": dec, "lr": c.lr}]
        if enc:
            groups.append({"params": enc, "lr": c.lr * c.encoder_lr_scale})
        opt = torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.schedule.lr_factor(s, c.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def module_kwargs(labeler: LabelerConfig, train: TrainConfig, **kw) -> dict:
    return dict(labeler=asdict(labeler), train=asdict(train), **kw)


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter's name and bytes: equal digests = identical weights."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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


def build_trainer(out: Path, *, accelerator: str, precision: str, devices: int | str, num_nodes: int,
                  epochs: int, max_steps: int, every: int, progress: bool, callbacks=()) -> L.Trainer:
    """A Trainer with mal's run layout (shared by `mal train` and `mal segment train`):
    ``out/checkpoints/last.ckpt`` every ``every`` steps, CSV logs in ``out/logs``.
    ``accelerator`` "cpu"/"gpu"; ``precision`` "bf16"/"32" (resolved by the caller)."""
    return L.Trainer(
        default_root_dir=str(out), accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        max_epochs=epochs if max_steps <= 0 else -1, max_steps=max_steps if max_steps > 0 else -1,
        # No version counter: a resumed run must overwrite last.ckpt, not write last-v1.ckpt beside it.
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", save_last=True,
                                                       every_n_train_steps=every, enable_version_counter=False),
                   *callbacks],
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs"),
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
    )


def check_same_run(ckpt: Path, hparams: dict) -> None:
    """--resume continues the run in ``ckpt`` only with the model and losses it was started with:
    any other ``labeler`` / ``train`` setting (other than the schedule's length) is one clear error
    instead of a state-dict mismatch deep inside Lightning."""
    saved = torch.load(str(ckpt), map_location="cpu", weights_only=False).get("hyper_parameters", {})
    diffs = [f"{group}.{k}: {saved[group].get(k)!r} in the checkpoint, {v!r} now"
             for group in ("labeler", "train") if isinstance(saved.get(group), dict)
             for k, v in hparams.get(group, {}).items() if k != "total_steps" and saved[group].get(k) != v]
    if diffs:
        raise ValueError(f"{ckpt}: --resume needs the settings the run was started with; "
                         f"{len(diffs)} differ: " + "; ".join(diffs[:4]))


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, loader, out: Path, *, resume: bool,
                  every: int) -> None:
    """fit(), from ``out/checkpoints/last.ckpt`` when ``resume``; the last stretch since the periodic
    checkpoint is saved too, so a later --resume starts from the true end."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        log.warning("--resume: no checkpoint at %s; training from the start", last)
    if resume and last.is_file():
        check_same_run(last, dict(module.hparams))
    trainer.fit(module, loader, ckpt_path=str(last) if resume and last.is_file() else None)
    if trainer.global_step % every:
        trainer.save_checkpoint(last, weights_only=False)  # full state, as --resume needs

