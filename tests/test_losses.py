import cv2
import numpy as np
import torch

from mal.data.crops import box_mask
from mal.losses import crf_loss, dice_loss, mean_field_refine, mil_loss


def _box(h=32, w=32, b=(8, 6, 24, 28)):
    return torch.from_numpy(box_mask(b, h, w))[None]


def test_dice_bounds():
    t = _box()
    assert dice_loss(t, t).item() < 1e-4
    assert dice_loss(torch.zeros_like(t), t).item() > 0.99


def test_mil_zero_for_mask_filling_box_high_for_empty():
    box = _box()
    assert mil_loss(box, box).item() < 1e-3
    assert mil_loss(torch.zeros_like(box), box).item() > 1.9  # both projections fully wrong
    # Any mask touching every row and column of the box (here its diagonal) also satisfies MIL.
    diag = torch.zeros_like(box)
    for i in range(22):
        diag[0, 6 + i, 8 + min(15, int(i * 16 / 22))] = 1
    assert mil_loss(diag, box).item() < 0.05
    # Mass outside the box is penalised.
    leak = box.clone()
    leak[0, :, :8] = 1
    assert mil_loss(leak, box).item() > 0.1


def test_mil_gradient_flows():
    box = _box()
    p = torch.full_like(box, 0.3, requires_grad=True)
    mil_loss(p, box).sum().backward()
    assert p.grad.abs().sum() > 0


def _disk_scene(radius=8, size=32):
    """A disk of one colour on a background of another; returns (image, true mask, distance map)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    obj = (r <= radius).astype(np.float32)
    img = torch.from_numpy(np.repeat(obj[None, None], 3, axis=1))
    return img, torch.from_numpy(obj)[None], r


def _iou(a, b):
    return float((a * b).sum() / ((a + b) > 0).sum())


def test_crf_snaps_blurry_mask_to_colour_edge():
    """A blurry mask that spills 2 px past the object (an unsure halo, as early in training) is
    snapped back onto the colour edge."""
    img, truth, r = _disk_scene()
    p = np.where(r <= 8, 0.9, np.where(r <= 10, 0.6, 0.1)).astype(np.float32)
    blurry = torch.from_numpy(cv2.GaussianBlur(p, (0, 0), 0.7))[None]
    before = _iou((blurry > 0.5).float(), truth)
    refined = mean_field_refine(img, blurry, torch.ones(1, 32, 32), iters=100)
    assert before < 0.75
    assert _iou(refined, truth) > 0.99


def test_crf_keeps_mask_on_uniform_colour_without_edge():
    """Without a colour edge the CRF has nothing to snap to: the halo is not removed."""
    _, truth, r = _disk_scene()
    p = torch.from_numpy(np.where(r <= 8, 0.9, np.where(r <= 10, 0.6, 0.1)).astype(np.float32))[None]
    refined = mean_field_refine(torch.zeros(1, 3, 32, 32), p, None, iters=100)
    assert _iou(refined, truth) < 0.8


def test_crf_gates_foreground_by_box():
    img, truth, _ = _disk_scene()
    box = torch.zeros(1, 32, 32)
    box[:, :, :16] = 1  # the box covers the left half only
    refined = mean_field_refine(img, torch.full((1, 32, 32), 0.9), box, iters=20)
    assert refined[box == 0].max() == 0
    assert refined[(box == 1) & (truth == 1)].float().mean() > 0.9


def test_crf_loss_has_no_gradient_through_target():
    img, _, _ = _disk_scene()
    s = torch.full((1, 32, 32), 0.6, requires_grad=True)
    loss, target = crf_loss(s, torch.full((1, 32, 32), 0.6), img, torch.ones(1, 32, 32), iters=5)
    loss.sum().backward()
    assert not target.requires_grad and s.grad is not None


def _reference_refine(image, prob, box_mask, zeta=0.1, iters=100, k=3, clamp=(0.1, 0.9)):
    """The mean field written out with both labels' energies and a softmax (the form of the paper)."""
    import torch.nn.functional as F
    B, C, H, W = image.shape

    def unfold(x):
        return F.unfold(x, k, padding=k // 2).reshape(B, x.shape[1], k * k, H * W)
    neigh = unfold(image + 10.0) - (image + 10.0).reshape(B, C, 1, H * W)
    kernel = torch.exp(-(neigh ** 2).sum(1) / (2 * zeta ** 2))
    gate = box_mask.reshape(B, 1, H * W)
    q = (prob.reshape(B, 1, H * W) * gate).clamp(*clamp)
    for _ in range(iters):
        q2 = torch.cat([1 - q, q], 1).reshape(B, 2, H, W)
        energy = (unfold(-torch.log(q2)) * kernel[:, None]).sum(2)
        unnorm = torch.exp(-(energy - energy.min(1, keepdim=True).values))
        unnorm[:, 1:] = unnorm[:, 1:] * gate
        q = (unnorm[:, 1:] / unnorm.sum(1, keepdim=True)).clamp(*clamp)
    return (q.reshape(B, H, W) > 0.5).float()


def test_crf_one_map_form_equals_two_label_softmax():
    torch.manual_seed(0)
    img = torch.randn(6, 3, 40, 40) * 0.3
    img[:, :, 10:30, 8:25] += 1.0  # a region of its own colour, so the refinement has edges to find
    prob = torch.rand(6, 40, 40)
    box = torch.zeros(6, 40, 40)
    box[:, 5:35, 4:36] = 1
    got = mean_field_refine(img, prob, box, iters=100)
    ref = _reference_refine(img, prob, box)
    assert 0.1 < ref.mean() < 0.9  # a non-trivial target
    assert (got != ref).sum() <= 2, int((got != ref).sum())
