import torch


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-sample Dice loss ``1 - 2|p.t| / (|p|^2 + |t|^2)``.

    pred, target: (B, ...) in [0, 1]. Returns (B,). Squared norms in the denominator (V-Net form, as
    in the official code) keep the gradient well scaled for soft predictions.
    """
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    inter = (p * t).sum(1)
    return 1 - 2 * inter / ((p * p).sum(1) + (t * t).sum(1) + eps)
