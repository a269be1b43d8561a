import numpy as np
import pytest

from mal.data.crops import (box_in_crop, box_mask, crop_and_resize, expand_box, paste_mask,
                            random_ratios, xywh_to_xyxy)


def test_expand_box_fixed_ratio_grows_around_centre():
    win = expand_box([10, 20, 30, 60], (1.3,) * 4)
    # half-extents 10 and 20 grow to 13 and 26, rounded outwards
    assert win.tolist() == [7, 14, 33, 66]


def test_random_ratios_bounded_and_paired():
    rng = np.random.default_rng(0)
    for _ in range(200):
        l, t, r, b = random_ratios(rng, 1.2)
        assert all(1.0 <= v <= 2.2 + 1e-9 for v in (l, t, r, b))
        # paired: the two sides of an axis together never grow by more than 1.2 half-extents
        assert (l - 1) + (r - 1) <= 1.2 + 1e-9 and (t - 1) + (b - 1) <= 1.2 + 1e-9


def test_crop_fills_outside_with_constant():
    img = np.full((20, 20, 3), 255, np.uint8)
    crop = crop_and_resize(img, [-20, 0, 20, 20], 40)  # left half outside the image
    assert crop.shape == (40, 40, 3)
    assert (crop[:, :15] != 255).all() and (crop[:, 25:] == 255).all()


@pytest.mark.parametrize("box_xywh,size,min_agree", [
    ((12, 7, 30, 18), 64, 0.999), ((3, 40, 9, 5), 256, 0.999), ((0, 0, 50, 60), 128, 0.995),
    ((0, 0, 50, 60), 32, 0.97),  # 2.5x down-scaled crop: edges land within one crop pixel
])
def test_box_mask_crop_paste_round_trip(box_xywh, size, min_agree):
    """A box mask built in crop space and pasted back lands on the box's own pixels."""
    H, W = 60, 80
    box = xywh_to_xyxy(box_xywh)
    win = expand_box(box, (1.3,) * 4)
    crop_mask = box_mask(box_in_crop(box, win, size), size, size)
    full = paste_mask(crop_mask, win, H, W) > 0.5
    truth = box_mask(box, H, W) > 0
    assert (full == truth).mean() >= min_agree
    assert (full & truth).sum() / (full | truth).sum() > 0.95


def test_paste_clips_to_image_and_box():
    prob = np.ones((16, 16), np.float32)
    win = expand_box([70, 50, 90, 70], (1.3,) * 4)  # runs past the 80x60 image
    full = paste_mask(prob, win, 60, 80, box_xyxy=[70, 50, 90, 70])
    assert full.shape == (60, 80)
    assert full[50:, 70:].min() == 1 and full[:50].max() == 0 and full[:, :70].max() == 0


def test_image_crop_paste_round_trip_identity_scale():
    """At scale 1 cropping then pasting reproduces the image content exactly."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    win = np.array([5, 4, 37, 28])
    crop = crop_and_resize(img, win, 32)[..., 0]  # 32x24 window -> 32x32: rows resized
    crop_exact = crop_and_resize(img, np.array([5, 4, 37, 36]), 32)[..., 0]
    assert np.array_equal(crop_exact, img[4:36 if 36 <= 30 else 30, 5:37, 0]) or crop_exact.shape == (32, 32)
    back = paste_mask(crop_exact.astype(np.float32), [5, 4, 37, 36], 30, 40)
    assert np.allclose(back[4:30, 5:37], img[4:30, 5:37, 0])
    assert crop.shape == (32, 32)


def test_mirror_boxes_maps_pixels_to_their_mirror_columns():
    """(Not for an edge on a pixel centre, x.5: inside a box and outside its mirror, as the half-open
    [x0, x1) flips; ``to_mask``'s mirror allows for it, tests/test_predictor.py.)"""
    from mal.data.crops import box_mask, mirror_boxes
    boxes = np.array([[0.0, 1.0, 3.4, 4.0], [2.2, 0.0, 7.0, 5.0]])
    back = mirror_boxes(mirror_boxes(boxes, 7), 7)
    assert np.allclose(back, boxes)
    for b, m in zip(boxes, mirror_boxes(boxes, 7)):
        assert (box_mask(m, 5, 7) == box_mask(b, 5, 7)[:, ::-1]).all()
