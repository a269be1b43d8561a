"""Retention: how much of the human-mask accuracy a segmenter keeps when trained on auto-labels.

The same model is trained with the same seeds and schedule on each label set (human masks first,
then every auto-label file), on the same training images and boxes; all are evaluated on the same
held-out images against the human masks, under each protocol of :mod:`mal.segment.evaluate`
("full": the model's detections; "mask_only": its masks on the ground-truth boxes).
retention = mask AP(auto-labels) / mask AP(human masks), per seed (seed k with seed k), averaged.

Spread: each label set is trained once per seed; every AP figure is reported as its mean over seeds,
std, min and max. Intervals: the held-out images are resampled with replacement (B seeded resamples,
the same for every model and protocol) and each figure's seed mean, and the retention's paired
ratio, recomputed on each resample from one COCOeval matching (:mod:`mal.segment.intervals`);
lo/hi are the 2.5/97.5 percentiles. Run directories: ``out/<name>/seed<k>``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np

from ..atomic import write_json_atomic
from ..data.coco import load_coco_json
from ..errors import MalError
from .data import (
    check_disjoint,
    check_same_boxes,
    class_map,
    load_instances,
    select_classes,
    split_images,
)
from .evaluate import PROTOCOLS, evaluate_segmenter
from .intervals import FIGURES, ratio_summary, resample_weights, seed_summary
from .model import MODEL_FILE, SegmenterConfig, build_segmenter
from .train import SegmentTrainConfig, train_segmenter

log = logging.getLogger("mal")

HUMAN = "human"
TITLES = {"full": "protocol full: the model's own detections",
          "mask_only": "protocol mask_only: masks for the ground-truth boxes (score 1): the mask head alone"}


def retention(images: str | Path, gt: str | Path, pseudo: dict[str, str | Path], out: str | Path, *,
              config: SegmenterConfig | None = None, optim: SegmentTrainConfig | None = None,
              class_agnostic: bool = False, classes: list[str | int] | None = None, top_classes: int = 0,
              weights: str | Path | None = None,
              train_ids: set[int] | None = None, eval_ids: set[int] | None = None,
              split_key: str = "coco_split", train_split: str = "train2017", eval_split: str = "val2017",
              eval_fraction: float | None = None, epochs: int = 12, max_steps: int = -1,
              batch_size: int = 2, seeds=(0,), bootstrap: int = 200, protocols=PROTOCOLS,
              untrained: bool = True, precision: str = "auto", num_workers: int = 1, resume: bool = False,
              progress: bool = True) -> dict:
    """Train on ``gt`` (human masks) and on each ``pseudo`` file once per seed; evaluate all on
    held-out images under ``protocols`` with ``bootstrap`` image resamples (0: no intervals).

    The split is ``train_ids``/``eval_ids`` when given, else by the images' ``split_key`` field,
    else a random ``eval_fraction`` (seeded by the first seed). Overlapping splits and auto-label
    files whose boxes on the training images differ from ``gt``'s raise MalError before any
    training. ``classes``/``top_classes`` (the N most frequent on the training images) train and
    score a class subset. ``untrained`` also scores the freshly built model (pretrained backbone,
    random heads; first seed) as the floor. Writes ``out/retention.json`` after every run.
    """
    t0 = time.perf_counter()
    out, seeds, protocols = Path(out), [int(s) for s in seeds], list(protocols)
    if HUMAN in pseudo:
        raise MalError(f"the name {HUMAN!r} is taken by the human masks; name the auto-labels otherwise")
    if not seeds or len(set(seeds)) != len(seeds):
        raise MalError(f"seeds must be distinct and at least one, got {seeds}")
    if bootstrap < 0:
        raise MalError(f"the number of bootstrap resamples must be >= 0, got {bootstrap}")
    if not protocols or set(protocols) - set(PROTOCOLS):
        raise MalError(f"protocols must be among {', '.join(PROTOCOLS)}, got {protocols}")
    data = load_instances(images, gt)
    coco = data.coco
    if train_ids is None or eval_ids is None:
        tr, ev = split_images(coco, split_key=split_key, train_split=train_split, eval_split=eval_split,
                              eval_fraction=eval_fraction, seed=seeds[0])
        train_ids = tr if train_ids is None else set(train_ids)
        eval_ids = ev if eval_ids is None else set(eval_ids)
    check_disjoint(coco, train_ids, eval_ids)
    for name, path in pseudo.items():  # all checks before hours of training
        check_same_boxes(coco, load_coco_json(path), train_ids, f"{name} ({path})")
    keep = select_classes(coco, classes, top_classes, train_ids)
    log.info("retention: %d training images, %d evaluation images, label sets: %s, seeds: %s",
             len(train_ids), len(eval_ids), ", ".join([HUMAN, *pseudo]), seeds)

    cfg = config or SegmenterConfig()
    sets = {HUMAN: gt, **pseudo}
    resamples = resample_weights(len(eval_ids), bootstrap) if bootstrap else None
    report: dict = {"train_images": len(train_ids), "eval_images": len(eval_ids), "seeds": seeds,
                    "bootstrap": bootstrap, "protocols": protocols, "epochs": epochs, "max_steps": max_steps,
                    "batch_size": batch_size,
                    "optim": {k: v for k, v in asdict(optim or SegmentTrainConfig()).items() if k != "total_steps"},
                    "config": {k: v for k, v in asdict(cfg).items()
                               if k not in ("categories", "class_agnostic", "category_ids")},
                    "class_agnostic": class_agnostic,
                    "classes": None if keep is None else [c["name"] for c in class_map(coco["categories"], False, keep)[0]],
                    "models": {name: {"labels": str(labels), "runs": []} for name, labels in sets.items()}}
    resampled: dict = {}  # (name, protocol) -> per seed {"bbox"/"segm": (B, 3)}
    for seed in seeds:  # seeds outermost: a job cut short still has complete comparisons
        for name, labels in sets.items():
            t = time.perf_counter()
            run_dir = train_segmenter(images, labels, out / name / f"seed{seed}", config=cfg, optim=optim,
                                      class_agnostic=class_agnostic, image_ids=train_ids, classes=keep,
                                      weights=weights, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                                      seed=seed, precision=precision, num_workers=num_workers, resume=resume,
                                      progress=progress)
            run = {"seed": seed, "run": str(run_dir), "train_seconds": round(time.perf_counter() - t, 1)}
            digest = hashlib.sha256((Path(run_dir) / MODEL_FILE).read_bytes()).hexdigest()  # once per run
            for protocol in protocols:
                key = _eval_key(digest, gt, eval_ids, protocol, bootstrap)
                r = _cached_eval(run_dir, protocol, key) if resume else None
                if r is None:
                    r = evaluate_segmenter(run_dir, images, gt, image_ids=eval_ids, protocol=protocol,
                                           resamples=resamples, precision=precision, num_workers=num_workers,
                                           progress=progress)
                    _save_eval(run_dir, protocol, key, r)
                resampled.setdefault((name, protocol), []).append(r.pop("resampled", None))
                run[protocol] = r
            report["models"][name]["runs"].append(run)
            _summarize(report, resampled)
            write_json_atomic(report, out / "retention.json")  # partial results survive a crash
    if untrained:  # last: the trained models' numbers matter more if the job is cut short
        L.seed_everything(seeds[0], verbose=False)
        cats, _ = class_map(coco["categories"], class_agnostic, keep)
        c0 = SegmenterConfig(**{**asdict(cfg), "categories": cats, "class_agnostic": class_agnostic,
                                "category_ids": keep})
        m0 = build_segmenter(c0, weights=weights)
        report["untrained"] = {p: evaluate_segmenter((m0, c0), images, gt, image_ids=eval_ids, protocol=p,
                                                     precision=precision, num_workers=num_workers,
                                                     progress=progress) for p in protocols}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(report, out / "retention.json")
    return report


def _eval_key(weights: str, gt, eval_ids: set[int], protocol: str, bootstrap: int) -> dict:
    """What an evaluation depends on: the trained weights (``weights``: the sha256 of their bytes, since
    a resumed run that had finished saves the same weights again), the ground truth file (its resolved
    path, so a job resumed through another spelling of it still matches), the held-out ids, the protocol
    and the resamples. A resumed job reuses a saved evaluation only if all match."""
    ids = hashlib.sha256(",".join(map(str, sorted(eval_ids))).encode()).hexdigest()
    return {"weights": weights, "gt": str(Path(gt).resolve()), "eval_ids": ids,
            "protocol": protocol, "bootstrap": bootstrap}


def _save_eval(run_dir: Path, protocol: str, key: dict, report: dict) -> None:
    res = report.get("resampled")
    write_json_atomic({"key": key, "report": {k: v for k, v in report.items() if k != "resampled"},
                       "resampled": None if res is None else {k: np.asarray(v).tolist() for k, v in res.items()}},
                      Path(run_dir) / f"eval_{protocol}.json")


def _cached_eval(run_dir: Path, protocol: str, key: dict) -> dict | None:
    path = Path(run_dir) / f"eval_{protocol}.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        return None
    log.info("%s: evaluation (%s) reused from %s", run_dir, protocol, path.name)
    res = saved["resampled"]
    return {**saved["report"], "resampled": None if res is None else {k: np.asarray(v) for k, v in res.items()}}


def _stack(per_seed: list, key: str, j: int | None = None) -> np.ndarray | None:
    """(seeds, B) of one resampled figure: ``key`` ("bbox"/"segm" with its column j, or "mIoU") from
    the per-seed resampled arrays (None without a bootstrap)."""
    if not per_seed or per_seed[0] is None:
        return None
    return np.stack([r[key] if j is None else r[key][:, j] for r in per_seed])


def _summarize(report: dict, resampled: dict) -> None:
    """Per label set and protocol: seed summaries of every figure and the paired retention (over the
    seeds trained so far; set k is paired with the human run of the same seed)."""
    human = report["models"][HUMAN]["runs"]
    for name, m in report["models"].items():
        runs = m["runs"]
        for p in report["protocols"] if runs else ():
            res, h_res = resampled.get((name, p), []), resampled.get((HUMAN, p), [])[:len(runs)]
            s = {t: {f: seed_summary([r[p][t][f] for r in runs], _stack(res, t, j)) for j, f in enumerate(FIGURES)}
                 for t in ("bbox", "segm")}
            s["retention"] = ratio_summary([r[p]["segm"]["AP"] for r in runs],
                                           [r[p]["segm"]["AP"] for r in human[:len(runs)]],
                                           _stack(res, "segm", 0), _stack(h_res, "segm", 0))
            if p == "mask_only":  # the masks' mean IoU with the human masks, and its ratio to the human row's
                miou, h_miou = _stack(res, "mIoU"), _stack(h_res, "mIoU")
                s["mIoU"] = seed_summary([r[p]["mIoU"] for r in runs], miou)
                s["mIoU_retention"] = ratio_summary([r[p]["mIoU"] for r in runs],
                                                    [r[p]["mIoU"] for r in human[:len(runs)]], miou, h_miou)
            m[p] = s


def _f(v, pct: bool = False) -> str:
    return "-" if v is None else (f"{100 * v:.1f}" if pct else f"{v:.4f}")


def _cell(s: dict, pct: bool = False) -> str:
    """mean ±std [lo, hi] (the parts that exist)."""
    text = _f(s["mean"], pct) + ("%" if pct and s["mean"] is not None else "")
    if s.get("std") is not None:
        text += f" ±{_f(s['std'], pct)}"
    if s["lo"] is not None:
        text += f" [{_f(s['lo'], pct)}, {_f(s['hi'], pct)}]"
    return text


def format_retention(report: dict) -> str:
    B = report["bootstrap"]
    rows = [f"{report['train_images']} training / {report['eval_images']} held-out images; seeds "
            f"{report['seeds']}: mean ±std over seeds"
            + (f" [95% interval: {B} bootstrap resamples of the held-out images]" if B else "")]
    if report.get("classes"):
        rows.append(f"classes: {', '.join(report['classes'])}")
    for p in report["protocols"]:
        box = p == "full"  # mask_only detections are the gt boxes: box AP 1 by construction
        rows += ["", TITLES[p], f"{'labels':<12}{'mask AP':<32}{'AP50':>8}{'AP75':>8}  "
                 + (f"{'box AP':<18}" if box else f"{'mIoU':<34}") + f"{'retention (mask AP)':<24}"
                 + ("" if box else "retention (mIoU)")]
        if "untrained" in report:
            u = report["untrained"][p]
            rows.append(f"{'untrained':<12}{_f(u['segm']['AP']):<32}{_f(u['segm']['AP50']):>8}"
                        f"{_f(u['segm']['AP75']):>8}  " + (f"{_f(u['bbox']['AP']):<18}" if box else _f(u.get("mIoU"))))
        for name, m in report["models"].items():
            if p not in m:
                continue
            seg = m[p]["segm"]
            row = (f"{name:<12}{_cell(seg['AP']):<32}{_f(seg['AP50']['mean']):>8}{_f(seg['AP75']['mean']):>8}  "
                   + (f"{_cell({**m[p]['bbox']['AP'], 'lo': None}):<18}" if box else f"{_cell(m[p]['mIoU']):<34}")
                   + f"{_cell({**m[p]['retention'], 'std': None}, pct=True):<24}")
            if not box:
                row += _cell({**m[p]["mIoU_retention"], "std": None}, pct=True)
            rows.append(row.rstrip())
    return "\n".join(rows)
