"""COCO masks: binary mask <-> RLE, and the COCO files whose masks are compared: loading, segmentation
-> RLE, mask IoU, the "same boxes" check.

Shared by :mod:`mal.evaluate` (prediction vs ground truth), :mod:`mal.show` (prediction files side by
side) and :mod:`mal.segment.data` (auto-labels vs human masks for phase 2), so that "the same boxes"
and "the IoU of two masks" mean one thing everywhere.

Masks are pycocotools compressed RLEs (``{"size": [h, w], "counts": bytes}``): intersection and union
on run-lengths are exactly the pixel counts of the decoded masks, with no full-image arrays.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .errors import MalError

__all__ = ["BBOX_TOL", "EvalError", "check_same_boxes", "decode_rle", "encode_rle", "index_by_id", "load_coco",
           "mask_area", "mask_iou", "to_rle"]

BBOX_TOL = 1e-3  # px; boxes are copied through unchanged, so anything larger is a different box


def encode_rle(mask: np.ndarray) -> dict:
    """HxW bool/uint8 mask -> compressed COCO RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    r = dict(rle)
    if isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return mask_utils.decode(r).astype(bool)


class EvalError(MalError):
    """The inputs cannot be compared (unreadable file or mismatched boxes)."""


# --------------------------------------------------------------------------- loading


def load_coco(src: str | os.PathLike | dict, role: str) -> tuple[dict, str]:
    """(dataset dict, name for messages) of a COCO JSON path or an already-loaded dict ("<role dict>");
    EvalError naming the file if it is unreadable or has no ``images`` / ``annotations`` list."""
    if isinstance(src, dict):
        data, name = src, f"<{role} dict>"
    else:
        name = os.fspath(src)
        try:
            with open(name, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EvalError(f"cannot read {role} file {name}: {e}") from e
    if not isinstance(data, dict):
        raise EvalError(f"{role} file {name} is not a COCO JSON object")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise EvalError(f"{role} file {name} has no '{key}' list")
    return data, name


def index_by_id(items: list, what: str, name: str) -> dict:
    """id -> item, refusing entries without an id and duplicates (they would make matching ambiguous)."""
    out: dict = {}
    for it in items:
        if not isinstance(it, dict) or "id" not in it:
            raise EvalError(f"{name}: a {what} entry has no 'id'")
        if it["id"] in out:
            raise EvalError(f"{name}: duplicate {what} id {it['id']}")
        out[it["id"]] = it
    return out


# --------------------------------------------------------------------------- masks


def to_rle(seg: Any, h: int, w: int, aid: Any, name: str) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> one compressed RLE at (h, w).
    EvalError naming annotation ``aid`` of file ``name`` if it is missing, of another size or garbage."""
    if seg is None:
        raise EvalError(f"annotation {aid} in {name} has no 'segmentation'")
    try:
        if isinstance(seg, list):  # polygons
            # frPyObjects treats a 4-number list as a bbox, and <3 points is no area anyway.
            polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6]
            if not polys:
                return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
            return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        if isinstance(seg, dict) and "counts" in seg:
            size = [int(s) for s in seg.get("size", ())]
            if size != [h, w]:
                raise EvalError(f"annotation {aid} in {name}: RLE size {size} != image size [{h}, {w}]")
            if isinstance(seg["counts"], list):  # uncompressed RLE
                return mask_utils.frPyObjects(seg, h, w)
            counts = seg["counts"]
            return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    except EvalError:
        raise
    except Exception as e:  # pycocotools raises assorted types on garbage input
        raise EvalError(f"annotation {aid} in {name}: cannot decode segmentation: {e}") from e
    raise EvalError(f"annotation {aid} in {name}: unsupported segmentation type {type(seg).__name__}")


def mask_area(rle: dict) -> int:
    """Foreground pixels of an RLE mask."""
    return int(mask_utils.area(rle))


def mask_iou(a: dict, b: dict, a_area: int | None = None, b_area: int | None = None) -> float:
    """|A∩B| / |A∪B| of two RLE masks of one image (areas passed when already known); two empty
    masks agree perfectly (1.0), one empty mask not at all (0.0)."""
    a_area = mask_area(a) if a_area is None else a_area
    b_area = mask_area(b) if b_area is None else b_area
    if a_area == 0 and b_area == 0:
        return 1.0
    if a_area == 0 or b_area == 0:
        return 0.0
    return float(mask_utils.iou([a], [b], [0])[0, 0])


# --------------------------------------------------------------------------- same boxes


def check_same_boxes(ref: dict, other: dict, image_ids: Collection | None = None, other_name: str = "predictions",
                     *, ref_name: str = "the reference", fields: tuple[str, ...] = ("image_id", "bbox"),
                     image_fields: tuple[str, ...] = ("width", "height"), skip_crowd: bool = False,
                     subset: str = "", hint: str = "") -> None:
    """Raise EvalError unless COCO dicts ``ref`` and ``other`` describe exactly the same boxes.

    The same annotation ids, each with equal ``fields`` (``bbox`` within ``BBOX_TOL`` px), and images
    with equal ``image_fields``. ``image_ids``: compare only the annotations on these images, each of
    which must then be in ``other`` too (default: every annotation; images compared where both files
    list them). ``skip_crowd``: leave crowd regions (``iscrowd``) out on both sides. One message gives
    every kind of difference with its count and first examples; ``subset`` names the images compared
    ("training": "on the training images"), ``hint`` ends it (what to do about it).
    """
    def anns(c: dict) -> dict:
        return {a["id"]: a for a in c.get("annotations", [])
                if (image_ids is None or a.get("image_id") in image_ids) and not (skip_crowd and a.get("iscrowd"))}

    r_img = {im.get("id"): im for im in ref.get("images", [])}
    o_img = {im.get("id"): im for im in other.get("images", [])}
    bad_img = _sorted(i for i, im in r_img.items() if (
        (image_ids is not None and i in image_ids and i not in o_img)
        or (i in o_img and (image_ids is None or i in image_ids)
            and any(im.get(k) != o_img[i].get(k) for k in image_fields))))
    r, o = anns(ref), anns(other)
    missing, extra = _sorted(set(r) - set(o)), _sorted(set(o) - set(r))
    changed = []  # (annotation id, its first differing field)
    for aid in _sorted(set(r) & set(o)):
        k = next((k for k in fields if not _same(k, r[aid].get(k), o[aid].get(k))), None)
        if k is not None:
            changed.append((aid, k))
    if not (bad_img or missing or extra or changed):
        return

    parts = []
    if bad_img:
        i = bad_img[0]
        parts.append(f"{len(bad_img)} {subset + ' ' if subset else ''}images are missing or differ "
                     f"({'/'.join(image_fields)}) (e.g. image ids {bad_img[:5]}; "
                     f"{_image_detail(i, r_img[i], o_img.get(i), image_fields, ref_name, other_name)})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if extra:
        parts.append(f"{len(extra)} extra (e.g. {extra[:5]})")
    if changed:
        aid, k = changed[0]
        kinds = "/".join(_FIELD_WORDS.get(f, f) for f in sorted(fields, key=_field_rank))
        tol = f" (tolerance {BBOX_TOL} px)" if k == "bbox" else ""
        parts.append(f"{len(changed)} with a different {kinds} (e.g. {[a for a, _ in changed[:5]]}; annotation "
                     f"{aid}: {k} {r[aid].get(k)} in {ref_name} but {o[aid].get(k)} in {other_name}{tol})")
    on = f" on the {subset} images" if subset else ""
    raise EvalError(f"{other_name} does not have the same boxes as {ref_name}{on}: " + ", ".join(parts)
                    + (f"; {hint}" if hint else ""))


_FIELD_WORDS = {"bbox": "box", "category_id": "category", "image_id": "image"}  # "1 with a different box/image"


def _field_rank(field: str) -> int:
    return list(_FIELD_WORDS).index(field) if field in _FIELD_WORDS else len(_FIELD_WORDS)


def _sorted(ids) -> list:
    try:
        return sorted(ids)
    except TypeError:  # ids of mixed types
        return sorted(ids, key=str)


def _same(field: str, a, b) -> bool:
    """Equal, boxes within BBOX_TOL px (two missing boxes are the same; one missing is not)."""
    if field != "bbox" or a is None or b is None:
        return a == b
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= BBOX_TOL for x, y in zip(a, b))


def _image_detail(iid, r: dict, o: dict | None, image_fields, ref_name: str, other_name: str) -> str:
    """What differs about image ``iid`` (``r`` in ref, ``o`` in other): "image 2 has size 50x40 in A but 64x40 in B"."""
    if o is None:
        return f"image {iid} is not in {other_name}"
    keys = [k for k in image_fields if r.get(k) != o.get(k)]

    def desc(im: dict, named: bool) -> str:
        size = [f"{'size ' * named}{im.get('width')}x{im.get('height')}"] if {"width", "height"} & set(keys) else []
        return " and ".join([f"{f'{k} ' * named}{im.get(k)!r}" for k in keys if k not in ("width", "height")] + size)
    return f"image {iid} has {desc(r, True)} in {ref_name} but {desc(o, False)} in {other_name}"
