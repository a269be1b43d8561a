"""Image encoder: any timm backbone by name, weights from a local file, last feature map out.

One way to create a backbone: ``build_encoder(name, weights=...)``. Weights never come from a hub
implicitly: pass a local ``.safetensors`` / ``.pth`` file. Loading is strict by default: any missing
or unexpected key is an error (the official MAL code loads with strict=False and silently trains a
stem from scratch when keys do not match).
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import MalError
from .weights import WeightsError, read_state_dict

log = logging.getLogger("mal")


def _tiny_vit_sam(model: nn.Module) -> None:
    # The SAM / MobileSAM TinyViT does not downsample into its last stage: overall stride 16.
    model.stages[3].downsample.conv2.conv.stride = (1, 1)


# mal-level names for timm models with a small structural change that their checkpoints need.
# name -> (timm model name, patch function)
VARIANTS = {
    "tiny_vit_5m_sam": ("tiny_vit_5m_224", _tiny_vit_sam),
}


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # missing keys of the unused classifier head

    def summary(self) -> str:
        def few(keys):
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys: {few(self.unexpected)}")
        return "; ".join(parts) or "all keys matched"


class Encoder(nn.Module):
    """timm backbone -> last feature map.

    forward: (B, 3, S, S) normalised image -> (B, C, S/stride, S/stride).
    Plain ViTs return tokens; prefix tokens (cls, registers) are dropped and the rest reshaped to a grid.
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.out_channels = int(model.num_features)
        self.mean = tuple(model.pretrained_cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std = tuple(model.pretrained_cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # forward_features, not timm's forward_intermediates(output_fmt="NCHW"): for most models its
        # last map holds the same values, but not for all (EfficientNet/MobileNet: forward_features
        # adds the conv head, 1280 channels = num_features, vs 320), ViTs then come in another memory
        # layout, and some timm models have no forward_intermediates.
        f = self.model.forward_features(x)
        if f.ndim == 3:  # (B, N, C) tokens
            f = f[:, getattr(self.model, "num_prefix_tokens", 0):]
            B, N, C = f.shape
            gh, gw = self._token_grid(x, N)
            return f.transpose(1, 2).reshape(B, C, gh, gw)
        if f.shape[1] != self.out_channels and f.shape[-1] == self.out_channels:  # NHWC (e.g. swin)
            f = f.permute(0, 3, 1, 2)
        return f.contiguous()

    def _token_grid(self, x: torch.Tensor, n: int) -> tuple[int, int]:
        H, W, n = int(x.shape[-2]), int(x.shape[-1]), int(n)  # ints also while tracing (ONNX export)
        ratio = (H * W / n) ** 0.5  # the patch size
        gh, gw = round(H / ratio), round(W / ratio)
        if gh * gw != n:
            raise MalError(f"cannot arrange {n} tokens of {self.name} into a grid for a {H}x{W} input")
        return gh, gw

    def train(self, mode: bool = True) -> "Encoder":
        # Batch statistics of a few crops are noisy, and some checkpoints (e.g. the SAM TinyViT) have
        # BatchNorm folded into the convs: every BatchNorm keeps using its stored statistics. (Not
        # timm's freeze_batch_norm_2d: it swaps in FrozenBatchNorm2d, whose weight and bias are
        # buffers that no longer train, drops num_batches_tracked from the saved weights and computes
        # the norm with other arithmetic.)
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @torch.no_grad()
    def measure_stride(self, size: int = 256) -> int:
        """Input pixels per feature-map cell at input side ``size``, measured by one forward pass of
        a blank (1, 3, size, size) image in eval mode.

        Measured, not read from ``patch_size`` / ``feature_info``: a mal variant may change a stage's
        stride without updating timm's feature_info (tiny_vit_5m_sam: 16, feature_info says 32), and
        at a size the stride does not divide the grid rounds (resnet at 100 px: 4 cells, 25 px each)."""
        if isinstance(getattr(self.model, "feature_stride", None), int):  # known: no pass of a big model
            return self.model.feature_stride
        was = self.training
        self.eval()
        f = self(torch.zeros(1, 3, size, size))
        self.train(was)
        return size // f.shape[-1]



def freeze_leading(module: nn.Module, fraction: float) -> int:
    """Freeze the first ``fraction`` of a module's parameters (by count, in definition order, which
    for backbones is input-to-output). Returns the number of frozen parameters."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    done = 0
    for p in params:
        if done >= fraction * total - 1e-9 or fraction <= 0:
            break
        p.requires_grad_(False)
        done += p.numel()
    return done


def load_encoder_weights(model: nn.Module, path: str | Path, *, strict: bool = True,
                         head_prefixes: tuple[str, ...] = ("head.",)) -> KeyReport:
    """Load a local checkpoint into a timm model, adapting it with timm's own checkpoint filter
    (e.g. resampling ViT position embeddings to the crop size). Raises WeightsError on any key
    mismatch unless ``strict=False``, in which case the mismatch is logged as a warning.
    Keys under ``head_prefixes`` (the unused classifier: timm ``head.``, torchvision ``fc.``) may be
    missing or extra."""
    from .sam_checkpoint import image_encoder_trunk
    path = Path(path)
    sd = image_encoder_trunk(read_state_dict(path))  # a whole SAM checkpoint: its image encoder's trunk
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as e:  # filters assume the original layout; a converted file may not need one
            log.debug("checkpoint_filter_fn of %s skipped: %s", type(model).__name__, e)
    own = model.state_dict()
    shape_errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if shape_errors:
        raise WeightsError(f"{path}: {len(shape_errors)} tensors have the wrong shape for "
                           f"{type(model).__name__}: " + "; ".join(shape_errors[:5]))
    result = model.load_state_dict(sd, strict=False)
    # The classifier head is never used (we take forward_features), so its absence is fine.
    report = KeyReport(unexpected=[k for k in result.unexpected_keys if not k.startswith(head_prefixes)])
    for k in result.missing_keys:
        (report.ignored if k.startswith(head_prefixes) else report.missing).append(k)
    matched = len(own) - len(result.missing_keys)
    if not matched:  # loading anyway would change nothing: no point suggesting it
        raise WeightsError(f"{path}: no key of the file matches {type(model).__name__} (weights of another "
                           f"model or part, e.g. SAM's neck instead of the trunk?): {report.summary()}")
    if report.missing or report.unexpected:
        msg = f"{path}: weights do not match {type(model).__name__}: {report.summary()}"
        if strict:
            raise WeightsError(msg + ". Fix the checkpoint or backbone name, or load anyway with "
                               "strict=False (CLI: --allow-missing-keys).")
        log.warning(msg + " (loaded anyway: strict=False)")
    else:
        log.info("loaded %s: %d tensors, all keys matched", path, len(sd))
    return report


def build_encoder(name: str, *, weights: str | Path | None = None, img_size: int | None = None,
                  strict: bool = True, **timm_kwargs) -> Encoder:
    """Create a timm backbone by name (or a mal variant from VARIANTS) and load local weights.

    img_size: crop size, passed to models that take it (ViTs size their position embeddings by it).
    timm_kwargs: extra timm constructor arguments (e.g. depth=4 for a tiny test model).
    """
    if name == "sam_vit":  # segment-anything's ViT, not a timm model (mal.modeling.sam_checkpoint)
        from .sam_checkpoint import SamViTTrunk
        model = SamViTTrunk(**({"img_size": img_size} if img_size else {}), **timm_kwargs)
        if weights is not None:
            load_encoder_weights(model, weights, strict=strict)
        return Encoder(model, name)
    timm_name, patch = VARIANTS.get(name, (name, None))
    kwargs = dict(pretrained=False, num_classes=0, **timm_kwargs)
    try:
        model = timm.create_model(timm_name, img_size=img_size, **kwargs) if img_size else None
    except TypeError:  # this architecture has no img_size argument
        model = None
    if model is None:
        model = timm.create_model(timm_name, **kwargs)
    if patch is not None:
        patch(model)
    if weights is not None:
        load_encoder_weights(model, weights, strict=strict)
    return Encoder(model, name)
