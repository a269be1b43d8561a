"""A static HTML page for eyeballing masks: one row per annotation, one column per prediction file.

``show`` writes ``out_dir/index.html`` and PNG overlays under ``out_dir/overlays/``. The page is
self-contained (inline CSS and a few lines of inline JavaScript for the category filter; no network
resources), so it opens from disk in any browser and can be zipped and shared.

Rows are ordered to put the annotations most worth looking at first (``sort``): "disagreement",
those where the first two files disagree most (lowest mask IoU between them), or "score", the
first file's lowest-scoring masks; "auto" (default) is disagreement with two or more files, score
with one. ``least_sure=N`` keeps only the first file's N lowest-score masks, so a reviewer fixes
just those; the page says how many rows were left out and by which rule. Masks that labeling
replaced by a fallback (flagged ``mal_fallback``, the least trustworthy) are marked in red.

Images are read as ``mal label`` reads them (:func:`mal.data.images.read_sized_image`): EXIF
orientation applied, or the stored pixels when only they match the COCO size (noted on the page).
An unreadable image, or one whose size disagrees with the COCO file, stops ``show`` with an
:class:`~mal.data.images.ImageError` naming the file: a page silently missing rows would mislead.

One job per module: :mod:`.rows` (which annotations, in which order), :mod:`.overlays` (the PNGs),
:mod:`.page` and :mod:`.template` (the HTML).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..coco_masks import EvalError, check_same_boxes, load_coco
from ..compare import column_names
from ..errors import MalError
from ..evaluate import evaluate
from .overlays import write_overlays
from .page import render_page
from .rows import SORTS, build_rows, check_options, select_rows

__all__ = ["SORTS", "show"]


def show(images_dir: str | os.PathLike, preds: list, out_dir: str | os.PathLike, *,
         gt: str | os.PathLike | dict | None = None, names: list[str] | None = None,
         max_items: int | None = None, sort: str = "auto", least_sure: int | None = None) -> Path:
    """Write ``out_dir/index.html`` comparing the masks of ``preds`` (COCO JSON files of the same
    boxes) side by side, with PNG overlays in ``out_dir/overlays/``. Returns the page's path.

    gt:         optional ground truth; adds a gt column and each file's IoU with it.
    names:      column names (default: file stems).
    sort:       "disagreement" (lowest mask IoU between the first two files first), "score" (the
                first file's lowest score first; unscored masks last) or "auto": disagreement with
                two or more files, score with one.
    least_sure: show only the first file's ``least_sure`` lowest-score masks (then ordered by
                ``sort``); the page says how many annotations were left out.
    max_items:  show only the first ``max_items`` rows of the sort order; the page says how many
                annotations were left out.
    Raises EvalError if the files do not describe the same boxes, ImageError (naming the file) if
    an image cannot be read or its size disagrees with the COCO file, ValueError for bad options
    (sorting or picking by score when the first file has no scores).
    """
    preds = list(preds)
    if not preds:
        raise EvalError("show needs at least one prediction file")
    check_options(sort, least_sure, max_items, len(preds))
    cols = column_names(preds, names)  # as in the comparison table
    datas = [load_coco(p, "prediction")[0] for p in preds]
    pnames = ["<dict>" if isinstance(p, dict) else os.fspath(p) for p in preds]
    for d, name in zip(datas[1:], pnames[1:]):  # side by side is meaningless otherwise
        check_same_boxes(datas[0], d, other_name=name, ref_name=pnames[0])
    anns = [{a["id"]: a for a in d["annotations"]} for d in datas]
    images = {im["id"]: im for im in datas[0]["images"]}

    gt_data = gt_anns = gt_iou = mean_iou = None
    if gt is not None:
        gt_data = load_coco(gt, "ground-truth")[0]
        gt_anns = {a["id"]: a for a in gt_data["annotations"]}
        # evaluate() checks the boxes match and gives the IoU of each (non-crowd) instance.
        gt_iou = [{r["id"]: r["iou"] for r in evaluate(gt_data, d, compute_ap=False)["per_instance"]}
                  for d in datas]
        mean_iou = [float(np.mean(list(g.values()))) if g else None for g in gt_iou]
    cat_src = (gt_data or {}).get("categories") or datas[0].get("categories") or []
    cat_names = {c["id"]: str(c.get("name", c["id"])) for c in cat_src}

    rows, rles = build_rows(anns, images, pnames)
    if (sort == "score" or least_sure is not None) and rows and all(r.scores[0] is None for r in rows):
        raise MalError(f"{pnames[0]} has no 'score' on its annotations: cannot sort by score or "
                         "pick the least sure masks")
    order, used, left_out = select_rows(rows, len(anns), sort, least_sure, max_items, cols[0])

    out_dir = Path(out_dir)
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True, exist_ok=True)
    exif = write_overlays(rows, order, images, Path(images_dir), rles, gt_anns, ov_dir)
    page = render_page(rows, order, cols=cols, pnames=pnames, images=images, cat_names=cat_names, sort=used,
                       left_out=left_out, exif=exif, gt_iou=gt_iou, mean_iou=mean_iou)
    index = out_dir / "index.html"
    write_text_atomic(page, index)
    return index
