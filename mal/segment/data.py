"""COCO instances with masks -> torchvision detection samples; honest train/eval image splits."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..coco_masks import check_same_boxes as same_boxes
from ..data.coco import BoxDataset, CocoError, load_boxes
from ..data.dataset import read_image_item
from ..errors import MalError
from ..evaluate import EvalError, to_rle

log = logging.getLogger("mal")

AGNOSTIC = [{"id": 1, "name": "object", "supercategory": "object"}]


def class_map(categories: list[dict], class_agnostic: bool,
              category_ids: list[int] | None = None) -> tuple[list[dict], dict[int, int]]:
    """(categories in class-index order, COCO category id -> class index 1..K), for every category or
    only ``category_ids`` (a class subset: other classes have no index, so their instances are dropped)."""
    keep = None if category_ids is None else set(category_ids)
    cats = sorted((c for c in categories if keep is None or c["id"] in keep), key=lambda c: c["id"])
    if class_agnostic:
        return AGNOSTIC, {c["id"]: 1 for c in cats}
    return cats, {c["id"]: i + 1 for i, c in enumerate(cats)}


def select_classes(coco: dict, classes=None, top: int = 0, image_ids: set[int] | None = None) -> list[int] | None:
    """COCO category ids of a class subset: ``classes`` by name (or id), or the ``top`` classes with the
    most non-crowd instances on ``image_ids`` (all images when None; ties: lower id first). None (every
    class) when neither is given."""
    if classes and top:
        raise MalError("give class names or a number of most frequent classes, not both")
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    if classes:
        ids = {c["id"] for c in coco["categories"]}
        unknown = [c for c in classes if by_name.get(c, c) not in ids]
        if unknown:
            raise MalError(f"unknown classes {unknown}; the file's classes are: {', '.join(by_name)}")
        return sorted({by_name.get(c, c) for c in classes})
    if not top:
        return None
    if top < 0:
        raise MalError(f"the number of most frequent classes must be positive, got {top}")
    counts = Counter(a["category_id"] for a in coco["annotations"]
                     if not a.get("iscrowd") and (image_ids is None or a["image_id"] in image_ids))
    if not counts:
        raise MalError("no instance to count classes on")
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:top])


class InstanceMasks(Dataset):
    """One item per image that has at least one (non-crowd) instance.

    Item: ``(image, target)``; image (3, H, W) float RGB in 0..1; target ``boxes`` (N, 4) float
    x0,y0,x1,y1, ``labels`` (N,) int64 class indices, ``masks`` (N, H, W) uint8, ``image_id``.
    Instances of classes without an index in ``cat_to_label`` (a class subset) are left out, and
    images with none of the kept classes with them.
    ``flip``: random horizontal flip (training). Every annotation must carry a ``segmentation``
    (polygons or RLE); a missing or undecodable one is an error naming the annotation.
    """

    def __init__(self, data: BoxDataset, image_ids: set[int], cat_to_label: dict[int, int],
                 *, flip: bool = False, source: str = "annotations"):
        self.data = data
        kept = ((e, [r for r in recs if r.category_id in cat_to_label]) for e, recs in data.groups
                if e["id"] in image_ids)
        self.groups = [(e, recs) for e, recs in kept if recs]
        self.cat_to_label = cat_to_label
        self.flip = flip
        for _, recs in self.groups:  # fail before training, not hours into it
            for r in recs:
                seg = r.ann.get("segmentation")
                if not seg:
                    raise CocoError(f"{source}: annotation {r.ann_id} (image {r.file_name}) has no "
                                    "segmentation; the segmenter trains on masks")

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        entry, records = self.groups[i]
        item = read_image_item(self.data, entry, records)
        if "error" in item:
            raise CocoError(item["error"])
        H, W = int(entry["height"]), int(entry["width"])
        masks = []
        for r in records:
            try:
                rle = to_rle(r.ann["segmentation"], H, W, r.ann_id, r.file_name)
            except EvalError as e:
                raise CocoError(str(e)) from e
            masks.append(mask_utils.decode(rle))
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r.bbox for r in records)],
                             dtype=torch.float32)
        image = torch.from_numpy(np.array(item["pixels"])).permute(2, 0, 1).float() / 255
        masks_t = torch.from_numpy(np.stack(masks))
        if self.flip and torch.rand(()) < 0.5:
            image, masks_t = image.flip(-1), masks_t.flip(-1)
            boxes = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)
        target = {"boxes": boxes, "masks": masks_t, "image_id": int(entry["id"]),
                  "labels": torch.tensor([self.cat_to_label[r.category_id] for r in records])}
        return image, target


def collate(batch):
    return tuple(zip(*batch))


def load_instances(images: str | Path, annotations: str | Path | dict) -> BoxDataset:
    """Validated COCO file (boxes, ids, image files) for training/evaluating the segmenter.
    Crowd regions are not instances and are left out, as in torchvision's COCO reference."""
    return load_boxes(annotations, images, skip_crowd=True)


def split_images(coco: dict, *, split_key: str = "coco_split", train_split: str = "train2017",
                 eval_split: str = "val2017", eval_fraction: float | None = None,
                 seed: int = 0) -> tuple[set[int], set[int]]:
    """(train image ids, eval image ids). By the images' ``split_key`` field when every image has
    one, else (or with ``eval_fraction``) a seeded random split. Disjoint by construction."""
    images = coco["images"]
    if eval_fraction is None and all(split_key in im for im in images):
        train = {im["id"] for im in images if im[split_key] == train_split}
        evals = {im["id"] for im in images if im[split_key] == eval_split}
        if not train or not evals:
            found = sorted({str(im[split_key]) for im in images})
            raise MalError(f"images' '{split_key}' values are {found}: need both {train_split!r} "
                             f"(training) and {eval_split!r} (evaluation)")
        return train, evals
    frac = 0.5 if eval_fraction is None else eval_fraction
    if not 0 < frac < 1:
        raise MalError(f"eval fraction must be between 0 and 1, got {frac}")
    ids = np.array(sorted(im["id"] for im in images))
    np.random.default_rng(seed).shuffle(ids)
    n_eval = max(1, round(len(ids) * frac))
    return set(ids[n_eval:].tolist()), set(ids[:n_eval].tolist())


def hash_fraction(file_name: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the image's file name (sha256), the same on every machine and
    for every label set; adding or removing other images never moves an image between splits."""
    digest = hashlib.sha256(f"{salt}{file_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(coco: dict, *, eval_fraction: float = 0.2, train_fraction: float | None = None,
               salt: str = "") -> tuple[set[int], set[int]]:
    """(train image ids, eval image ids) by :func:`hash_fraction`: eval = the images below
    ``eval_fraction``, train = those from ``eval_fraction`` up to ``eval_fraction + train_fraction``
    (all the rest when None). Smaller training sets are nested in larger ones with the same eval set."""
    if not 0 < eval_fraction < 1:
        raise MalError(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    top = 1.0 if train_fraction is None else eval_fraction + train_fraction
    if train_fraction is not None and not (0 < train_fraction and top <= 1 + 1e-9):
        raise MalError(f"train fraction must be above 0 and at most 1 - eval fraction "
                       f"({1 - eval_fraction:g}), got {train_fraction}")
    train, evals = set(), set()
    for im in coco["images"]:
        h = hash_fraction(im["file_name"], salt)
        if h < eval_fraction:
            evals.add(im["id"])
        elif h < top:
            train.add(im["id"])
    if not train or not evals:
        raise MalError(f"the split of {len(coco['images'])} images leaves {len(train)} training and "
                       f"{len(evals)} evaluation images; change the fractions")
    return train, evals


def write_split(gt: str | Path, out: str | Path, *, eval_fraction: float = 0.2,
                train_fraction: float | None = None, salt: str = "") -> dict:
    """OUT/train_ids.txt, OUT/eval_ids.txt (what `mal retention --train-ids/--eval-ids` take) and
    OUT/train_boxes.json: the training images' boxes with every mask removed, the file to label
    (`mal label`) or to train the labeler on (`mal train`) so that phase 1 never sees a human mask."""
    from ..atomic import write_json_atomic, write_text_atomic
    from ..data.coco import load_coco_json
    coco = load_coco_json(gt)
    train, evals = hash_split(coco, eval_fraction=eval_fraction, train_fraction=train_fraction, salt=salt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rule = (f"# sha256(salt + file_name) < {eval_fraction:g} is eval; train up to "
            f"{eval_fraction + (1 - eval_fraction if train_fraction is None else train_fraction):g}; "
            f"salt {salt!r}; source {Path(gt).name}\n")
    for name, ids in (("train_ids.txt", train), ("eval_ids.txt", evals)):
        write_text_atomic(rule + "".join(f"{i}\n" for i in sorted(ids)), out / name)
    boxes = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    boxes["images"] = [im for im in coco["images"] if im["id"] in train]
    boxes["annotations"] = [{k: v for k, v in a.items() if k != "segmentation"}
                            for a in coco["annotations"] if a["image_id"] in train]
    write_json_atomic(boxes, out / "train_boxes.json")
    n = lambda ids: sum(a["image_id"] in ids for a in coco["annotations"])  # noqa: E731
    return {"train_images": len(train), "eval_images": len(evals),
            "train_instances": n(train), "eval_instances": n(evals)}


def check_disjoint(coco: dict, train_ids: set[int], eval_ids: set[int]) -> None:
    """Refuse evaluation images that are also training images (by id or by file name)."""
    by_id = {im["id"]: im for im in coco["images"]}
    unknown = sorted((train_ids | eval_ids) - set(by_id))
    if unknown:
        raise MalError(f"image ids not in the COCO file: {unknown[:10]}")
    shared = sorted(train_ids & eval_ids)
    files = {}
    for i in train_ids:
        files[by_id[i]["file_name"]] = i
    same_file = sorted(by_id[i]["file_name"] for i in eval_ids if by_id[i]["file_name"] in files)
    if shared or same_file:
        raise MalError(
            f"train and eval images overlap: {len(shared)} image ids (e.g. {shared[:5]}) and "
            f"{len(same_file)} file names (e.g. {same_file[:5]}) are in both; evaluation images must "
            "never be trained on")


def check_same_boxes(gt: dict, pseudo: dict, image_ids: set[int], pseudo_name: str) -> None:
    """Refuse auto-labels that do not describe exactly the human file's boxes on ``image_ids``
    (same images, annotation ids, categories and boxes; crowd regions aside), so the two models
    differ only in masks. EvalError (a ValueError) listing the differences."""
    same_boxes(gt, pseudo, image_ids, pseudo_name, ref_name="the human masks", skip_crowd=True,
               fields=("image_id", "category_id", "bbox"), image_fields=("file_name", "width", "height"),
               subset="training", hint="label the same COCO file with `mal label`")
