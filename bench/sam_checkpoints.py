"""SAM checkpoints side by side on coco2017_mini: for each, zero-shot labeling (`mal label --engine sam
--sam-checkpoint`), decoder training (`mal train --sam-checkpoint`) and labeling with the trained labeler
(SAM 2 files: zero-shot only, they cannot start the labeler). One table: instance mIoU (all, S/M/L), mask
AP, boxes/s (wall time of the command: model loading included), train time and peak memory (host RSS;
GPU: torch's peak allocation).

    python bench/sam_checkpoints.py sam_vit_b_01ec64.pth mobile_sam.pt --out bench/results/sam_checkpoints
    python bench/sam_checkpoints.py --random vit_b --limit-images 3 --train-steps 2   # speed only
    python bench/sam_checkpoints.py --random vit_h --limit-images 8 --zero-shot-only  # labeling memory

Each command runs in its own process. ``--random vit_b`` (or vit_l, vit_h) first writes a randomly
initialised Meta-format checkpoint: its masks are meaningless, its times and memory are not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# Runs mal's CLI and reports the process's peak memory on stderr's last line.
CHILD = ("import json, resource, sys, torch; from mal.cli import main; rc = main(sys.argv[1:]); "
         "gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None; "
         "print('PEAK ' + json.dumps({'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
         "'gpu_mb': gpu}), file=sys.stderr); sys.exit(rc)")


def run_mal(args: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"mal {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    peak = json.loads(p.stderr.strip().splitlines()[-1].removeprefix("PEAK "))
    return {"seconds": secs, **peak}


def scores(gt: Path, pred: Path) -> dict:
    from mal.evaluate import evaluate
    r = evaluate(gt, pred)
    size = {s: (r["miou_size"][s] or {}).get("miou_instance") for s in ("small", "medium", "large")}
    return {"miou": r["miou_instance"], **size, "ap": r["ap"]["AP"]}


def random_checkpoint(kind: str, out: Path) -> Path:
    import torch
    from segment_anything import sam_model_registry
    path = out / f"random_sam_{kind}.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(sam_model_registry[kind]().state_dict(), path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path, help="SAM checkpoint files")
    p.add_argument("--random", action="append", default=[], choices=["vit_b", "vit_l", "vit_h"],
                   help="also a randomly initialised Meta checkpoint of this size (speed and memory only)")
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--limit-images", type=int, help="only the first N images")
    p.add_argument("--train-steps", type=int, default=-1, help="mal train --max-steps (default: the recipe's epochs)")
    p.add_argument("--zero-shot-only", action="store_true", help="no mal train (zero-shot labeling only)")
    p.add_argument("--device", default="auto", help="mal label --device")
    p.add_argument("--out", type=Path, default=Path("bench/results/sam_checkpoints"))
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    gt = a.data / "instances.json"
    if a.limit_images:
        from labelers import write_subset  # bench/labelers.py: the first N images by id
        write_subset(a.data, a.out, a.limit_images)
        gt = a.out / "instances.json"
    n_boxes = len(json.loads(gt.read_text())["annotations"])
    from mal.modeling.sam_checkpoint import inspect_sam_checkpoint
    rows = []
    for ckpt in [*a.checkpoints, *(random_checkpoint(k, a.out) for k in a.random)]:
        kind = inspect_sam_checkpoint(ckpt).sam_type
        name = ckpt.stem + (" (random: speed only)" if ckpt.stem.startswith("random_") else "")
        io = ["--images", a.data / "images", "--annotations", gt]
        zero = a.out / f"{ckpt.stem}_zero_shot.json"
        run = run_mal(["label", "--engine", "sam", "--sam-checkpoint", ckpt, *io, "--out", zero, "--device", a.device])
        rows.append({"checkpoint": name, "type": kind, "labeler": "zero-shot", **scores(gt, zero),
                     "boxes_per_s": n_boxes / run["seconds"], "train_s": None, "rss_mb": run["rss_mb"],
                     "gpu_mb": run["gpu_mb"]})
        print(json.dumps(rows[-1]), flush=True)
        if kind == "sam2" or a.zero_shot_only:
            continue
        run_dir = a.out / f"{ckpt.stem}_run"
        tr = run_mal(["train", "--sam-checkpoint", ckpt, *io, "--out", run_dir, "--max-steps", a.train_steps])
        trained = a.out / f"{ckpt.stem}_trained.json"
        lab = run_mal(["label", "--model", run_dir, *io, "--out", trained, "--device", a.device])
        rows.append({"checkpoint": name, "type": kind, "labeler": "trained", **scores(gt, trained),
                     "boxes_per_s": n_boxes / lab["seconds"], "train_s": tr["seconds"],
                     "rss_mb": max(tr["rss_mb"], lab["rss_mb"]),
                     "gpu_mb": max(tr["gpu_mb"] or 0, lab["gpu_mb"] or 0) or None})
        print(json.dumps(rows[-1]), flush=True)
    (a.out / "result.json").write_text(json.dumps({"command": " ".join(["python bench/sam_checkpoints.py",
                                                                          *(argv or sys.argv[1:])]),
                                                    "boxes": n_boxes, "rows": rows}, indent=2))
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"\n{n_boxes} boxes of {gt}")
    print(f"{'checkpoint':38} {'type':5} {'labeler':9} {'mIoU':>6} {'S':>6} {'M':>6} {'L':>6} {'AP':>6} "
          f"{'boxes/s':>8} {'train s':>8} {'RSS MB':>7} {'GPU MB':>7}")
    for r in rows:
        print(f"{r['checkpoint'][:38]:38} {r['type']:5} {r['labeler']:9} {f(r['miou'])[:6]:>6} {f(r['small']):>6} "
              f"{f(r['medium']):>6} {f(r['large']):>6} {f(r['ap']):>6} {f(r['boxes_per_s'], 2):>8} "
              f"{f(r['train_s'], 0):>8} {f(r['rss_mb'], 0):>7} {f(r['gpu_mb'], 0):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
