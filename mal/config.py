"""Every setting of a labeler and of its training, as plain dataclasses (no torch import, so the CLI
can read them), and each decoder's defaults in one place (:data:`RECIPES`).

``mal train`` (CLI and :func:`mal.api.train`) starts from ``recipe(decoder)`` and overrides what the
user sets. The schedule is in fractions of the run (:class:`Schedule`), so a recipe does not depend on
the dataset's size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .errors import MalError

DECODERS = ("kv", "sam")
ARCHS = ("maskrcnn_timm_fpn", "maskrcnn_r50_fpn")  # phase-2 segmenters (mal.segment.model)


@dataclass
class LabelerConfig:
    """Everything needed to rebuild a labeler (saved as config.json next to its weights)."""
    backbone: str = "tiny_vit_5m_sam"
    crop_size: int = 256
    decoder: str = "kv"                 # "kv" (MAL's K.V decoder) or "sam" (SAM's, box-prompted)
    decoder_dim: int = 128              # kv only
    decoder_convs: int = 4              # kv only
    label_expand: float = 1.3           # labeling crop = this x the box per axis (around its centre)
    # "crop": one crop of crop_size per box (MAL). "image" (sam only): the whole image in a square
    # frame of crop_size (SAM's 1024), encoded once, every box of it decoded on that one embedding.
    view: str = "crop"
    # view "image": zoom into tiles of the image where its boxes are small, so that the median box spans
    # about this many pixels of the crop_size frame (0: always the whole image). :mod:`mal.data.tiles`.
    box_frame: float = 0.0
    timm_kwargs: dict = field(default_factory=dict)  # extra timm constructor args (tiny test models)
    # sam only: a box prompt is its two corners plus a padding point (SamOnnxModel, the ONNX engine), or
    # the corners alone (False: segment-anything's SamPredictor, set for a --sam-checkpoint labeler).
    box_padding: bool = True
    # sam only: the score is the mean of this decoder's IoU head and that of the decoder it was trained
    # from, kept frozen beside it (``MaskLabeler.reference_decoder``, on the same embedding). The two heads
    # err on different masks; their mean ranks masks better on both development sets (BENCHMARKS.md,
    # Confidence). ``mal train`` sets it on the labeler it saves when TrainConfig.reference_score is on.
    reference_score: bool = False


@dataclass
class TrainConfig:
    """Optimisation and loss settings. Loss weights follow the MAL paper; the schedule (warm-up, loss
    ramps, the EMA teacher's memory) is set in *fractions of the run* (:class:`Schedule`), so the same
    defaults fit a 300-step run on a laptop and a 100k-step one on a cluster. Per-decoder defaults:
    :mod:`mal.recipes`."""
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1       # pretrained encoder moves slower than the new decoder
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.9)
    warmup: float = 0.08                # learning-rate warm-up, fraction of the run
    min_lr_ratio: float = 0.2           # cosine decays to 0.2x the peak learning rate
    ema_momentum: float = 0.996         # the teacher's EMA momentum on long runs (the paper's) ...
    ema_horizon: float = 0.2            # ... lowered on short ones: its memory 1/(1-m) <= this fraction of the run
    mil_weight: float = 4.0
    mil_ramp: float = 0.15              # MIL weight ramps up linearly over this fraction of the run
    crf_weight: float = 0.5
    crf_ramp: float = 0.5               # the CRF weight too (its target needs a teacher that has learnt)
    crf_zeta: float = 0.1
    crf_iters: int = 100
    crf_kernel: int = 3
    crf_clamp: tuple[float, float] = (0.1, 0.9)
    freeze_encoder: float = 0.0         # fraction of encoder parameters (input side first) kept frozen
    # LoRA of this rank on the encoder's attention (qkv), trained at the decoder's learning rate while the
    # rest of the encoder stays as freeze_encoder says; merged into the saved weights. 0: none.
    lora_rank: int = 0
    anchor_weight: float = 0.0          # Dice to the frozen starting model's masks (WeSAM's anchor)
    iou_weight: float = 0.0             # MSE of the decoder's IoU head to the mask's IoU with the CRF target
    # Boxes given a human mask (mal train --masks) trade MIL + CRF (+ anchor) for BCE + Dice to that
    # mask, at this weight: the MIL weight, so that such a box counts about as much as any other.
    mask_weight: float = 4.0
    # sam only: save the starting decoder beside the trained one for the score (LabelerConfig.reference_score).
    reference_score: bool = False
    total_steps: int = 1000             # set by api.train from epochs x batches
    # Frozen image side, view image: each image's embedding computed once and reused in later epochs
    # (mal.embedding_cache), up to this many GiB in host memory, then this many on disk (RUN/embeddings);
    # the student then sees the clean image's embedding (no photometric augmentation). 0: off.
    embed_cache_gb: float = 0.0
    embed_cache_disk_gb: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """A :class:`TrainConfig`'s schedule in steps of a run of ``total`` steps.

    The EMA momentum is the config's, or lower on a short run, so that the teacher's memory
    (1/(1-m) steps) spans at most ``ema_horizon`` of the run: it keeps a share m^total of its start,
    at most exp(-1/ema_horizon) (0.7% at 0.2), and has forgotten the random decoder it began as."""
    total: int
    warmup: int
    mil_ramp: int
    crf_ramp: int
    ema_momentum: float

    @classmethod
    def of(cls, c: TrainConfig) -> "Schedule":
        T = max(1, int(c.total_steps))
        steps = lambda f: int(round(f * T))  # noqa: E731  (0 = no ramp / no warm-up)
        momentum = min(c.ema_momentum, 1.0 - 1.0 / max(1.0, c.ema_horizon * T))
        return cls(T, steps(c.warmup), steps(c.mil_ramp), steps(c.crf_ramp), momentum)

    @staticmethod
    def ramp(step: int, steps: int) -> float:
        """Linear ramp 0 -> 1 over ``steps`` steps (full from the first step when 0)."""
        return min(1.0, (step + 1) / steps) if steps > 0 else 1.0

    def mil_factor(self, step: int) -> float:
        return self.ramp(step, self.mil_ramp)

    def crf_factor(self, step: int) -> float:
        return self.ramp(step, self.crf_ramp)

    def lr_factor(self, step: int, min_ratio: float) -> float:
        return lr_lambda(step, self.warmup, self.total, min_ratio)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:  # warmup 0: none
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Recipe:
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    epochs: int = 10                    # passes over the boxes (view crop) or images (view image)
    min_area: float = 2048.0            # boxes smaller than this (px; view image: frame px) are labeled but not trained on
    max_steps: int = -1                 # cap on the steps the epochs give (-1: none), so dense data keeps a CPU budget


RECIPES = {
    # The paper's K.V decoder learns shapes from scratch: long runs, loss ramps, boxes big enough to
    # show a shape. Its dataclass defaults are this recipe.
    "kv": Recipe(),
    # SAM's decoder only adapts: no ramps, the image side stays SAM's (student, teacher and anchor share one
    # embedding per view; training the neck and last stage too, freeze_encoder 0.8, gained nothing on nuclei
    # or COCO at 60 steps), a gentler learning rate, the anchor to the zero-shot start and the IoU head
    # trained (its output is the score). The whole image in SAM's 1024 frame beat per-box crops zero-shot,
    # and with view crop SAM needs 2x context. Two passes gained most of what longer runs did, also on
    # smaller boxes (BENCHMARKS.md). Where an image's boxes are small, zoomed tiles in which the median box
    # spans 128 frame pixels (32 cells of the 256x256 mask grid): zero-shot, whole image -> 64 -> 128 gave
    # 0.821 -> 0.851 -> 0.855 mIoU on 520x696+ nuclei fields; trained, 128 beat 64 on nuclei and COCO; photos
    # whose boxes are large keep the whole image. min_area counts frame pixels (what the model sees). LoRA
    # on the encoder (lora_rank) ranked masks better but is opt-in: 1.3-1.5x the training time. The score
    # averages the trained IoU head with the zero-shot decoder's (reference_score): each alone ranks worse.
    "sam": Recipe(labeler=LabelerConfig(decoder="sam", crop_size=1024, view="image", label_expand=2.0,
                                        box_frame=128.0),
                  train=TrainConfig(lr=5e-5, warmup=0.05, mil_ramp=0.0, crf_ramp=0.0, freeze_encoder=1.0,
                                    anchor_weight=1.0, iou_weight=1.0, reference_score=True),
                  epochs=2, min_area=1024.0, max_steps=400),
}


def recipe(decoder: str) -> Recipe:
    """The defaults for ``decoder`` ("kv" or "sam")."""
    if decoder not in RECIPES:
        raise MalError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    return RECIPES[decoder]


def with_overrides(r: Recipe, **changes) -> Recipe:
    """``r`` with fields of its labeler / train config / run replaced (None values are ignored)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    lab = {k: v for k, v in changes.items() if k in LabelerConfig.__dataclass_fields__}
    tr = {k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}
    run = {k: v for k, v in changes.items() if k in ("epochs", "min_area", "max_steps")}
    unknown = set(changes) - set(lab) - set(tr) - set(run)
    if unknown:
        raise MalError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return replace(r, labeler=replace(r.labeler, **lab), train=replace(r.train, **tr), **run)
