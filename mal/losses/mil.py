"""Multiple-instance-learning loss on box projections.

Every row and every column crossing the box holds at least one object pixel (the box is tight), and
rows/columns outside the box hold none. So the max of the mask along each row (and each column) must
equal the box's projection: a bag-level label that needs no mask annotation.
"""
import torch

from .dice import dice_loss


def mil_loss(prob: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """prob: (B, H, W) foreground probabilities; box_mask: (B, H, W) 1 inside the box.

    Returns (B,): Dice of row-max projections + Dice of column-max projections (0 when the mask's
    projections equal the box's, up to 2 for an empty mask).
    """
    row = dice_loss(prob.amax(dim=2), box_mask.amax(dim=2))
    col = dice_loss(prob.amax(dim=1), box_mask.amax(dim=1))
    return row + col
