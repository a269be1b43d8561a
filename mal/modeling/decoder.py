"""Attention-based (K.V) mask decoder of MAL.

K: an MLP on the globally pooled feature map -> one query vector per crop ("what the object is").
V: a small conv head on the feature map, with one 2x upsample -> a per-pixel embedding at stride 4.
Mask logits are the per-pixel dot product K.V: one class-agnostic mask per crop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not act)]
    if act:
        layers += [nn.GroupNorm(min(32, cout // 4), cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MaskDecoder(nn.Module):
    """features (B, C, h, w) at ``in_stride`` -> mask logits (B, H/4, W/4) for a crop of H x W.

    The V head first resizes the features to stride 8 (bilinear), runs ``num_convs - 1`` convs,
    upsamples 2x to stride 4 and runs the last conv. Encoders of stride 8 or finer skip the resize.
    """

    def __init__(self, in_channels: int, in_stride: int, dim: int = 256, num_convs: int = 4):
        super().__init__()
        assert num_convs >= 2 and in_stride >= 4
        self.in_stride = in_stride
        self.key = nn.Sequential(nn.Linear(in_channels, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        convs = [_conv(in_channels, dim)] + [_conv(dim, dim) for _ in range(num_convs - 2)]
        self.value_low = nn.Sequential(*convs)  # at stride 8
        self.value_high = _conv(dim, dim, act=False)  # at stride 4, after the 2x upsample
        self.scale = dim ** -0.5  # keeps initial logits O(1) whatever the width

    def forward(self, feats: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """feats: (B, C, h, w); out_size: (H/4, W/4) of the crop. Returns logits (B, H/4, W/4)."""
        k = self.key(feats.mean(dim=(2, 3)))  # (B, D)
        mid = (max(out_size[0] // 2, 1), max(out_size[1] // 2, 1))
        v = feats if feats.shape[-2:] == mid else F.interpolate(feats, size=mid, mode="bilinear",
                                                                 align_corners=False)
        v = self.value_low(v)
        v = F.interpolate(v, size=out_size, mode="bilinear", align_corners=False)
        v = self.value_high(v)  # (B, D, H/4, W/4)
        return torch.einsum("bd,bdhw->bhw", k, v) * self.scale
