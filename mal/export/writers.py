"""The writers of :func:`mal.export.export`, one per format: ``add(image, anns, masks)`` per image, then
``close()``. Each lossy one records ``(annotation id, round-trip IoU)`` in ``ious``."""
from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..atomic import write_json_atomic
from ..errors import MalError
from .geometry import brush_rle, mask_iou, mask_to_polygons, mask_to_yolo, yolo_to_mask


class ExportError(MalError):
    """The input cannot be exported (not a labeled COCO file, bad sizes, bad output folder)."""


class CocoPolygons:
    def __init__(self, root: Path, coco: dict, **_):
        self.path, self.coco, self.anns, self.ious = root / "coco_polygons.json", coco, {}, []

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        for a, m in zip(anns, masks):
            polys = mask_to_polygons(m)
            self.anns[a["id"]] = {**a, "segmentation": polys}
            back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, *m.shape))) if polys else 0
            self.ious.append((a["id"], mask_iou(m, np.asarray(back, bool))))  # pycocotools' own rasterisation

    def close(self) -> None:
        anns = [self.anns[a["id"]] for a in self.coco["annotations"]]  # in the input's order
        write_json_atomic({**self.coco, "annotations": anns}, self.path)


class Yolo:
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
                self.ious.append((a["id"], mask_iou(m, yolo_to_mask(back, *m.shape))))
        (self.root / "labels" / f"{Path(img['file_name']).stem}.txt").write_text("".join(f"{s}\n" for s in lines))

    def close(self) -> None:
        images = json.dumps(str(Path(self.images).resolve())) if self.images else \
            "images  # placeholder: put (or link) the images here, or export with --images DIR"
        text = ["# mal export. ultralytics finds an image's labels by replacing the last /images/ in its path",
                "# with /labels/: keep labels/ beside the images folder (a symlink will do).",
                f"path: {json.dumps(str(self.final))}", f"train: {images}", f"val: {images}", "names:"]
        text += [f"  {i}: {json.dumps(n, ensure_ascii=False)}" for i, n in enumerate(self.names)]
        (self.root / "data.yaml").write_text("\n".join(text) + "\n", encoding="utf-8")


def png_bytes(a: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise ExportError(f"OpenCV cannot write a {a.dtype} PNG")
    return buf.tobytes()


class Png:
    def __init__(self, root: Path, png: str, **_):
        self.root, self.index, self.overlap = root / "png", [], 0
        self.instances, self.labelmap = png in ("instances", "both"), png in ("labelmap", "both")
        (self.root / ("labelmaps" if self.labelmap else "")).mkdir(parents=True)

    def add(self, img: dict, anns: list[dict], masks: list[np.ndarray]) -> None:
        stem = Path(img["file_name"]).stem
        if self.instances:
            (self.root / "masks" / stem).mkdir(parents=True)
            for a, m in zip(anns, masks):
                (self.root / "masks" / stem / f"{a['id']}.png").write_bytes(png_bytes(m.astype(np.uint8) * 255))
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
        (self.root / "labelmaps" / f"{stem}.png").write_bytes(png_bytes(lm))
        labels = {str(k + 1): {"id": a["id"], "category_id": a["category_id"], "score": a.get("score")}
                  for k, a in enumerate(anns)}
        self.index.append({"image_id": img["id"], "file_name": img["file_name"], "labelmap": f"{stem}.png",
                           "overlap_pixels": overlap, "labels": labels})

    def close(self) -> None:
        if self.labelmap:
            write_json_atomic({"overlaps": "the smaller instance (fewer pixels) wins", "images": self.index},
                              self.root / "labelmaps" / "index.json")


class LabelStudio:
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


WRITERS = {"coco-polygons": CocoPolygons, "yolo": Yolo, "png": Png, "label-studio": LabelStudio}
