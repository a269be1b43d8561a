"""FLOPs per crop of the mask labeler (encoder + decoder), counted with torch's FlopCounterMode on
the meta device (no computation, so it runs anywhere in seconds). One multiply-add = 2 FLOPs.
A training step costs about 4x the forward per crop: student forward + backward (~3x) + teacher forward.

    python bench/flops.py --backbones tiny_vit_5m_sam vit_base_patch16_224 --sizes 224 512
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from mal.modeling.labeler import LabelerConfig, build_labeler


def forward_flops(backbone: str, size: int) -> tuple[float, float]:
    """(forward GFLOPs per crop, parameters in millions)."""
    with torch.device("meta"):
        model = build_labeler(LabelerConfig(backbone=backbone, crop_size=size))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters()) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["tiny_vit_5m_sam", "vit_base_patch16_224"])
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    a = p.parse_args(argv)
    for b in a.backbones:
        for s in a.sizes:
            g, m = forward_flops(b, s)
            print(json.dumps({"backbone": b, "crop": s, "forward_gflops": round(g, 1),
                              "train_gflops_per_crop": round(4 * g, 1), "params_m": round(m, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
