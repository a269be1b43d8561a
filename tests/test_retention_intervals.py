"""Phase 2 intervals, the mask-only protocol and class subsets: the numbers' code on cases whose answer is known."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mal.demo import make_scenes
from mal.errors import MalError
from mal.segment.data import InstanceMasks, class_map, load_instances, select_classes
from mal.segment.evaluate import (
    class_labels,
    coco_ap,
    coco_evals,
    gt_boxes,
    mask_ious,
    masks_for_boxes,
    summarize,
    to_coco_results,
)
from mal.segment.intervals import (
    accumulate_ap,
    match_tables,
    ratio_summary,
    resample_weights,
    seed_summary,
    weighted_means,
)
from mal.segment.model import SegmenterConfig, build_segmenter

H, W = 96, 128


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    images, gt, _ = make_scenes(tmp_path_factory.mktemp("scenes"), num_images=12, size=(H, W), seed=3)
    return images, gt, json.loads(Path(gt).read_text())


def _noisy_results(gt: dict, seed: int = 0) -> list[dict]:
    """Three jittered box-shaped detections per gt instance (one with a random class), distinct scores."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        for k in range(3):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.15 * k + 0.05, 4)
            b = [x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])]
            m = np.zeros((H, W), np.uint8)
            m[int(max(0, b[1])):int(b[1] + b[3]), int(max(0, b[0])):int(b[0] + b[2])] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            out.append({"image_id": a["image_id"], "score": float(rng.random()), "bbox": b, "segmentation": rle,
                        "category_id": int(rng.integers(1, 4)) if k == 2 else a["category_id"]})
    return out


def _figures(report: dict, t: str) -> list[float]:
    return [report[t][k] for k in ("AP", "AP50", "AP75")]


@pytest.mark.parametrize("agnostic", [False, True])
def test_accumulate_from_eval_images_equals_cocoeval(scenes, agnostic):
    """Weights 1: COCOeval's own AP/AP50/AP75. Weights with repeats: COCOeval on a file where those
    images really are repeated (new ids), so an image drawn twice counts twice."""
    _, _, gt = scenes
    res, ids = _noisy_results(gt), {im["id"] for im in gt["images"]}
    evals = coco_evals(gt, res, ids, class_agnostic=agnostic)
    tables = {t: match_tables(ev) for t, ev in evals.items()}
    point = summarize(coco_evals(gt, res, ids, class_agnostic=agnostic))
    for t in ("bbox", "segm"):
        np.testing.assert_allclose(accumulate_ap(tables[t], np.ones((1, len(ids))))[0], _figures(point, t), atol=1e-12)
    order = sorted(ids)
    for w in resample_weights(len(ids), 2, seed=5):
        assert w.sum() == len(ids) and w.max() >= 2
        images, anns, dets = [], [], []
        for i, n in zip(order, w):
            for _ in range(n):
                new = len(images) + 1
                images.append({**next(im for im in gt["images"] if im["id"] == i), "id": new})
                anns += [{**a, "id": len(anns) + 1 + k, "image_id": new}
                         for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == i)]
                dets += [{**d, "image_id": new} for d in res if d["image_id"] == i]
        repeated = coco_ap({**gt, "images": images, "annotations": anns}, dets, set(range(1, len(images) + 1)),
                           class_agnostic=agnostic)
        for t in ("bbox", "segm"):
            np.testing.assert_allclose(accumulate_ap(tables[t], w[None])[0], _figures(repeated, t), atol=1e-12)


def test_bootstrap_is_deterministic_and_brackets_the_point(scenes):
    _, _, gt = scenes
    ids = {im["id"] for im in gt["images"]}
    tables = match_tables(coco_evals(gt, _noisy_results(gt), ids, class_agnostic=False)["segm"])
    w = resample_weights(len(ids), 50, seed=0)
    assert np.array_equal(w, resample_weights(len(ids), 50, seed=0))
    assert not np.array_equal(w, resample_weights(len(ids), 50, seed=1))
    boot = accumulate_ap(tables, w)
    assert boot.shape == (50, 3) and np.array_equal(boot, accumulate_ap(tables, w))
    point = accumulate_ap(tables, np.ones((1, len(ids))))[0]
    s = seed_summary([point[0]], boot[None, :, 0])
    assert s["lo"] < s["mean"] < s["hi"] and s["std"] is None and s["per_seed"] == [pytest.approx(point[0])]
    assert seed_summary([point[0]], boot[None, :, 0]) == s  # the same resamples: the same interval


def test_weighted_means_count_each_instance_as_often_as_its_image():
    values, image = np.array([0.2, 0.4, 0.9]), np.array([0, 0, 2])  # image 1 has no instance
    w = np.array([[1, 1, 1], [2, 5, 0], [0, 3, 1], [0, 1, 0]])
    m = weighted_means(values, image, w)
    assert m[0] == pytest.approx(0.5)                 # unit weights: the plain mean
    assert m[1] == pytest.approx(0.3)                 # image 0 twice, image 2 not drawn
    assert m[2] == pytest.approx(0.9) and np.isnan(m[3])  # only image 2; no instance drawn at all


def test_seed_and_paired_ratio_summaries():
    s = seed_summary([0.1, 0.2, 0.3], np.array([[0.1, 0.2], [0.2, 0.2], [0.3, 0.5]]))
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"]) == (0.1, 0.3)
    assert s["lo"] == pytest.approx(0.2 + 0.025 * 0.1) and s["hi"] == pytest.approx(0.3 - 0.025 * 0.1)
    assert seed_summary([0.1, None])["mean"] is None and seed_summary([0.1])["lo"] is None
    # Paired: seed k over seed k on resample b, then the mean over seeds (not a ratio of means).
    num, den = np.array([[1.0, 2.0], [3.0, 3.0]]), np.array([[2.0, 2.0], [1.0, 3.0]])
    r = ratio_summary([0.2, 0.6], [0.4, 0.3], num, den)
    assert r["mean"] == pytest.approx((0.5 + 2.0) / 2) and r["per_seed"] == [pytest.approx(0.5), pytest.approx(2.0)]
    assert (r["lo"], r["hi"]) == (pytest.approx(1.0 + 0.025 * 0.75), pytest.approx(1.75 - 0.025 * 0.75))
    same = ratio_summary([0.2, 0.4], [0.2, 0.4], den, den)
    assert same["mean"] == same["lo"] == same["hi"] == pytest.approx(1.0)
    assert ratio_summary([0.2], [0.0])["mean"] is None


@pytest.mark.parametrize("agnostic,classes", [(False, None), (True, None), (False, [1, 3]), (True, [2])])
def test_mask_only_scoring_of_human_masks_is_one(scenes, agnostic, classes):
    """The mask_only path (gt boxes of kept classes, score 1, class index, RLE, scoring) with the human
    masks in place of the model's: AP 1 for boxes and masks, and only the kept classes are scored."""
    images, gt_path, gt = scenes
    data = load_instances(images, gt_path)
    cats, _ = class_map(gt["categories"], agnostic, classes)
    cfg = SegmenterConfig(categories=cats, class_agnostic=agnostic, category_ids=classes)
    labels_of = class_labels(cfg, gt["categories"])
    results, n_kept = [], 0
    for entry, records in data.groups:
        boxes, labels, ann_ids = gt_boxes(records, labels_of)
        kept = [r for r in records if classes is None or r.category_id in classes]
        assert ann_ids == [r.ann_id for r in kept]
        n_kept += len(kept)
        if not kept:
            continue
        masks = np.stack([mask_utils.decode(r.ann["segmentation"]) for r in kept])
        found = to_coco_results(entry["id"], boxes, labels, [1.0] * len(labels), masks, cfg)
        results += [{**r, "gt_id": i} for r, i in zip(found, ann_ids)]
    assert len(results) == n_kept > 0
    assert {r["category_id"] for r in results} <= ({1} if agnostic else set(classes or [1, 2, 3]))
    ids = {im["id"] for im in gt["images"]}
    r = coco_ap(gt, results, ids, class_agnostic=agnostic, category_ids=classes)
    assert r["bbox"]["AP"] == pytest.approx(1.0) and r["segm"]["AP"] == pytest.approx(1.0)
    if classes is not None:  # without the restriction the dropped classes' gt count as missed
        assert coco_ap(gt, results, ids, class_agnostic=agnostic)["segm"]["AP"] < 0.99
    image_of, ious = mask_ious(data, results)
    assert ious.mean() == pytest.approx(1.0) and image_of.tolist() == [r["image_id"] for r in results]
    # A mask emptied: its IoU is 0, so the mean drops by exactly 1/N.
    empty = mask_utils.encode(np.asfortranarray(np.zeros_like(mask_utils.decode(results[0]["segmentation"]))))
    empty["counts"] = empty["counts"].decode()
    broken = [{**results[0], "segmentation": empty}, *results[1:]]
    assert mask_ious(data, broken)[1].mean() == pytest.approx(1 - 1 / len(results))
    assert len(mask_ious(data, [])[1]) == 0


def test_masks_for_boxes_are_pasted_in_the_image_frame():
    """The mask head runs in the model's resized frame (here 2x the image); the pasted masks are in the
    image's frame: nothing outside each box (but paste's one-cell margin), the box itself covered."""
    torch.manual_seed(0)
    cfg = SegmenterConfig(backbone="test_resnet", categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                          min_size=2 * H, max_size=2 * W)
    model = build_segmenter(cfg).eval()
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 5.0, 120.0, 40.0]])
    with torch.inference_mode():
        probs = masks_for_boxes(model, torch.rand(3, H, W), boxes, torch.tensor([1, 2]))
    assert probs.shape == (2, 1, H, W)
    for p, (x0, y0, x1, y1) in zip(probs[:, 0], boxes.int().tolist()):
        mx, my = (x1 - x0) // 10 + 1, (y1 - y0) // 10 + 1
        outside = p.clone()
        outside[max(0, y0 - my):y1 + my, max(0, x0 - mx):x1 + mx] = 0
        assert outside.abs().max() == 0
        assert (p[y0 + 1:y1 - 1, x0 + 1:x1 - 1] > 0).all()


def test_class_subset_drops_other_classes_from_targets_and_eval(scenes):
    images, gt_path, gt = scenes
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert select_classes(gt, ["ellipse", "polygon"]) == [1, 3] and select_classes(gt) is None
    counts = {c: sum(a["category_id"] == c for a in gt["annotations"] if a["image_id"] <= 6) for c in names}
    top = max(counts, key=lambda c: (counts[c], -c))
    assert select_classes(gt, top=1, image_ids=set(range(1, 7))) == [top]
    with pytest.raises(MalError, match="unknown classes \\['hexagon'\\]"):
        select_classes(gt, ["hexagon"])
    with pytest.raises(MalError, match="not both"):
        select_classes(gt, ["ellipse"], top=2)
    data = load_instances(images, gt_path)
    ids = {im["id"] for im in gt["images"]}
    for agnostic in (False, True):
        _, cat_to_label = class_map(gt["categories"], agnostic, [top])
        ds = InstanceMasks(data, ids, cat_to_label)
        with_top = {a["image_id"] for a in gt["annotations"] if a["category_id"] == top}
        assert {e["id"] for e, _ in ds.groups} == with_top  # images without the class are not training images
        n = 0
        for i in range(len(ds)):
            _, target = ds[i]
            assert target["labels"].tolist() == [1] * len(target["labels"])
            assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"])
            n += len(target["labels"])
        assert n == sum(a["category_id"] == top for a in gt["annotations"])
        ev = coco_evals(gt, _noisy_results(gt), ids, class_agnostic=agnostic, category_ids=[top])["segm"]
        kept_gt = [g for g in ev.cocoGt.dataset["annotations"]]
        assert len(kept_gt) == n and ev.params.catIds == [1 if agnostic else top]
