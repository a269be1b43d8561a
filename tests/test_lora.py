"""LoRA on the encoder's attention (TrainConfig.lora_rank): exact start, exact merge, only the adapters
train, and the saved labeler is a plain one."""
from dataclasses import replace

import pytest
import torch

from mal.config import recipe
from mal.errors import MalError
from mal.modeling.encoder import build_encoder
from mal.modeling.labeler import load_trained
from mal.modeling.lora import LoRALinear, add_lora, merge_lora
from mal.modeling.sam_checkpoint import inspect_sam_checkpoint
from test_sam_checkpoint import tiny_sam

VIT = dict(img_size=32, depth=2, embed_dim=32, num_heads=2, patch_size=8)


def test_lora_starts_as_the_base_and_merges_exactly():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny_patch16_224", **VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    before = enc(x)
    names = add_lora(enc, rank=3)
    assert names == ["model.blocks.0.attn.qkv", "model.blocks.1.attn.qkv"]
    assert torch.equal(enc(x), before)  # B = 0: the adapted model starts as the pretrained one
    assert {n for n, p in enc.named_parameters() if p.requires_grad} >= {f"{n}.lora_a" for n in names}
    assert not any(p.requires_grad for n, p in enc.named_parameters() if ".base." in n)
    for m in enc.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b)
    adapted = enc(x)
    assert not torch.allclose(adapted, before, atol=1e-3)
    plain = build_encoder("vit_tiny_patch16_224", **VIT).eval()
    plain.load_state_dict(merge_lora(enc.state_dict()), strict=True)  # the plain layout, every key
    torch.testing.assert_close(plain(x), adapted, atol=1e-5, rtol=1e-5)


def test_lora_needs_attention_and_a_rank():
    with pytest.raises(MalError, match="resnet10t has no attention"):
        add_lora(build_encoder("resnet10t"), rank=4)
    with pytest.raises(MalError, match="rank must be >= 1"):
        add_lora(build_encoder("vit_tiny_patch16_224", **VIT), rank=0)


@pytest.mark.slow
def test_lora_training_moves_only_the_adapted_layers(tmp_path, scenes):
    from mal.api import train
    sam = tiny_sam()
    path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), path)
    images, _, boxes = scenes
    cfg = inspect_sam_checkpoint(path).labeler_config()
    run = train(images, boxes, tmp_path / "run", labeler=cfg, weights=path, neck_weights=path,
                decoder_weights=path, train_config=replace(recipe("sam").train, lora_rank=2, lr=1e-3, crf_iters=5),
                max_steps=3, batch_size=8, min_area=100, num_workers=0, progress=False, precision="32")
    trained = load_trained(run)  # a plain labeler: the saved weights hold no LoRA keys
    start = {f"encoder.model.{k}": v for k, v in sam.image_encoder.state_dict().items() if not k.startswith("neck.")}
    start.update({f"neck.{k}": v for k, v in sam.image_encoder.neck.state_dict().items()})
    got = trained.state_dict()
    moved = {k for k, v in start.items() if not torch.equal(got[k], v)}
    assert moved == {f"encoder.model.blocks.{i}.attn.qkv.weight" for i in range(2)}  # not even their biases
    assert not torch.equal(got["decoder.mask_decoder.iou_token.weight"],
                           sam.mask_decoder.iou_token.weight)  # the decoder trains as without LoRA
    # --resume's checkpoint holds the adapters; loading it merges them as the run directory did.
    from_ckpt = load_trained(run / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(from_ckpt[k], v) for k, v in got.items())
