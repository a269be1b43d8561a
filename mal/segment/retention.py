"""Retention: how much of the human-mask accuracy a segmenter keeps when trained on auto-labels.

The same model is trained with the same seed and schedule on each label set (human masks first,
then every auto-label file), on the same training images and boxes; all are evaluated on the same
held-out images against the human masks. retention = AP(auto-labels) / AP(human masks).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L

from ..atomic import write_json_atomic
from ..data.coco import load_coco_json
from ..errors import MalError
from .data import (
    check_disjoint,
    check_same_boxes,
    class_map,
    load_instances,
    split_images,
)
from .evaluate import evaluate_segmenter
from .model import SegmenterConfig, build_segmenter
from .train import SegmentTrainConfig, train_segmenter

log = logging.getLogger("mal")

HUMAN = "human"


def retention(images: str | Path, gt: str | Path, pseudo: dict[str, str | Path], out: str | Path, *,
              config: SegmenterConfig | None = None, optim: SegmentTrainConfig | None = None,
              class_agnostic: bool = False, weights: str | Path | None = None,
              train_ids: set[int] | None = None, eval_ids: set[int] | None = None,
              split_key: str = "coco_split", train_split: str = "train2017", eval_split: str = "val2017",
              eval_fraction: float | None = None, epochs: int = 12, max_steps: int = -1,
              batch_size: int = 2, seed: int = 0, untrained: bool = True, precision: str = "auto",
              num_workers: int = 1, resume: bool = False, progress: bool = True) -> dict:
    """Train on ``gt`` (human masks) and on each ``pseudo`` file; evaluate all on held-out images.

    The split is ``train_ids``/``eval_ids`` when given, else by the images' ``split_key`` field,
    else a seeded random ``eval_fraction``. Overlapping splits and auto-label files whose boxes on
    the training images differ from ``gt``'s raise ValueError before any training. ``untrained``
    also scores the freshly built model (pretrained backbone, random heads) as the floor.
    Writes ``out/retention.json``; each model's run directory is ``out/<name>``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if HUMAN in pseudo:
        raise MalError(f"the name {HUMAN!r} is taken by the human masks; name the auto-labels otherwise")
    data = load_instances(images, gt)
    coco = data.coco
    if train_ids is None or eval_ids is None:
        tr, ev = split_images(coco, split_key=split_key, train_split=train_split, eval_split=eval_split,
                              eval_fraction=eval_fraction, seed=seed)
        train_ids = tr if train_ids is None else set(train_ids)
        eval_ids = ev if eval_ids is None else set(eval_ids)
    check_disjoint(coco, train_ids, eval_ids)
    for name, path in pseudo.items():  # all checks before hours of training
        check_same_boxes(coco, load_coco_json(path), train_ids, f"{name} ({path})")
    log.info("retention: %d training images, %d evaluation images, label sets: %s",
             len(train_ids), len(eval_ids), ", ".join([HUMAN, *pseudo]))

    cfg = config or SegmenterConfig()
    sets = {HUMAN: gt, **pseudo}
    report: dict = {"train_images": len(train_ids), "eval_images": len(eval_ids), "seed": seed,
                    "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size,
                    "config": {k: v for k, v in asdict(cfg).items() if k not in ("categories", "class_agnostic")},
                    "class_agnostic": class_agnostic, "models": {}}
    for name, labels in sets.items():
        t = time.perf_counter()
        run = train_segmenter(images, labels, out / name, config=cfg, optim=optim,
                              class_agnostic=class_agnostic, image_ids=train_ids, weights=weights,
                              epochs=epochs, max_steps=max_steps, batch_size=batch_size, seed=seed,
                              precision=precision, num_workers=num_workers, resume=resume,
                              progress=progress)
        train_s = time.perf_counter() - t
        r = evaluate_segmenter(run, images, gt, image_ids=eval_ids, precision=precision,
                               num_workers=num_workers, progress=progress)
        r.update(labels=str(labels), train_seconds=round(train_s, 1))
        report["models"][name] = r
        write_json_atomic(report, out / "retention.json")  # partial results survive a crash
    if untrained:  # last: the trained models' numbers matter more if the job is cut short
        L.seed_everything(seed, verbose=False)
        cats, _ = class_map(coco["categories"], class_agnostic)
        c0 = SegmenterConfig(**{**asdict(cfg), "categories": cats, "class_agnostic": class_agnostic})
        m0 = build_segmenter(c0, weights=weights)
        report["untrained"] = evaluate_segmenter((m0, c0), images, gt, image_ids=eval_ids,
                                                 precision=precision, num_workers=num_workers,
                                                 progress=progress)
    human = report["models"][HUMAN]
    for name, r in report["models"].items():
        r["retention"] = {t: (r[t]["AP"] / human[t]["AP"] if human[t]["AP"] else None) for t in ("bbox", "segm")}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(report, out / "retention.json")
    return report


def format_retention(report: dict) -> str:
    head = f"{'labels':<10}{'mask AP':>9}{'AP50':>7}{'AP75':>7}{'box AP':>8}{'retention':>11}"
    rows = [f"{report['train_images']} training / {report['eval_images']} held-out images", head]

    def f(v):
        return "-" if v is None else f"{v:.3f}"
    if "untrained" in report:
        u = report["untrained"]
        rows.append(f"{'untrained':<10}{f(u['segm']['AP']):>9}{f(u['segm']['AP50']):>7}"
                    f"{f(u['segm']['AP75']):>7}{f(u['bbox']['AP']):>8}{'':>11}")
    for name, r in report["models"].items():
        ret = r.get("retention", {}).get("segm")
        rows.append(f"{name:<10}{f(r['segm']['AP']):>9}{f(r['segm']['AP50']):>7}{f(r['segm']['AP75']):>7}"
                    f"{f(r['bbox']['AP']):>8}{'-' if ret is None else f'{100 * ret:.1f}%':>11}")
    return "\n".join(rows)
