"""Zero-shot box-prompted SAM 2 / SAM 2.1 (Meta's ``sam2`` package, Hiera image encoders) from one checkpoint.

The model size (Hiera tiny / small / base+ / large) and version (SAM 2 or 2.1) are read from the checkpoint's
keys and shapes; the model is ``sam2``'s own (its hydra config, ``SAM2ImagePredictor``), so the masks are
the predictor's: ``predict(box=..., multimask_output=False)`` with all boxes of an image in one call.

An engine only, not a start for ``mal train``: SAM 2's mask decoder reads, besides the image embedding,
two higher-resolution feature maps of the image encoder (stride 4 and 8), which the labeler's training
path (one embedding per image, :class:`mal.modeling.sam_decoder.SamBoxDecoder`) does not carry.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import MalError
from ..modeling.sam_checkpoint import is_sam2_checkpoint
from ..modeling.weights import WeightsError, read_state_dict

# (trunk width, trunk blocks) -> the config's size name
HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


def sam2_config(sd: dict, path: Path) -> str:
    """The ``sam2`` package's config for a checkpoint's state dict (e.g. configs/sam2.1/sam2.1_hiera_t.yaml)."""
    if not is_sam2_checkpoint(sd):
        raise WeightsError(f"{path}: not a SAM 2 checkpoint (no image_encoder.trunk.* Hiera keys)")
    width = int(sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    blocks = len({k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")})
    size = HIERA_SIZES.get((width, blocks))
    if size is None:
        raise WeightsError(f"{path}: a SAM 2 Hiera of width {width} with {blocks} blocks; the sam2 package "
                           f"has configs for {', '.join(f'{w}/{b}' for w, b in HIERA_SIZES)} only")
    # SAM 2.1 added the spatial no-object embedding (and the temporal pointer projection).
    version = "sam2.1" if "no_obj_embed_spatial" in sd else "sam2"
    return f"configs/{version}/{version}_hiera_{size}.yaml"


class Sam2Engine:
    name = "sam2"

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        try:
            import torch
            from sam2.build_sam import build_sam2
            from sam2.sam2_image_predictor import SAM2ImagePredictor
        except ImportError as e:
            raise MalError(f"SAM 2 checkpoints need Meta's sam2 package (pip install sam2==1.1.0): {e}") from e
        self.checkpoint = Path(checkpoint)
        sd = read_state_dict(self.checkpoint)  # unwraps the {"model": ...} of Meta's files
        self.config = sam2_config(sd, self.checkpoint)
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        model = build_sam2(self.config, None, device="cpu")
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(f"{self.checkpoint}: does not fit {self.config}: {len(result.missing_keys)} "
                               f"missing (e.g. {', '.join(result.missing_keys[:3])}), "
                               f"{len(result.unexpected_keys)} unexpected keys")
        self.predictor = SAM2ImagePredictor(model.to(dev).eval())
        self.identity = {"model": "sam2", "config": self.config, "checkpoint": self.checkpoint.name,
                         "bytes": self.checkpoint.stat().st_size}
        self.seconds, self.images, self.boxes = 0.0, 0, 0

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """HxWx3 uint8 RGB, boxes (N, 4) -> N HxW bool masks, scores (N,) in [0, 1] (SAM 2's IoU head)."""
        import torch
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return [], np.zeros(0)
        t = time.perf_counter()
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image[..., :3]))
            masks, scores, _ = self.predictor.predict(box=boxes, multimask_output=False)
        masks = np.asarray(masks).reshape(len(boxes), *image.shape[:2]) > 0  # (N, 1, H, W) or (1, H, W)
        self.seconds += time.perf_counter() - t
        self.images, self.boxes = self.images + 1, self.boxes + len(boxes)
        return list(masks), np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
