"""Phase-2 retention on a GPU: bench/retention.py's protocol (the same label sets, seeds, bootstrap
intervals, class options and both evaluation protocols, the same table) with the SAM TinyViT-5M
backbone fine-tuned (freeze 0), larger images (short side 640, long side at most 800), batches of 8,
bf16, 8 loader workers, and the schedule sized to fit ``--budget-min`` (8 minutes) on an H100:

    python bench/retention_gpu.py --labels box=bench/results/phase1_cpu224_m12/box_masks.json \\
        mal_kv=bench/results/phase1_cpu224_m12/mal_masks.json --out bench/results/retention_gpu
    python bench/retention_gpu.py --quick --out /tmp/rg     # smoke test of the script: CPU, < 2 minutes

The schedule is an ESTIMATE, not a measurement (no GPU was available when it was written). One training
image at 640x800 costs ~230 GFLOPs (forward + backward), one evaluated image ~70 GFLOPs (counted with
torch's FlopCounterMode on a 480x640 image with 9 instances). Mask R-CNN is not FLOP-bound on an H100
(many small kernels, per-image Python in the RPN/RoI sampling), so the estimate assumes 40 training
images/s (~9 TFLOP/s, ~1% of the bf16 dense peak), 20 evaluated images/s for the full protocol (with
RLE encoding) and 40 for mask_only, plus COCOeval on the CPU (~12 s per model for full, 100 detections
per image; ~2 s for mask_only) and ~15 s per training to start. Evaluation is then a large share: with
human + 2 label sets x 2 seeds (7 models with the untrained floor) the plan is 4 epochs (~100 steps of
8 images) per model; fewer label sets or seeds, or ``--no-untrained``, leave more epochs; ``--epochs``
overrides. The printed plan and OUT/result.json's wall_seconds tell how far off the estimate was.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retention import add_args, label_sets, run

TRAIN_IMG_S = 40.0                                   # assumed H100 rates (see the docstring)
EVAL = {"full": (20.0, 12.0), "mask_only": (40.0, 2.0)}  # protocol -> (images/s, COCOeval seconds)
START_S, FIXED_S = 15.0, 30.0                        # per training; once (imports, CUDA, weights)


def plan_epochs(budget_s: float, n_models: int, train_images: int, eval_images: int, protocols: list[str],
                untrained: bool = True) -> tuple[int, float]:
    """(epochs per model, estimated seconds) so that every training and evaluation fits ``budget_s``."""
    eval_s = sum(eval_images / EVAL[p][0] + EVAL[p][1] for p in protocols) * (n_models + untrained)
    per_epoch = train_images / TRAIN_IMG_S
    left = budget_s - FIXED_S - eval_s - n_models * START_S
    epochs = max(1, int(left // (n_models * per_epoch)))
    return epochs, FIXED_S + eval_s + n_models * (START_S + epochs * per_epoch)


def quick_data(out: Path) -> Path:
    """Synthetic scenes laid out as coco2017_mini (images/, instances.json with coco_split) and their
    filled-box labels (box.json): a CPU-sized stand-in for the smoke test."""
    from mal.demo import make_scenes
    _, gt, _ = make_scenes(out, num_images=10, size=(96, 128), seed=3)
    coco = json.loads(Path(gt).read_text())
    for im in coco["images"]:
        im["coco_split"] = "train2017" if im["id"] <= 6 else "val2017"
    (out / "instances.json").write_text(json.dumps(coco))
    boxes = {**coco, "annotations": [{**a, "segmentation": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                               a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                               a["bbox"][1] + a["bbox"][3], a["bbox"][0],
                                                               a["bbox"][1] + a["bbox"][3]]]}
                                     for a in coco["annotations"]]}
    (out / "box.json").write_text(json.dumps(boxes))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    p.set_defaults(seeds=2)
    p.add_argument("--min-size", type=int, default=640)
    p.add_argument("--max-size", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, help="per model (default: sized to --budget-min, an estimate)")
    p.add_argument("--budget-min", type=float, default=8.0, help="the whole run, estimated (see above)")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("bench/results/retention_gpu"))
    p.add_argument("--quick", action="store_true",
                   help="tiny backbone, synthetic scenes, 2 steps per model: check the script, not retention")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from mal.segment.model import SegmenterConfig
    if a.quick:
        a.data = quick_data(a.out / "scenes")
        a.labels = a.labels or [f"box={a.data / 'box.json'}"]
        a.weights, a.backbone, a.min_size, a.max_size, a.max_steps = None, "test_resnet", 96, 128, 2
        a.bootstrap, a.batch_size, a.num_workers = min(a.bootstrap, 20), 2, 0
    elif not torch.cuda.is_available():
        raise SystemExit("bench/retention_gpu.py needs a CUDA GPU (--quick smoke-tests it on the CPU)")
    coco = json.loads((a.data / "instances.json").read_text())
    n_train = sum(im.get("coco_split") == "train2017" for im in coco["images"])
    n_models = a.seeds * (1 + len(label_sets(a)))
    protocols = ["full", "mask_only"] if a.protocol == "both" else [a.protocol]
    epochs, est = plan_epochs(a.budget_min * 60, n_models, n_train, len(coco["images"]) - n_train, protocols,
                              untrained=not a.no_untrained)
    if est > a.budget_min * 60 and not a.quick:
        logging.getLogger("mal").warning("even 1 epoch per model is estimated at %.0f s, over --budget-min %.1f",
                                         est, a.budget_min)
    epochs = a.epochs or epochs
    print(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "models": n_models, "epochs": epochs, "max_steps": a.max_steps,
                      "estimated_seconds_on_h100": None if a.quick or a.epochs else round(est)}), flush=True)
    cfg = SegmenterConfig(backbone=a.backbone, min_size=a.min_size, max_size=a.max_size, freeze_backbone=0.0)
    run(a, config=cfg, epochs=epochs, batch_size=a.batch_size, precision="bf16", num_workers=a.num_workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
