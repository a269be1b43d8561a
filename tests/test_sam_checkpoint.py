"""SAM checkpoints in their original formats (segment-anything ViT, MobileSAM TinyViT) loaded from one file:
masks equal to segment-anything's own SamPredictor, type detection, one-line errors for other files."""
import json
import re
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from mal.config import recipe
from mal.errors import MalError
from mal.modeling.weights import WeightsError
from mal.modeling.load import build_sam_labeler
from mal.modeling.sam_checkpoint import inspect_sam_checkpoint, tinyvit_to_timm
from mal.predictor import MaskPredictor
from mal.testing import mask_differences, smooth_image

SIZE = 256  # the tiny ViT's frame (Meta's: 1024)


def tiny_sam(seed: int = 0, size: int = SIZE) -> Sam:
    """A segment-anything Sam with a 2-block ViT (width 64) and SAM's real prompt encoder and decoder,
    random weights; position embeddings and relative positions randomised too (they start at zero)."""
    torch.manual_seed(seed)
    sam = Sam(image_encoder=ImageEncoderViT(
                  depth=2, embed_dim=64, img_size=size, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                  num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
                  window_size=4, out_chans=256),
              prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(size // 16, size // 16),
                                           input_image_size=(size, size), mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                  depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
                  iou_head_depth=3, iou_head_hidden_dim=256),
              pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():
        for n, p in sam.named_parameters():
            if "rel_pos" in n or "pos_embed" in n:
                p.normal_(0, 0.1)
    return sam.eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)  # as Meta ships its checkpoints: a plain state dict
    return sam, path


def assert_same_masks(sam: Sam, model, image: np.ndarray, boxes: np.ndarray) -> None:
    """mal's masks = SamPredictor.predict(box=...)'s single mask, every pixel of each box (mal's masks
    never leave their box: outside it they are empty by design); scores = SAM's IoU prediction."""
    ref = SamPredictor(sam)
    ref.set_image(image)
    mp = MaskPredictor(model, device="cpu", precision="32")
    mp.set_image(image)
    masks, scores = mp.predict(boxes)
    for box, mask, score in zip(boxes, masks, scores):
        logits, iou, _ = ref.predict(box=box, multimask_output=False, return_logits=True)
        inside, differing, ties = mask_differences(mask, box, logits[0], sam.mask_threshold)
        assert ((logits[0] > sam.mask_threshold) & inside).any(), "a box whose reference mask is empty proves little"
        odd = differing & ~ties
        assert not odd.any(), f"{odd.sum()} pixels differ, SAM's logits there: {logits[0][odd][:5]}"
        assert ties.sum() <= 2, "more than 2 threshold ties in one mask"
        assert not mask[~inside].any()
        assert score == pytest.approx(float(np.clip(iou[0], 0, 1)), abs=1e-6)
    assert mp.fallbacks == [None] * len(boxes)


def test_segment_anything_vit_checkpoint_gives_sam_predictor_masks(tiny_checkpoint):
    sam, path = tiny_checkpoint
    ckpt = inspect_sam_checkpoint(path)
    assert (ckpt.backbone, ckpt.img_size, ckpt.sam_type) == ("sam_vit", SIZE, "vit")
    assert ckpt.encoder_kwargs == dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], window_size=4,
                                       patch_size=16, mlp_ratio=4.0)
    model = build_sam_labeler(path)
    boxes = np.array([[20, 30, 140, 200], [100, 50, 250, 120], [5, 5, 60, 60], [0, 0, 256, 256]], float)
    assert_same_masks(sam, model, smooth_image(SIZE, SIZE), boxes)


@pytest.mark.slow
def test_meta_vit_b_checkpoint_is_detected_and_gives_sam_predictor_masks(tmp_path):
    # Meta's vit_b at its real size (1024 frame, 91M parameters), random weights.
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    ckpt = inspect_sam_checkpoint(path, "vit_b")
    assert (ckpt.sam_type, ckpt.img_size, ckpt.encoder_kwargs["global_attn_indexes"]) == ("vit_b", 1024, [2, 5, 8, 11])
    with pytest.raises(WeightsError, match="sam_vit_b_random.pth: --sam-type vit_h, but the file holds a vit_b"):
        inspect_sam_checkpoint(path, "vit_h")
    assert_same_masks(sam, build_sam_labeler(path), smooth_image(1024, 1024),
                      np.array([[100, 200, 600, 700], [500, 40, 1000, 300]], float))


# timm's TinyViT names -> the original TinyViT's (MobileSAM's): the inverse of tinyvit_to_timm, written
# out independently, so that a mobile_sam.pt-style file can be made from a random timm model.
_TO_ORIGINAL = [(r"^patch_embed\.conv1\.", "patch_embed.seq.0."), (r"^patch_embed\.conv2\.", "patch_embed.seq.2."),
                (r"^stages\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample."),
                (r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks."), (r"\.conv\.(weight|bias)$", r".c.\1"),
                (r"^head\.norm\.", "norm_head.")]


def test_mobile_sam_checkpoint_loads_into_the_timm_tinyvit(tmp_path):
    from dataclasses import replace

    from mal.modeling.labeler import LabelerConfig, build_labeler
    torch.manual_seed(0)
    ref = build_labeler(LabelerConfig(decoder="sam", crop_size=256, view="image", box_padding=False)).eval()
    sd = {}
    for k, v in ref.encoder.model.state_dict().items():
        for pattern, repl in _TO_ORIGINAL:
            k = re.sub(pattern, repl, k)
        sd["image_encoder." + k] = v
    sd["image_encoder.head.weight"] = torch.zeros(1000, 320)  # MobileSAM keeps TinyViT's ImageNet classifier
    sd.update({"image_encoder.neck." + k: v for k, v in ref.neck.state_dict().items()})
    sd.update(ref.decoder.state_dict())
    assert "image_encoder.layers.0.downsample.conv1.c.weight" in sd  # the original layout
    path = tmp_path / "mobile_sam.pt"
    torch.save(sd, path)
    ckpt = inspect_sam_checkpoint(path, "vit_t")
    assert (ckpt.sam_type, ckpt.backbone, ckpt.img_size) == ("vit_t", "tiny_vit_5m_sam", 1024)
    # The loading build_sam_labeler does, in a 256 frame (MobileSAM's 1024 only costs time here).
    model = build_labeler(replace(ckpt.labeler_config(), crop_size=256), weights=path, neck_weights=path,
                          decoder_weights=path)
    assert set(model.state_dict()) == set(ref.state_dict())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    got = tinyvit_to_timm({k.removeprefix("image_encoder."): v for k, v in sd.items()
                           if k.startswith("image_encoder.") and ".neck." not in k})
    assert "stages.1.downsample.conv1.conv.weight" in got and "head.weight" not in got


def test_files_that_are_not_sam_checkpoints(tmp_path, tiny_checkpoint):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match=r"resnet.pth: not a Segment-Anything checkpoint: expected image_encoder"
                                           r"\.\*, prompt_encoder\.\* and mask_decoder\.\* keys, found conv1, fc"):
        inspect_sam_checkpoint(other)
    truncated = tmp_path / "sam_truncated.pth"
    truncated.write_bytes(tiny_checkpoint[1].read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="sam_truncated.pth: cannot read weights"):
        inspect_sam_checkpoint(truncated)
    # The keys are there but a tensor of the decoder is cut: loading says which, naming the file.
    sd = torch.load(tiny_checkpoint[1], weights_only=True)
    sd["mask_decoder.iou_token.weight"] = sd["mask_decoder.iou_token.weight"][:, :10]
    torch.save(sd, tmp_path / "sam_bad_shape.pth")
    with pytest.raises(WeightsError, match="sam_bad_shape.pth: not a SAM prompt encoder"):
        build_sam_labeler(tmp_path / "sam_bad_shape.pth")
    with pytest.raises(MalError, match="--sam-type must be one of"):
        inspect_sam_checkpoint(tiny_checkpoint[1], "vit_x")


def test_cli_label_from_a_sam_checkpoint(tmp_path, tiny_checkpoint, scenes, capsys):
    from mal.cli import main
    images, _, boxes = scenes
    out = tmp_path / "zero.json"
    assert main(["label", "--engine", "sam", "--sam-checkpoint", str(tiny_checkpoint[1]), "--images", str(images),
                 "--annotations", str(boxes), "--out", str(out), "--precision", "32", "--num-workers", "0"]) == 0
    n = len(json.loads(boxes.read_text())["annotations"])
    assert len(json.loads(out.read_text())["annotations"]) == n
    capsys.readouterr()
    bad = tmp_path / "not_sam.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    for argv in (["label", "--engine", "sam", "--sam-checkpoint", str(bad), "--out", str(tmp_path / "x.json")],
                 ["train", "--sam-checkpoint", str(bad), "--out", str(tmp_path / "r2")]):
        rc = main(argv[:1] + ["--images", str(images), "--annotations", str(boxes)] + argv[1:])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "not_sam.pth: not a Segment-Anything checkpoint" in err[0], err


@pytest.mark.slow
def test_cli_train_from_a_sam_checkpoint(tmp_path, tiny_checkpoint, scenes):
    from mal.cli import main
    images, _, boxes = scenes
    path = tiny_checkpoint[1]
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--annotations", str(boxes), "--out", str(run),
                 "--sam-checkpoint", str(path), "--max-steps", "1", "--batch-size", "8", "--min-area", "100",
                 "--num-workers", "0", "--precision", "32"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["backbone"], cfg["crop_size"], cfg["box_padding"]) == ("sam_vit", SIZE, False)
    assert cfg["box_frame"] == recipe("sam").labeler.box_frame * SIZE / 1024  # the zoom scales with the frame
    assert main(["label", "--model", str(run), "--images", str(images), "--annotations", str(boxes),
                 "--out", str(tmp_path / "trained.json"), "--num-workers", "0"]) == 0


def test_embedding_cache_is_bounded(tmp_path):
    from mal.embedding_cache import EmbeddingCache
    one = 4 * 8 * 8 * 4  # bytes of one (4, 8, 8) float32 embedding
    cache = EmbeddingCache(memory_bytes=2 * one, disk_bytes=1 * one, folder=tmp_path / "emb")
    calls = []

    def compute(pos):
        calls.append(pos.tolist())
        return torch.stack([torch.full((4, 8, 8), float(keys[i])) for i in pos])

    keys = [10, 11, 12, 13]
    first = cache.get(keys, compute)
    again = cache.get(keys, compute)
    assert torch.equal(first, again) and first[:, 0, 0, 0].tolist() == [10, 11, 12, 13]
    assert calls == [[0, 1, 2, 3], [3]]  # 2 in memory, 1 on disk, the 4th past both budgets: recomputed
    assert (len(cache), cache.used_memory, cache.used_disk) == (3, 2 * one, one)
    assert [p.name for p in (tmp_path / "emb").iterdir()] == ["12.pt"]
    cache.clear()
    assert len(cache) == 0 and not list((tmp_path / "emb").iterdir())


@pytest.mark.slow
def test_training_embeds_each_image_once_with_the_cache(tmp_path, tiny_checkpoint, scenes, monkeypatch):
    from dataclasses import replace

    from mal.api import train
    from mal.config import recipe
    from mal.modeling.labeler import MaskLabeler
    images, _, boxes = scenes
    embedded = []
    original = MaskLabeler.embed
    monkeypatch.setattr(MaskLabeler, "embed", lambda self, crops: embedded.append(len(crops)) or original(self, crops))
    coco = json.loads(boxes.read_text())
    keep = {i["id"] for i in coco["images"][:2]}
    boxes = tmp_path / "two_images.json"  # 2 images x 2 epochs: 4 steps of one image (8 boxes) each
    boxes.write_text(json.dumps(dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
                                     annotations=[a for a in coco["annotations"] if a["image_id"] in keep])))
    cfg = inspect_sam_checkpoint(tiny_checkpoint[1]).labeler_config()
    path = str(tiny_checkpoint[1])
    for gb in (0.0, 1.0):
        embedded.clear()
        train(images, boxes, tmp_path / f"run{gb}", labeler=cfg, weights=path, neck_weights=path,
              decoder_weights=path, train_config=replace(recipe("sam").train, embed_cache_gb=gb, crf_iters=5), epochs=2,
              batch_size=8, min_area=100, num_workers=0, progress=False, precision="32")
        # + 1: freeze_unused's probe; without the cache the augmented and the clean image every step
        assert sum(embedded) == 1 + (2 if gb else 2 * 4), (gb, embedded)



def test_frozen_image_side_is_held_once(tiny_checkpoint):
    from dataclasses import replace

    from mal.config import recipe
    from mal.train import MALModule, module_kwargs
    path = str(tiny_checkpoint[1])
    files = dict(weights=path, neck_weights=path, decoder_weights=path)
    cfg = inspect_sam_checkpoint(path).labeler_config()
    m = MALModule(**module_kwargs(cfg, recipe("sam").train, **files))
    for other in (m.teacher, m.anchor):
        assert other.encoder.model.pos_embed is m.student.encoder.model.pos_embed
        assert other.neck[0].weight is m.student.neck[0].weight
        assert other.decoder.mask_decoder.iou_token.weight is not m.student.decoder.mask_decoder.iou_token.weight
    tuned = MALModule(**module_kwargs(cfg, replace(recipe("sam").train, freeze_encoder=0.5), **files))
    assert tuned.teacher.encoder.model.pos_embed is not tuned.student.encoder.model.pos_embed  # it trains: copied
