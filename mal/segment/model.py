"""Phase-2 instance segmenter: torchvision Mask R-CNN on a timm backbone (+FPN) or on ResNet-50-FPN.

``build_segmenter(SegmenterConfig)`` is the one way to create it. Backbone weights come from a local
file (the TinyViT/SAM encoder of ../shared/weights, any timm checkpoint, or a torchvision ResNet-50
state dict); without one the backbone starts from scratch. The heads always start from scratch.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..config import ARCHS
from ..errors import MalError
from ..modeling.encoder import Encoder, build_encoder, freeze_leading, load_encoder_weights
from ..modeling.weights import WeightsError
from ..runtime import save_weights

log = logging.getLogger("mal")



@dataclass
class SegmenterConfig:
    """Everything needed to rebuild a segmenter (saved as config.json next to its weights).

    The defaults are a light Mask R-CNN that trains on a CPU: 128-channel FPN from stride 8 up,
    128-channel mask head, 128 sampled RoIs per image. ``maskrcnn_r50_fpn`` is torchvision's
    standard model (256 channels, strides 4-64), for GPUs.
    """
    arch: str = "maskrcnn_timm_fpn"
    backbone: str = "tiny_vit_5m_sam"          # timm name or mal variant (maskrcnn_timm_fpn only)
    categories: list[dict] = field(default_factory=list)  # COCO categories, in class-index order (1..K)
    class_agnostic: bool = False                # one class "object" (id 1); eval maps gt classes to it
    category_ids: list[int] | None = None       # COCO classes trained on when a subset (None: all); eval keeps these
    min_size: int = 512                         # shorter image side after resizing
    max_size: int = 640                         # longer side cap
    fpn_channels: int = 128
    min_stride: int = 8                         # drop backbone levels finer than this (cost: stride-4 FPN)
    roi_batch_size: int = 128                   # RoIs sampled per image for the box/mask heads
    mask_head_channels: int = 128
    freeze_backbone: float = 0.0                # fraction of backbone parameters (input side first) frozen
    detections_per_image: int | None = None     # None: 100 (torchvision's); training sets it from the data
    timm_kwargs: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:               # + background
        return len(self.categories) + 1


class TimmFPN(nn.Module):
    """timm backbone -> FPN levels ('0', '1', ..., 'p6', 'p7'), all with ``out_channels`` channels.

    Uses the last feature map of every distinct stride >= ``min_stride`` (found by running the
    backbone once, since some variants, e.g. the SAM TinyViT, change a stage's stride), then two
    extra levels (P6, P7) by strided convs. A plain ViT gives one level at stride 16 (+P6, P7).
    forward: (B, 3, H, W) normalised -> OrderedDict of (B, C, H/s, W/s).
    """

    def __init__(self, encoder: Encoder, out_channels: int, min_stride: int = 8, probe: int = 256):
        super().__init__()
        self.encoder = encoder
        self.out_channels = out_channels
        was = encoder.training
        encoder.eval()
        with torch.no_grad():
            feats = self._features(torch.zeros(1, 3, probe, probe), None)
        encoder.train(was)
        by_stride: dict[int, int] = {}
        for i, f in enumerate(feats):
            by_stride[probe // f.shape[-1]] = i  # the last map of each stride wins
        keep = sorted((s, i) for s, i in by_stride.items() if s >= min_stride)
        if not keep:
            raise MalError(f"{encoder.name}: no feature map with stride >= {min_stride}")
        self.strides = [s for s, _ in keep] + [keep[-1][0] * 2, keep[-1][0] * 4]
        self.indices = [i for _, i in keep]
        self.fpn = FeaturePyramidNetwork([feats[i].shape[1] for i in self.indices], out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))

    def _features(self, x: torch.Tensor, indices) -> list[torch.Tensor]:
        m = self.encoder.model
        if hasattr(m, "forward_intermediates"):
            feats = m.forward_intermediates(x, indices=indices, intermediates_only=True)
        else:  # no multi-scale API: the last feature map only
            feats = [self.encoder(x)]
        return feats

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self._features(x, None)
        return self.fpn(OrderedDict((str(k), feats[i]) for k, i in enumerate(self.indices)))

    @property
    def level_names(self) -> list[str]:
        return [str(k) for k in range(len(self.indices))] + ["p6", "p7"]


def detections_cap(cfg: SegmenterConfig) -> int:
    """Most detections kept per image (torchvision's 100 unless the config raises it for dense images)."""
    return cfg.detections_per_image or 100


def _timm_maskrcnn(cfg: SegmenterConfig, weights, strict: bool) -> MaskRCNN:
    enc = build_encoder(cfg.backbone, weights=weights, strict=strict, **cfg.timm_kwargs)
    if cfg.freeze_backbone > 0:
        freeze_leading(enc, cfg.freeze_backbone)
    backbone = TimmFPN(enc, cfg.fpn_channels, cfg.min_stride)
    C, names, dets = cfg.fpn_channels, backbone.level_names, detections_cap(cfg)
    # One anchor size per level (4x its stride, as torchvision's 32..512 for strides 4..64).
    anchors = AnchorGenerator(tuple((4 * s,) for s in backbone.strides), ((0.5, 1.0, 2.0),) * len(names))
    pool_names = names[:-1]  # RoIs are pooled from every level but the coarsest (as torchvision)
    return MaskRCNN(
        backbone, num_classes=None, min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(enc.mean), image_std=list(enc.std),
        rpn_anchor_generator=anchors,
        # 300 proposals at test time instead of 1000: the box head on 1000 RoIs cost ~13 GFLOPs per
        # image, more than the backbone (measured to dominate CPU evaluation). Dense images get more.
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=max(600, 4 * dets), rpn_post_nms_top_n_test=max(300, 2 * dets),
        box_detections_per_img=dets,
        box_roi_pool=MultiScaleRoIAlign(pool_names, 7, 2),
        box_head=TwoMLPHead(C * 49, 1024), box_predictor=FastRCNNPredictor(1024, cfg.num_classes),
        box_batch_size_per_image=cfg.roi_batch_size,
        mask_roi_pool=MultiScaleRoIAlign(pool_names, 14, 2),
        mask_head=MaskRCNNHeads(C, (cfg.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, cfg.num_classes),
    )


def _r50_maskrcnn(cfg: SegmenterConfig, weights, strict: bool) -> MaskRCNN:
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if weights is not None:
        load_encoder_weights(body, weights, strict=strict, head_prefixes=("fc.",))  # classifier unused
    trainable = 5 - round(cfg.freeze_backbone * 5)
    backbone = _resnet_fpn_extractor(body, trainable, extra_blocks=LastLevelMaxPool())
    dets = detections_cap(cfg)
    return MaskRCNN(backbone, num_classes=cfg.num_classes, min_size=cfg.min_size, max_size=cfg.max_size,
                    box_batch_size_per_image=cfg.roi_batch_size, box_detections_per_img=dets,
                    rpn_pre_nms_top_n_test=max(1000, 4 * dets), rpn_post_nms_top_n_test=max(1000, 2 * dets))


def build_segmenter(cfg: SegmenterConfig, *, weights: str | Path | None = None,
                    strict: bool = True) -> MaskRCNN:
    """A new Mask R-CNN; ``weights`` are the backbone's pretrained weights (local file).

    Train mode: model(images, targets) -> dict of losses. Eval mode: model(images) -> list of
    {boxes (N,4) xyxy, labels (N,), scores (N,), masks (N,1,H,W) probabilities}. Images are float
    RGB in 0..1, (3, H, W), any size (resized inside to ``min_size``/``max_size``).
    """
    if not cfg.categories:
        raise MalError("SegmenterConfig.categories is empty: the segmenter needs at least one class")
    if cfg.arch == "maskrcnn_timm_fpn":
        return _timm_maskrcnn(cfg, weights, strict)
    if cfg.arch == "maskrcnn_r50_fpn":
        return _r50_maskrcnn(cfg, weights, strict)
    raise MalError(f"unknown segmenter arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")


MODEL_FILE, CONFIG_FILE = "segmenter.safetensors", "segmenter.json"


def save_segmenter(model: MaskRCNN, cfg: SegmenterConfig, run_dir: str | Path) -> Path:
    """Write segmenter.safetensors + segmenter.json into run_dir (weights atomically)."""
    return save_weights(model, asdict(cfg), run_dir, MODEL_FILE, CONFIG_FILE)


def load_segmenter(run_dir: str | Path) -> tuple[MaskRCNN, SegmenterConfig]:
    """Load a trained segmenter from a `mal segment train` run directory (in eval mode)."""
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / CONFIG_FILE, run_dir / MODEL_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a trained segmenter (needs {CONFIG_FILE} and {MODEL_FILE}; "
                                "did `mal segment train` finish?)")
    cfg = SegmenterConfig(**json.loads(cfg_path.read_text()))
    from safetensors.torch import load_file
    model = build_segmenter(cfg)
    try:
        model.load_state_dict(load_file(str(w_path)), strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{w_path}: does not fit the segmenter in {cfg_path}: {e}") from e
    return model.eval(), cfg
