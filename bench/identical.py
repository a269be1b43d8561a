"""Outputs of every labeler on a few coco2017_mini images, hashed, for refactorings that must change no
output: run it before and after, then compare the two hash files.

    python bench/identical.py --out /tmp/before            # on the old commit
    python bench/identical.py --out /tmp/after --compare /tmp/before/hashes.json

Rows: the box and sam engines (sam: its ONNX decoder backend), the zero-shot sam labeler (view image,
torch; its paste-back changed on purpose in issue 12, so it differs from before that), a seeded random K.V
labeler (whole and as 2 shards + merge), `mal eval` and `mal compare` reports; fp32 throughout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_KV = dict(backbone="vit_tiny_patch16_224", crop_size=64, decoder_dim=16,
               timm_kwargs=dict(depth=1, embed_dim=32, num_heads=2, patch_size=8))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "datasets/coco2017_mini")
    p.add_argument("--images", type=int, default=8, help="first N images of the file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", type=Path, help="hashes.json of an earlier run: exit 1 if any differs")
    a = p.parse_args(argv)
    import torch

    from mal.compare import compare
    from mal.config import recipe
    from mal.engines import build_engine, label_with_engine
    from mal.evaluate import evaluate
    from mal.labeling.label import label, merge
    from mal.modeling.labeler import LabelerConfig, build_labeler, sam_weight_files
    a.out.mkdir(parents=True, exist_ok=True)
    coco = json.loads((a.data / "instances.json").read_text())
    keep = {i["id"] for i in coco["images"][:a.images]}
    sub = dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
               annotations=[x for x in coco["annotations"] if x["image_id"] in keep])
    gt, images = a.out / "gt.json", a.data / "images"
    gt.write_text(json.dumps(sub))
    outs = {}
    for name in ("box", "sam"):
        outs[name] = a.out / f"{name}.json"
        try:  # the ONNX export as it is (the torch decoder backend, default since issue 12, is new)
            engine = build_engine(name, decoder_backend="onnx") if name == "sam" else build_engine(name)
        except TypeError:  # an older tree without the option: it had only the ONNX backend
            engine = build_engine(name)
        label_with_engine(engine, images, gt, outs[name], num_workers=0, progress=False)
    w, n, d = sam_weight_files()
    sam = build_labeler(recipe("sam").labeler, weights=w, neck_weights=n, decoder_weights=d).eval()
    outs["sam_labeler"] = a.out / "sam_labeler.json"
    label(sam, images, gt, outs["sam_labeler"], num_workers=0, progress=False, precision="32")
    torch.manual_seed(0)
    kv = build_labeler(LabelerConfig(**TINY_KV)).eval()
    outs["kv"] = a.out / "kv.json"
    label(kv, images, gt, outs["kv"], num_workers=0, progress=False, precision="32", batch_size=5)
    outs["kv_shards"] = a.out / "kv_shards.json"
    for i in range(2):
        label(kv, images, gt, outs["kv_shards"], num_workers=0, progress=False, precision="32", shard=(i, 2),
              chunk_images=3, keep_parts=True)
    job = json.loads((a.out / "kv_shards.json.parts" / "job.json").read_text())
    job.pop("input", None)  # the input's path (differs between --out folders); its sha256 stays
    (a.out / "kv_job.json").write_text(json.dumps(job, sort_keys=True))
    outs["kv_job"] = a.out / "kv_job.json"
    merge(gt, a.out / "kv_merged.json", work_dir=a.out / "kv_shards.json.parts")
    outs["kv_merged"] = a.out / "kv_merged.json"
    (a.out / "eval.json").write_text(json.dumps(evaluate(gt, outs["sam"]), sort_keys=True))
    cmp = compare(gt, [outs["sam"], outs["box"], outs["kv"]])
    cmp.pop("gt", None), cmp.pop("files", None)  # paths, which differ between --out folders
    (a.out / "compare.json").write_text(json.dumps(cmp, sort_keys=True))
    outs["eval"], outs["compare"] = a.out / "eval.json", a.out / "compare.json"
    hashes = {k: sha(v) for k, v in sorted(outs.items())}
    (a.out / "hashes.json").write_text(json.dumps(hashes, indent=2))
    print(json.dumps(hashes, indent=2))
    if a.compare:
        ref = json.loads(a.compare.read_text())
        diff = [k for k in sorted(set(ref) | set(hashes)) if ref.get(k) != hashes.get(k)]
        print("identical" if not diff else f"DIFFERENT: {', '.join(diff)}")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
