"""GPU throughput, ready to run when a GPU is lent (one script, about 8 minutes on an H100/H200):

- labeling boxes/s (encoder + decoder, bf16 autocast, batches of crops already on the device) for the
  K.V labeler on ViT-B/16 at crop 512 and the sam labeler (TinyViT-SAM, view image, 1024 frame);
- the same end to end through ``mal label`` (image decoding, crops, paste-back, RLE, writing) on
  synthetic scenes, so the gap to the model alone is the pipeline;
- training crops/s through ``mal.api.train`` (the data loader, student + teacher + CRF, AdamW) for both;
- the training data loader alone with N workers;
- each model figure as a share of the device's bf16 dense peak (FLOPs from bench/flops.py).

    python bench/gpu.py --out bench/results/gpu            # on the GPU machine
    python bench/gpu.py --quick --device cpu --out /tmp/g   # a 1-minute smoke test of the script on CPU

Weights are random (no hub; speed does not depend on them). Writes OUT/result.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, SXM where it applies

CONFIGS = {  # name -> (LabelerConfig kwargs, training batch, labeling batch)
    "kv_vitb16_512": (dict(backbone="vit_base_patch16_224", crop_size=512), 32, 64),
    "sam_tinyvit_1024": (dict(decoder="sam", crop_size=1024, view="image", label_expand=2.0), 16, 16),
}
QUICK = {
    "kv_vitb16_512": (dict(backbone="vit_tiny_patch16_224", crop_size=64, decoder_dim=16,
                           timm_kwargs=dict(depth=1, embed_dim=32, num_heads=2, patch_size=8)), 4, 8),
    "sam_tinyvit_1024": (dict(decoder="sam", crop_size=128, view="image", label_expand=2.0), 8, 8),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_boxes_per_s(cfg, batch: int, device, seconds: float) -> float:
    """Encoder + decoder on random crops already on the device; boxes per second after a warm-up."""
    from mal.modeling.labeler import LabelerConfig, build_labeler
    from mal.runtime import autocast
    model = build_labeler(LabelerConfig(**cfg)).to(device).eval()
    S = model.config.crop_size
    image_view = model.config.view == "image"
    crops = torch.randint(0, 255, (1 if image_view else batch, 3, S, S), device=device).float()
    boxes = torch.tensor([[S * 0.2, S * 0.2, S * 0.7, S * 0.8]], device=device).repeat(batch, 1)
    index = torch.zeros(batch, dtype=torch.long, device=device) if image_view else None
    n, t0 = 0, None
    with torch.inference_mode(), autocast(device, "bf16"):
        while True:
            model(crops, boxes, index)
            n += batch
            if t0 is None and n >= 3 * batch:  # warm-up done (cuDNN / allocator)
                sync(device)
                t0, n = time.perf_counter(), 0
            elif t0 is not None and time.perf_counter() - t0 > seconds:
                sync(device)
                return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    p.add_argument("--seconds", type=float, default=20.0, help="per model-only measurement")
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16], help="data loader workers to try")
    p.add_argument("--images", type=int, default=200, help="synthetic scenes for the pipeline rows")
    p.add_argument("--quick", action="store_true", help="tiny models and data: check the script, not speed")
    a = p.parse_args(argv)
    from flops import forward_flops
    from torch.utils.data import DataLoader

    from mal.api import label, train
    from mal.config import LabelerConfig, recipe
    from mal.data.coco import load_boxes
    from mal.data.dataset import TrainCrops
    from mal.demo import make_scenes
    device = torch.device(a.device)
    configs = QUICK if a.quick else CONFIGS
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    a.out.mkdir(parents=True, exist_ok=True)
    n_img = 8 if a.quick else a.images
    images, _, boxes = make_scenes(a.out / "scenes", num_images=n_img, size=(256, 320) if a.quick else (480, 640))
    res = {"command": "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "device": name, "peak_bf16_tflops": peak, "rows": {}}
    for key, (cfg, train_batch, label_batch) in configs.items():
        row = res["rows"][key] = {}
        gflops = forward_flops(cfg.get("backbone", "tiny_vit_5m_sam"), cfg["crop_size"])[0]
        bps = model_boxes_per_s(cfg, label_batch, device, 2.0 if a.quick else a.seconds)
        row["model_boxes_per_s"] = round(bps, 1)
        if cfg.get("view") != "image":  # one crop per box: the share of the bf16 peak
            row["model_share_of_peak"] = round(bps * gflops * 1e9 / (peak * 1e12), 3) if peak else None
        run = a.out / f"run_{key}"
        lab = LabelerConfig(**cfg)
        t0 = time.perf_counter()
        try:
            train(images, boxes, run, labeler=lab, train_config=recipe(lab.decoder).train, max_steps=a.train_steps
                  if not a.quick else 3, batch_size=train_batch, min_area=100, precision="bf16",
                  accelerator="gpu" if device.type == "cuda" else "cpu", num_workers=4 if not a.quick else 0,
                  progress=False)
        except FileNotFoundError as e:  # the sam labeler trains from SAM's files (shared/weights)
            row["skipped"] = f"training: {e}"
            print(key, json.dumps(row), flush=True)
            continue
        steps = a.train_steps if not a.quick else 3
        row["train_crops_per_s"] = round(steps * train_batch / (time.perf_counter() - t0), 1)  # incl. start-up
        t0 = time.perf_counter()
        s = label(run, images, boxes, a.out / f"{key}_masks.json", batch_size=label_batch, device=a.device,
                  precision="bf16", num_workers=4 if not a.quick else 0, progress=False)
        row["pipeline_boxes_per_s"] = round(s.boxes / (time.perf_counter() - t0), 1)
        print(key, json.dumps(row), flush=True)
    data = load_boxes(boxes, images, skip_crowd=True)
    ds = TrainCrops(data, 512 if not a.quick else 64, min_area=100)
    res["loader_crops_per_s"] = {}
    for w in ([0] if a.quick else a.workers):
        loader = DataLoader(ds, batch_size=4 if a.quick else 32, shuffle=True, num_workers=w, drop_last=True)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["image"])
            if n >= (64 if a.quick else 2000):
                break
        res["loader_crops_per_s"][str(w)] = round(n / (time.perf_counter() - t0), 1)
    (a.out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
