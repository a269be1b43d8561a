"""Torch datasets over boxes: training crops (TrainCrops, one per box) or images (TrainImages, view
"image"), labeling crops (ImageCrops) and plain decoded images (ImageReader)."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..errors import MalError
from .coco import BoxDataset, BoxRecord
from .crops import (
    box_in_crop,
    box_mask,
    crop_and_resize,
    crop_mask,
    expand_box,
    mirror_boxes,
    random_ratios,
    xywh_to_xyxy,
)
from .given_masks import GivenMasks
from .images import ImageError, read_sized_image
from .tiles import image_tiles

log = logging.getLogger("mal")

MASK_STRIDE = 4  # the decoder's output stride


def student_augment() -> T.Compose:
    """Photometric noise for the student (the teacher sees the clean crop), as in MAL."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
    ])


class TrainCrops(Dataset):
    """One item per training box: a randomly expanded crop, its augmented copy and the box mask.

    Item: ``image`` (3, S, S) uint8 clean crop (teacher), ``image_aug`` (3, S, S) uint8 (student),
    ``box_mask`` (S/4, S/4) float, 1 inside the box at the decoder's output resolution, ``boxes`` (4,)
    float x0,y0,x1,y1 in crop pixels (the prompt of a box-prompted decoder). With ``masks`` (human
    masks of some boxes) also ``given_mask`` (S/4, S/4) float, that mask in the same geometry (zeros
    for a box without one), and ``has_mask`` () bool; a box with a mask is trained on whatever its area.

    An unreadable image (see :func:`read_image_item`) is reported once and its boxes are replaced by
    the next readable ones: losing a few training boxes is harmless, stopping a long run is not.
    With ``data.strict`` it raises :class:`ImageError` instead.
    """

    def __init__(self, data: BoxDataset, crop_size: int, *, min_area: float = 2048.0,
                 max_margin: float = 1.2, masks: GivenMasks | None = None):
        self.data, self.masks = data, masks
        self.records = [r for r in data.records if trained_on(r, min_area, masks)]
        if not self.records:
            raise MalError(f"no box has an area of at least {min_area:g} px "
                             f"({len(data.records)} boxes); lower --min-area")
        self.singles = [[r] for r in self.records]  # one "group" per box for read_first_readable
        self.size = crop_size
        self.max_margin = max_margin
        self.augment = student_augment()
        self.bad_files: set[str] = set()  # per worker process; each reports a bad file once

    def _read(self, i: int) -> tuple[BoxRecord, np.ndarray]:
        """Record ``i`` and its image, or the next record whose image is readable."""
        records, pixels, _ = read_first_readable(self.data, self.singles, i, self.bad_files)
        return records[0], pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        # Drawn from torch's RNG, which DataLoader seeds per worker and epoch from the main process:
        # reproducible under seed_everything, and no two workers share a stream.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        r, image = self._read(i)
        box = xywh_to_xyxy(r.bbox)
        window = expand_box(box, random_ratios(rng, self.max_margin))
        crop = crop_and_resize(image, window, self.size)
        m = self.size // MASK_STRIDE
        cbox = box_in_crop(box, window, self.size)
        bmask = box_mask(cbox / MASK_STRIDE, m, m)
        given = None if self.masks is None else self.masks.decode(r.ann_id)
        gmask = np.zeros((m, m), np.float32) if given is None else crop_mask(given, window, m)
        if rng.random() < 0.5:  # horizontal flip: geometric, so applied to crop, masks and box alike
            crop, bmask, gmask = crop[:, ::-1], bmask[:, ::-1], gmask[:, ::-1]
            cbox = np.array([self.size - cbox[2], cbox[1], self.size - cbox[0], cbox[3]])
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        item = {"image": t, "image_aug": self.augment(t), "box_mask": torch.from_numpy(bmask.copy()),
                "boxes": torch.from_numpy(cbox).float()}
        if self.masks is not None:
            item.update(given_mask=torch.from_numpy(gmask.copy()), has_mask=torch.tensor(given is not None))
        return item


def trained_on(r: BoxRecord, min_area: float, masks: GivenMasks | None, scale: float = 1.0) -> bool:
    """Boxes of at least ``min_area`` px (at ``scale`` model pixels per image pixel) are trained on
    (smaller ones show MIL too little shape), and every box with a given mask."""
    return r.bbox[2] * r.bbox[3] * scale ** 2 >= min_area or (masks is not None and r.ann_id in masks.rles)


class ImageCrops(Dataset):
    """One item per image (for labeling): the crops its boxes are decoded on.

    view "crop": one fixed-expansion crop per box. view "image": the whole image in a square frame
    (its long side, padded at the bottom/right, as SAM's input), shared by every box; or, with
    ``box_frame`` > 0 and boxes small for the image, zoomed tiles of it (:mod:`mal.data.tiles`).
    Item: ``image`` (the COCO image entry), ``records`` and the keys of :func:`labeling_crops` (with
    ``mirror``: the mirrored image's too); or ``image``, ``records`` and ``error`` (str) if the image
    cannot be read, so the labeling loop can report and skip it instead of crashing.
    """

    def __init__(self, groups: list[tuple[dict, list[BoxRecord]]], data: BoxDataset, crop_size: int,
                 expand: float = 1.3, view: str = "crop", box_frame: float = 0.0, mirror: bool = False):
        self.groups = groups
        self.data = data
        self.size = crop_size
        self.expand = expand
        self.view = view
        self.box_frame = box_frame
        self.mirror = mirror

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        entry, records = self.groups[i]
        item = read_image_item(self.data, entry, records)
        if "error" in item:
            return item
        boxes = np.stack([xywh_to_xyxy(r.bbox) for r in records])
        item.update(labeling_crops(item.pop("pixels"), boxes, self.size, self.expand, self.view,
                                   self.box_frame, self.mirror))
        return item


def labeling_crops(image: np.ndarray, boxes_xyxy: np.ndarray, size: int, expand: float, view: str,
                   box_frame: float = 0.0, mirror: bool = False) -> dict:
    """What a labeler decodes the boxes (N, 4) of an HxWx3 uint8 image on (see :class:`ImageCrops`):
    ``crops`` (M, 3, S, S) uint8 and ``frames`` (M, 4) their windows in image pixels, ``crop_index`` (N,),
    ``windows`` (N, 4) int64 image pixels (view image: each box's frame), ``boxes`` (N, 4) float32 crop
    pixels, and ``image_boxes`` (N, 4) and
    ``image_size`` (H, W) for the paste-back. ``mirror``: also ``mirror``, the same for the image's
    left-right mirror and its mirrored boxes (:func:`~mal.data.crops.mirror_boxes`), for flip
    test-time augmentation. Used by ``mal label`` and by :class:`mal.predictor.MaskPredictor`."""
    out = {"image_boxes": np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4), "image_size": image.shape[:2]}
    if mirror:
        out["mirror"] = labeling_crops(np.ascontiguousarray(image[:, ::-1]), mirror_boxes(boxes_xyxy, image.shape[1]),
                                       size, expand, view, box_frame)
    if view == "image":
        frames, index = image_tiles(boxes_xyxy, image.shape[0], image.shape[1], size, box_frame)
    else:
        frames = np.stack([expand_box(b, (expand,) * 4) for b in boxes_xyxy])
        index = np.arange(len(boxes_xyxy))
    crops = np.stack([crop_and_resize(image, w, size) for w in frames])
    windows = frames[index]
    return {**out, "crops": torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(), "frames": frames,
            "crop_index": torch.from_numpy(index), "windows": windows,
            "boxes": torch.from_numpy(np.stack([box_in_crop(b, w, size)
                                                for b, w in zip(boxes_xyxy, windows)])).float()}


class TrainImages(Dataset):
    """One item per frame with training boxes (view "image"): the whole image in its square frame, or
    with ``box_frame`` > 0 each zoomed tile that holds boxes (:mod:`mal.data.tiles`, one side per image:
    ``mal label`` adds finer tiles for boxes much smaller than the rest), resized to S, and up to
    ``boxes_per_image`` of its boxes drawn at random (those with a given mask first), each with a randomly
    expanded window (the same geometry as :class:`TrainCrops`) in which the losses are computed.
    ``min_area`` is counted in frame pixels, so a small box that the zoom enlarges is trained on.

    Item: ``image`` / ``image_aug`` (3, S, S) uint8, ``boxes`` (K, 4) and ``windows`` (K, 4) float32
    in frame pixels, ``box_mask`` (K, m, m) the box inside its window at the loss resolution m; with
    ``masks``, ``given_mask`` (K, m, m) and ``has_mask`` (K,) as in :class:`TrainCrops`; ``frame_id``
    (the index of the frame read: the key of :class:`mal.embedding_cache.EmbeddingCache`).
    Collate with :func:`collate_images`. Unreadable images are skipped as in :class:`TrainCrops`.
    """

    def __init__(self, data: BoxDataset, size: int, *, min_area: float = 2048.0, max_margin: float = 1.2,
                 boxes_per_image: int = 8, loss_size: int = 64, box_frame: float = 0.0,
                 masks: GivenMasks | None = None):
        self.data, self.masks = data, masks
        per_image: dict[int, list[BoxRecord]] = {}
        for r in data.records:
            per_image.setdefault(r.image_id, []).append(r)
        self.groups, self.frames = [], []  # records of each frame, and the frame (image pixels)
        for records in per_image.values():
            boxes = np.stack([xywh_to_xyxy(r.bbox) for r in records])
            windows, index = image_tiles(boxes, records[0].height, records[0].width, size, box_frame,
                                         nested=False)
            for k, w in enumerate(windows):
                scale = size / float(w[2] - w[0])
                keep = [r for r, i in zip(records, index) if i == k and trained_on(r, min_area, masks, scale)]
                if keep:
                    self.groups.append(keep)
                    self.frames.append(w)
        if not self.groups:
            raise MalError(f"no box has an area of at least {min_area:g} px in the model's frame "
                             f"({len(data.records)} boxes); lower --min-area")
        self.num_boxes = sum(len(g) for g in self.groups)
        self.size, self.max_margin = size, max_margin
        self.boxes_per_image, self.loss_size = boxes_per_image, loss_size
        self.augment = student_augment()
        self.bad_files: set[str] = set()

    def __len__(self) -> int:
        return len(self.groups)

    def zoomed_images(self) -> tuple[int, int]:
        """(images cut into zoomed tiles, images seen whole), among the images with training boxes."""
        images: dict[int, bool] = {}
        for records, w in zip(self.groups, self.frames):
            r = records[0]
            images[r.image_id] = images.get(r.image_id, False) or w[2] - w[0] < max(r.height, r.width)
        zoomed = sum(images.values())
        return zoomed, len(images) - zoomed

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        records, image, i = read_first_readable(self.data, self.groups, i, self.bad_files)
        frame = self.frames[i]
        crop = crop_and_resize(image, frame, self.size)
        pick = rng.permutation(len(records))
        if self.masks is not None:  # boxes with a human mask first: the few there are are seen every visit
            pick = sorted(pick, key=lambda k: records[k].ann_id not in self.masks.rles)
        pick = pick[:self.boxes_per_image]
        boxes, windows, masks, given = [], [], [], []
        m = self.loss_size
        for k in pick:
            box = xywh_to_xyxy(records[k].bbox)
            window = expand_box(box, random_ratios(rng, self.max_margin))
            boxes.append(box_in_crop(box, frame, self.size))
            windows.append(box_in_crop(window, frame, self.size))
            masks.append(box_mask(box_in_crop(box, window, m), m, m))
            if self.masks is not None:  # in the box's window (image pixels), as its box mask
                g = self.masks.decode(records[k].ann_id)
                given.append((np.zeros((m, m), np.float32) if g is None else crop_mask(g, window, m), g is not None))
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        item = {"image": t, "image_aug": self.augment(t),
                "boxes": torch.from_numpy(np.stack(boxes)).float(),
                "windows": torch.from_numpy(np.stack(windows)).float(),
                "box_mask": torch.from_numpy(np.stack(masks)), "frame_id": torch.tensor(i)}
        if self.masks is not None:
            item.update(given_mask=torch.from_numpy(np.stack([g for g, _ in given])),
                        has_mask=torch.tensor([h for _, h in given]))
        return item


def collate_images(items: list[dict]) -> dict:
    """Batch :class:`TrainImages` items: images stacked, boxes concatenated with ``index`` (N,)."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("image", "image_aug", "frame_id")}
    for k in ("boxes", "windows", "box_mask", "given_mask", "has_mask"):
        if k in items[0]:
            out[k] = torch.cat([it[k] for it in items])
    out["index"] = torch.cat([torch.full((len(it["boxes"]),), j, dtype=torch.long) for j, it in enumerate(items)])
    return out


def read_first_readable(data: BoxDataset, groups: list[list[BoxRecord]], i: int,
                        bad_files: set[str]) -> tuple[list[BoxRecord], np.ndarray, int]:
    """Group ``i`` (records of one image), its pixels and its index, or the next group whose image is
    readable; an unreadable one is reported once and remembered in ``bad_files`` (with ``data.strict``:
    raised)."""
    n = len(groups)
    for k in range(n):
        records = groups[(i + k) % n]
        r = records[0]
        if r.file_name in bad_files:
            continue
        entry = {"file_name": r.file_name, "width": r.width, "height": r.height}
        item = read_image_item(data, entry, records)
        if "pixels" in item:
            return records, item["pixels"], (i + k) % n
        if data.strict:
            raise ImageError(item["error"] + " (--strict: not skipping it)")
        log.warning("training without this image: %s", item["error"])
        bad_files.add(r.file_name)
    raise ImageError(f"none of the {len(bad_files)} training images can be read "
                     f"(e.g. {sorted(bad_files)[0]})")


class ImageReader(Dataset):
    """One item per image: the COCO entry, its records and the decoded RGB image, or ``error`` (str)
    naming the file when it cannot be read or its size disagrees with the COCO file (as
    :class:`ImageCrops` does), so the loop can report or skip it. Used by the engines and by
    segmenter evaluation (with no records)."""

    def __init__(self, groups: list[tuple[dict, list[BoxRecord]]], data: BoxDataset):
        self.groups = groups
        self.data = data

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        entry, records = self.groups[i]
        return read_image_item(self.data, entry, records)


def read_image_item(data: BoxDataset, entry: dict, records: list[BoxRecord]) -> dict:
    """``{"image": entry, "records": records, "pixels": HxWx3 uint8}``, or ``"error"`` (a message naming
    the file) instead of pixels when the image cannot be read or its size disagrees with the COCO file,
    so a labeling loop can report or skip it rather than crash in a worker. The pixels, EXIF handling
    and ``"warning"`` are :func:`read_sized_image`'s, with ``data.strict``."""
    item = {"image": entry, "records": records}
    item.update(read_sized_image(data.image_path(entry["file_name"]), int(entry["width"]),
                                 int(entry["height"]), strict=data.strict))
    return item


def collate_single(items: list[dict]) -> dict:
    """DataLoader collate for batch_size=1 items that must not be stacked."""
    return items[0]
