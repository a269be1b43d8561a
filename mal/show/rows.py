"""The page's rows: one per annotation across the prediction files, and which of them to show in which order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..coco_masks import EvalError, mask_iou, to_rle
from ..errors import MalError

__all__ = ["SORTS", "Row", "build_rows", "check_options", "select_rows"]

SORTS = ("auto", "disagreement", "score")


@dataclass
class Row:
    """One annotation (box) and what each prediction file says about it."""
    id: Any
    image_id: Any
    category_id: Any
    bbox: list | None            # [x, y, w, h] of the first file
    scores: list[float | None]   # per file; None: no usable score
    fallback: list[Any]          # per file: its ``mal_fallback`` flag, or None
    agree: float | None          # mask IoU between the first two files; None with one file


def _score(v: Any) -> float | None:
    """A usable score, or None (missing, not a number, NaN): such masks sort after scored ones."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return None
    return float(v)


def build_rows(anns: list[dict], images: dict, pnames: list[str]) -> tuple[list[Row], list[dict]]:
    """Rows in the first file's annotation order, and each file's masks as RLE (``{annotation id:
    rle}``, cheap to keep). ``anns``: per file ``{annotation id: annotation}``, the same ids (checked
    before); ``images``: the first file's ``{image id: image}``; ``pnames``: file names for messages."""
    rles: list[dict] = [{} for _ in anns]
    rows = []
    for aid, a in anns[0].items():
        im = images.get(a.get("image_id"))
        if im is None:
            raise EvalError(f"annotation {aid}: image_id {a.get('image_id')} not in {pnames[0]} images")
        h, w = int(im["height"]), int(im["width"])
        for j, d in enumerate(anns):
            rles[j][aid] = to_rle(d[aid].get("segmentation"), h, w, aid, pnames[j])
        agree = mask_iou(rles[0][aid], rles[1][aid]) if len(anns) >= 2 else None
        rows.append(Row(id=aid, image_id=a["image_id"], category_id=a.get("category_id"), bbox=a.get("bbox"),
                        scores=[_score(d[aid].get("score")) for d in anns],
                        fallback=[d[aid].get("mal_fallback") for d in anns], agree=agree))
    return rows, rles


def check_options(sort: str, least_sure: int | None, max_items: int | None, n_files: int) -> None:
    """ValueError for options that cannot work, before anything is read or written."""
    if sort not in SORTS:
        raise MalError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if sort == "disagreement" and n_files < 2:
        raise MalError("sort 'disagreement' needs at least two prediction files")
    for name, v in (("max_items", max_items), ("least_sure", least_sure)):
        if v is not None and v < 0:
            raise MalError(f"{name} must be >= 0, got {v}")


def select_rows(rows: list[Row], n_files: int, sort: str, least_sure: int | None, max_items: int | None,
                col0: str) -> tuple[list[int], str, list[str]]:
    """Indices into ``rows`` to show, in order; the sort used ("auto" resolved) and notes (plain text)
    on what was left out, naming the first file's column ``col0``. ``least_sure`` picks rows by score
    before ``sort`` orders them, so "the 50 least sure, most disagreeing first" works too."""
    def by_score(i: int) -> tuple[bool, float]:
        s = rows[i].scores[0]
        return s is None, s or 0.0

    order, notes = list(range(len(rows))), []
    if least_sure is not None:
        order = sorted(order, key=by_score)[:least_sure]
        if len(order) < len(rows):
            notes.append(f"least_sure={least_sure}: only the {len(order)} lowest-score masks of {col0} "
                         f"are shown; {len(rows) - len(order)} more confident annotations left out")
    if sort == "auto":
        sort = "disagreement" if n_files >= 2 else "score"
    if sort == "disagreement":
        order.sort(key=lambda i: rows[i].agree)
    else:
        order.sort(key=by_score)
    if max_items is not None and len(order) > max_items:
        kind = "least-sure annotations" if least_sure is not None else "annotations"
        notes.append(f"showing the first {max_items} of {len(order)} {kind} (max_items={max_items}); "
                     f"{len(order) - max_items} left out")
        order = order[:max_items]
    return order, sort, notes
