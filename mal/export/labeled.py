"""Reading a labeled COCO file (``mal label``'s output) for ``mal export`` and ``mal import``: validated,
its masks as RLE, grouped per image."""
from __future__ import annotations

from pathlib import Path

from ..coco_masks import EvalError, index_by_id, load_coco, to_rle
from .writers import ExportError


def read_labeled(pred, stems: bool) -> tuple[dict, str, list]:
    """Read + validate a labeled COCO file -> (dict, its name, [(image, [(annotation, RLE), ...]), ...])."""
    try:
        coco, name = load_coco(pred, "labeled COCO")
        images = index_by_id(coco["images"], "image", name)
        cats = index_by_id(coco.get("categories") or [], "category", name)
        index_by_id(coco["annotations"], "annotation", name)
    except EvalError as e:
        raise ExportError(str(e)) from None
    for iid, img in images.items():
        if not (isinstance(img.get("file_name"), str) and all(
                isinstance(img.get(k), int) and img[k] > 0 for k in ("width", "height"))):
            raise ExportError(f"{name}: image {iid} needs a file_name and positive integer width and height")
    per: dict = {iid: [] for iid in images}
    for a in coco["annotations"]:
        aid, seg, img = a["id"], a.get("segmentation"), images.get(a.get("image_id"))
        if not (isinstance(seg, dict) and "counts" in seg):
            raise ExportError(f"{name} is not a labeled COCO file: annotation {aid} has no RLE segmentation "
                              f"({type(seg).__name__}); expected the output of `mal label`")
        if img is None or a.get("category_id") not in cats:
            raise ExportError(f"{name}: annotation {aid} has an unknown image_id or category_id")
        try:
            per[img["id"]].append((a, to_rle(seg, img["height"], img["width"], aid, name)))  # checks the size
        except EvalError as e:
            raise ExportError(str(e)) from None
    seen: dict = {}
    for f in (img["file_name"] for img in images.values()) if stems else ():
        if seen.setdefault(Path(f).stem, f) != f:
            raise ExportError(f"{name}: images {seen[Path(f).stem]} and {f} share a file stem, which names "
                              "their YOLO and PNG files")
    return coco, name, [(images[i], anns) for i, anns in per.items()]
