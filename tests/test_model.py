import pytest
import torch
from safetensors.torch import save_file

from mal.config import lr_lambda
from mal.modeling.encoder import build_encoder, freeze_leading, load_encoder_weights
from mal.modeling.weights import WeightsError
from mal.modeling.labeler import LabelerConfig, build_labeler, save_labeler
from mal.modeling.load import load_labeler
from mal.train import ema_update

TINY = dict(backbone="vit_tiny_patch16_224", crop_size=64, decoder_dim=16,
            timm_kwargs=dict(depth=1, embed_dim=32, num_heads=2, patch_size=8))


def test_labeler_shapes_plain_vit():
    m = build_labeler(LabelerConfig(**TINY))
    assert m.decoder.in_stride == 8 == m.encoder.measure_stride(64)
    out, iou = m(torch.rand(2, 3, 64, 64) * 255)
    assert out.shape == (2, 16, 16) and iou is None  # stride 4; K.V predicts no IoU


def test_labeler_hierarchical_last_feature_map():
    cfg = LabelerConfig(backbone="resnet10t", crop_size=64, decoder_dim=16)
    m = build_labeler(cfg)
    assert m.decoder.in_stride == 32
    assert m(torch.rand(1, 3, 64, 64) * 255)[0].shape == (1, 16, 16)


def test_weights_round_trip_and_vit_pos_embed_resize(tmp_path):
    src = build_encoder("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=32, num_heads=2, patch_size=8)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    # Another crop size: position embeddings (4x4 grid) are resampled to 8x8 by timm's filter.
    dst = build_encoder("vit_tiny_patch16_224", img_size=64, weights=path, depth=1, embed_dim=32,
                        num_heads=2, patch_size=8)
    assert torch.equal(dst.model.blocks[0].attn.qkv.weight, src.model.blocks[0].attn.qkv.weight)


def test_weights_key_mismatch_is_an_error(tmp_path):
    enc = build_encoder("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=32, num_heads=2, patch_size=8)
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items()}
    sd.pop("patch_embed.proj.weight")  # the stem: the official code would silently train it from scratch
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        load_encoder_weights(enc.model, path)
    msg = str(e.value)
    assert "bad.safetensors" in msg and "patch_embed.proj.weight" in msg and "extra.weight" in msg
    report = load_encoder_weights(enc.model, path, strict=False)  # opt-in: loads, reports
    assert report.missing == ["patch_embed.proj.weight"] and report.unexpected == ["extra.weight"]


def test_weights_wrong_shape_and_missing_file(tmp_path):
    enc = build_encoder("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=32, num_heads=2, patch_size=8)
    sd = {k: v.contiguous() for k, v in enc.model.state_dict().items()}
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    save_file(sd, str(tmp_path / "shape.safetensors"))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_encoder_weights(enc.model, tmp_path / "shape.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_encoder_weights(enc.model, tmp_path / "nope.pth")
    for name in ("junk.pth", "config.json", "model.onnx", "junk.safetensors"):  # one line, no PyTorch text
        (tmp_path / name).write_bytes(b'{"not": "a checkpoint"}')
        with pytest.raises(WeightsError, match="cannot read") as e:
            load_encoder_weights(enc.model, tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value) and "weights_only" not in str(e.value)
    save_file({"neck.0.weight": torch.zeros(2)}, str(tmp_path / "neck.safetensors"))  # no key matches
    with pytest.raises(WeightsError, match="no key of the file matches") as e:
        load_encoder_weights(enc.model, tmp_path / "neck.safetensors")
    assert "allow-missing-keys" not in str(e.value)


def test_save_load_labeler(tmp_path):
    m = build_labeler(LabelerConfig(**TINY)).eval()
    save_labeler(m, tmp_path)
    m2 = load_labeler(tmp_path)
    x = torch.rand(1, 3, 64, 64) * 255
    assert torch.allclose(m(x)[0], m2(x)[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a trained mal run"):
        load_labeler(tmp_path / "empty")


def test_ema_update():
    s, t = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        s.weight.fill_(1.0)
        t.weight.fill_(0.0)
    ema_update(t, s, 0.996)
    assert torch.allclose(t.weight, torch.full((2, 2), 0.004))
    for _ in range(3000):
        ema_update(t, s, 0.996)
    assert torch.allclose(t.weight, s.weight, atol=1e-4)


def test_freeze_leading_and_schedule():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    frozen = freeze_leading(m, 0.5)
    assert frozen == 20 and not m[0].weight.requires_grad and m[1].weight.requires_grad
    assert lr_lambda(0, 10, 100, 0.2) == 0.1 and lr_lambda(9, 10, 100, 0.2) == 1.0
    assert abs(lr_lambda(100, 10, 100, 0.2) - 0.2) < 1e-9


def test_one_weights_digest_for_both_hashes():
    """runtime.tensors_sha256 gives what label.weights_sha256 (sorted state dict, buffers included)
    and train.parameter_digest (parameters in order, 16 hex digits) computed before they shared it."""
    import hashlib

    from mal.labeling.labelers import weights_sha256
    from mal.runtime import tensors_sha256
    from mal.train import parameter_digest

    def old(named, view):
        h = hashlib.sha256()
        for name, t in named:
            h.update(name.encode())
            h.update(view(t.detach().cpu().contiguous()).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    m = build_labeler(LabelerConfig(backbone="resnet10t", crop_size=64, decoder_dim=16))  # has int buffers
    assert any(not b.dtype.is_floating_point for b in m.buffers())
    state = sorted(m.state_dict().items())
    assert weights_sha256(m) == old(state, lambda t: t.reshape(-1)) == tensors_sha256(state)
    assert parameter_digest(m) == old(m.named_parameters(), lambda t: t)[:16] \
        == tensors_sha256(m.named_parameters())[:16]
