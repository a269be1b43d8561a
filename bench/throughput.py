"""Throughput side by side in one run (issue 12), on the first N images of coco2017_mini:

- ``engine``: the SAM engine with each encoder option (onnxruntime graph optimisation level, one
  thread, int8 dynamic quantisation of the encoder's MatMuls): boxes/s, encoder / decoder / rest
  seconds, mIoU against the human masks and mean / min IoU to the default engine's masks;
- ``labelers``: the trained K.V and SAM labelers in torch (precision auto and fp32) and as their
  `mal export-onnx` export: boxes/s, mIoU, and the parity count (pixels that differ from torch fp32);
- ``profile``: where `mal label`'s time goes per stage (cProfile, loader in-process), for both labelers;
- with ``--before DIR`` (a checkout of older code, e.g. ``git worktree add DIR COMMIT``) the labelers'
  rows and profiles also run with that code, in a child process, for the before/after comparison.

    python bench/throughput.py --kv-run RUN_KV --sam-run RUN_SAM --limit-images 60 \\
        --before /work/before12 --out bench/results/throughput
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

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IMAGES = SHARED / "datasets/coco2017_mini/images"

# Stage -> the functions (file suffix, name) whose cumulative time it is; names from both the current
# and the older code. "to_mask rest" and "loop rest" are what the named stages leave.
STAGES = {
    "read image": [("images.py", "read_sized_image")],
    "crop": [("dataset.py", "labeling_crops")],
    "model": [("labeler.py", "embed"), ("labeler.py", "decode")],
    "paste-back": [("crops.py", "paste_mask"), ("crops.py", "upsample_in_box")],
    "threshold": [("predictor.py", "mask_from_prob")],
    "to_mask": [("predictor.py", "to_mask")],
    "RLE": [("coco_masks.py", "encode_rle")],
    "write": [("store.py", "write_chunk"), ("chunks.py", "write_chunk"), ("label_loop.py", "merge"),
              ("merge.py", "merge_chunks")],
}


def subset(gt: Path, n: int | None, out: Path) -> Path:
    coco = json.loads(gt.read_text())
    if not n:
        return gt
    keep = {i["id"] for i in sorted(coco["images"], key=lambda i: i["id"])[:n]}
    coco = dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
                annotations=[x for x in coco["annotations"] if x["image_id"] in keep])
    path = out / f"gt_{n}.json"
    path.write_text(json.dumps(coco))
    return path


def cumulative_by_stage(prof: pstats.Stats, stages: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Stage -> summed cumulative seconds of its functions ((file suffix, name) pairs) in ``prof``."""
    cum = dict.fromkeys(stages, 0.0)
    for (file, _, name), (_, _, _, ct, _) in prof.stats.items():
        for stage, fns in stages.items():
            if any(file.endswith(f) and name == n for f, n in fns):
                cum[stage] += ct
    return cum


def stage_seconds(prof: pstats.Stats, wall: float) -> dict:
    cum = cumulative_by_stage(prof, STAGES)
    out = {k: round(cum.get(k, 0.0), 2) for k in STAGES if k != "to_mask"}
    out["to_mask rest"] = round(cum.get("to_mask", 0) - cum.get("paste-back", 0) - cum.get("threshold", 0), 2)
    out["loop rest"] = round(wall - sum(v for k, v in out.items()), 2)
    return out


def label_row(model: str, gt: Path, pred: Path, precision: str, profile: bool) -> dict:
    """One `mal label` run (this process's code): boxes/s; with ``profile``, in-process loading and stages."""
    from mal.labeling.label import label
    kw = dict(num_workers=0 if profile else 1, progress=False, precision=precision)
    pred.unlink(missing_ok=True)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    s = label(model, IMAGES, gt, pred, **kw)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    row = {"boxes": s.boxes, "seconds": round(wall, 1), "boxes_per_s": round(s.boxes / wall, 2)}
    if prof:
        row["stages"] = stage_seconds(pstats.Stats(prof), wall)
    return row


def quality(gt: Path, pred: Path, ref: Path | None = None) -> dict:
    from mal.coco_masks import decode_rle
    from mal.evaluate import evaluate
    rep = evaluate(gt, pred)
    row = {"miou": round(rep["miou_instance"], 4), "mask_ap": round(rep["ap"]["AP"], 4)}
    if ref is not None:
        r = {x["id"]: decode_rle(x["segmentation"]) for x in json.loads(ref.read_text())["annotations"]}
        ious, differ = [], 0
        for x in json.loads(pred.read_text())["annotations"]:
            m, q = decode_rle(x["segmentation"]), r[x["id"]]
            ious.append((m & q).sum() / max((m | q).sum(), 1))
            differ += int((m != q).sum())
        row.update(iou_to_ref_mean=round(float(np.mean(ious)), 4), iou_to_ref_min=round(float(np.min(ious)), 4),
                   pixels_differ=differ)
    return row


def engine_rows(gt: Path, out: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mal.engines import build_engine, label_with_engine
    from mal.engines.sam import DEFAULT_ENCODER
    int8 = out / "encoder_int8_matmul.onnx"
    quantize_dynamic(str(DEFAULT_ENCODER), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    variants = {"ort all (default)": {}, "ort basic": dict(optimization="basic"),
                "ort disable": dict(optimization="disable"), "1 thread": dict(num_threads=1),
                "int8 MatMul encoder": dict(encoder_path=int8)}
    rows, ref = {}, out / "engine_default.json"
    for name, kw in variants.items():
        engine = build_engine("sam", **kw)
        pred = ref if not rows else out / f"engine_{len(rows)}.json"
        t0 = time.perf_counter()
        s = label_with_engine(engine, IMAGES, gt, pred, progress=False)
        secs = time.perf_counter() - t0
        rows[name] = {"boxes": s.boxes, "boxes_per_s": round(s.boxes / secs, 2),
                      "encoder_s": round(engine.encoder_seconds, 1), "decoder_s": round(engine.decoder_seconds, 1),
                      "rest_s": round(secs - engine.encoder_seconds - engine.decoder_seconds, 1),
                      **quality(gt, pred, None if pred == ref else ref)}
        print("engine", name, json.dumps(rows[name]), flush=True)
    return rows


def labeler_rows(runs: dict[str, str], gt: Path, out: Path, tag: str, onnx: bool) -> dict:
    rows = {}
    for name, run in runs.items():
        ref = out / f"{tag}_{name}_fp32.json"
        models = {"torch auto": (run, "auto"), "torch fp32": (run, "32")}
        if onnx:
            from mal.api import export_onnx
            models["onnx export"] = (str(export_onnx(run, out / f"{name}_onnx")), "32")
        for how, (model, prec) in models.items():
            pred = ref if how == "torch fp32" else out / f"{tag}_{name}_{how.replace(' ', '_')}.json"
            row = label_row(model, gt, pred, prec, profile=False)
            rows[f"{name} {how}"] = row
            print(tag, name, how, json.dumps(row), flush=True)
        for how in models:  # quality once all exist (fp32 is the parity reference)
            pred = ref if how == "torch fp32" else out / f"{tag}_{name}_{how.replace(' ', '_')}.json"
            rows[f"{name} {how}"].update(quality(gt, pred, None if pred == ref else ref))
        prof = label_row(run, gt, out / f"{tag}_{name}_profile.json", "auto", profile=True)
        rows[f"{name} profile"] = prof
        print(tag, name, "profile", json.dumps(prof), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kv-run", required=True)
    p.add_argument("--sam-run", required=True)
    p.add_argument("--limit-images", type=int, default=60)
    p.add_argument("--before", type=Path, help="a checkout of the older code: its labeler rows too")
    p.add_argument("--skip", nargs="*", default=[], choices=["engine", "labelers"])
    p.add_argument("--out", type=Path, default=Path("bench/results/throughput"))
    p.add_argument("--child", help=argparse.SUPPRESS)  # run the labeler rows with this code (--before)
    a = p.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    a.kv_run, a.sam_run = str(Path(a.kv_run).resolve()), str(Path(a.sam_run).resolve())
    gt = subset(SHARED / "datasets/coco2017_mini/instances.json", a.limit_images, a.out)
    runs = {"kv": a.kv_run, "sam": a.sam_run}
    if a.child:
        print("RESULT " + json.dumps(labeler_rows(runs, gt, a.out, a.child, onnx=False)))
        return 0
    import mal
    res = {"command": "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "boxes": len(json.loads(gt.read_text())["annotations"]), "images": a.limit_images}
    if "labelers" not in a.skip:
        res["labelers"] = labeler_rows(runs, gt, a.out, "after", onnx=True)
        if a.before:
            env = dict(os.environ, PYTHONPATH=str(a.before))
            cmd = [sys.executable, __file__, "--child", "before", "--kv-run", a.kv_run, "--sam-run", a.sam_run,
                   "--limit-images", str(a.limit_images), "--out", str(a.out)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=a.before)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                print(done.stdout, done.stderr, file=sys.stderr)
                raise SystemExit(f"the --before run failed (rc {done.returncode})")
            res["before"] = json.loads(lines[-1][7:])
            res["before_code"] = str(a.before)
    if "engine" not in a.skip:
        res["engine"] = engine_rows(gt, a.out)
    res["mal_code"] = str(Path(mal.__file__).parent)
    (a.out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
