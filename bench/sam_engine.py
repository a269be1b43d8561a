"""The SAM engine's two decoder backends side by side on coco2017_mini: boxes/s, where the time goes
(encoder, decoder incl. upsampling, the rest: image decoding, clipping, RLE, writing), agreement of the
masks (IoU of the torch backend's masks to the ONNX export's) and quality against the human masks.

    python bench/sam_engine.py --out bench/results/sam_engine [--limit-images N]

Each backend labels the same boxes in this process, one after the other (same machine, same threads).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--limit-images", type=int, help="only the first N images")
    p.add_argument("--out", type=Path, default=Path("bench/results/sam_engine"))
    a = p.parse_args(argv)
    from mal.coco_masks import decode_rle
    from mal.engines import build_engine, label_with_engine
    from mal.evaluate import evaluate
    a.out.mkdir(parents=True, exist_ok=True)
    gt = a.data / "instances.json"
    if a.limit_images:
        coco = json.loads(gt.read_text())
        keep = {i["id"] for i in coco["images"][:a.limit_images]}
        coco = dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
                    annotations=[x for x in coco["annotations"] if x["image_id"] in keep])
        gt = a.out / "gt.json"
        gt.write_text(json.dumps(coco))
    rows = {}
    for backend in ("onnx", "torch"):
        engine = build_engine("sam", decoder_backend=backend)
        pred = a.out / f"sam_{backend}.json"
        t0 = time.perf_counter()
        s = label_with_engine(engine, a.data / "images", gt, pred, progress=False)
        secs = time.perf_counter() - t0
        rep = evaluate(gt, pred)
        rows[backend] = {"boxes": s.boxes, "seconds": round(secs, 1), "boxes_per_s": round(s.boxes / secs, 2),
                         "encoder_s": round(engine.encoder_seconds, 1), "decoder_s": round(engine.decoder_seconds, 1),
                         "rest_s": round(secs - engine.encoder_seconds - engine.decoder_seconds, 1),
                         "miou_instance": round(rep["miou_instance"], 4), "mask_ap": round(rep["ap"]["AP"], 4)}
        print(backend, json.dumps(rows[backend]), flush=True)
    ref = {x["id"]: x for x in json.loads((a.out / "sam_onnx.json").read_text())["annotations"]}
    ious = []
    for x in json.loads((a.out / "sam_torch.json").read_text())["annotations"]:
        m, r = decode_rle(x["segmentation"]), decode_rle(ref[x["id"]]["segmentation"])
        ious.append((m & r).sum() / max((m | r).sum(), 1))
    ious = np.array(ious)
    res = {"command": "python bench/sam_engine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows, "speedup": round(rows["torch"]["boxes_per_s"] / rows["onnx"]["boxes_per_s"], 2),
           "iou_torch_vs_onnx": {"mean": round(float(ious.mean()), 4), "min": round(float(ious.min()), 4),
                                 "below_0.9": int((ious < 0.9).sum())}}
    (a.out / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
