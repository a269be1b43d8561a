"""Where a `mal train` step's time goes (issue 12), per recipe, on the first N images of coco2017_mini:
cProfile over a few steps (loader in-process), cumulative seconds per stage: data, image side (embed),
decoder, CRF target (100 mean-field iterations), other losses, backward, optimizer, EMA. With
``--before DIR`` (a checkout of older code) the CRF target is also timed with that code on the same
inputs, in a child process.

    python bench/train_profile.py --recipes kv sam --steps 8 --limit-images 40 \\
        --before /work/before12 --out bench/results/train_profile
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SHARED, cumulative_by_stage, subset  # noqa: E402

STAGES = {
    "data": [("dataset.py", "__getitem__"), ("dataset.py", "collate_images")],
    "embed": [("labeler.py", "embed")],
    "decode": [("labeler.py", "decode")],
    "CRF target": [("crf.py", "mean_field_refine")],  # replaced by its wrapper below
    "MIL + dice": [("mil.py", "mil_loss"), ("dice.py", "dice_loss")],
    "backward": [("__init__.py", "backward")],
    # the functional update, not Optimizer.step: Lightning runs the whole step in step()'s closure
    "optimizer": [("adam.py", "adam"), ("adamw.py", "adamw")],
    "EMA": [("train.py", "ema_update")],
}


def crf_seconds(inputs: Path, repeats: int = 3) -> float:
    """Seconds per call of this code's mean_field_refine on the saved inputs (image, prob, box)."""
    from mal.losses.crf import mean_field_refine
    image, prob, box = torch.load(inputs)
    mean_field_refine(image, prob, box)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = mean_field_refine(image, prob, box)
    torch.save(out, inputs.with_suffix(".out.pt"))
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["kv", "sam"], choices=["kv", "sam"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--limit-images", type=int, default=40)
    p.add_argument("--before", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/results/train_profile"))
    p.add_argument("--crf-child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.crf_child:
        print("RESULT", crf_seconds(a.crf_child))
        return 0
    import mal.losses.crf as crf
    from mal.api import train
    from mal.config import recipe
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    gt = subset(SHARED / "datasets/coco2017_mini/instances.json", a.limit_images, a.out)
    res = {"command": "python bench/train_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name in a.recipes:
        saved = a.out / f"crf_inputs_{name}.pt"
        original = crf.mean_field_refine

        def keep_first(image, prob, box_mask=None, **kw):  # the step's real CRF inputs, for the timing below
            if not saved.exists():
                torch.save((image.detach(), prob.detach(), box_mask), saved)
            return original(image, prob, box_mask, **kw)
        saved.unlink(missing_ok=True)
        crf.mean_field_refine = keep_first
        r = recipe(name)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        train(SHARED / "datasets/coco2017_mini/images", gt, a.out / f"run_{name}", labeler=r.labeler,
              train_config=r.train, max_steps=a.steps, num_workers=0, progress=False)
        prof.disable()
        wall = time.perf_counter() - t0
        crf.mean_field_refine = original
        # keep_first wraps the CRF: its time is the CRF's
        cum = cumulative_by_stage(pstats.Stats(prof), {**STAGES, "CRF target": [("train_profile.py", "keep_first")]})
        stages = {k: round(cum.get(k, 0.0), 2) for k in STAGES}
        stages["rest (Lightning, logging, first-step setup)"] = round(wall - sum(stages.values()), 2)
        row = {"steps": a.steps, "wall_s": round(wall, 1), "stages_s": stages}
        image = torch.load(saved)[0]
        row["crf_input"] = list(image.shape)
        row["crf_s_per_call"] = round(crf_seconds(saved), 4)
        if a.before:
            done = subprocess.run([sys.executable, __file__, "--crf-child", str(saved)], capture_output=True,
                                  text=True, env=dict(os.environ, PYTHONPATH=str(a.before)), cwd=a.before)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
            if done.returncode or not line:
                raise SystemExit(f"--before CRF timing failed: {done.stderr[-2000:]}")
            before_out = torch.load(saved.with_suffix(".out.pt"))
            crf_seconds(saved)  # this code's output again, to compare with the older code's
            row["crf_s_per_call_before"] = round(float(line[-1].split()[1]), 4)
            row["crf_target_pixels_differ"] = int((torch.load(saved.with_suffix(".out.pt")) != before_out).sum())
        res[name] = row
        print(name, json.dumps(row), flush=True)
    (a.out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
