"""Masks for the boxes of one image, in memory, as ``mal label`` makes them (in the style of
segment-anything's ``SamPredictor``)::

    from mal.predictor import MaskPredictor
    predictor = MaskPredictor.from_run("runs/mal")     # a `mal train` run; or MaskPredictor(build_engine("sam"))
    predictor.set_image(rgb)                           # HxWx3 uint8 (gray, RGBA, 16 bit, PIL or a path also work)
    masks, scores = predictor.predict(boxes_xyxy)      # (N, H, W) bool, (N,) in [0, 1]

One box's way through the trained labeler: :func:`mal.data.dataset.labeling_crops` (crop or whole-image
frame, box in crop pixels) -> :func:`item_masks`: :func:`decode_maps` (encoder + decoder, in batches) ->
:func:`to_mask` (paste back inside the box, threshold, fallback). ``mal label``
(:class:`mal.labeling.labelers.ModelLabeler`) runs the same over a COCO file, batching the boxes of several
images; engines go through
:func:`engine_masks` there and here. An empty mask is never returned: see :func:`to_mask` and
:func:`engine_masks`; ``predictor.fallbacks`` says which boxes got one.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from .data.coco_checks import clip_box
from .data.crops import box_mask, mirror_boxes, paste_mask, upsample_in_box
from .data.dataset import labeling_crops
from .data.images import as_rgb
from .errors import MalError
from .modeling.labeler import MaskLabeler
from .modeling.load import is_labeler, load_labeler
from .runtime import autocast, resolve_device, resolve_precision

Result = tuple[np.ndarray, float, "str | None"]  # (HxW bool mask, score, fallback or None)
FRAME_CACHE = 32  # MaskPredictor keeps the features of this many frames (SAM's: 4 MiB each in fp32)
TTA_ENGINE_ERROR = ("tta (flip test-time augmentation) is for the trained labeler, not an engine "
                    "(build_engine('mal', model=RUN, tta=True) for the trained labeler as an engine)")


def mask_from_prob(prob: np.ndarray, box_xyxy, threshold: float = 0.5) -> Result:
    """Binarise a full-image probability map (already zero outside the box).

    Returns (mask, score, fallback). score = mean probability over the mask ("maskness"): high when
    the model is sure of every pixel it calls object. An empty mask is never returned: first the
    threshold is lowered to half the peak probability in the box, then the filled box is used; both
    are flagged by ``fallback`` and scored by the (low) peak probability.
    """
    mask = prob > threshold
    if mask.any():
        return mask, float(prob[mask].mean()), None
    peak = float(prob.max())
    if peak > 0:
        return prob >= 0.5 * peak, peak, "relative_threshold"
    H, W = prob.shape
    return box_mask(box_xyxy, H, W) > 0, 0.0, "box"


def embed_crops(model: MaskLabeler, crops: torch.Tensor, device: torch.device, precision: str,
                batch_size: int) -> torch.Tensor:
    """Image-side features of crops (M, 3, S, S) uint8, ``batch_size`` crops at a time (view "image" on
    a CPU: one at a time, they are few but large; on a GPU a large encoder gains from batches of images)."""
    per = 1 if model.config.view == "image" and device.type == "cpu" else batch_size
    with torch.inference_mode(), autocast(device, precision):
        return torch.cat([model.embed(c.to(device)) for c in crops.split(per)])


def decode_maps(model: MaskLabeler, items: list[dict], device: torch.device, precision: str,
                batch_size: int, feats: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """What :func:`box_prob` pastes back, (N, S/4, S/4), and SAM's IoU estimate (N,) (None for the K.V
    decoder), for the boxes of ``items`` (:func:`labeling_crops` dicts, in order): view crop, foreground
    probabilities over each box's crop window; view image, the logits over the whole frame (upsampled
    the SAM way). ``feats``: the crops' features when already computed (:meth:`MaskPredictor.set_image`)."""
    crops = torch.cat([it["crops"] for it in items])
    offsets = np.cumsum([0] + [len(it["crops"]) for it in items])
    index = torch.cat([it["crop_index"] + int(o) for it, o in zip(items, offsets)])
    boxes = torch.cat([it["boxes"] for it in items])
    if feats is None:
        feats = embed_crops(model, crops, device, precision, batch_size)
    probs, ious = [], []
    with torch.inference_mode(), autocast(device, precision):
        for b, k in zip(boxes.split(batch_size), index.split(batch_size)):
            logits, iou = model.decode(feats, b.to(device), crops.shape[-1], k.to(device))
            logits = logits.float()
            probs.append((logits if model.config.view == "image" else torch.sigmoid(logits)).cpu())
            ious.append(None if iou is None else iou.float().cpu())
    return torch.cat(probs).numpy(), None if ious[0] is None else torch.cat(ious).numpy()


def box_prob(m: np.ndarray, window, box_xyxy, height: int, width: int, frame_size: int | None = None
             ) -> np.ndarray:
    """One box's map from :func:`decode_maps` -> its full-image foreground probability (H, W), zero outside
    the box.

    ``frame_size`` None (view crop): ``m`` are probabilities over the box's crop window, resized into it.
    Else (view image): ``m`` are logits over the box's frame ``window`` (the whole image at the top left of
    a square of its long side, or a tile: :mod:`mal.data.tiles`) resized to ``frame_size``, upsampled as SAM
    does (to the frame, cropped to the image part of it, to that part's size: :func:`upsample_in_box`,
    inside the box)."""
    if frame_size is None:
        return paste_mask(m, window, height, width, box_xyxy)
    x0, y0, x1, y1 = (int(v) for v in window)  # a square inside the image, or past its right/bottom edge
    h, w = min(y1, height) - y0, min(x1, width) - x0  # the image part of the frame
    side = float(x1 - x0)
    resized = (int(h * frame_size / side + 0.5), int(w * frame_size / side + 0.5))
    box = np.asarray(box_xyxy, dtype=np.float64) - [x0, y0, x0, y0]
    logits = np.zeros((height, width), np.float32)
    logits[y0:y0 + h, x0:x0 + w] = upsample_in_box(m, box, resized, (h, w), frame_size)
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf for very negative logits: prob 0
        return (1.0 / (1.0 + np.exp(-logits))) * box_mask(box_xyxy, height, width)


def to_mask(m: np.ndarray, window, box_xyxy, height: int, width: int, threshold: float,
            iou: float | None, frame_size: int | None = None, mirror: tuple | None = None) -> Result:
    """One box's map from :func:`decode_maps` -> its full-image mask (never outside the box, never empty),
    score and fallback (:func:`box_prob`, then :func:`mask_from_prob`). The score is SAM's IoU head when
    the decoder has one, else the maskness.

    ``mirror``: the same box decoded on the image's left-right mirror, ``(map, window, iou)`` (window in
    mirrored-image pixels; flip test-time augmentation): the two probabilities, and the two IoU
    estimates, are averaged."""
    prob = box_prob(m, window, box_xyxy, height, width, frame_size)
    if mirror is not None:
        m2, window2, iou2 = mirror
        box2 = mirror_boxes(box_xyxy, width)[0]
        prob2 = box_prob(m2, window2, box2, height, width, frame_size)[:, ::-1]
        # Averaged where both maps cover the pixel; an edge column on a pixel centre (x.5) lies inside
        # only one of the box and its mirror: there the box's own map counts alone.
        inside = box_mask(box_xyxy, height, width)
        both = inside + box_mask(box2, height, width)[:, ::-1]
        prob = (prob + prob2) / np.maximum(both, 1.0) * inside
        iou = None if iou is None else (iou + iou2) / 2
    mask, score, fallback = mask_from_prob(prob, box_xyxy, threshold)
    if iou is not None and fallback is None:  # the IoU head: the model's own estimate of the mask's quality
        score = float(np.clip(iou, 0.0, 1.0))
    return mask, score, fallback


def item_masks(model: MaskLabeler, items: list[dict], device: torch.device, precision: str, batch_size: int,
               threshold: float, feats: torch.Tensor | None = None) -> list[Result]:
    """The masks of every box of ``items`` (:func:`labeling_crops` dicts, in order): :func:`decode_maps`
    then :func:`to_mask`. Items with a ``mirror`` are decoded on it too, and the two averaged. ``feats``:
    the features of the items' crops, then of their mirrors' (:meth:`MaskPredictor.set_image`)."""
    mirrors = [it["mirror"] for it in items if "mirror" in it]
    if mirrors and len(mirrors) != len(items):
        raise ValueError("either every item has a mirror or none")
    maps, ious = decode_maps(model, items + mirrors, device, precision, batch_size, feats)
    ious = [None] * len(maps) if ious is None else ious
    n = sum(len(it["image_boxes"]) for it in items)  # the mirrors' maps follow, box for box
    frame = model.config.crop_size if model.config.view == "image" else None
    out, j = [], 0
    for it in items:
        H, W = it["image_size"]
        for k, (win, box) in enumerate(zip(it["windows"], it["image_boxes"])):
            mirror = (maps[n + j], it["mirror"]["windows"][k], ious[n + j]) if mirrors else None
            out.append(to_mask(maps[j], win, box, H, W, threshold, ious[j], frame, mirror))
            j += 1
    return out


def engine_masks(engine, image: np.ndarray, boxes_xyxy: np.ndarray, where: str = "the image") -> list[Result]:
    """An engine's masks for the boxes of one image, each clipped to its box (the box is ground truth);
    one empty after clipping becomes the filled box, scored 0 and flagged "box". ``where`` names the
    image in errors about the engine's output."""
    H, W = image.shape[:2]
    masks, scores = engine.predict(image, boxes_xyxy)
    name = getattr(engine, "name", type(engine).__name__)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(masks) != len(boxes_xyxy) or len(scores) != len(boxes_xyxy):
        raise RuntimeError(f"engine {name!r} returned {len(masks)} masks and {len(scores)} scores "
                           f"for {len(boxes_xyxy)} boxes of {where}")
    out = []
    for box, m, s in zip(boxes_xyxy, masks, scores):
        if np.shape(m) != (H, W):
            raise RuntimeError(f"engine {name!r} returned a mask of shape {np.shape(m)} for {where}, "
                               f"expected {(H, W)}")
        inside = box_mask(box, H, W) > 0
        mask = np.asarray(m, dtype=bool) & inside
        out.append((mask, float(s), None) if mask.any() else (inside, 0.0, "box"))
    return out


def check_boxes(boxes_xyxy, height: int, width: int) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 pixel-edge boxes, clipped to the image by the rule ``mal label``'s COCO
    checks use (:func:`mal.data.coco_checks.clip_box`); a box it refuses is an error naming it."""
    b = np.asarray(boxes_xyxy, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise MalError(f"boxes must be (N, 4) x0, y0, x1, y1; got shape {np.shape(boxes_xyxy)}")
    for i, (x0, y0, x1, y1) in enumerate(b.tolist()):
        _, problem = clip_box(x0, y0, x1 - x0, y1 - y0, width, height)
        if problem:
            raise MalError(f"box {i} " + problem.format(box=[x0, y0, x1, y1], image=f"the {width}x{height} image"))
    return np.stack([b[:, 0].clip(0, width), b[:, 1].clip(0, height), b[:, 2].clip(0, width),
                     b[:, 3].clip(0, height)], 1)


class MaskPredictor:
    """Load a labeler (a trained :class:`MaskLabeler`) or an engine once; then, per image,
    :meth:`set_image` and :meth:`predict` any number of box sets.

    With the trained labeler's view "image" each frame of the image is encoded once and every
    :meth:`predict` decodes on those embeddings (as SAM's predictor does): the whole image in
    :meth:`set_image`, or, with zoomed tiles (``box_frame`` > 0, the sam recipe), each tile at the first
    :meth:`predict` whose boxes need it. ``device``, ``precision``,
    ``batch_size``, ``threshold``, ``expand`` (default: the model's ``label_expand``) and ``tta`` mean what
    they mean for ``mal label``; with ``precision="32"`` the masks are those ``mal label`` writes, bit for bit,
    and the scores those it writes before it shifts them by their category's offset (it sees the whole job:
    :func:`mal.labeling.merge.category_offsets`).
    """

    def __init__(self, model, *, device: str = "auto", precision: str = "auto", batch_size: int = 16,
                 threshold: float = 0.5, expand: float | None = None, tta: bool = False):
        self.engine = None if is_labeler(model) else model
        self.model = model if is_labeler(model) else None
        if tta and self.engine is not None:
            raise MalError(TTA_ENGINE_ERROR)
        self.batch_size, self.threshold, self.tta = batch_size, threshold, tta
        if self.model is not None:
            self.device = resolve_device(device)
            self.precision = resolve_precision(precision, self.device)
            self.model = self.model.to(self.device).eval()
            self.expand = self.model.config.label_expand if expand is None else expand
        self.image: np.ndarray | None = None
        self.fallbacks: list[str | None] = []  # per box of the last predict(): None, "relative_threshold", "box"
        self._frame_feats: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # (mirrored?, frame) -> features

    @classmethod
    def from_run(cls, run, **kwargs) -> "MaskPredictor":
        """A predictor for a `mal train` run directory or .ckpt, or a `mal export-onnx` directory
        (``kwargs``: see the class)."""
        return cls(load_labeler(run), **kwargs)

    def set_image(self, image) -> None:
        """The image the next :meth:`predict` calls label (see :func:`mal.data.images.as_rgb`)."""
        self.image = as_rgb(image)
        self._frame_feats.clear()
        if self.model is not None and self.model.config.view == "image" and self.model.config.box_frame <= 0:
            H, W = self.image.shape[:2]  # every box shares the image's frame: encode it now
            self._features(labeling_crops(self.image, np.array([[0.0, 0.0, W, H]]), self.model.config.crop_size,
                                          self.expand, "image", mirror=self.tta))

    def predict(self, boxes_xyxy) -> tuple[np.ndarray, np.ndarray]:
        """boxes (N, 4) x0, y0, x1, y1 in image pixels -> masks (N, H, W) bool, scores (N,) in [0, 1].
        A box whose mask came from a fallback scores low and is named in ``self.fallbacks``."""
        if self.image is None:
            raise RuntimeError("call set_image() before predict()")
        H, W = self.image.shape[:2]
        boxes = check_boxes(boxes_xyxy, H, W)
        if len(boxes) == 0:
            self.fallbacks = []
            return np.zeros((0, H, W), dtype=bool), np.zeros(0)
        results = self._results(boxes)
        self.fallbacks = [fb for _, _, fb in results]
        return np.stack([m for m, _, _ in results]), np.array([s for _, s, _ in results])

    def _results(self, boxes: np.ndarray) -> list[Result]:
        if self.engine is not None:
            return engine_masks(self.engine, self.image, boxes)
        cfg = self.model.config
        item = labeling_crops(self.image, boxes, cfg.crop_size, self.expand, cfg.view, cfg.box_frame, self.tta)
        feats = self._features(item) if cfg.view == "image" else None  # view crop: a crop per box
        return item_masks(self.model, [item], self.device, self.precision, self.batch_size, self.threshold, feats)

    def _features(self, item: dict) -> torch.Tensor:
        """The features of ``item``'s crops, then of its mirror's: those of frames seen before from the
        cache, the others encoded (in one batch) and kept until the next :meth:`set_image`, the last
        ``FRAME_CACHE`` frames used (one box at a time, each box may ask for a tile of its own)."""
        parts = [(False, item)] + ([(True, item["mirror"])] if "mirror" in item else [])
        keys = [(m, tuple(int(v) for v in f)) for m, it in parts for f in it["frames"]]
        crops = torch.cat([it["crops"] for _, it in parts])
        found = {k: self._frame_feats[k] for k in keys if k in self._frame_feats}
        new = [i for i, k in enumerate(keys) if k not in found]
        if new:
            found.update(zip((keys[i] for i in new),
                             embed_crops(self.model, crops[new], self.device, self.precision, self.batch_size)))
        for k in keys:  # most recently used last; the oldest beyond the cap dropped
            self._frame_feats[k] = found[k]
            self._frame_feats.move_to_end(k)
        while len(self._frame_feats) > FRAME_CACHE:
            self._frame_feats.popitem(last=False)
        return torch.stack([found[k] for k in keys])
