"""Where two labelers differ most: the k instances whose masks from labeler a and labeler b agree least
(lowest mask IoU between them; boxes smaller than --min-size px on their short side left out), drawn as a
strip: one column per instance, its crop with a's mask, b's mask and the human mask, each drawn by the
viewer's overlay (`mal show`'s pictures: the mask tinted and outlined, the box in yellow).

    python bench/examples.py --images ../shared/datasets/coco2017_mini/images \\
        --gt ../shared/datasets/coco2017_mini/instances.json \\
        --a sam=bench/results/side/sam_masks.json --b mal=bench/results/side/mal_sam_masks.json \\
        --k 6 --out docs/figures/examples.png

a and b must label the same boxes (as `mal show` requires); the human masks are the --gt file's
annotations of the same ids (crowd regions are left out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from mal.coco_masks import EvalError, check_same_boxes, decode_rle, load_coco, mask_iou
from mal.show.overlays import _read, overlay
from mal.show.rows import Row, build_rows


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep and name else (Path(spec).stem, spec)


def pick(gt, a, b, k: int = 6, min_size: float = 32.0) -> tuple[list[Row], list[dict], dict]:
    """The ``k`` rows (a's annotations, boxes with short side ≥ ``min_size`` px) with the lowest mask IoU
    between a and b, lowest first (ties: annotation order of a); the masks as RLE ``[a, b, gt]``
    (``{annotation id: rle}``); and the images (``{image id: image}``). gt/a/b: COCO paths or dicts."""
    (gd, gname), (ad, aname), (bd, bname) = (load_coco(gt, "ground-truth"), load_coco(a, "prediction"),
                                             load_coco(b, "prediction"))
    check_same_boxes(ad, bd, other_name=bname, ref_name=aname)
    ga = {g["id"]: g for g in gd["annotations"] if not g.get("iscrowd", 0)}
    crowd = {g["id"] for g in gd["annotations"] if g.get("iscrowd", 0)}
    aa = {x["id"]: x for x in ad["annotations"]
          if x["id"] in ga and min(float(v) for v in x["bbox"][2:4]) >= min_size}
    missing = [x["id"] for x in ad["annotations"] if x["id"] not in ga and x["id"] not in crowd]
    if missing:
        raise EvalError(f"{gname} has no annotation {missing[0]} of {aname} ({len(missing)} missing)")
    ba = {x["id"]: x for x in bd["annotations"] if x["id"] in aa}
    images = {im["id"]: im for im in ad["images"]}
    rows, rles = build_rows([aa, ba, {i: ga[i] for i in aa}], images, [aname, bname, gname])
    order = sorted(range(len(rows)), key=lambda i: rows[i].agree)[:k]  # stable: ties keep a's order
    return [rows[i] for i in order], rles, images


def draw(rows: list[Row], rles: list[dict], images: dict, images_dir: str | Path, names: tuple[str, str],
         out: str | Path, dpi: int = 100) -> Path:
    """The strip: a column per row, three overlays (a, b, human) per column, titled with the IoUs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise SystemExit("no instance to draw (all boxes below --min-size?)")
    labels = [names[0], names[1], "human mask"]
    fig, axes = plt.subplots(3, len(rows), figsize=(2.2 * len(rows), 7.0), squeeze=False)
    for c, r in enumerate(rows):
        img, _ = _read(Path(images_dir), images[r.image_id])
        for j in range(3):
            ax = axes[j][c]
            ax.imshow(cv2.cvtColor(overlay(img, decode_rle(rles[j][r.id]), r.bbox), cv2.COLOR_BGR2RGB))
            ax.set_xticks([])
            ax.set_yticks([])
            if j < 2:
                ax.set_xlabel(f"IoU with human {mask_iou(rles[j][r.id], rles[2][r.id]):.2f}", fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[j], fontsize=10)
        axes[0][c].set_title(f"ann {r.id}\n{names[0]} vs {names[1]}: IoU {r.agree:.2f}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="the images folder")
    p.add_argument("--gt", type=Path, required=True, help="COCO file with the human masks of the same boxes")
    p.add_argument("--a", required=True, metavar="NAME=labels.json", help="the first labeler's masks")
    p.add_argument("--b", required=True, metavar="NAME=labels.json", help="the second labeler's masks")
    p.add_argument("--k", type=int, default=6, help="instances to show (default 6)")
    p.add_argument("--min-size", type=float, default=32.0,
                   help="leave out boxes whose short side is below this, px (default 32)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--dpi", type=int, default=100)
    a = p.parse_args(argv)
    (na, pa), (nb, pb) = _named(a.a), _named(a.b)
    rows, rles, images = pick(a.gt, pa, pb, a.k, a.min_size)
    for r in rows:
        print(f"annotation {r.id} (image {r.image_id}): IoU {na} vs {nb} {r.agree:.3f}")
    print(f"wrote {draw(rows, rles, images, a.images, (na, nb), a.out, a.dpi)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
