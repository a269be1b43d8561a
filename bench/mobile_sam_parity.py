"""MobileSAM parity: a `mobile_sam.pt`-format checkpoint loaded by `mal` gives the masks of MobileSAM's own
``SamPredictor``. MobileSAM is not on PyPI, so this needs a checkout of github.com/ChaoningZhang/MobileSAM
(the folder holding its ``mobile_sam`` package); the tests cover the same loading with a file written from
timm's TinyViT instead.

    python bench/mobile_sam_parity.py --mobile-sam PATH/TO/MobileSAM [--out bench/results/mobile_sam_parity]

MobileSAM's ``vit_t`` is built with random weights (its attention biases, zero at start, randomised too) and
saved as the plain state dict it ships as. Its predictor runs in a child process: importing ``mobile_sam``
registers MobileSAM's TinyViT under timm's ``tiny_vit_*`` names, which would replace the timm model that `mal`
builds. Per image: pixels inside the boxes where the two masks differ, how many of them are ties (the
reference logit within 1e-5 of the threshold), the largest |reference logit| at a differing pixel, and the
largest score difference. Images whose long side is not 1024 px are expected to differ slightly: `mal` resizes
with OpenCV and pads with SAM's mean colour, SamPredictor resizes with PIL and pads after normalising.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mal.testing import mask_differences, smooth_image

SIZES = [(1024, 1024), (768, 1024), (900, 600)]  # (height, width)
BOXES = np.array([[100, 200, 600, 700], [500, 40, 1000, 300], [30, 30, 90, 110], [0, 0, 2000, 2000]], float)

REFERENCE = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from mobile_sam import SamPredictor, sam_model_registry
out, data = sys.argv[2], np.load(sys.argv[3])
torch.manual_seed(0)
sam = sam_model_registry["vit_t"]()
with torch.no_grad():
    for n, p in sam.named_parameters():
        if "attention_biases" in n:
            p.normal_(0, 0.5)
sam.eval()  # after the biases: MobileSAM's Attention caches them when switched to eval
torch.save(sam.state_dict(), out + "/mobile_sam_random.pt")
res = {}
pred = SamPredictor(sam)
for i in range(len(data.files) // 2):
    img, boxes = data[f"image{i}"], data[f"boxes{i}"]
    pred.set_image(img)
    for j, box in enumerate(boxes):
        logits, iou, _ = pred.predict(box=box, multimask_output=False, return_logits=True)
        res[f"logits{i}_{j}"], res[f"iou{i}_{j}"] = logits[0], iou[0]
np.savez(out + "/reference.npz", **res)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mobile-sam", type=Path, required=True, help="a MobileSAM checkout (holds mobile_sam/)")
    p.add_argument("--out", type=Path, default=Path("bench/results/mobile_sam_parity"))
    a = p.parse_args(argv)
    if not (a.mobile_sam / "mobile_sam" / "__init__.py").exists():
        p.error(f"{a.mobile_sam}: no mobile_sam package there (expected a MobileSAM checkout)")
    a.out.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, (h, w) in enumerate(SIZES):
        images[f"image{i}"] = smooth_image(h, w, i)
        images[f"boxes{i}"] = np.clip(BOXES, 0, [w, h, w, h])
    np.savez(a.out / "inputs.npz", **images)
    subprocess.run([sys.executable, "-c", REFERENCE, str(a.mobile_sam), str(a.out), str(a.out / "inputs.npz")],
                   check=True)
    ref = np.load(a.out / "reference.npz")

    from mal.modeling.load import build_sam_labeler
    from mal.modeling.sam_checkpoint import inspect_sam_checkpoint
    from mal.predictor import MaskPredictor
    ckpt = inspect_sam_checkpoint(a.out / "mobile_sam_random.pt")
    print(f"detected: {ckpt.sam_type} {ckpt.backbone} {ckpt.img_size}")
    mp = MaskPredictor(build_sam_labeler(a.out / "mobile_sam_random.pt"), device="cpu", precision="32")
    rows = []
    for i, (h, w) in enumerate(SIZES):
        boxes = images[f"boxes{i}"]
        mp.set_image(images[f"image{i}"])
        masks, scores = mp.predict(boxes)
        row = {"image": f"{h}x{w}", "boxes": len(boxes), "box_px": 0, "differing_px": 0, "ties": 0,
               "max_abs_logit_differing": 0.0, "max_score_diff": 0.0}
        for j, (box, mask, score) in enumerate(zip(boxes, masks, scores)):
            logits = ref[f"logits{i}_{j}"]
            inside, differ, ties = mask_differences(mask, box, logits)
            row["box_px"] += int(inside.sum())
            row["differing_px"] += int(differ.sum())
            row["ties"] += int(ties.sum())
            worst = float(np.abs(logits[differ]).max()) if differ.any() else 0.0
            row["max_abs_logit_differing"] = max(row["max_abs_logit_differing"], worst)
            row["max_score_diff"] = max(row["max_score_diff"], abs(score - float(np.clip(ref[f"iou{i}_{j}"], 0, 1))))
        rows.append(row)
        print(json.dumps(row), flush=True)
    (a.out / "result.json").write_text(json.dumps({"command": " ".join(["python bench/mobile_sam_parity.py",
                                                                          *(argv or sys.argv[1:])]),
                                                    "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
