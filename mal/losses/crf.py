"""Mean-field CRF refinement, used to build a training target (no gradient flows through it).

A binary dense-CRF approximation on a 3x3 neighbourhood: each pixel's label distribution is pulled
toward its neighbours' in proportion to their colour similarity ``exp(-|I_i - I_j|^2 / (2 zeta^2))``.
Iterating spreads confident labels along regions of similar colour and stops at colour edges, which
snaps a blurry mask to the object boundary. Foreground is gated by the box: outside it, p(fg) = 0
before clamping.
"""
import torch
import torch.nn.functional as F

from .dice import dice_loss


def _unfold(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, k*k, H*W) neighbourhoods (zero padded)."""
    B, C, H, W = x.shape
    return F.unfold(x, k, padding=k // 2).reshape(B, C, k * k, H * W)


@torch.no_grad()
def mean_field_refine(image: torch.Tensor, prob: torch.Tensor, box_mask: torch.Tensor | None = None,
                      *, zeta: float = 0.1, iters: int = 100, kernel_size: int = 3,
                      clamp: tuple[float, float] = (0.1, 0.9)) -> torch.Tensor:
    """Refine foreground probabilities with mean-field inference.

    image: (B, C, H, W) colour features (the normalised crop, resized to the mask's size).
    prob: (B, H, W) initial foreground probability. box_mask: (B, H, W) 1 inside the box.
    Returns the binarised refined mask (B, H, W) float {0, 1}.
    """
    assert kernel_size % 2 == 1
    B, C, H, W = image.shape
    lo, hi = clamp
    feat = image.float()
    # Pairwise affinity to each neighbour. Padding neighbours get a far-away colour -> zero weight.
    neigh = _unfold(feat + 10.0, kernel_size) - (feat + 10.0).reshape(B, C, 1, H * W)
    kernel = torch.exp(-(neigh ** 2).sum(1) / (2 * zeta ** 2))  # (B, k*k, HW)
    gate = None if box_mask is None else box_mask.reshape(B, 1, H * W).float()

    q = prob.float().reshape(B, 1, H * W)
    if gate is not None:
        q = q * gate
    q = q.clamp(lo, hi)
    for _ in range(iters):
        # Two labels: p(fg) = softmax of the energies -sum_j k_ij log q_j(label) = sigmoid(E_bg - E_fg),
        # and E_bg - E_fg = sum_j k_ij logit(q_j): one map to unfold per iteration, not two, no softmax.
        logit = (torch.log(q) - torch.log1p(-q)).reshape(B, 1, H, W)
        q = torch.sigmoid((_unfold(logit, kernel_size)[:, 0] * kernel).sum(1, keepdim=True))  # (B, 1, HW)
        if gate is not None:
            q = q * gate
        q = q.clamp(lo, hi)
    return (q.reshape(B, H, W) > 0.5).float()


def crf_loss(student_prob: torch.Tensor, teacher_prob: torch.Tensor, image: torch.Tensor,
             box_mask: torch.Tensor, **crf_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice between the student and the CRF refinement of the student/teacher average.

    All maps (B, H, W) at the same resolution as ``image`` (B, C, H, W). Returns (loss (B,), target).
    """
    target = mean_field_refine(image, (student_prob.detach() + teacher_prob) / 2, box_mask, **crf_kwargs)
    return dice_loss(student_prob, target), target
