"""``mal import``: masks people reviewed, read back from the review tool into a COCO file keyed by the
original annotation ids, for ``mal train --masks``.

Label Studio: the JSON export (Export > JSON) of a project whose tasks ``mal export --format label-studio``
wrote: each task names its COCO image (``data.coco_image_id``), each region its box (id ``ann<annotation
id>``). Of each task's submitted annotations (cancelled ones aside) the last is read; each of its regions
that is one of mal's becomes that box's mask (brush RLE decoded by ``label_studio_sdk``'s own decoder,
polygons rasterised at the image size by pycocotools, as COCO polygons are), with ``mal_reviewed: true``
where it differs from the labeled file's mask (a person changed it) and ``false`` where it was accepted
as it was. Left out, and counted in the summary: tasks nobody submitted (nobody looked at them), regions
deleted in the review (the box is still there; an empty mask would teach the wrong thing) and regions
drawn from scratch (no box to key them by).

PNG: the ``png/masks/<image stem>/<annotation id>.png`` files of ``mal export --format png``, edited in any
paint tool: each file is its box's mask (any nonzero pixel), ``mal_reviewed`` as above; a deleted file
leaves its box out, a missing image folder its image.

Every problem (malformed JSON, a task or region that is not of this labeled file, a mask of the wrong
size) is one :class:`ExportError` naming the task and region, raised before anything is written.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..atomic import write_json_atomic
from ..coco_masks import EvalError, encode_rle, to_rle
from .labeled import read_labeled
from .writers import ExportError

IMPORT_FORMATS = ("label-studio", "png")
MAL_REGION = re.compile(r"ann(.+)")  # the region ids mal export writes: "ann<annotation id>"


@dataclass
class ImportResult:
    out: Path
    tasks: int = 0          # tasks (Label Studio) or image folders (PNG) read
    changed: int = 0        # masks a person changed: mal_reviewed true
    accepted: int = 0       # masks submitted as they were: mal_reviewed false
    not_submitted: int = 0  # tasks without a submitted annotation / images without a mask folder: left out
    deleted: int = 0        # mal's regions / PNGs missing from the review: left out
    drawn: int = 0          # regions that are not mal's (drawn from scratch): left out
    format: str = "label-studio"

    def __str__(self) -> str:
        head = (f"imported {self.changed + self.accepted} masks from {self.tasks} "
                f"{'reviewed tasks' if self.format == 'label-studio' else 'image folders'} to {self.out}: "
                f"{self.changed} changed by a person (mal_reviewed: true), {self.accepted} accepted as they were; ")
        if self.format == "label-studio":
            left = (f"left out: {self.not_submitted} tasks nobody submitted, {self.deleted} regions deleted, "
                    f"{self.drawn} regions drawn from scratch (no box)")
        else:
            left = f"left out: {self.not_submitted} images without a mask folder, {self.deleted} mask files deleted"
        return head + left + f"  (next: mal train --masks [earlier rounds' files] {self.out} ...)"


def import_masks(pred, source, out, format: str = "label-studio") -> ImportResult:
    """Read the reviewed masks in ``source`` against ``pred``, the labeled COCO file that ``mal export``
    wrote them from, and write them to ``out`` (COCO, RLE, original annotation ids). ``format``:
    "label-studio" (``source``: the project's JSON export) or "png" (``source``: the ``png/`` folder of
    ``mal export --format png``, its ``masks/<image stem>/<annotation id>.png`` edited in any paint tool)."""
    if format not in IMPORT_FORMATS:
        raise ExportError(f"import format must be one of {', '.join(IMPORT_FORMATS)}, not {format!r}")
    coco, pred_name, per_image = read_labeled(pred, stems=format == "png")
    res, anns = ImportResult(Path(out), format=format), []
    reader = _label_studio_masks if format == "label-studio" else _png_masks
    for a, rle, mask in reader(per_image, source, pred_name, res):
        changed = not np.array_equal(mask, mask_utils.decode(rle).astype(bool))
        res.changed += changed
        res.accepted += not changed
        anns.append({"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                     "area": int(mask.sum()), "iscrowd": 0, "segmentation": encode_rle(mask),
                     "mal_reviewed": bool(changed)})
    if not anns:
        raise ExportError(f"{source}: no reviewed mask of {pred_name} to import "
                          f"({res.not_submitted} {'tasks nobody submitted' if format == 'label-studio' else 'images without masks'}); "
                          "nothing written")
    used = {a["image_id"] for a in anns}
    write_json_atomic({"images": [img for img in coco["images"] if img["id"] in used],
                       "annotations": anns, "categories": coco.get("categories") or []}, out)
    return res


def _label_studio_masks(per_image, tasks_file, pred_name: str, res: ImportResult):
    """(annotation, its labeled RLE, reviewed HxW bool mask) of every mal region in the last submitted
    annotation of each task; every task checked before anything is yielded to be written."""
    images = {img["id"]: (img, anns) for img, anns in per_image}
    tasks, name = _read_tasks(tasks_file)
    seen = {}
    for i, task in enumerate(tasks):
        tid = task.get("id", f"#{i}") if isinstance(task, dict) else f"#{i}"
        where = f"{name}: task {tid}"
        img, pairs = _task_image(task, images, where, pred_name)
        if img["id"] in seen:
            raise ExportError(f"{where}: image {img['id']} has a second task (also task {seen[img['id']]})")
        seen[img["id"]] = tid
        submitted = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not submitted:
            res.not_submitted += 1
            continue
        res.tasks += 1
        boxes = {str(a["id"]): (a, rle) for a, rle in pairs}
        done = set()
        for region in submitted[-1].get("result") or []:
            if not isinstance(region, dict) or region.get("type") not in ("brushlabels", "polygonlabels"):
                continue  # relations, choices, ...: not masks
            m = MAL_REGION.fullmatch(str(region.get("id", "")))
            if m is None:
                res.drawn += 1
                continue
            key, rwhere = m[1], f"{where}: region {region.get('id')}"
            if key not in boxes:
                raise ExportError(f"{rwhere} is annotation {key}, which image {img['id']} of {pred_name} does not "
                                  "have: an export of another project?")
            if key in done:
                raise ExportError(f"{rwhere} appears twice")
            done.add(key)
            a, rle = boxes[key]
            yield a, rle, _region_mask(region, img, rwhere)
        res.deleted += sum(1 for k, (_, rle) in boxes.items() if k not in done and mask_utils.area(rle) > 0)


def _png_masks(per_image, folder, pred_name: str, res: ImportResult):
    """(annotation, its labeled RLE, HxW bool mask) of every ``masks/<image stem>/<annotation id>.png``
    (any nonzero pixel is the object; grey, RGB or RGBA as paint tools save them)."""
    folder = Path(folder)
    # the export's folder, its png/ or png/masks/: whichever the user points at
    root = next((d for d in (folder / "png" / "masks", folder / "masks") if d.is_dir()), folder)
    if not root.is_dir():
        raise ExportError(f"{folder}: no such folder (expected the png/ folder `mal export --format png` wrote, "
                          "with masks/<image stem>/<annotation id>.png)")
    by_stem = {Path(img["file_name"]).stem: (img, pairs) for img, pairs in per_image}
    found = []
    for d in sorted(root.iterdir()):
        if d.name not in by_stem:
            raise ExportError(f"{d}: {pred_name} has no image with the file stem {d.name!r}: masks of another "
                              "labeled file?")
        img, pairs = by_stem[d.name]
        boxes = {str(a["id"]): (a, rle) for a, rle in pairs}
        for f in sorted(d.glob("*.png")):
            if f.stem not in boxes:
                raise ExportError(f"{f}: image {img['file_name']} of {pred_name} has no annotation {f.stem}")
            a, rle = boxes[f.stem]
            m = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if m is None:
                raise ExportError(f"{f}: not a readable image")
            if m.ndim == 3:
                m = m[..., 3] if m.shape[2] == 4 and m[..., :3].max() == 0 else m[..., :3].max(axis=2)
            if m.shape != (img["height"], img["width"]):
                raise ExportError(f"{f} is {m.shape[1]}x{m.shape[0]} px; image {img['file_name']} is "
                                  f"{img['width']}x{img['height']}")
            found.append((a, rle, m > 0))
        res.tasks += 1
        res.deleted += sum(1 for k, (_, rle) in boxes.items()
                           if not (d / f"{k}.png").is_file() and mask_utils.area(rle) > 0)
    res.not_submitted = len(by_stem) - res.tasks
    yield from found  # every file checked before the first mask is written


def _read_tasks(path) -> tuple[list, str]:
    name = str(path)
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read Label Studio export {name}: {e}") from None
    if not isinstance(tasks, list):
        raise ExportError(f"{name} is not a Label Studio JSON export (a list of tasks), but a "
                          f"{type(tasks).__name__}")
    return tasks, name


def _task_image(task, images: dict, where: str, pred_name: str) -> tuple[dict, list]:
    """The labeled file's image of a task (and its (annotation, RLE) pairs), or why it is not one."""
    data = task.get("data") if isinstance(task, dict) else None
    iid = data.get("coco_image_id") if isinstance(data, dict) else None
    if iid is None:
        raise ExportError(f"{where} has no data.coco_image_id: not a task `mal export --format label-studio` wrote")
    if iid not in images:
        raise ExportError(f"{where} is for image {iid!r}, which {pred_name} does not have: an export of "
                          "another project?")
    img, pairs = images[iid]
    url = str(data.get("image", ""))
    if not (url == img["file_name"] or url.endswith("/" + img["file_name"])):
        raise ExportError(f"{where} shows {url!r}, not {img['file_name']} (image {iid} of {pred_name}): "
                          "an export of another project?")
    return img, pairs


def _region_mask(region: dict, img: dict, where: str) -> np.ndarray:
    """A brush or polygon region -> HxW bool mask at the image's size."""
    H, W = img["height"], img["width"]
    size = (region.get("original_height", H), region.get("original_width", W))
    if size != (H, W):
        raise ExportError(f"{where} is on a {size[1]}x{size[0]} image, not {W}x{H} (image {img['id']})")
    value = region.get("value") or {}
    try:
        if region["type"] == "brushlabels":
            from label_studio_sdk.converter.brush import decode_rle
            flat = decode_rle(value["rle"])
            if flat.size != H * W * 4:
                raise ExportError(f"{where}: brush RLE of {flat.size} values, not {W}x{H}x4")
            return flat.reshape(H, W, 4)[:, :, 3] >= 128  # painted pixels are 255 (rgba)
        pts = np.asarray(value["points"], dtype=np.float64) * [W / 100, H / 100]  # percent of the image
        return mask_utils.decode(to_rle([pts.ravel().tolist()], H, W, where, "")).astype(bool)
    except ExportError:
        raise
    except ImportError as e:
        raise ExportError(f"reading Label Studio brushes needs label-studio-sdk (pip install 'mal[label-studio]'): "
                          f"{e}") from None
    except (EvalError, KeyError, TypeError, ValueError, IndexError) as e:
        raise ExportError(f"{where}: cannot read its mask: {type(e).__name__}: {e}") from None
