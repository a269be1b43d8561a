"""The real SAM-distilled TinyViT weights load strictly and give stride-16 features (skips without ../shared)."""
import torch

from conftest import COCO_MINI, TINYVIT_SAM, require
from mal.data.coco import load_boxes
from mal.modeling.encoder import build_encoder, load_encoder_weights


def test_tinyvit_sam_loads_strictly():
    enc = build_encoder("tiny_vit_5m_sam", weights=require(TINYVIT_SAM), img_size=224).eval()
    report = load_encoder_weights(enc.model, TINYVIT_SAM)  # strict: raises on any mismatch
    assert not report.missing and not report.unexpected
    assert report.ignored == ["head.norm.weight", "head.norm.bias"]  # unused classifier head
    with torch.no_grad():
        f = enc(torch.randn(1, 3, 224, 224))
    assert f.shape == (1, 320, 14, 14) and torch.isfinite(f).all() and f.std() > 0


def test_sam_variant_differs_from_plain_tinyvit_by_stride():
    # Same keys, so a plain tiny_vit_5m_224 loads them too; only the variant has overall stride 16.
    enc = build_encoder("tiny_vit_5m_224", weights=require(TINYVIT_SAM), img_size=224)
    assert enc.measure_stride(224) == 32
    assert build_encoder("tiny_vit_5m_sam", img_size=224).measure_stride(224) == 16


def test_coco_mini_validates():
    data = load_boxes(require(COCO_MINI) / "instances.json", COCO_MINI / "images")
    assert len(data.records) == 3591 and len(data.by_image()) == 412
