"""SAM's image-encoder neck: trunk features -> the 256-channel image embedding SAM's decoder reads.

``Conv1x1(C -> 256, no bias) -> LayerNorm2d -> Conv3x3(256 -> 256, no bias) -> LayerNorm2d``, as in
segment-anything's ``ImageEncoderViT.neck`` (and MobileSAM's TinyViT). Keys ``neck.0.weight``,
``neck.1.{weight,bias}``, ``neck.2.weight``, ``neck.3.{weight,bias}`` match SAM checkpoints.
"""
from __future__ import annotations

from pathlib import Path

from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from .weights import WeightsError, read_state_dict


class SamNeck(nn.Sequential):
    """forward: (B, C, h, w) trunk features -> (B, 256, h, w) image embedding."""

    def __init__(self, in_channels: int, out_channels: int = 256):
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         LayerNorm2d(out_channels))


def load_neck_weights(neck: SamNeck, path: str | Path) -> None:
    """Load ``neck.*`` tensors (a neck-only file, or a whole SAM / MobileSAM image-encoder state
    dict) strictly: a missing tensor or a wrong shape raises WeightsError naming the file."""
    path = Path(path)
    sd = read_state_dict(path)
    for prefix in ("image_encoder.neck.", "neck."):
        sub = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if sub:
            break
    own = neck.state_dict()
    bad = [k for k in own if k not in sub or sub[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        got = tuple(sub[k].shape) if k in sub else "missing"
        raise WeightsError(f"{path}: not a SAM neck for {own['0.weight'].shape[1]}-channel features: "
                           f"neck.{k} is {got}, expected {tuple(own[k].shape)} ({len(bad)} tensors do not fit)")
    neck.load_state_dict({k: sub[k] for k in own}, strict=True)
