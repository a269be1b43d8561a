"""Torch datasets over boxes: random-expansion training crops, fixed-expansion labeling crops."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from .coco import BoxDataset, BoxRecord
from .crops import box_in_crop, box_mask, crop_and_resize, expand_box, random_ratios, xywh_to_xyxy
from .images import ImageError, read_rgb

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
    ``box_mask`` (S/4, S/4) float, 1 inside the box at the decoder's output resolution, ``box`` (4,)
    float x0,y0,x1,y1 in crop pixels (the prompt of a box-prompted decoder).

    An unreadable image (see :func:`read_image_item`) is reported once and its boxes are replaced by
    the next readable ones: losing a few training boxes is harmless, stopping a long run is not.
    With ``data.strict`` it raises :class:`ImageError` instead.
    """

    def __init__(self, data: BoxDataset, crop_size: int, *, min_area: float = 2048.0,
                 max_margin: float = 1.2):
        self.data = data
        self.records = [r for r in data.records if r.bbox[2] * r.bbox[3] >= min_area]
        if not self.records:
            raise ValueError(f"no box has an area of at least {min_area:g} px "
                             f"({len(data.records)} boxes); lower --min-area")
        self.size = crop_size
        self.max_margin = max_margin
        self.augment = student_augment()
        self.bad_files: set[str] = set()  # per worker process; each reports a bad file once

    def _read(self, i: int) -> tuple[BoxRecord, np.ndarray]:
        """Record ``i`` and its image, or the next record whose image is readable."""
        n = len(self.records)
        for k in range(n):
            r = self.records[(i + k) % n]
            if r.file_name in self.bad_files:
                continue
            entry = {"file_name": r.file_name, "width": r.width, "height": r.height}
            item = read_image_item(self.data, entry, [r])
            if "pixels" in item:
                return r, item["pixels"]
            if self.data.strict:
                raise ImageError(item["error"] + " (--strict: not skipping it)")
            log.warning("training without this image: %s", item["error"])
            self.bad_files.add(r.file_name)
        raise ImageError(f"none of the {len(self.bad_files)} training images can be read "
                         f"(e.g. {sorted(self.bad_files)[0]})")

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
        if rng.random() < 0.5:  # horizontal flip: geometric, so applied to crop, box mask and box alike
            crop, bmask = crop[:, ::-1], bmask[:, ::-1]
            cbox = np.array([self.size - cbox[2], cbox[1], self.size - cbox[0], cbox[3]])
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)
        return {"image": t, "image_aug": self.augment(t), "box_mask": torch.from_numpy(bmask.copy()),
                "box": torch.from_numpy(cbox).float()}


class ImageCrops(Dataset):
    """One item per image (for labeling): fixed-expansion crops of all its boxes.

    Item: ``image`` (the COCO image entry), ``records``, ``crops`` (N, 3, S, S) uint8,
    ``windows`` (N, 4) int64 crop windows in image pixels, ``boxes`` (N, 4) float32 boxes in crop
    pixels, or ``error`` (str) if the image
    cannot be read, so the labeling loop can report and skip it instead of crashing.
    """

    def __init__(self, groups: list[tuple[dict, list[BoxRecord]]], data: BoxDataset, crop_size: int,
                 expand: float = 1.3):
        self.groups = groups
        self.data = data
        self.size = crop_size
        self.expand = expand

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        entry, records = self.groups[i]
        item = read_image_item(self.data, entry, records)
        if "error" in item:
            return item
        image = item.pop("pixels")
        boxes = [xywh_to_xyxy(r.bbox) for r in records]
        windows = np.stack([expand_box(b, (self.expand,) * 4) for b in boxes])
        crops = np.stack([crop_and_resize(image, w, self.size) for w in windows])
        item["crops"] = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
        item["windows"] = windows
        item["boxes"] = torch.from_numpy(np.stack([box_in_crop(b, w, self.size)
                                                   for b, w in zip(boxes, windows)])).float()
        return item


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
    so a labeling loop can report or skip it rather than crash in a worker.

    EXIF orientation is applied (COCO sizes and boxes normally refer to the upright image, as viewers
    show it). Some annotation tools ignore the tag, though, and record the stored size: when only the
    stored pixels match the COCO size, they are used and the item carries a ``"warning"`` (an
    ``"error"`` if ``data.strict``), since those are the pixels the boxes were drawn on."""
    item = {"image": entry, "records": records}
    path = data.image_path(entry["file_name"])
    W, H = int(entry["width"]), int(entry["height"])
    try:
        pixels = read_rgb(path)
        if pixels.shape[:2] == (W, H) != (H, W):
            stored = read_rgb(path, orient=False)
            if stored.shape[:2] == (H, W):
                msg = (f"{path}: its EXIF orientation turns it to {H}x{W}, but the COCO file says {W}x{H}, "
                       "its size as stored (the annotation tool ignored the orientation)")
                if data.strict:
                    item["error"] = msg + "; not using the stored pixels because of --strict"
                    return item
                item["warning"] = msg + "; using the stored pixels, on which the boxes were drawn"
                log.warning(item["warning"])
                pixels = stored
    except ValueError as e:  # ImageError names the file
        item["error"] = str(e)
        return item
    if pixels.shape[:2] != (H, W):
        item["error"] = (f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but the COCO file "
                         f"says {W}x{H}")
        return item
    item["pixels"] = pixels
    return item


def collate_single(items: list[dict]) -> dict:
    """DataLoader collate for batch_size=1 items that must not be stacked."""
    return items[0]
