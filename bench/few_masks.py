"""The value of a few human masks (``mal train --masks``): boxes only vs 1%, 5%, 20% of the boxes given
their human mask (drawn at random with a seed, the smaller subsets inside the larger), and the least-sure
5% (the lowest ``score`` of the boxes-only run's labels) against a random 5%. Scored by instance mIoU on
the boxes whose masks were NOT given, beside the zero-shot SAM engine on the same boxes: each row on its
own unseen boxes ("own"), the boxes-only labeler on those same boxes ("vs boxes only": the gain), and all
rows on the boxes no row was given ("common"). "all, kept": every box, the given ones with their human
mask, as ``mal label --keep-masks`` writes them after a review (IoU 1 with the ground truth, which they
are here): what the loop's output is worth, where the least-sure choice pays most.

    python bench/few_masks.py --out bench/results/few_masks [--data ../shared/datasets/coco2017_mini]
        [--images 40] [--max-steps 60] [--fractions 0.01 0.05 0.2] [--least-sure 0.05] [--train-flag=--lr=1e-4]

Every row runs the ``mal`` CLI (train, then label; the commands are printed), with the decoder's recipe
(sam when SAM's files are in shared/weights) and ``--max-steps``; ``--images`` takes the first N images
(by id) that have boxes, so a short run fits a CPU. The table is printed and written to OUT/result.json.
A row already finished in OUT (same name, same boxes given) is reused, so rows can be added later.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from mal.modeling.sam_files import DEFAULT_DECODER, DEFAULT_ENCODER

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def mal(*args: str) -> float:
    """Run one ``mal`` CLI command; returns its wall time."""
    print("$ mal " + shlex.join(args), file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mal.cli", *args], check=True, stdout=sys.stderr)
    return time.perf_counter() - t


def subset(data: Path, n: int, out: Path) -> tuple[Path, Path, dict]:
    """The first ``n`` images with boxes: (gt.json with the human masks, boxes.json without, gt dict)."""
    coco = json.loads((data / "instances.json").read_text())
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    keep = sorted(i["id"] for i in coco["images"] if i["id"] in with_boxes)[:n]
    keep = set(keep)
    gt = {"images": [i for i in coco["images"] if i["id"] in keep], "categories": coco["categories"],
          "annotations": [a for a in coco["annotations"] if a["image_id"] in keep]}
    boxes = dict(gt, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in gt["annotations"]])
    out.mkdir(parents=True, exist_ok=True)
    (out / "gt.json").write_text(json.dumps(gt))
    (out / "boxes.json").write_text(json.dumps(boxes))
    return out / "gt.json", out / "boxes.json", gt


def ious(gt: dict, pred: Path) -> dict:
    """annotation id -> IoU of its label with its human mask."""
    from mal.coco_masks import mask_iou, to_rle
    size = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    true = {a["id"]: to_rle(a["segmentation"], *size[a["image_id"]], a["id"], "gt") for a in gt["annotations"]}
    return {a["id"]: mask_iou(true[a["id"]], to_rle(a["segmentation"], *size[a["image_id"]], a["id"], str(pred)))
            for a in json.loads(pred.read_text())["annotations"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    p.add_argument("--least-sure", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-flag", action="append", default=[], help="extra `mal train` flag (repeatable)")
    a = p.parse_args()
    gt_path, boxes, gt = subset(a.data, a.images, a.out / "data")
    images = str(a.data / "images")
    ids = sorted(x["id"] for x in gt["annotations"])
    common = ["--images", images, "--annotations", str(boxes)]
    train = [*common, "--max-steps", str(a.max_steps), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
             "--num-workers", "2", *a.train_flag]

    def run(name: str, given: set) -> dict:
        done = a.out / f"{name}.row.json"  # a row finished by an earlier call with the same OUT is reused
        saved = json.loads(done.read_text()) if done.exists() else None
        if saved is not None and saved["given"] == sorted(given):
            print(f"{name}: reused from {done}", file=sys.stderr)
            return {**saved, "iou": ious(gt, a.out / f"{name}.labels.json")}
        masks = a.out / f"{name}.masks.json"
        extra = []
        if given:
            masks.write_text(json.dumps(dict(gt, annotations=[x for x in gt["annotations"] if x["id"] in given])))
            extra = ["--masks", str(masks)]
        t = mal("train", *train, "--out", str(a.out / name), *extra)
        mal("label", *common, "--model", str(a.out / name), "--out", str(a.out / f"{name}.labels.json"),
            "--num-workers", "2", "--overwrite")  # an unfinished or differently drawn row is redone
        row = {"row": name, "given": sorted(given), "train_s": round(t, 1)}
        done.write_text(json.dumps(row))
        return {**row, "iou": ious(gt, a.out / f"{name}.labels.json")}

    rng = random.Random(a.seed)
    if not (a.out / "sam_engine.labels.json").exists():
        mal("label", *common, "--engine", "sam", "--sam-encoder", str(DEFAULT_ENCODER),
            "--sam-decoder", str(DEFAULT_DECODER), "--out", str(a.out / "sam_engine.labels.json"),
            "--num-workers", "2")
    rows = [{"row": "sam_engine", "given": [], "train_s": 0.0, "iou": ious(gt, a.out / "sam_engine.labels.json")},
            run("boxes_only", set())]
    scores = {x["id"]: x["score"] for x in json.loads((a.out / "boxes_only.labels.json").read_text())["annotations"]}
    k = max(1, round(a.least_sure * len(ids)))
    order = rng.sample(ids, len(ids))  # one seeded order; each fraction takes its first boxes (nested subsets)
    plans = [(f"random_{f:g}", set(order[:max(1, round(f * len(ids)))])) for f in a.fractions]
    plans.append((f"least_sure_{a.least_sure:g}", set(sorted(ids, key=lambda i: (scores[i], i))[:k])))
    for name, given in plans:
        rows.append(run(name, given))
    unseen = set(ids) - set().union(*(r["given"] for r in rows))
    boxes_only = next(r for r in rows if r["row"] == "boxes_only")["iou"]

    def mean(iou: dict, keys) -> float:
        return sum(iou[i] for i in keys) / len(keys)

    table = []
    for r in rows:
        own = [i for i in r["iou"] if i not in set(r["given"])]
        # The paired gain: boxes only scored on this row's own boxes, so that leaving the hardest boxes
        # out of "own" (least-sure) does not pass for a gain.
        table.append({"row": r["row"], "given": len(r["given"]), "own_miou": mean(r["iou"], own),
                      "gain": mean(r["iou"], own) - mean(boxes_only, own),
                      "common_miou": mean(r["iou"], unseen),
                      "all_kept_miou": mean({**r["iou"], **dict.fromkeys(r["given"], 1.0)}, ids),
                      "train_s": r["train_s"]})
    result = {"images": a.images, "boxes": len(ids), "common_boxes": len(unseen), "max_steps": a.max_steps,
              "train_flags": train, "rows": table}
    (a.out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"{a.images} images, {len(ids)} boxes, {a.max_steps} steps; mIoU on the boxes whose masks were not given")
    print(f"{'row':<18}{'given':>6}{'own mIoU':>10}{'vs boxes only':>15}{'common mIoU':>13}{'all, kept':>11}"
          f"{'train s':>9}")
    for t in table:
        print(f"{t['row']:<18}{t['given']:>6}{t['own_miou']:>10.3f}{t['gain']:>+15.3f}{t['common_miou']:>13.3f}"
              f"{t['all_kept_miou']:>11.3f}{t['train_s']:>9.0f}")


if __name__ == "__main__":
    main()
