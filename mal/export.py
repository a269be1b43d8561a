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

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .atomic import write_json_atomic
from .coco_masks import EvalError, index_by_id, load_coco, to_rle
from .errors import MalError

__all__ = ["FORMATS", "PNG_MODES", "ExportError", "ExportResult", "RoundTrip", "brush_rle", "export",
           "mask_to_polygons", "mask_to_yolo", "yolo_to_mask"]

log = logging.getLogger("mal")
FORMATS = ("coco-polygons", "yolo", "png", "label-studio")
PNG_MODES = ("instances", "labelmap", "both")
# On 3,591 SAM masks the worst YOLO round trip is 0.96 and COCO is exact (BENCHMARKS.md): a mask under 0.9
# is mostly specks joined by cuts, a change as large as the gap between two labelers, so worth a look.
WARN_IOU = 0.9
BRUSH_SIZES = (3, 4, 8, 16)  # widths (bits) of rle-pack's run-length field, as Label Studio writes them


class ExportError(MalError):
    """The input cannot be exported (not a labeled COCO file, bad sizes, bad output folder)."""


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


# --------------------------------------------------------------------------- geometry


def _rings(mask: np.ndarray, scale: int) -> list[list[np.ndarray]]:
    """HxW bool mask -> per outer contour ``[outer Nx2, hole Mx2, ...]`` (float x, y in COCO's frame):
    through pixel centres (scale 1) or 1/4 px inside the pixel boundary (scale 2)."""
    x0, y0, w, h = cv2.boundingRect(mask.astype(np.uint8))
    crop = np.repeat(np.repeat(mask[y0:y0 + h, x0:x0 + w].astype(np.uint8), scale, 0), scale, 1)
    contours, hier = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE,
                                      offset=(scale * x0, scale * y0))
    pts = [(c[:, 0, :] + 0.5) / scale for c in contours]
    parent = hier[0][:, 3] if contours else np.zeros(0)
    return [[pts[i]] + [pts[j] for j in np.flatnonzero(parent == i)] for i in np.flatnonzero(parent == -1)]


def _join(rings: list[np.ndarray]) -> np.ndarray:
    """Rings (each Nx2) -> one polygon (Kx2) walking all of them, joined by zero-width cuts along a minimum
    spanning tree of nearest points (Prim's algorithm over all points: each point's distance to the tree)."""
    if len(rings) == 1:
        return rings[0]
    pts, starts = np.concatenate(rings).astype(np.float32), np.cumsum([0] + [len(r) for r in rings])
    owner, cols = np.repeat(np.arange(len(rings)), np.diff(starts)), np.arange(len(pts))
    dist, near = np.full(len(pts), np.inf, np.float32), np.zeros(len(pts), int)  # d² to the tree, from where
    intree, j = np.zeros(len(rings), bool), 0
    kids: list[dict] = [{} for _ in rings]  # ring -> {its vertex: [(child ring, child's vertex), ...]}
    while True:
        intree[j] = True
        if intree.all():
            break
        step = max(1, 2 ** 22 // len(pts))  # blocks of ~4M distances
        for s in range(starts[j], starts[j + 1], step):
            a = pts[s:min(s + step, starts[j + 1])]
            d = (a[:, :1] - pts[:, 0]) ** 2 + (a[:, 1:] - pts[:, 1]) ** 2
            k = d.argmin(0)
            dk = d[k, cols]
            closer = dk < dist
            dist[closer], near[closer] = dk[closer], s + k[closer]
        dist[intree[owner]] = np.inf
        p = int(dist.argmin())
        j, i = owner[p], owner[near[p]]
        kids[i].setdefault(int(near[p] - starts[i]), []).append((j, int(p - starts[j])))
    out, stack = [], [iter(_tour_plan(rings, kids, 0, 0))]
    while stack:  # depth-first, without recursion: a mask can have hundreds of specks
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, tuple):
            stack.append(iter(_tour_plan(rings, kids, *item)))
        else:
            out.append(item)
    return np.concatenate(out)


def _tour_plan(rings, kids, i: int, start: int) -> list:
    """Ring i from vertex ``start`` round to it again, as point arrays, with a (child, its vertex) wherever a
    child's tour goes in; the vertex repeats after the child: the cut back along the same segment."""
    ring, n = rings[i], len(rings[i])
    order = (start + np.arange(n + 1)) % n
    plan, last = [], 0
    for v in sorted(kids[i], key=lambda v: (v - start) % n):
        p = (v - start) % n
        plan.append(ring[order[last:p + 1]])
        for child in kids[i][v]:
            plan += [child, ring[v:v + 1]]
        last = p + 1
    plan.append(ring[order[last:]])
    return plan


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """HxW bool mask -> COCO polygons ``[[x1, y1, x2, y2, ...], ...]``: one per part, its holes cut in."""
    return [_join(rs).ravel().tolist() for rs in _rings(mask, scale=2)]


def mask_to_yolo(mask: np.ndarray, max_points: int | None = None) -> np.ndarray:
    """HxW bool mask -> one polygon (Kx2, x / width and y / height, K >= 3; 0x2 if empty): all parts and holes.
    With ``max_points`` (e.g. 1000 for ultralytics training) a longer outline is simplified (Douglas-Peucker, tolerance from 0.5 px up, x1.5
    until it fits; past 4 px the smallest rings, specks and pinholes, go first): ultralytics would otherwise resample it to 1,000 points by vertex index, which
    skips whole stretches of a long outline (measured: 37 of 3,591 masks below IoU 0.9, the worst 0.12)."""
    rings = [r for rs in _rings(mask, scale=1) for r in rs]
    if not rings:
        return np.zeros((0, 2))
    xy, eps = _join(rings), 0.5
    while max_points and len(xy) > max_points:
        if eps > 4:  # still too long at 4 px: many specks and holes; drop the smallest tenth of the rings
            area = [abs(cv2.contourArea(r.astype(np.float32))) for r in rings]
            keep = sorted(np.argsort(area)[len(rings) // 10 or 1:])
            rings, eps = [rings[k] for k in keep], 0.5
        simple = [cv2.approxPolyDP(r.astype(np.float32).reshape(-1, 1, 2), eps, True)[:, 0, :] for r in rings]
        xy, eps = _join(simple), eps * 1.5
    return np.resize(xy, (max(len(xy), 3), 2)) / [mask.shape[1], mask.shape[0]]  # a 1-px mask: its point x3


def yolo_to_mask(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Normalised Kx2 polygon -> HxW bool mask by ultralytics' ``polygon2mask``: int32 vertices, fillPoly."""
    out = np.zeros((h, w), np.uint8)
    if len(xy):
        cv2.fillPoly(out, [np.asarray(xy * [w, h], dtype=np.int32)], 1)
    return out.astype(bool)


def brush_rle(mask: np.ndarray) -> list[int]:
    """HxW bool mask -> Label Studio brush RLE (bytes as ints): thi.ng rle-pack of the HxWx4 RGBA image with
    255 in every channel inside the mask, as ``label_studio_sdk.converter.brush.mask2rle`` writes it."""
    flat = mask.ravel()
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]) + 1, flat.size)
    runs, values = np.diff(ends, prepend=0) * 4, flat[ends - 1].astype(np.uint8) * 255
    pieces = -(-runs // 65536)  # a run longer than the widest field (16 bits) is split
    lengths = np.concatenate([[65536] * (p - 1) + [n - 65536 * (p - 1)] for n, p in zip(runs, pieces)])
    bits = [f"{flat.size * 4:032b}{8 - 1:05b}" + "".join(f"{s - 1:04b}" for s in BRUSH_SIZES)]
    for n, v in zip(lengths.tolist(), np.repeat(values, pieces).tolist()):
        k = next(k for k, s in enumerate(BRUSH_SIZES) if n <= 1 << s)
        bits.append(f"1{k:02b}{n - 1:0{BRUSH_SIZES[k]}b}{v:08b}")  # 1: a run of one value
    s = "".join(bits)
    return np.packbits(np.frombuffer((s + "0" * (-len(s) % 8)).encode(), np.uint8) - ord("0")).tolist()


# --------------------------------------------------------------------------- input


def _read(pred, stems: bool) -> tuple[dict, str, list]:
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


def _decode(a: dict, rle: dict, name: str) -> np.ndarray:
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:  # pycocotools raises assorted types on garbage counts
        raise ExportError(f"{name}: annotation {a['id']}: cannot decode its RLE: {e}") from e


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


# --------------------------------------------------------------------------- writers: add(image, anns, masks)


class _CocoPolygons:
    def __init__(self, root: Path, coco: dict, **_):
        self.path, self.coco, self.anns, self.ious = root / "coco_polygons.json", coco, {}, []

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        for a, m in zip(anns, masks):
            polys = mask_to_polygons(m)
            self.anns[a["id"]] = {**a, "segmentation": polys}
            back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, *m.shape))) if polys else 0
            self.ious.append((a["id"], _iou(m, np.asarray(back, bool))))  # pycocotools' own rasterisation

    def close(self) -> None:
        anns = [self.anns[a["id"]] for a in self.coco["annotations"]]  # in the input's order
        write_json_atomic({**self.coco, "annotations": anns}, self.path)


class _Yolo:
    def __init__(self, root: Path, coco: dict, final: Path, images: str | None, yolo_max_points=None, **_):
        self.root, self.final, self.images, self.ious = root / "yolo", final / "yolo", images, []
        self.max_points = yolo_max_points
        (self.root / "labels").mkdir(parents=True)
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        self.cls = {c["id"]: i for i, c in enumerate(cats)}  # COCO ids (with gaps) -> class indices 0..K-1
        self.names = [str(c.get("name", c["id"])) for c in cats]

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        lines = []
        for a, m in zip(anns, masks):
            if len(xy := mask_to_yolo(m, self.max_points)):
                lines.append(f"{self.cls[a['category_id']]} " + " ".join(f"{v:.6f}" for v in xy.ravel()))
                back = np.array(lines[-1].split()[1:], float).reshape(-1, 2)  # what a reader gets
                self.ious.append((a["id"], _iou(m, yolo_to_mask(back, *m.shape))))
        (self.root / "labels" / f"{Path(img['file_name']).stem}.txt").write_text("".join(f"{s}\n" for s in lines))

    def close(self) -> None:
        images = json.dumps(str(Path(self.images).resolve())) if self.images else \
            "images  # placeholder: put (or link) the images here, or export with --images DIR"
        text = ["# mal export. ultralytics finds an image's labels by replacing the last /images/ in its path",
                "# with /labels/: keep labels/ beside the images folder (a symlink will do).",
                f"path: {json.dumps(str(self.final))}", f"train: {images}", f"val: {images}", "names:"]
        text += [f"  {i}: {json.dumps(n, ensure_ascii=False)}" for i, n in enumerate(self.names)]
        (self.root / "data.yaml").write_text("\n".join(text) + "\n", encoding="utf-8")


def _png(a: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise ExportError(f"OpenCV cannot write a {a.dtype} PNG")
    return buf.tobytes()


class _Png:
    def __init__(self, root: Path, png: str, **_):
        self.root, self.index, self.overlap = root / "png", [], 0
        self.instances, self.labelmap = png in ("instances", "both"), png in ("labelmap", "both")
        (self.root / ("labelmaps" if self.labelmap else "")).mkdir(parents=True)

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        stem = Path(img["file_name"]).stem
        if self.instances:
            (self.root / "masks" / stem).mkdir(parents=True)
            for a, m in zip(anns, masks):
                (self.root / "masks" / stem / f"{a['id']}.png").write_bytes(_png(m.astype(np.uint8) * 255))
        if self.labelmap:
            self._add_labelmap(img, stem, anns, masks)

    def _add_labelmap(self, img: dict, stem: str, anns: list[dict], masks: list[np.ndarray]) -> None:
        """HxW uint16: value k = anns[k - 1]. Larger masks are painted first, so where masks overlap the
        smaller one (usually the object in front, e.g. a cup held by a person) stays whole."""
        if len(anns) > 65535:
            raise ExportError(f"image {img['file_name']}: {len(anns)} instances do not fit a 16-bit label map")
        lm, areas = np.zeros((img["height"], img["width"]), np.uint16), [int(m.sum()) for m in masks]
        for k in sorted(range(len(anns)), key=lambda k: -areas[k]):
            lm[masks[k]] = k + 1
        overlap = sum(areas) - int(np.count_nonzero(lm))
        self.overlap += overlap
        (self.root / "labelmaps" / f"{stem}.png").write_bytes(_png(lm))
        labels = {str(k + 1): {"id": a["id"], "category_id": a["category_id"], "score": a.get("score")}
                  for k, a in enumerate(anns)}
        self.index.append({"image_id": img["id"], "file_name": img["file_name"], "labelmap": f"{stem}.png",
                           "overlap_pixels": overlap, "labels": labels})

    def close(self) -> None:
        if self.labelmap:
            write_json_atomic({"overlaps": "the smaller instance (fewer pixels) wins", "images": self.index},
                              self.root / "labelmaps" / "index.json")


class _LabelStudio:
    def __init__(self, root: Path, coco: dict, images: str | None, **_):
        self.root, self.tasks = root / "label_studio", []
        self.prefix = (images or "/data/local-files/?d=images").rstrip("/")
        self.names = {c["id"]: str(c.get("name", c["id"])) for c in coco["categories"]}
        self.root.mkdir()

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        result = [{"id": f"ann{a['id']}", "type": "brushlabels", "from_name": "label", "to_name": "image",
                   "original_width": img["width"], "original_height": img["height"], "image_rotation": 0,
                   "value": {"format": "rle", "rle": brush_rle(m), "brushlabels": [self.names[a["category_id"]]]},
                   **({"score": a["score"]} if "score" in a else {})} for a, m in zip(anns, masks) if m.any()]
        scores = [a["score"] for a in anns if isinstance(a.get("score"), (int, float))]
        pred = {"model_version": "mal", "result": result, **({"score": float(np.mean(scores))} if scores else {})}
        self.tasks.append({"data": {"image": f"{self.prefix}/{img['file_name']}", "coco_image_id": img["id"]},
                           "predictions": [pred]})

    def close(self) -> None:
        write_json_atomic(self.tasks, self.root / "tasks.json")
        labels = "".join(f"    <Label value={quoteattr(n)}/>\n" for _, n in sorted(self.names.items()))
        (self.root / "label_config.xml").write_text(
            f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="label" toName="image">\n{labels}  </BrushLabels>\n</View>\n', encoding="utf-8")


WRITERS = {"coco-polygons": _CocoPolygons, "yolo": _Yolo, "png": _Png, "label-studio": _LabelStudio}


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
    coco, name, groups = _read(pred, stems=bool({"yolo", "png"} & set(formats)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
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
