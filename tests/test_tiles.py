"""Zoomed tiles for the whole-image view: geometry, fallback to the whole image, and paste-back."""
import json

import numpy as np
import pytest

from mal.data.dataset import labeling_crops
from mal.data.tiles import image_tiles, plan_tiles, tile_side, tile_starts
from mal.errors import MalError
from mal.predictor import to_mask


def random_boxes(rng, n, H, W, lo, hi):
    wh = rng.uniform(lo, hi, size=(n, 2))
    xy = rng.uniform(0, 1, size=(n, 2)) * ([W, H] - wh)
    return np.concatenate([xy, xy + wh], 1)


@pytest.mark.parametrize("H,W,lo,hi", [(520, 696, 8, 40), (1040, 1388, 5, 30), (256, 256, 10, 30),
                                       (300, 2000, 4, 12), (1000, 1000, 30, 60)])
def test_every_box_lies_in_its_tile_with_context(H, W, lo, hi):
    rng = np.random.default_rng(H + W)
    boxes = random_boxes(rng, 300, H, W, lo, hi)
    t = tile_side(boxes, H, W, 1024, 96)
    long = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert 4 * long.max() <= t <= max(H, W) or t == max(H, W)
    windows, index = plan_tiles(boxes, H, W, t)
    assert index.shape == (len(boxes),) and set(index.tolist()) == set(range(len(windows)))  # no empty tile
    assert np.all(windows[:, 2] - windows[:, 0] == t) and np.all(windows[:, 3] - windows[:, 1] == t)
    assert np.all(windows[:, :2] >= 0)
    for b, w in zip(boxes, windows[index]):
        # context of at least t/8 on every side, except where the image itself ends
        margin = np.array([b[0] - w[0], b[1] - w[1], w[2] - b[2], w[3] - b[3]])
        edge = np.array([b[0] - 0, b[1] - 0, W - b[2], H - b[3]])
        assert np.all((margin >= t / 8 - 1e-6) | (margin >= edge - 1e-6)), (b, w, t)


def test_tile_starts_cover_the_axis_at_most_half_a_tile_apart():
    for length, t in [(1000, 300), (696, 320), (256, 256), (100, 300), (1001, 1000)]:
        s = tile_starts(length, t)
        assert s[0] == 0 and (s[-1] + t >= length)
        assert np.all(np.diff(s) <= t / 2 + 0.5)
        assert np.all(s + t <= max(length, t))


def test_large_boxes_or_no_zoom_give_the_whole_image_frame():
    boxes = np.array([[10, 10, 300, 200], [50, 60, 90, 100]], float)  # a photo: one large box
    for bf in (0, 96):
        windows, index = image_tiles(boxes, 480, 640, 1024, bf)
        assert windows.tolist() == [[0, 0, 640, 640]] and index.tolist() == [0, 0]
    with pytest.raises(MalError, match="more than a quarter of the 1024-px frame"):
        tile_side(boxes, 480, 640, 1024, 300)


def test_boxes_much_smaller_than_their_neighbours_get_finer_tiles_of_their_own():
    """A photo: a large box keeps the whole-image frame; boxes spanning at most box_frame / 2 frame pixels
    there are planned again at their own zoom, each inside exactly one tile with context; the training
    frames (nested=False) keep one side per image."""
    rng = np.random.default_rng(3)
    H, W, S, bf = 480, 640, 1024, 128
    tiny = random_boxes(rng, 20, H, W, 8, 20)  # 8-20 px: at most 32 frame px in the whole-image frame
    boxes = np.concatenate([[[20, 30, 600, 450]], tiny])
    flat, flat_index = image_tiles(boxes, H, W, S, bf, nested=False)
    assert flat.tolist() == [[0, 0, 640, 640]] and set(flat_index.tolist()) == {0}
    windows, index = image_tiles(boxes, H, W, S, bf)
    side = windows[:, 2] - windows[:, 0]
    assert side[index[0]] == 640 and np.all(side[index[1:]] < 640)
    assert np.all(windows[:, 3] - windows[:, 1] == side) and set(index.tolist()) == set(range(len(windows)))
    long = np.maximum(tiny[:, 2] - tiny[:, 0], tiny[:, 3] - tiny[:, 1])
    assert np.median(long) * S / side[index[1]] == pytest.approx(bf, rel=0.01)  # the small ones' own zoom
    for b, w in zip(boxes, windows[index]):
        t = w[2] - w[0]
        margin = np.array([b[0] - w[0], b[1] - w[1], w[2] - b[2], w[3] - b[3]])
        edge = np.array([b[0], b[1], W - b[2], H - b[3]])
        assert np.all((margin >= t / 8 - 1e-6) | (margin >= edge - 1e-6)), (b, w)
    crops = labeling_crops(np.zeros((H, W, 3), np.uint8), boxes, 64, 2.0, "image", bf / 16)
    assert len(crops["crops"]) == len(image_tiles(boxes, H, W, 64, bf / 16)[0]) > 1


def test_small_boxes_are_zoomed_to_about_box_frame_pixels():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 200, 1000, 1000, 18, 22)  # nuclei of ~20 px in a 1000-px field
    t = tile_side(boxes, 1000, 1000, 1024, 96)
    long = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert abs(np.median(long) * 1024 / t - 96) < 1  # the median box spans box_frame frame pixels
    crops = labeling_crops(np.zeros((1000, 1000, 3), np.uint8), boxes, 64, 2.0, "image", 12)
    windows, index = image_tiles(boxes, 1000, 1000, 64, 12)
    assert len(windows) > 1
    assert crops["crops"].shape == (len(windows), 3, 64, 64)
    assert np.array_equal(crops["crop_index"].numpy(), index) and np.array_equal(crops["windows"], windows[index])
    # boxes in crop pixels are the boxes in their tile, scaled to the frame
    w = windows[index]
    expect = (boxes - np.concatenate([w[:, :2], w[:, :2]], 1)) * 64 / (w[:, 2:3] - w[:, 0:1])
    assert np.allclose(crops["boxes"].numpy(), expect, atol=1e-4)


def test_tile_paste_back_is_the_whole_image_paste_back_of_the_tile():
    """A tile's logits pasted into the image = the same logits pasted as the whole-image frame of the tile's
    pixels, moved to the tile's place: exact, pixel for pixel."""
    rng = np.random.default_rng(1)
    H, W, S, t = 90, 130, 64, 40
    low = rng.normal(size=(S // 4, S // 4)).astype(np.float32) * 4
    for window in ([0, 0, 40, 40], [90, 50, 130, 90], [45, 25, 85, 65]):
        x0, y0 = window[:2]
        box = np.array([x0 + 7.3, y0 + 9.1, x0 + 30.2, y0 + 26.6])
        mask, score, fb = to_mask(low, window, box, H, W, 0.5, None, S)
        local, local_score, _ = to_mask(low, [0, 0, t, t], box - [x0, y0, x0, y0], t, t, 0.5, None, S)
        expect = np.zeros((H, W), bool)
        expect[y0:y0 + t, x0:x0 + t] = local
        assert np.array_equal(mask, expect) and score == pytest.approx(local_score) and fb is None


def test_training_frames_are_the_labeling_tiles_and_min_area_counts_frame_pixels(scenes):
    from mal.data.coco import load_boxes
    from mal.data.crops import xywh_to_xyxy
    from mal.data.dataset import TrainImages
    images, _, boxes = scenes
    data = load_boxes(boxes, images, skip_crowd=True)
    S, bf = 128, 16
    ds = TrainImages(data, S, min_area=0, box_frame=bf)
    assert ds.num_boxes == len(data.records)  # every box trains once, in exactly one frame
    for records, frame in zip(ds.groups, ds.frames):
        every = [r for r in data.records if r.image_id == records[0].image_id]
        b = np.stack([xywh_to_xyxy(r.bbox) for r in every])
        windows, index = image_tiles(b, every[0].height, every[0].width, S, bf, nested=False)
        k = [i for i, w in enumerate(windows) if np.array_equal(w, frame)]
        assert len(k) == 1 and {r.ann["id"] for r, i in zip(every, index) if i == k[0]} == {r.ann["id"] for r in records}
    # min_area in frame pixels: the whole-image frame of a 160 x 200 scene enlarges boxes by 128 / 200
    whole = TrainImages(data, S, min_area=1000, box_frame=0)
    expect = sum(r.bbox[2] * r.bbox[3] * (S / 200) ** 2 >= 1000 for r in data.records)
    assert whole.num_boxes == expect < len(data.records)
    item = ds[0]
    assert item["image"].shape == (3, S, S) and len(item["boxes"]) == min(8, len(ds.groups[0]))


def test_training_frames_count_the_images_cut_into_tiles(tmp_path):
    """What `mal train` logs: a 512-px field of 10-px objects is cut into tiles, a 64-px image of one
    40-px object is seen whole."""
    import cv2

    from mal.data.coco import load_boxes
    from mal.data.dataset import TrainImages
    for name, side in (("field.png", 512), ("photo.png", 64)):
        cv2.imwrite(str(tmp_path / name), np.zeros((side, side, 3), np.uint8))
    xy = np.random.default_rng(0).uniform(20, 480, size=(20, 2))
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [*map(float, p), 10.0, 10.0], "area": 100.0,
             "iscrowd": 0} for k, p in enumerate(xy)]
    anns.append({"id": 99, "image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "area": 1600.0,
                 "iscrowd": 0})
    coco = {"images": [{"id": 1, "file_name": "field.png", "height": 512, "width": 512},
                       {"id": 2, "file_name": "photo.png", "height": 64, "width": 64}],
            "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    data = load_boxes(tmp_path / "boxes.json", tmp_path, skip_crowd=True)
    ds = TrainImages(data, 128, min_area=0, box_frame=16)
    assert len(ds.frames) > 2 and ds.zoomed_images() == (1, 1)
    assert TrainImages(data, 128, min_area=0, box_frame=0).zoomed_images() == (0, 2)
