"""A built-in example that needs no download: procedurally generated scenes with known masks."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .coco_masks import encode_rle


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field (low-frequency noise, upsampled)."""
    small = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 2, size=img.shape).astype(np.float32)
    return img


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, int]:
    """An ellipse, a triangle or a blob polygon somewhere in the image (never a plain rectangle:
    for a rectangle the filled box is already the perfect answer)."""
    m = np.zeros((h, w), np.uint8)
    size = rng.uniform(0.18, 0.45) * min(h, w)
    cx, cy = rng.uniform(size * 0.6, w - size * 0.6), rng.uniform(size * 0.6, h - size * 0.6)
    kind = rng.integers(3)
    if kind == 0:
        axes = (int(size * rng.uniform(0.4, 0.7)), int(size * rng.uniform(0.4, 0.7)))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        n = 3 if kind == 1 else int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = size * rng.uniform(0.35, 0.7, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    return m.astype(bool), int(kind) + 1


def make_scenes(out: str | Path, num_images: int = 24, size: tuple[int, int] = (160, 200),
                seed: int = 0) -> tuple[Path, Path, Path]:
    """Write ``num_images`` PNG scenes of 1-4 coloured shapes on textured backgrounds.

    Returns (images_dir, gt_json with RLE masks, boxes_json with the same boxes and no masks).
    """
    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    cats = [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "triangle"}, {"id": 3, "name": "polygon"}]
    images, anns = [], []
    for i in range(num_images):
        img = _texture(rng, h, w)
        for _ in range(int(rng.integers(1, 5))):
            m, cat = _shape_mask(rng, h, w)
            colour = rng.uniform(0, 255, 3)
            img[m] = colour + rng.normal(0, 2, size=(int(m.sum()), 3))
            # Later shapes occlude earlier ones: visible masks are what remains.
            for a in anns:
                if a["image_id"] == i + 1:
                    a["_mask"] &= ~m
            anns.append({"image_id": i + 1, "category_id": cat, "_mask": m})
        name = f"scene_{i:03d}.png"
        cv2.imwrite(str(img_dir / name), cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    gt_anns = []
    for a in anns:
        m = a.pop("_mask")
        if m.sum() < 20:  # almost fully occluded: not an instance any more
            continue
        ys, xs = np.nonzero(m)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        gt_anns.append({**a, "id": len(gt_anns) + 1, "bbox": bbox, "area": int(m.sum()), "iscrowd": 0,
                        "segmentation": encode_rle(m)})
    gt = {"images": images, "annotations": gt_anns, "categories": cats}
    boxes = {"images": images, "categories": cats,
             "annotations": [{k: v for k, v in a.items() if k != "segmentation"} for a in gt_anns]}
    (out / "gt.json").write_text(json.dumps(gt))
    (out / "boxes.json").write_text(json.dumps(boxes))
    return img_dir, out / "gt.json", out / "boxes.json"


# The demo trains from scratch (no download), so it uses a tiny ViT that learns in about a minute on
# 2 CPU cores; real data wants a pretrained backbone (see the README).
DEMO_LABELER = dict(backbone="vit_tiny_patch16_224", crop_size=96, decoder_dim=64,
                    timm_kwargs=dict(depth=4, patch_size=8))
# Its ~300 steps (16 scenes, ~40 boxes, batch 8, 60 epochs): warm-up 10, loss ramps 25 / 50, EMA 0.967.
DEMO_TRAIN = dict(lr=1e-3, encoder_lr_scale=1.0, warmup=0.033, mil_ramp=0.083, crf_ramp=0.167,
                  crf_iters=20, ema_momentum=0.98, ema_horizon=0.1)


def run_demo(out: str | Path = "mal_demo", *, epochs: int | None = None, num_images: int = 16,
             progress: bool = True) -> dict:
    """Generate scenes, train briefly on their boxes, label them, and score against the known masks."""
    from .api import evaluate, format_report, label, train
    from .engines import build_engine, label_with_engine
    from .modeling.labeler import LabelerConfig
    from .train import TrainConfig
    out = Path(out)
    images, gt, boxes = make_scenes(out / "data", num_images=num_images)
    print(f"demo data: {num_images} scenes in {images}, boxes in {boxes}, true masks in {gt}")
    run = train(images, boxes, out / "run", labeler=LabelerConfig(**DEMO_LABELER),
                train_config=TrainConfig(**DEMO_TRAIN), epochs=epochs or DEMO_EPOCHS, batch_size=8,
                min_area=100, max_margin=DEMO_MAX_MARGIN, num_workers=0, progress=progress)
    summary = label(run, images, boxes, out / "masks.json", num_workers=0, progress=progress)
    label_with_engine(build_engine("box"), images, boxes, out / "box_masks.json", num_workers=0, progress=False)
    rep, rep_box = evaluate(gt, out / "masks.json"), evaluate(gt, out / "box_masks.json")
    print("\nfilled-box baseline:\n" + format_report(rep_box))
    print("\nMAL labels:\n" + format_report(rep))
    print(f"\n{summary}\nmodel: {run}\nmasks: {out / 'masks.json'} (COCO RLE)")
    return {"mal": rep, "box": rep_box, "run": run, "masks": out / "masks.json"}


DEMO_EPOCHS = 60
DEMO_MAX_MARGIN = 1.0
