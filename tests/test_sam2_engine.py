"""SAM 2 / 2.1 checkpoints (Meta's sam2 package) as a zero-shot engine: config detection, masks equal
SAM2ImagePredictor's, and why they cannot start the labeler."""
import numpy as np
import pytest
import torch

pytest.importorskip("sam2", reason="Meta's sam2 package is not installed (pip install sam2==1.1.0)")

from mal.engines.sam2 import sam2_config  # noqa: E402
from mal.errors import MalError  # noqa: E402
from mal.modeling.weights import WeightsError  # noqa: E402
from mal.modeling.sam_checkpoint import inspect_sam_checkpoint  # noqa: E402


def hiera_keys(width: int, blocks: int, v21: bool = True) -> dict:
    sd = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 7, 7)}
    sd.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
    if v21:
        sd["no_obj_embed_spatial"] = torch.zeros(1, 64)
    return sd


def test_config_from_keys_and_shapes(tmp_path):
    assert sam2_config(hiera_keys(96, 12), tmp_path) == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert sam2_config(hiera_keys(112, 24), tmp_path) == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert sam2_config(hiera_keys(144, 48, v21=False), tmp_path) == "configs/sam2/sam2_hiera_l.yaml"
    with pytest.raises(WeightsError, match="width 100 with 3 blocks"):
        sam2_config(hiera_keys(100, 3), tmp_path)


def test_sam2_file_is_an_engine_not_a_labeler_start(tmp_path):
    path = tmp_path / "sam2.1_hiera_t.pt"
    torch.save({"model": hiera_keys(96, 12)}, path)
    ckpt = inspect_sam_checkpoint(path)
    assert ckpt.sam_type == "sam2"
    with pytest.raises(MalError, match="sam2.1_hiera_t.pt: a SAM 2 checkpoint labels zero-shot .* stride-4"):
        ckpt.labeler_config()
    with pytest.raises(WeightsError, match="--sam-type vit_t, but the file is a SAM 2 checkpoint"):
        inspect_sam_checkpoint(path, "vit_t")


@pytest.mark.slow
def test_engine_masks_are_sam2_image_predictor_masks(tmp_path):
    import cv2
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from mal.engines import build_engine
    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")  # random weights
    path = tmp_path / "sam2.1_hiera_tiny_random.pt"
    torch.save({"model": model.state_dict()}, path)  # as Meta ships them
    engine = build_engine("sam2", checkpoint=path, device="cpu")
    assert engine.config == "configs/sam2.1/sam2.1_hiera_t.yaml"
    image = cv2.GaussianBlur(np.random.default_rng(0).uniform(0, 255, (240, 320, 3)).astype(np.uint8), (15, 15), 5)
    boxes = np.array([[10, 15, 170, 200], [150, 25, 300, 150]], float)
    masks, scores = engine.predict(image, boxes)
    ref = SAM2ImagePredictor(model.eval())
    ref.set_image(image)
    for box, mask, score in zip(boxes, masks, scores):
        want, iou, _ = ref.predict(box=box, multimask_output=False)
        assert want[0].any() and np.array_equal(mask, want[0] > 0), (mask != (want[0] > 0)).sum()
        assert score == pytest.approx(float(np.clip(iou[0], 0, 1)), abs=1e-6)
