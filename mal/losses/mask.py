"""Supervised mask loss, for the boxes that come with a human mask (``mal train --masks``)."""
import torch

from .dice import dice_loss

EPS = 1e-6  # probabilities are clamped away from 0 and 1: log(0) would be -inf


def mask_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + Dice of foreground probabilities to a given mask.

    prob: (B, H, W) in [0, 1], resampled into the box's loss window like the MIL/CRF losses (so on
    probabilities, not logits); target: (B, H, W) in [0, 1] (a soft target where the mask was
    resampled). Returns (B,): per-pixel mean BCE (ln 2 for p = 0.5 everywhere) + Dice (0 when equal).
    BCE is written out rather than F.binary_cross_entropy, which autocast refuses.
    """
    p = prob.float().clamp(EPS, 1 - EPS)
    t = target.float()
    bce = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).flatten(1).mean(1)
    return bce + dice_loss(p, t)
