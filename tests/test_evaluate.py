"""Tests for mal.evaluate on tiny hand-built COCO dicts with known answers."""

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mal.coco_masks import check_same_boxes
from mal.evaluate import EvalError, auroc, evaluate, format_report, spearman

H, W = 40, 50


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE with str counts, as it appears in COCO JSON."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode()}


def rect(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def ann(aid, image_id, cat, mask, bbox=None):
    ys, xs = np.nonzero(mask)
    if bbox is None:  # box of the gt mask; preds copy it through unchanged
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)]
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "segmentation": rle(mask), "iscrowd": 0}


def dataset(anns, images=None):
    images = images or [{"id": 1, "width": W, "height": H}, {"id": 2, "width": W, "height": H}]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


@pytest.fixture
def gt():
    return dataset([
        ann(1, 1, 1, rect(0, 10, 0, 10)),
        ann(2, 1, 2, rect(20, 30, 20, 40)),
        ann(3, 2, 1, rect(5, 25, 5, 15)),
    ])


def with_masks(gt, masks: dict) -> dict:
    """Copy of gt whose annotations get the given masks (by id); boxes unchanged."""
    pred = copy.deepcopy(gt)
    for a in pred["annotations"]:
        if a["id"] in masks:
            a["segmentation"] = rle(masks[a["id"]])
    return pred


def test_identical_prediction_is_perfect(gt):
    rep = evaluate(gt, copy.deepcopy(gt))
    assert rep["num_instances"] == 3 and rep["num_classes"] == 2
    assert rep["miou_instance"] == 1.0 and rep["miou_class"] == 1.0
    assert rep["ap"]["AP"] == pytest.approx(1.0) and rep["ap"]["AP50"] == pytest.approx(1.0)
    assert set(rep["per_class"]) == {"cat", "dog"}
    json.dumps(rep)  # must be JSON-serialisable
    text = format_report(rep)
    assert "instances 3  classes 2" in text and "AP" in text


def test_half_overlap_exact_iou(gt):
    # gt 1 is rows 0:10, cols 0:10 (100 px); prediction keeps only its left half.
    rep = evaluate(gt, with_masks(gt, {1: rect(0, 10, 0, 5)}), compute_ap=False)
    iou = {r["id"]: r["iou"] for r in rep["per_instance"]}
    assert iou == {1: 0.5, 2: 1.0, 3: 1.0}
    assert "ap" not in rep


def test_class_mean_differs_from_instance_mean(gt):
    # cat: ious 0.5 and 1.0 -> 0.75; dog: 0.0 -> class mean 0.375, instance mean 0.5.
    pred = with_masks(gt, {1: rect(0, 10, 0, 5), 2: rect(0, 5, 40, 50)})
    rep = evaluate(gt, pred, compute_ap=False)
    assert rep["miou_instance"] == pytest.approx(0.5)
    assert rep["miou_class"] == pytest.approx(0.375)
    assert rep["per_class"]["cat"] == {"category_id": 1, "miou": 0.75, "count": 2}
    assert rep["per_class"]["dog"]["miou"] == 0.0


def test_size_buckets_use_gt_mask_area():
    h = w = 120
    imgs = [{"id": 1, "width": w, "height": h}]
    g = dataset([
        ann(1, 1, 1, rect(0, 31, 0, 33, h, w)),     # 1023 px: small
        ann(2, 1, 1, rect(0, 32, 40, 72, h, w)),    # 1024 px: medium (boundary)
        ann(3, 1, 2, rect(0, 100, 0, 100, h, w)),   # 10000 px: large
    ], imgs)
    # Predictions are empty: the bucket must still come from the gt area.
    p = with_masks(g, {i: np.zeros((h, w), np.uint8) for i in (1, 2, 3)})
    rep = evaluate(g, p)
    sizes = {r["id"]: (r["size"], r["gt_area"]) for r in rep["per_instance"]}
    assert sizes == {1: ("small", 1023), 2: ("medium", 1024), 3: ("large", 10000)}
    assert all(rep["miou_size"][s]["count"] == 1 for s in ("small", "medium", "large"))
    assert rep["miou_instance"] == 0.0 and rep["ap"]["AP"] == 0.0

    only_small = dataset([ann(1, 1, 1, rect(0, 5, 0, 5, h, w))], imgs)
    rep = evaluate(only_small, copy.deepcopy(only_small))
    assert rep["miou_size"]["medium"] is None and rep["miou_size"]["large"] is None
    assert "medium n/a" in format_report(rep)


# pycocotools' decode trips a numpy-2 DeprecationWarning inside the library itself.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_polygon_gt_vs_rle_prediction(gt):
    poly = [[10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]]
    gt["annotations"][2]["segmentation"] = poly
    mask = mask_utils.decode(mask_utils.frPyObjects(poly, H, W))[:, :, 0]
    pred = with_masks(gt, {3: mask})
    rep = evaluate(gt, pred)
    assert rep["miou_instance"] == 1.0
    # Uncompressed RLE (list counts) of the left half of the polygon mask.
    half = mask.copy()
    half[:, 20:] = 0
    counts, flat, cur, run = [], half.flatten(order="F"), 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    pred["annotations"][2]["segmentation"] = {"size": [H, W], "counts": counts}
    iou = {r["id"]: r["iou"] for r in evaluate(gt, pred, compute_ap=False)["per_instance"]}
    assert iou[3] == pytest.approx(half.sum() / mask.sum())


def test_crowd_gt_is_not_scored(gt):
    gt["annotations"][1]["iscrowd"] = 1
    gt["crowd_annotations"] = [{"whatever": 1}]
    rep = evaluate(gt, with_masks(gt, {2: rect(0, 1, 0, 1)}))
    assert rep["num_instances"] == 2 and rep["miou_instance"] == 1.0
    assert rep["num_classes"] == 1


def test_mismatched_ids_raise(gt):
    pred = copy.deepcopy(gt)
    pred["annotations"][0]["id"] = 99
    with pytest.raises(EvalError, match=r"1 missing .*\[1\].*1 extra .*\[99\]"):
        evaluate(gt, pred)


def test_changed_bbox_raises_but_tiny_drift_is_ok(gt):
    pred = copy.deepcopy(gt)
    pred["annotations"][1]["bbox"][2] += 1e-4
    evaluate(gt, pred, compute_ap=False)
    pred["annotations"][1]["bbox"][2] += 0.5
    with pytest.raises(EvalError, match=r"annotation 2: bbox"):
        evaluate(gt, pred)


def test_different_image_id_raises(gt):
    pred = copy.deepcopy(gt)
    pred["annotations"][2]["image_id"] = 1
    with pytest.raises(EvalError, match=r"annotation 3: image_id 2 .* but 1"):
        evaluate(gt, pred)


def test_different_image_size_raises(gt):
    pred = copy.deepcopy(gt)
    pred["images"][1]["width"] = 64
    with pytest.raises(EvalError, match=r"image 2 has size 50x40 .* but 64x40"):
        evaluate(gt, pred)


def test_missing_prediction_segmentation_raises(gt):
    pred = copy.deepcopy(gt)
    del pred["annotations"][1]["segmentation"]
    with pytest.raises(EvalError, match=r"annotation 2 .*no 'segmentation'"):
        evaluate(gt, pred)


def test_same_boxes_check_lists_every_difference_once(gt):
    """The check evaluate, show and phase 2 share: every kind of difference, counted, in one message."""
    check_same_boxes(gt, copy.deepcopy(gt))
    pred = copy.deepcopy(gt)
    pred["images"][1]["width"] = 64
    pred["annotations"][0]["id"] = 99
    pred["annotations"][1]["category_id"] = 1  # not compared by default (evaluate scores any category)
    pred["annotations"][2]["bbox"][0] += 1
    with pytest.raises(EvalError) as e:
        check_same_boxes(gt, pred, other_name="p.json", ref_name="g.json")
    assert str(e.value) == (
        "p.json does not have the same boxes as g.json: 1 images are missing or differ (width/height) (e.g. "
        "image ids [2]; image 2 has size 50x40 in g.json but 64x40 in p.json), 1 missing (e.g. [1]), 1 extra "
        "(e.g. [99]), 1 with a different box/image (e.g. [3]; annotation 3: bbox [5.0, 5.0, 10.0, 20.0] in "
        "g.json but [6.0, 5.0, 10.0, 20.0] in p.json (tolerance 0.001 px))")
    # On some images only (they must be in both files), categories compared too, crowd regions aside.
    pred = copy.deepcopy(gt)
    pred["annotations"][1]["category_id"] = 1
    pred["annotations"][2]["iscrowd"] = 1
    del pred["images"][1]
    kw = dict(fields=("image_id", "category_id", "bbox"), skip_crowd=True, subset="training", hint="relabel")
    with pytest.raises(EvalError, match=r"on the training images: 1 with a different box/category/image "
                                        r"\(e\.g\. \[2\]; annotation 2: category_id 2 in .* but 1 in .*; relabel$"):
        check_same_boxes(gt, pred, {1}, **kw)
    # Annotation 3 is a crowd region in pred only: left out there, so missing from it.
    with pytest.raises(EvalError, match=r"1 training images are missing .*image 2 is not in p\), "
                                        r"1 missing \(e\.g\. \[3\]\); relabel$"):
        check_same_boxes(gt, pred, {2}, "p", **kw)


def test_files_are_loaded_and_bad_files_named(gt, tmp_path):
    gp, pp = tmp_path / "gt.json", tmp_path / "pred.json"
    gp.write_text(json.dumps(gt))
    pp.write_text(json.dumps(gt))
    assert evaluate(str(gp), str(pp), compute_ap=False)["miou_instance"] == 1.0

    pp.write_text("{not json")
    with pytest.raises(EvalError, match="pred.json"):
        evaluate(str(gp), str(pp))
    pp.write_text(json.dumps({"images": []}))
    with pytest.raises(EvalError, match=r"pred\.json has no 'annotations'"):
        evaluate(str(gp), str(pp))


def test_spearman_known_answers():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [0.9, 0.5, 0.2, 0.1]) == pytest.approx(-1.0)
    # a has a tie -> ranks [1, 2.5, 2.5, 4]; rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / np.sqrt(10))
    assert spearman([0.7, 0.7, 0.7], [0.1, 0.5, 0.9]) is None  # constant score
    assert spearman([0.5], [0.3]) is None


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50), rng.random(50)  # many ties in a
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


def test_auroc_known_answers():
    # positives 0.9, 0.4 vs negatives 0.6, 0.1: 3 of the 4 pairs ordered right.
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5  # all ties count 1/2
    assert auroc([1, 0], [0.2, 0.2]) == 0.5
    assert auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert auroc([1, 1], [0.1, 0.2]) is None


def test_score_quality_end_to_end(gt):
    # ious: 1 -> 30/100 = 0.3, 2 -> 1.0, 3 -> 150/200 = 0.75; score = iou.
    pred = with_masks(gt, {1: rect(0, 10, 0, 3), 3: rect(5, 20, 5, 15)})
    for a, s in zip(pred["annotations"], (0.3, 1.0, 0.75)):
        a["score"] = s
    rep = evaluate(gt, pred, compute_ap=False)
    assert {r["id"]: r["iou"] for r in rep["per_instance"]} == {1: 0.3, 2: 1.0, 3: 0.75}
    assert rep["score_quality"] == {"spearman": pytest.approx(1.0), "auroc_low_iou": 1.0,
                                    "n": 3, "n_low": 1, "threshold": 0.5}
    assert "score vs IoU: Spearman 1.00, AUROC(IoU<0.5) 1.00 (n=3, 1 below 0.5)" in format_report(rep)

    for a, s in zip(pred["annotations"], (0.9, 0.1, 0.5)):  # reversed ranking
        a["score"] = s
    sq = evaluate(gt, pred, compute_ap=False)["score_quality"]
    assert sq["spearman"] == pytest.approx(-1.0) and sq["auroc_low_iou"] == 0.0

    # Without scores there is nothing to rank.
    assert evaluate(gt, copy.deepcopy(gt), compute_ap=False)["score_quality"] is None


def test_ap_counts_every_instance_of_a_dense_image():
    """150 instances on one image, every mask right: AP 1. At COCO's usual cap of 100 detections
    per image, the 50 instances past it would count as missed (AP ~0.67) however good the masks."""
    h, w, anns = 100, 150, []
    for k in range(150):
        y, x = 10 * (k // 15), 10 * (k % 15)
        anns.append(ann(k + 1, 1, 1, rect(y + 1, y + 9, x + 1, x + 9, h, w)))
    gt = dataset(anns, images=[{"id": 1, "width": w, "height": h}])
    assert evaluate(gt, copy.deepcopy(gt))["ap"]["AP"] == pytest.approx(1.0)
    half = with_masks(gt, {a["id"]: rect(10 * (i // 15) + 1, 10 * (i // 15) + 5, 10 * (i % 15) + 1,
                                          10 * (i % 15) + 9, h, w) for i, a in enumerate(anns) if i % 2})
    assert evaluate(gt, half)["ap"]["AP50"] == pytest.approx(1.0)  # IoU 0.5 passes at 0.5 ...
    assert evaluate(gt, half)["ap"]["AP75"] < 0.6                  # ... and fails at 0.75


def test_coco_summary_equals_cocoeval_on_sparse_images(gt):
    """Where no image has over 100 instances the numbers are COCOeval.summarize()'s own."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mal.evaluate import coco_summary
    pred = with_masks(gt, {1: rect(0, 8, 0, 10), 3: rect(5, 25, 5, 10)})
    res = [{**a, "score": s} for a, s in zip(pred["annotations"], (0.9, 0.2, 0.6))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [{**a, "area": float(mask_utils.area(a["segmentation"]))}
                                                for a in gt["annotations"]]}
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(res), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_summary(ev)
    for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
        assert ours[k] == (pytest.approx(v) if v >= 0 else None)
    assert 0 < ours["AP"] < 1
