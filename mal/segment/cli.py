"""`mal segment train|eval` and `mal retention`: argument parsing only (work in mal.segment)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ARCHS
from ..errors import MalError


def _config(a):
    from .model import SegmenterConfig
    return SegmenterConfig(arch=a.arch, backbone=a.backbone, min_size=a.min_size, max_size=a.max_size,
                           freeze_backbone=a.freeze_backbone)


def _optim(a):
    from .train import SegmentTrainConfig
    return SegmentTrainConfig() if a.lr is None else SegmentTrainConfig(lr=a.lr)


def _ids(path: Path | None) -> set[int] | None:
    """Image ids from a text file (one id per line, '#' comments)."""
    if path is None:
        return None
    ids = set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            try:
                ids.add(int(line))
            except ValueError:
                raise MalError(f"{path}:{n}: expected an image id, got {line!r}") from None
    return ids


def _train(a) -> None:
    from .train import train_segmenter
    run = train_segmenter(a.images, a.annotations, a.out, config=_config(a), optim=_optim(a),
                          class_agnostic=a.class_agnostic, image_ids=_ids(a.image_ids), classes=a.classes,
                          top_classes=a.top_classes, weights=a.weights, strict_weights=not a.allow_missing_keys, epochs=a.epochs, max_steps=a.max_steps,
                          batch_size=a.batch_size, precision=a.precision, devices=a.devices,
                          num_workers=a.num_workers, seed=a.seed, resume=a.resume)
    print(f"trained segmenter: {run}  (next: mal segment eval --model {run} ...)")


def _eval(a) -> None:
    from ..atomic import write_json_atomic
    from .evaluate import evaluate_segmenter, format_ap
    report = evaluate_segmenter(a.model, a.images, a.gt, image_ids=_ids(a.image_ids), protocol=a.protocol,
                                device=a.device, precision=a.precision, num_workers=a.num_workers)
    print(f"protocol {a.protocol}")
    print(format_ap(report))
    print(f"{report['images']} images, {report['detections']} detections, {report['seconds']} s")
    if a.json:
        write_json_atomic(report, a.json)


def _split(a) -> None:
    from .data import write_split
    n = write_split(a.gt, a.out, eval_fraction=a.eval_fraction, train_fraction=a.train_fraction, salt=a.salt)
    print(f"train: {n['train_images']} images, {n['train_instances']} instances; eval: "
          f"{n['eval_images']} images, {n['eval_instances']} instances")
    print(f"wrote {a.out}/train_ids.txt, eval_ids.txt, train_boxes.json (training boxes, no masks: "
          "the file to label)")


def _pseudo(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep:  # a bare path: named by its file stem
            name, path = Path(it).stem, it
        if name in out:
            raise MalError(f"--pseudo name {name!r} given twice; use NAME=PATH")
        out[name] = Path(path)
    return out


def _retention(a) -> None:
    from .evaluate import PROTOCOLS
    from .retention import format_retention, retention
    if a.seeds < 1:
        raise MalError(f"--seeds must be at least 1, got {a.seeds}")
    report = retention(a.images, a.gt, _pseudo(a.pseudo), a.out, config=_config(a), optim=_optim(a),
                       class_agnostic=a.class_agnostic, classes=a.classes, top_classes=a.top_classes,
                       weights=a.weights, train_ids=_ids(a.train_ids),
                       eval_ids=_ids(a.eval_ids), split_key=a.split_key, train_split=a.train_split,
                       eval_split=a.eval_split, eval_fraction=a.eval_fraction, epochs=a.epochs,
                       max_steps=a.max_steps, batch_size=a.batch_size,
                       seeds=range(a.seed, a.seed + a.seeds), bootstrap=a.bootstrap,
                       protocols=PROTOCOLS if a.protocol == "both" else (a.protocol,), untrained=not a.no_untrained, precision=a.precision, num_workers=a.num_workers,
                       resume=a.resume)
    print(format_retention(report))
    print(f"report: {Path(a.out) / 'retention.json'}")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=ARCHS, default="maskrcnn_timm_fpn",
                   help="maskrcnn_timm_fpn: any timm backbone + light FPN/heads (CPU-friendly, default); "
                        "maskrcnn_r50_fpn: torchvision's standard ResNet-50-FPN Mask R-CNN")
    p.add_argument("--backbone", default="tiny_vit_5m_sam", help="timm model name or mal variant (timm arch)")
    p.add_argument("--weights", type=Path, help="local backbone weights (.safetensors/.pth); "
                                                 "without them the backbone starts from scratch")
    p.add_argument("--allow-missing-keys", action="store_true",
                   help="load --weights even if keys are missing/unexpected (reported as a warning)")
    p.add_argument("--class-agnostic", action="store_true", help="one class 'object' for every box")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="keep only these classes (COCO category names): other instances are dropped from "
                        "the training targets and from the evaluation")
    p.add_argument("--top-classes", type=int, default=0, metavar="N",
                   help="keep only the N classes with the most instances on the training images")
    p.add_argument("--min-size", type=int, default=512, help="shorter image side after resizing")
    p.add_argument("--max-size", type=int, default=640, help="longer image side cap")
    p.add_argument("--freeze-backbone", type=float, default=0.0,
                   help="fraction of backbone parameters (input side first) kept frozen, 0..1")
    p.add_argument("--epochs", type=int, default=12, help="passes over the training images")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--lr", type=float, help="heads' learning rate; the backbone's is 0.1x "
                   "(default: mal.segment.train.SegmentTrainConfig.lr)")
    p.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto",
                   help="training precision; auto = bf16 on GPU, fp32 on CPU (Mask R-CNN's losses "
                        "overflow under CPU bf16); evaluation as `mal segment eval`")
    p.add_argument("--num-workers", type=int, default=1, help="image reading processes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")


def add_parsers(sub) -> None:
    """Add `segment` (train, split, eval) and `retention` to the `mal` subcommands."""
    seg = sub.add_parser("segment", help="phase 2: train / evaluate a Mask R-CNN on COCO masks")
    ss = seg.add_subparsers(dest="segment_command", required=True)
    t = ss.add_parser("train", help="train Mask R-CNN on the masks of a COCO file (auto-labels or human)")
    t.add_argument("--images", required=True, type=Path, help="folder with the images")
    t.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON with masks")
    t.add_argument("--out", required=True, type=Path, help="run directory")
    t.add_argument("--image-ids", type=Path, help="train only on these images (text file, one id per line)")
    t.add_argument("--devices", default="auto", help="devices (processes): a count, -1 for all, or auto")
    _model_args(t)
    t.set_defaults(func=_train)

    s = ss.add_parser("split", help="a fixed train/eval split of a COCO file by a hash of each image's "
                                    "file name (the same for every label set and machine)")
    s.add_argument("--gt", required=True, type=Path, help="COCO JSON with the human masks")
    s.add_argument("--out", required=True, type=Path, help="folder for train_ids.txt, eval_ids.txt, "
                                                           "train_boxes.json")
    s.add_argument("--eval-fraction", type=float, default=0.2, help="share of images held out")
    s.add_argument("--train-fraction", type=float,
                   help="share of all images to train on (default: all not held out); smaller "
                        "training sets are nested in larger ones")
    s.add_argument("--salt", default="", help="text hashed before each file name, for another split")
    s.set_defaults(func=_split)

    e = ss.add_parser("eval", help="COCO box and mask AP of a trained segmenter")
    e.add_argument("--model", required=True, type=Path, help="run directory of `mal segment train`")
    e.add_argument("--images", required=True, type=Path, help="folder with the images")
    e.add_argument("--gt", required=True, type=Path, help="COCO JSON with the ground-truth masks")
    e.add_argument("--image-ids", type=Path, help="evaluate only these images (text file, one id per line)")
    e.add_argument("--protocol", choices=["full", "mask_only"], default="full",
                   help="full: the model's detections; mask_only: its masks for the ground-truth boxes "
                        "(score 1), measuring the mask head alone")
    e.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, ...")
    e.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto",
                   help="auto = bf16 on GPU and on CPUs with AMX/AVX512-BF16, else fp32")
    e.add_argument("--num-workers", type=int, default=1, help="image reading processes")
    e.add_argument("--json", type=Path, help="also write the report here")
    e.set_defaults(func=_eval)

    r = sub.add_parser("retention", help="train the same segmenter on human masks and on auto-labels; "
                                         "compare their AP on held-out images")
    r.add_argument("--images", required=True, type=Path, help="folder with the images")
    r.add_argument("--gt", required=True, type=Path, help="COCO JSON with human masks")
    r.add_argument("--pseudo", required=True, nargs="+",
                   help="auto-label COCO files (same boxes), as NAME=PATH or PATH (named by its stem)")
    r.add_argument("--out", required=True, type=Path, help="output folder (a run per label set + retention.json)")
    r.add_argument("--train-ids", type=Path, help="training image ids (text file); with --eval-ids")
    r.add_argument("--eval-ids", type=Path, help="held-out image ids (text file); never trained on")
    r.add_argument("--split-key", default="coco_split", help="image field that names the split")
    r.add_argument("--train-split", default="train2017", help="--split-key value of the training images")
    r.add_argument("--eval-split", default="val2017", help="--split-key value of the held-out images")
    r.add_argument("--eval-fraction", type=float,
                   help="random held-out fraction (seeded) when images carry no split field")
    r.add_argument("--no-untrained", action="store_true", help="skip scoring the untrained model (the floor)")
    r.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="train every label set K times, seeds --seed .. --seed+K-1 (run dirs OUT/NAME/seedS)")
    r.add_argument("--bootstrap", type=int, default=200, metavar="B",
                   help="bootstrap resamples of the held-out images for the 95%% intervals (0: none)")
    r.add_argument("--protocol", choices=["full", "mask_only", "both"], default="both",
                   help="full: the models' detections; mask_only: their masks for the ground-truth boxes")
    _model_args(r)
    r.set_defaults(func=_retention)
