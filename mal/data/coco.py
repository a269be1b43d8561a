"""Read and validate a COCO instances file for box-only use (train / label).

Only ``images``, ``annotations`` (id, image_id, category_id, bbox, iscrowd)
and ``categories`` are used; ``segmentation`` is never read, because the whole
point of the labeler is to produce masks from boxes alone.

All problems are collected first and reported in a single :class:`CocoError`,
so a user fixing a broken export sees everything at once instead of one error
per run, and nothing expensive (model loading, training) starts on bad data.

Errors (always): unreadable/empty/malformed JSON, missing or ill-typed keys,
duplicate image/annotation/category ids, unknown image_id/category_id, a bbox
that is not 4 finite numbers, has zero/negative size, lies entirely outside
its image or is under 1 px once clipped, image entries without a positive
width/height, and image files that do not exist.
Warnings (errors with ``strict=True``, CLI ``--strict``): boxes partly outside
their image, which are clipped to it. Crowd annotations skipped for training
are a documented COCO feature, not a defect, and stay a note even when strict.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CocoError", "BoxRecord", "BoxDataset", "load_coco_json", "load_boxes"]

logger = logging.getLogger("mal")

_MAX_PROBLEM_LINES = 20
_MAX_LOGGED_WARNINGS = 20
# Exported boxes often exceed the image by float noise (x + w = 640.0000001);
# such boxes are still clipped but not worth a warning.
_CLIP_WARN_EPS = 1e-3
_TOP_LEVEL_LISTS = ("images", "annotations", "categories")


class CocoError(ValueError):
    """The COCO file is unusable; the message lists every problem found."""


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


@dataclass
class BoxDataset:
    """Validated box annotations plus the original JSON (to write outputs alike)."""

    coco: dict
    records: list[BoxRecord]
    images_dir: Path
    warnings: list[str] = field(default_factory=list)
    # --strict: image-level fallbacks (see mal.data.dataset.read_image_item) become errors too.
    strict: bool = False

    def by_image(self) -> list[tuple[dict, list[BoxRecord]]]:
        """``(image entry, its records)`` for every image with >= 1 record, in file order."""
        groups: dict[int, list[BoxRecord]] = {}
        for rec in self.records:
            groups.setdefault(rec.image_id, []).append(rec)
        return [(img, groups[img["id"]]) for img in self.coco["images"] if img["id"] in groups]

    def image_path(self, file_name: str) -> Path:
        """Absolute-or-relative path of an image file under ``images_dir``."""
        return self.images_dir / file_name


# ---------------------------------------------------------------------------
# helpers


def _is_int(v: Any) -> bool:
    # bool is a subclass of int in Python, but `"id": true` is a broken export.
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _positive_size(v: Any) -> int | None:
    """Width/height as a positive int; integral floats (640.0) are tolerated."""
    if _is_int(v) and v > 0:
        return int(v)
    if _is_number(v) and math.isfinite(v) and v > 0 and float(v).is_integer():
        return int(v)
    return None


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


def load_coco_json(path: str | os.PathLike) -> dict:
    """Load a COCO JSON file, checking it has ``images``/``annotations``/``categories`` lists."""
    path = Path(path)
    label = str(path)
    try:
        # utf-8-sig: Windows tools often write a byte-order mark, which json.loads rejects.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CocoError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise CocoError(f"{label}: is a directory, not a COCO JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoError(f"{label}: cannot read file: {exc}") from exc
    if not text.strip():
        raise CocoError(f"{label}: file is empty")
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoError(
            f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    _check_top_level(coco, label)
    return coco


def _ann_name(ann: Any, index: int) -> str:
    if isinstance(ann, dict) and _is_int(ann.get("id")):
        return f"annotation id {ann['id']}"
    return f"annotation #{index} (no valid id)"


def _fmt_box(b: tuple[float, ...] | list) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in b) + "]"


def _missing_files(images: dict[int, dict], per_image: dict, images_dir: Path) -> list[str]:
    """One problem per annotated image whose file does not exist; a single line when none exists
    at all, which almost always means a wrong images folder rather than missing files."""
    needed = [(iid, img["file_name"]) for iid, img in images.items() if iid in per_image]
    missing = [(iid, f) for iid, f in needed if not (images_dir / f).is_file()]
    if len(missing) > 1 and len(missing) == len(needed):
        return [f"none of the {len(needed)} annotated image files exists under {images_dir} "
                f"(e.g. {missing[0][1]}): is the images folder right?"]
    return [f"image id {iid} ({f}): "
            + ("not a regular file (a directory?)" if (images_dir / f).exists() else "file not found")
            + f": {images_dir / f}" for iid, f in missing]


# ---------------------------------------------------------------------------
# main entry point


def load_boxes(
    annotations: str | os.PathLike | dict,
    images_dir: str | os.PathLike,
    *,
    check_files: bool = True,
    skip_crowd: bool = True,
    strict: bool = False,
) -> BoxDataset:
    """Validate a COCO instances file and return its usable boxes.

    ``annotations`` is a path or an already-loaded dict. Boxes partly outside
    their image are clipped (with a warning, or an error if ``strict``); every
    real problem is collected and raised together as one :class:`CocoError`.
    """
    if isinstance(annotations, dict):
        label = "<dict>"
        coco = annotations
        _check_top_level(coco, label)
    else:
        label = str(Path(annotations))
        coco = load_coco_json(annotations)
    images_dir = Path(images_dir)

    problems: list[str] = []
    warns: list[str] = []

    # --- categories -------------------------------------------------------
    cat_ids: set[int] = set()
    for i, cat in enumerate(coco["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid):
            problems.append(f"category #{i}: missing or non-integer id")
        elif cid in cat_ids:
            problems.append(f"category id {cid}: duplicate category id")
        else:
            cat_ids.add(int(cid))

    # --- images -----------------------------------------------------------
    images: dict[int, dict] = {}  # valid entries only
    seen_image_ids: set[int] = set()  # incl. invalid ones, so their anns are not "unknown"
    for i, img in enumerate(coco["images"]):
        if not isinstance(img, dict):
            problems.append(f"image #{i}: entry is not an object")
            continue
        iid = img.get("id")
        if not _is_int(iid):
            problems.append(f"image #{i} ({img.get('file_name', '?')}): missing or non-integer id")
            continue
        fname = img.get("file_name")
        name = f"image id {iid} ({fname})" if isinstance(fname, str) and fname else f"image id {iid}"
        if iid in seen_image_ids:
            problems.append(f"{name}: duplicate image id")
            continue
        seen_image_ids.add(iid)
        ok = True
        if not isinstance(fname, str) or not fname:
            problems.append(f"{name}: missing or empty file_name")
            ok = False
        for key in ("width", "height"):
            if key not in img:
                problems.append(f"{name}: missing {key}")
                ok = False
            elif _positive_size(img[key]) is None:
                problems.append(f"{name}: {key} must be a positive integer, got {img[key]!r}")
                ok = False
        if ok:
            images[int(iid)] = img

    # --- annotations ------------------------------------------------------
    ann_ids: set[int] = set()
    per_image: dict[int, list[BoxRecord]] = {}
    n_crowd = n_clipped = 0
    for i, ann in enumerate(coco["annotations"]):
        name = _ann_name(ann, i)
        if not isinstance(ann, dict):
            problems.append(f"{name}: entry is not an object")
            continue
        aid = ann.get("id")
        if not _is_int(aid):
            problems.append(f"{name}: missing or non-integer id")
        elif aid in ann_ids:
            problems.append(f"{name}: duplicate annotation id")
        else:
            ann_ids.add(int(aid))

        iid, cid = ann.get("image_id"), ann.get("category_id")
        if not _is_int(iid):
            problems.append(f"{name}: missing or non-integer image_id")
            iid = None
        elif iid not in seen_image_ids:
            problems.append(f"{name}: unknown image_id {iid}")
            iid = None
        if not _is_int(cid):
            problems.append(f"{name}: missing or non-integer category_id")
        elif cid not in cat_ids:
            problems.append(f"{name}: unknown category_id {cid}")

        if ann.get("iscrowd", 0) not in (0, 1):  # bools compare equal to 0/1: tolerated
            problems.append(f"{name}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
            continue
        if skip_crowd and ann.get("iscrowd", 0) == 1:
            # Crowd regions box many objects at once; not a per-instance target.
            n_crowd += 1
            continue

        bbox = ann.get("bbox")
        if bbox is None:
            problems.append(f"{name}: missing bbox")
            continue
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            problems.append(f"{name}: bbox must be a list of 4 numbers, got {bbox!r}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            problems.append(f"{name}: bbox contains NaN or inf: {bbox!r}")
            continue
        if w <= 0 or h <= 0:
            problems.append(f"{name}: bbox has zero or negative size (w={w:g}, h={h:g})")
            continue
        img = images.get(iid) if iid is not None else None
        if img is None:
            continue  # image unknown or itself invalid: already reported
        W, H = _positive_size(img["width"]), _positive_size(img["height"])
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
        if x1 <= x0 or y1 <= y0:
            problems.append(
                f"{name}: bbox {_fmt_box(bbox)} is entirely outside image id {iid} ({W}x{H})"
            )
            continue
        cw, ch = x1 - x0, y1 - y0
        if cw < 1 or ch < 1:
            problems.append(
                f"{name}: bbox {_fmt_box(bbox)} is smaller than 1 px after clipping to "
                f"image id {iid} ({W}x{H}): w={cw:g}, h={ch:g}"
            )
            continue
        clipped = (x0, y0, cw, ch)
        if max(abs(a - b) for a, b in zip(clipped, (x, y, w, h))) > _CLIP_WARN_EPS:
            n_clipped += 1
            where = f"{name}: bbox {_fmt_box(bbox)} partly outside image id {iid} ({W}x{H})"
            if strict:
                problems.append(f"{where}; not clipped because of --strict")
                continue
            warns.append(f"{where}; clipped to {_fmt_box(clipped)}")
        if _is_int(aid) and _is_int(cid):
            per_image.setdefault(int(iid), []).append(
                BoxRecord(int(aid), int(iid), int(cid), clipped, img["file_name"], W, H)
            )

    # --- image files (only those that will actually be read) ------------
    if check_files:
        problems += _missing_files(images, per_image, images_dir)

    if problems:
        lines = [f"  - {p}" for p in problems[:_MAX_PROBLEM_LINES]]
        if len(problems) > _MAX_PROBLEM_LINES:
            lines.append(f"  ... and {len(problems) - _MAX_PROBLEM_LINES} more")
        raise CocoError(f"{label}: {len(problems)} problem(s) in the COCO file:\n" + "\n".join(lines))

    for msg in warns[:_MAX_LOGGED_WARNINGS]:
        logger.warning("%s: %s", label, msg)
    if len(warns) > _MAX_LOGGED_WARNINGS:
        logger.warning("%s: ... and %d more warning(s)", label, len(warns) - _MAX_LOGGED_WARNINGS)
    # Totals are logged even when the details above were cut short.
    totals = []
    if n_clipped > 1:
        totals.append(f"clipped {n_clipped} boxes partly outside their image (--strict makes this an error)")
    if n_crowd:
        totals.append(f"skipped {n_crowd} crowd annotation(s) (iscrowd=1)")
    for msg in totals:
        logger.warning("%s: %s", label, msg)

    # Records grouped by image in file order, then annotation order.
    records = [r for iid in images if iid in per_image for r in per_image[iid]]
    return BoxDataset(coco=coco, records=records, images_dir=images_dir, warnings=warns + totals,
                      strict=strict)
