"""Export a labeled COCO file (``mal label`` output: RLE masks) to the formats people train on or review in.

Formats, each in its own file or folder under ``out``:

- ``coco-polygons`` -> ``coco_polygons.json``: the same COCO file with polygon segmentations.
- ``yolo`` -> ``yolo/labels/<image stem>.txt`` (``class x1 y1 x2 y2 ...``, normalised) + ``yolo/data.yaml``.
- ``png`` -> ``png/masks/<image stem>/<annotation id>.png`` (0/255) and/or ``png/labelmaps/<image stem>.png``
  (16-bit, pixel = 1-based instance index in its image, 0 = background) + ``png/labelmaps/index.json``.
- ``label-studio`` -> ``label_studio/tasks.json`` + ``label_config.xml``: one task per image, its masks as
  ``brushlabels`` RLE *predictions*. Chosen over CVAT XML because predictions are Label Studio's documented
  pre-annotation import, brush RLE is lossless, and Label Studio's reader (``label-studio-sdk``) installs
  without touching our pins, where CVAT's (datumaro) pulls openvino and a second OpenCV.

PNG and Label Studio are lossless. Polygons are traced by OpenCV (``findContours``, ``RETR_CCOMP``: outer
contours and their holes; islands in holes are outer contours again), with no simplification beyond
``CHAIN_APPROX_SIMPLE`` (which drops only points on straight runs), in COCO's continuous frame where pixel
(x, y) covers [x, x+1) x [y, y+1):

- COCO: traced on the mask upsampled 2x, which puts each ring on the pixel boundary pulled 1/4 px in;
  pycocotools then reproduces every mask exactly. Rings through pixel centres (findContours on the mask
  itself) lose 8-10% IoU through pycocotools (measured: BENCHMARKS.md, "Export round trip").
- YOLO: through pixel centres. ultralytics truncates coordinates to int before ``cv2.fillPoly``, which maps
  centres back onto their pixels: as exact as the 2x rings, with half the points (measured).

A hole cannot be a separate COCO polygon (pycocotools unions an object's polygons), so each outer contour
and its holes become one polygon joined by zero-width cuts ("bridges") along a minimum spanning tree of
nearest points; both rasterisers fill even-odd, so a cut's two coincident edges cancel. YOLO has one
polygon per instance, so all of its parts and holes are joined alike (as ultralytics' own
``merge_multi_segment`` does for COCO -> YOLO); ``cv2.fillPoly`` draws each cut as a 1-px line: the only loss.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ..atomic import default_mode
from .geometry import brush_rle, mask_to_polygons, mask_to_yolo, yolo_to_mask  # noqa: F401  (public API)
from .labeled import read_labeled
from .reimport import IMPORT_FORMATS, ImportResult, import_masks  # noqa: F401  (mal import: the way back)
from .writers import WRITERS, ExportError

__all__ = ["FORMATS", "IMPORT_FORMATS", "PNG_MODES", "ExportError", "ExportResult", "ImportResult", "RoundTrip",
           "brush_rle", "export", "import_masks", "mask_to_polygons", "mask_to_yolo", "yolo_to_mask"]

log = logging.getLogger("mal")
FORMATS = ("coco-polygons", "yolo", "png", "label-studio")
PNG_MODES = ("instances", "labelmap", "both")
# On 3,591 SAM masks the worst YOLO round trip is 0.96 and COCO is exact (BENCHMARKS.md): a mask under 0.9
# is mostly specks joined by cuts, a change as large as the gap between two labelers, so worth a look.
WARN_IOU = 0.9
BRUSH_SIZES = (3, 4, 8, 16)  # widths (bits) of rle-pack's run-length field, as Label Studio writes them
@dataclass
class RoundTrip:
    """IoU of each mask with its export re-rasterised by that format's own reader."""
    mean: float
    worst: float
    worst_id: object  # annotation id of the worst
    below: int  # masks under warn_iou
    warn_iou: float


@dataclass
class ExportResult:
    out: Path
    formats: tuple[str, ...]
    images: int
    annotations: int
    empty: int  # masks without a pixel: [] in COCO, no line in YOLO, no region in Label Studio
    round_trip: dict[str, RoundTrip] = field(default_factory=dict)  # the lossy formats
    overlap_pixels: int | None = None  # label maps: instance pixels overwritten by a smaller instance
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [(f"exported {self.annotations} masks ({self.empty} empty) on {self.images} images as "
                  f"{', '.join(self.formats)} to {self.out} in {self.seconds:.1f} s")]
        for f, r in self.round_trip.items():
            worst = "every mask exact" if r.worst == 1 else f"worst {r.worst:.4f} (annotation {r.worst_id})"
            lines.append(f"  {f} round trip: IoU mean {r.mean:.4f}, {worst}, {r.below} below {r.warn_iou:g}")
        if self.overlap_pixels is not None:
            lines.append(f"  label maps: {self.overlap_pixels} overlapping pixels went to the smaller instance")
        return "\n".join(lines)


# --------------------------------------------------------------------------- input


def _decode(a: dict, rle: dict, name: str) -> np.ndarray:
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises assorted types on garbage counts
        raise ExportError(f"{name}: annotation {a['id']}: cannot decode its RLE: {e}") from e


# --------------------------------------------------------------------------- export


def _formats(formats) -> tuple[str, ...]:
    """``"yolo,png"`` or ``["yolo", "png,coco-polygons"]`` -> known names, each once, in order."""
    names = [f.strip() for x in ([formats] if isinstance(formats, str) else formats) for f in x.split(",")]
    for f in names or [""]:
        if f not in FORMATS:
            raise ExportError(f"unknown export format {f!r}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def _check_out(out: Path, overwrite: bool, inputs: list) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
        for p in filter(None, inputs):
            if out in [Path(p).resolve(), *Path(p).resolve().parents]:
                raise ExportError(f"refusing to replace {out}: it holds the input {p}")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old ``out`` is moved aside first and deleted last."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) if out.exists() else None
    if old is not None:
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def export(pred, out, formats=("coco-polygons",), images: str | None = None, png: str = "both",
           warn_iou: float = WARN_IOU, overwrite: bool = False, yolo_max_points: int | None = None) -> ExportResult:
    """Export the labeled COCO file ``pred`` (path or dict) as ``formats`` (FORMATS) into the folder ``out``.

    ``images``: the images folder written into ``yolo/data.yaml`` and the URL prefix of Label Studio's task
    images. ``png``: one of PNG_MODES. ``yolo_max_points``: simplify longer YOLO outlines to this many points
    (see :func:`mask_to_yolo`; 1000 for ultralytics training). Each mask of a lossy format is re-read by that format's rules and
    compared with the input; masks under ``warn_iou`` are logged. ``out`` appears complete or not at all
    (written beside it, renamed into place); a non-empty ``out`` is replaced only with ``overwrite``.
    """
    t0, formats = time.time(), _formats(formats)
    if png not in PNG_MODES:
        raise ExportError(f"unknown --png mode {png!r}; choose from {', '.join(PNG_MODES)}")
    out = Path(out).resolve()
    _check_out(out, overwrite, [None if isinstance(pred, dict) else pred, images])
    coco, name, groups = read_labeled(pred, stems=bool({"yolo", "png"} & set(formats)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(default_mode(directory=True))  # mkdtemp's is private (0700)
    try:
        writers = {f: WRITERS[f](root=tmp, coco=coco, final=out, images=images, png=png,
                                  yolo_max_points=yolo_max_points) for f in formats}
        empty = 0
        for img, pairs in groups:  # one image's masks in memory at a time
            anns, masks = [a for a, _ in pairs], [_decode(a, rle, name) for a, rle in pairs]
            empty += sum(not m.any() for m in masks)
            for w in writers.values():
                w.add(img, anns, masks)
        for w in writers.values():
            w.close()
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = ExportResult(out, formats, len(groups), sum(len(p) for _, p in groups), empty)
    result.round_trip = {f: _round_trip(f, w.ious, warn_iou) for f, w in writers.items() if getattr(w, "ious", 0)}
    if "png" in writers and writers["png"].labelmap:
        result.overlap_pixels = writers["png"].overlap
    result.seconds = time.time() - t0
    return result


def _round_trip(fmt: str, ious: list[tuple], warn_iou: float) -> RoundTrip:
    """(annotation id, IoU) pairs -> their summary; warns about those under ``warn_iou``, naming them."""
    v = np.array([i for _, i in ious])
    low = [aid for aid, i in ious if i < warn_iou]
    if low:
        log.warning("%s: %d of %d masks round-trip below IoU %g: annotation ids %s%s", fmt, len(low), len(v),
                    warn_iou, ", ".join(map(str, low[:10])), ", ..." if len(low) > 10 else "")
    k = int(v.argmin())
    return RoundTrip(float(v.mean()), float(v[k]), ious[k][0], len(low), warn_iou)
