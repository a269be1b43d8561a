"""The checks behind :func:`mal.data.coco.load_boxes`: one validator per section of a COCO file
(categories, images, annotations and their boxes, image files), all reporting into one
:class:`Problems` collector, so that every problem of a file is raised together (see the rules in
:mod:`mal.data.coco`'s docstring)."""
from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path
from typing import Any

from ..errors import MalError

logger = logging.getLogger("mal")

_MAX_PROBLEM_LINES = 20
_MAX_LOGGED_WARNINGS = 20
# Exported boxes often exceed the image by float noise (x + w = 640.0000001);
# such boxes are still clipped but not worth a warning.
_CLIP_WARN_EPS = 1e-3


class CocoError(MalError):
    """The COCO file is unusable; the message lists every problem found."""


class Problems:
    """Every problem found in one file (``label`` names it): errors, raised together as one
    :class:`CocoError` by :meth:`raise_if_any`, and warnings, logged by :meth:`log`."""

    def __init__(self, label: str):
        self.label = label
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        lines = [f"  - {p}" for p in self.errors[:_MAX_PROBLEM_LINES]]
        if len(self.errors) > _MAX_PROBLEM_LINES:
            lines.append(f"  ... and {len(self.errors) - _MAX_PROBLEM_LINES} more")
        raise CocoError(f"{self.label}: {len(self.errors)} problem(s) in the COCO file:\n" + "\n".join(lines))

    def log(self, totals: list[str]) -> None:
        """Log the warnings (the first few) and then ``totals``, which are logged even when the
        details were cut short."""
        for msg in self.warnings[:_MAX_LOGGED_WARNINGS]:
            logger.warning("%s: %s", self.label, msg)
        if len(self.warnings) > _MAX_LOGGED_WARNINGS:
            logger.warning("%s: ... and %d more warning(s)", self.label,
                           len(self.warnings) - _MAX_LOGGED_WARNINGS)
        for msg in totals:
            logger.warning("%s: %s", self.label, msg)


# ---------------------------------------------------------------------------- value checks


def is_int(v: Any) -> bool:
    # bool is a subclass of int in Python, but `"id": true` is a broken export.
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def positive_size(v: Any) -> int | None:
    """Width/height as a positive int; integral floats (640.0) are tolerated."""
    if is_int(v) and v > 0:
        return int(v)
    if _is_number(v) and math.isfinite(v) and v > 0 and float(v).is_integer():
        return int(v)
    return None


def _fmt_box(b: tuple[float, ...] | list) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in b) + "]"


# ---------------------------------------------------------------------------- sections


def clip_box(x: float, y: float, w: float, h: float, W: int | None, H: int | None
             ) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """The one box rule (COCO files and the predictor): ((x, y, w, h) clipped to a W x H image, None),
    or (None, the problem, with "{box}"/"{image}" for the caller to fill in). A box must be finite, of
    positive size and, once clipped, at least 1 px each way. W, H None: the image-free checks only."""
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "contains NaN or inf: {box}"
    if w <= 0 or h <= 0:
        return None, f"has zero or negative size (w={w:g}, h={h:g})"
    if W is None or H is None:
        return (x, y, w, h), None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
    if x1 <= x0 or y1 <= y0:
        return None, "{box} is entirely outside {image}"
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None, f"{{box}} is smaller than 1 px after clipping to {{image}}: w={x1 - x0:g}, h={y1 - y0:g}"
    return (x0, y0, x1 - x0, y1 - y0), None


def check_categories(categories: list, p: Problems) -> set[int]:
    """The valid, distinct category ids."""
    cat_ids: set[int] = set()
    for i, cat in enumerate(categories):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not is_int(cid):
            p.error(f"category #{i}: missing or non-integer id")
        elif cid in cat_ids:
            p.error(f"category id {cid}: duplicate category id")
        else:
            cat_ids.add(int(cid))
    return cat_ids


def check_images(images: list, p: Problems) -> tuple[dict[int, dict], set[int]]:
    """(valid entries by id, in file order; every distinct integer id, valid entry or not, so that
    the annotations of an invalid image are not reported as of an "unknown" one)."""
    valid: dict[int, dict] = {}
    seen: set[int] = set()
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            p.error(f"image #{i}: entry is not an object")
            continue
        iid = img.get("id")
        if not is_int(iid):
            p.error(f"image #{i} ({img.get('file_name', '?')}): missing or non-integer id")
            continue
        fname = img.get("file_name")
        name = f"image id {iid} ({fname})" if isinstance(fname, str) and fname else f"image id {iid}"
        if iid in seen:
            p.error(f"{name}: duplicate image id")
            continue
        seen.add(iid)
        ok = True
        if not isinstance(fname, str) or not fname:
            p.error(f"{name}: missing or empty file_name")
            ok = False
        for key in ("width", "height"):
            if key not in img:
                p.error(f"{name}: missing {key}")
                ok = False
            elif positive_size(img[key]) is None:
                p.error(f"{name}: {key} must be a positive integer, got {img[key]!r}")
                ok = False
        if ok:
            valid[int(iid)] = img
    return valid, seen


class AnnotationChecks:
    """The annotations section against the valid images and categories. :meth:`check` takes one
    annotation; ``boxes`` then holds ``image id -> [(annotation, its box clipped to the image)]``
    for the usable ones, in file order."""

    def __init__(self, p: Problems, images: dict[int, dict], seen_image_ids: set[int],
                 cat_ids: set[int], *, skip_crowd: bool, strict: bool):
        self.p, self.images, self.seen_image_ids, self.cat_ids = p, images, seen_image_ids, cat_ids
        self.skip_crowd, self.strict = skip_crowd, strict
        self.ann_ids: set[int] = set()
        self.boxes: dict[int, list[tuple[dict, tuple[float, float, float, float]]]] = {}
        self.crowd = self.clipped = 0

    def check(self, i: int, ann: Any) -> None:
        if isinstance(ann, dict) and is_int(ann.get("id")):
            name = f"annotation id {ann['id']}"
        else:
            name = f"annotation #{i} (no valid id)"
        if not isinstance(ann, dict):
            self.p.error(f"{name}: entry is not an object")
            return
        ids_ok, iid = self._check_ids(ann, name)
        if ann.get("iscrowd", 0) not in (0, 1):  # bools compare equal to 0/1: tolerated
            self.p.error(f"{name}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
            return
        if self.skip_crowd and ann.get("iscrowd", 0) == 1:
            # Crowd regions box many objects at once; not a per-instance target.
            self.crowd += 1
            return
        box = self._check_box(ann, name, iid)
        if box is not None and ids_ok:
            self.boxes.setdefault(iid, []).append((ann, box))

    def _check_ids(self, ann: dict, name: str) -> tuple[bool, int | None]:
        """(id and category_id are integers, the image id when it names a known image)."""
        aid = ann.get("id")
        if not is_int(aid):
            self.p.error(f"{name}: missing or non-integer id")
        elif aid in self.ann_ids:
            self.p.error(f"{name}: duplicate annotation id")
        else:
            self.ann_ids.add(int(aid))
        iid, cid = ann.get("image_id"), ann.get("category_id")
        if not is_int(iid):
            self.p.error(f"{name}: missing or non-integer image_id")
            iid = None
        elif iid not in self.seen_image_ids:
            self.p.error(f"{name}: unknown image_id {iid}")
            iid = None
        if not is_int(cid):
            self.p.error(f"{name}: missing or non-integer category_id")
        elif cid not in self.cat_ids:
            self.p.error(f"{name}: unknown category_id {cid}")
        return is_int(aid) and is_int(cid), None if iid is None else int(iid)

    def _check_box(self, ann: dict, name: str, iid: int | None) -> tuple[float, float, float, float] | None:
        """The box x, y, w, h clipped to its image, or None (reported, or its image already was)."""
        bbox = ann.get("bbox")
        if bbox is None:
            self.p.error(f"{name}: missing bbox")
            return None
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            self.p.error(f"{name}: bbox must be a list of 4 numbers, got {bbox!r}")
            return None
        img = self.images.get(iid) if iid is not None else None  # None: unknown or invalid, reported
        x, y, w, h = (float(v) for v in bbox)
        W, H = (None, None) if img is None else (positive_size(img["width"]), positive_size(img["height"]))
        clipped, problem = clip_box(x, y, w, h, W, H)
        if problem:
            self.p.error(f"{name}: bbox {problem.format(box=_fmt_box(bbox), image=f'image id {iid} ({W}x{H})')}")
        if problem or img is None:
            return None
        if max(abs(a - b) for a, b in zip(clipped, (x, y, w, h))) > _CLIP_WARN_EPS:
            self.clipped += 1
            where = f"{name}: bbox {_fmt_box(bbox)} partly outside image id {iid} ({W}x{H})"
            if self.strict:
                self.p.error(f"{where}; not clipped because of --strict")
                return None
            self.p.warn(f"{where}; clipped to {_fmt_box(clipped)}")
        return clipped

    def totals(self) -> list[str]:
        """The counts worth a warning: clipped boxes, skipped crowd annotations."""
        out = []
        if self.clipped > 1:
            out.append(f"clipped {self.clipped} boxes partly outside their image (--strict makes this an error)")
        if self.crowd:
            out.append(f"skipped {self.crowd} crowd annotation(s) (iscrowd=1)")
        return out


def check_image_files(images: dict[int, dict], image_ids: list[int], images_dir: Path, p: Problems) -> None:
    """One problem per image of ``image_ids`` (those that will be read) whose file does not exist;
    a single line when none exists at all, which almost always means a wrong images folder rather
    than missing files."""
    needed = [(iid, images[iid]["file_name"]) for iid in image_ids]
    missing = [(iid, f) for iid, f in needed if not (images_dir / f).is_file()]
    if len(missing) > 1 and len(missing) == len(needed):
        p.error(f"none of the {len(needed)} annotated image files exists under {images_dir} "
                f"(e.g. {missing[0][1]}): is the images folder right?")
        return
    for iid, f in missing:
        p.error(f"image id {iid} ({f}): "
                + ("not a regular file (a directory?)" if (images_dir / f).exists() else "file not found")
                + f": {images_dir / f}")
