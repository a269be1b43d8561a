"""Read and validate a COCO instances file for box-only use (train / label), and index its boxes.

Only ``images``, ``annotations`` (id, image_id, category_id, bbox, iscrowd)
and ``categories`` are used; ``segmentation`` is never read, because the whole
point of the labeler is to produce masks from boxes alone.

All problems are collected first and reported in a single :class:`CocoError`,
so a user fixing a broken export sees everything at once instead of one error
per run, and nothing expensive (model loading, training) starts on bad data.
The checks, one per section of the file, are in :mod:`mal.data.coco_checks`.

Errors (always): unreadable/empty/malformed JSON, missing or ill-typed keys,
duplicate image/annotation/category ids, unknown image_id/category_id, a bbox
that is not 4 finite numbers, has zero/negative size, lies entirely outside
its image or is under 1 px once clipped, image entries without a positive
width/height, and image files that do not exist.
Warnings (errors with ``strict=True``, CLI ``--strict``): boxes partly outside
their image, which are clipped to it. Crowd annotations skipped for training
are a documented COCO feature, not a defect, and stay a note even when strict.

The result, :class:`BoxDataset`, is the one box index every step uses (training, labeling,
merging, phase 2): its per-image groups are built once here, each :class:`BoxRecord` keeps its
input annotation, and the input's sha256 is taken from the bytes that were parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .coco_checks import (AnnotationChecks, CocoError, Problems, check_categories, check_image_files,
                          check_images, positive_size)

__all__ = ["CocoError", "BoxRecord", "BoxDataset", "ImageGroup", "dict_sha256", "load_coco_json",
           "load_boxes"]

_TOP_LEVEL_LISTS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class BoxRecord:
    """One usable box annotation, with its image's metadata."""

    ann_id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h (after clipping to the image)
    file_name: str
    width: int
    height: int
    # The input annotation itself (the same dict as in ``BoxDataset.coco``), which outputs copy.
    ann: dict | None = field(default=None, compare=False, repr=False)


ImageGroup = tuple[dict, list[BoxRecord]]  # (COCO image entry, its records in file order)


@dataclass
class BoxDataset:
    """The box index of one validated COCO file: ``groups``, one per image with >= 1 record (images
    in file order, records in annotation order), ``records`` (the same records, flat), the original
    JSON ``coco`` (to write outputs alike) and what identifies the input (``source``,
    :attr:`input_sha256`)."""

    coco: dict
    groups: list[ImageGroup]
    images_dir: Path
    warnings: list[str] = field(default_factory=list)
    # --strict: image-level fallbacks (see mal.data.dataset.read_image_item) become errors too.
    strict: bool = False
    source: str = "<dict>"  # the annotations path as given (for people), or "<dict>"
    file_sha256: str | None = field(default=None, repr=False)  # of the file's bytes, when read from one
    records: list[BoxRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.records = [r for _, records in self.groups for r in records]

    def by_image(self) -> list[ImageGroup]:
        """``(image entry, its records)`` for every image with >= 1 record, in file order (the
        groups built once by :func:`load_boxes`; not to be modified)."""
        return self.groups

    def image_path(self, file_name: str) -> Path:
        """Absolute-or-relative path of an image file under ``images_dir``."""
        return self.images_dir / file_name

    @property
    def input_sha256(self) -> str:
        """sha256 of the input file's bytes, or of an in-memory dict's canonical JSON (computed on
        first use): the input's identity in a labeling job's manifest."""
        if self.file_sha256 is None:
            self.file_sha256 = dict_sha256(self.coco)
        return self.file_sha256


def dict_sha256(coco: dict) -> str:
    """sha256 of a dict's canonical JSON (sorted keys, ``json.dumps``'s separators), encoded piece by
    piece so that a large dict is never one string in memory."""
    h = hashlib.sha256()
    for piece in json.JSONEncoder(sort_keys=True).iterencode(coco):
        h.update(piece.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- reading


def _check_top_level(coco: Any, label: str) -> None:
    if not isinstance(coco, dict):
        raise CocoError(f"{label}: COCO file must contain a JSON object, got {type(coco).__name__}")
    bad = []
    for key in _TOP_LEVEL_LISTS:
        if key not in coco:
            bad.append(f'missing top-level "{key}" list')
        elif not isinstance(coco[key], list):
            bad.append(f'top-level "{key}" must be a list, got {type(coco[key]).__name__}')
    if bad:
        raise CocoError(f"{label}: " + "; ".join(bad))


def _read_coco_json(path: str | os.PathLike) -> tuple[dict, str]:
    """(the COCO dict, the sha256 of the file's bytes): one read serves both."""
    path = Path(path)
    label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CocoError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise CocoError(f"{label}: is a directory, not a COCO JSON file") from None
    except OSError as exc:
        raise CocoError(f"{label}: cannot read file: {exc}") from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        # utf-8-sig: Windows tools often write a byte-order mark, which json.loads rejects.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CocoError(f"{label}: cannot read file: {exc}") from exc
    del raw
    if "\r" in text:  # universal newlines, as text-mode reading gives (JSON error lines count "\n")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise CocoError(f"{label}: file is empty")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoError(
            f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    _check_top_level(coco, label)
    return coco, sha256


def load_coco_json(path: str | os.PathLike) -> dict:
    """Load a COCO JSON file, checking it has ``images``/``annotations``/``categories`` lists."""
    return _read_coco_json(path)[0]


# ---------------------------------------------------------------------------- main entry point


def load_boxes(
    annotations: str | os.PathLike | dict,
    images_dir: str | os.PathLike,
    *,
    check_files: bool = True,
    skip_crowd: bool = True,
    strict: bool = False,
) -> BoxDataset:
    """Validate a COCO instances file and return its box index.

    ``annotations`` is a path or an already-loaded dict. Boxes partly outside
    their image are clipped (with a warning, or an error if ``strict``); every
    real problem is collected and raised together as one :class:`CocoError`.
    ``check_files``: also check that every annotated image's file exists.
    """
    if isinstance(annotations, dict):
        label, source, coco, sha256 = "<dict>", "<dict>", annotations, None
        _check_top_level(coco, label)
    else:
        label, source = str(Path(annotations)), str(annotations)
        coco, sha256 = _read_coco_json(annotations)
    images_dir = Path(images_dir)

    p = Problems(label)
    cat_ids = check_categories(coco["categories"], p)
    images, seen_image_ids = check_images(coco["images"], p)
    anns = AnnotationChecks(p, images, seen_image_ids, cat_ids, skip_crowd=skip_crowd, strict=strict)
    for i, ann in enumerate(coco["annotations"]):
        anns.check(i, ann)
    used = [iid for iid in images if iid in anns.boxes]  # file order
    if check_files:  # only the files that will actually be read
        check_image_files(images, used, images_dir, p)
    p.raise_if_any()
    totals = anns.totals()
    p.log(totals)

    groups = []
    for iid in used:
        img = images[iid]
        W, H = positive_size(img["width"]), positive_size(img["height"])
        groups.append((img, [BoxRecord(int(a["id"]), iid, int(a["category_id"]), box, img["file_name"], W, H, a)
                             for a, box in anns.boxes[iid]]))
    return BoxDataset(coco=coco, groups=groups, images_dir=images_dir, warnings=p.warnings + totals,
                      strict=strict, source=source, file_sha256=sha256)
