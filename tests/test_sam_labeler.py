"""The sam labeler: whole-image and crop views, batching, training from boxes, loss windows, bad files."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import COCO_MINI, SAM_DECODER_ONNX, SAM_ENCODER_ONNX, SAM_NECK, TINYVIT_SAM, require
from mal.data.crops import crop_and_resize
from mal.data.tiles import image_tiles
from mal.demo import make_scenes
from mal.labeling.label import label
from mal.coco_masks import decode_rle
from mal.config import recipe
from mal.modeling.labeler import LabelerConfig, build_labeler
from mal.train import MALModule, mask_iou


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), num_images=6)


def _anns(path):
    return json.loads(path.read_text())["annotations"]


def _miou(gt_path, pred_path, pooled: bool = False) -> float:
    """Mean IoU over instances, or (pooled) all intersections over all unions."""
    gt = {a["id"]: decode_rle(a["segmentation"]) for a in _anns(gt_path)}
    inter, union = [], []
    for a in _anns(pred_path):
        g, p = gt[a["id"]], decode_rle(a["segmentation"])
        inter.append((g & p).sum())
        union.append(max((g | p).sum(), 1))
    inter, union = np.array(inter), np.array(union)
    return float(inter.sum() / union.sum() if pooled else np.mean(inter / union))


def real_sam(cfg: LabelerConfig):
    return build_labeler(cfg, weights=require(TINYVIT_SAM), neck_weights=require(SAM_NECK),
                         decoder_weights=require(SAM_DECODER_ONNX)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("view", ["image", "crop"])
def test_same_masks_for_any_batch_size(scenes, tmp_path, view):
    # Random weights (no ../shared needed): only the grouping of boxes into batches changes.
    torch.manual_seed(0)
    model = build_labeler(LabelerConfig(decoder="sam", crop_size=128, view=view, label_expand=2.0)).eval()
    images, _, boxes = scenes
    outs = []
    for bs in (1, 3, 100):
        label(model, images, boxes, tmp_path / f"{bs}.json", batch_size=bs, num_workers=0, progress=False,
              precision="32")  # bf16 rounding depends on the batch's shape
        outs.append(_anns(tmp_path / f"{bs}.json"))
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) == len(_anns(boxes))
    assert all(0 <= a["score"] <= 1 for a in outs[0])


@pytest.mark.slow
def test_image_view_zero_shot_is_the_sam_engine(tmp_path):
    # No training: the torch labeler on the whole image gives the masks of the ONNX SAM engine.
    from mal.engines import build_engine, label_with_engine
    coco = json.loads((require(COCO_MINI) / "instances.json").read_text())
    keep = {i["id"] for i in coco["images"][:3]}
    sub = dict(coco, images=[i for i in coco["images"] if i["id"] in keep],
               annotations=[a for a in coco["annotations"] if a["image_id"] in keep])
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    model = real_sam(replace(recipe("sam").labeler, box_frame=0.0))  # the whole image, as the engine
    label(model, COCO_MINI / "images", tmp_path / "sub.json", tmp_path / "torch.json", num_workers=0,
          progress=False, precision="32")
    engine = build_engine("sam", encoder_path=require(SAM_ENCODER_ONNX), decoder_path=SAM_DECODER_ONNX)
    label_with_engine(engine, COCO_MINI / "images", tmp_path / "sub.json", tmp_path / "onnx.json",
                      num_workers=0, progress=False)
    # Same model and the same two-step upsampling of logits (measured pooled 0.995, mean 0.986: the
    # engine's ONNX Resize vs ours, and resizing the padded frame vs the image alone, differ slightly).
    pooled = _miou(tmp_path / "onnx.json", tmp_path / "torch.json", pooled=True)
    mean = _miou(tmp_path / "onnx.json", tmp_path / "torch.json")
    assert len(sub["annotations"]) > 10 and pooled > 0.99 and mean > 0.98, (pooled, mean)


def test_loss_windows_follow_the_crop_geometry():
    # roi_align of the frame into a box's window = crop_and_resize of that window (the same geometry).
    rng = np.random.default_rng(0)
    frame = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    frame = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(frame).permute(2, 0, 1)[None], 5, 1, 2)[0]
                       .permute(1, 2, 0))  # smooth, so both resamplings agree closely
    window = np.array([8, 12, 40, 44])
    batch = {"windows": torch.tensor([window], dtype=torch.float32), "box_mask": torch.zeros(1, 16, 16),
             "index": torch.tensor([0])}
    maps = torch.from_numpy(frame).permute(2, 0, 1)[None].contiguous()
    got = MALModule._in_windows(maps, batch, 1.0, per_box=False)[0].permute(1, 2, 0).numpy()
    want = crop_and_resize(frame.astype(np.uint8), window, 16).astype(np.float32)
    assert np.abs(got - want).mean() < 2.0
    # Per-box maps at stride 4 (SAM's low-res logits): the same window at a quarter of the resolution.
    got4 = MALModule._in_windows(maps[:, :, ::4, ::4].contiguous(), batch, 4.0)[0]
    assert got4.shape == (3, 16, 16)


def test_mask_iou():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2], b[0, :1] = True, True
    assert torch.allclose(mask_iou(a, b), torch.tensor([0.5, 1.0]))  # both empty: 1


def test_image_frame_is_the_long_side():
    box = np.array([[1.0, 1.0, 5.0, 5.0]])
    assert image_tiles(box, 30, 50, 1024, 0)[0].tolist() == [[0, 0, 50, 50]]
    assert image_tiles(box, 70, 20, 1024, 0)[0].tolist() == [[0, 0, 70, 70]]


@pytest.mark.slow
def test_training_improves_over_its_zero_shot_start(scenes, tmp_path):
    from mal.api import train
    images, gt, boxes = scenes
    cfg = LabelerConfig(decoder="sam", crop_size=256, view="image")
    label(real_sam(cfg), images, boxes, tmp_path / "zero.json", num_workers=0, progress=False)
    # A faster learning rate than the default, so that 60 steps of 8 boxes show the gain (measured
    # +0.012: 0.762 -> 0.774; with 2e-4 the 60-step run's fast teacher (EMA 0.917) gains nothing).
    run = train(images, boxes, tmp_path / "run", labeler=cfg,
                train_config=replace(recipe("sam").train, lr=1e-4),
                max_steps=60, batch_size=8, min_area=100, num_workers=0, progress=False)
    label(run, images, boxes, tmp_path / "trained.json", num_workers=0, progress=False)
    before, after = _miou(gt, tmp_path / "zero.json"), _miou(gt, tmp_path / "trained.json")
    assert after > before + 0.005, (before, after)


def test_wrong_decoder_file_is_one_line_error(scenes, tmp_path, capsys):
    from mal.cli import main
    images, _, boxes = scenes
    bad = tmp_path / "not_sam.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    rc = main(["train", "--images", str(images), "--annotations", str(boxes), "--out", str(tmp_path / "run"),
               "--decoder", "sam", "--weights", str(require(TINYVIT_SAM)), "--decoder-weights", str(bad),
               "--max-steps", "1", "--min-area", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not_sam.pth: not a SAM prompt encoder + mask decoder" in err[0]


def test_reference_score_is_the_mean_of_both_iou_heads_and_survives_saving(tmp_path):
    """keep_reference: masks from the labeler's own decoder, the score the mean of its IoU head and the
    reference decoder's; save/load keeps both decoders."""
    from conftest import TINY_SAM_IMAGE
    from mal.modeling.labeler import keep_reference, load_trained, save_labeler
    torch.manual_seed(0)
    model = build_labeler(LabelerConfig(**TINY_SAM_IMAGE)).eval()
    other = build_labeler(LabelerConfig(**TINY_SAM_IMAGE)).eval()  # other random weights: a distinct decoder
    crops = torch.randint(0, 255, (1, 3, 128, 128)).float()
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 5.0, 120.0, 50.0]])
    with torch.no_grad():
        feats = model.embed(crops)
        own_logits, own_iou = model.decode(feats, boxes, 128)
        ref_iou = other.decoder(feats, boxes, None, input_size=(128, 128))[1]
        assert not torch.allclose(own_iou, ref_iou)
        keep_reference(model, other.decoder)
        save_labeler(model, tmp_path / "run")
        loaded = load_trained(tmp_path / "run")
        assert loaded.config.reference_score and not any(p.requires_grad for p in loaded.reference_decoder.parameters())
        logits, iou = loaded.decode(loaded.embed(crops), boxes, 128)
    assert torch.allclose(logits, own_logits, atol=1e-5)
    assert torch.allclose(iou, (own_iou + ref_iou) / 2, atol=1e-5)
    with pytest.raises(Exception, match="reference_score is for the sam decoder"):
        build_labeler(LabelerConfig(**dict(TINY_SAM_IMAGE, decoder="kv", view="crop", reference_score=True)))


@pytest.mark.slow
def test_mal_train_saves_the_decoder_it_started_from_for_the_score(scenes, tmp_path):
    """The recipe's run keeps SAM's zero-shot decoder as the reference, in the run directory and in its
    checkpoint alike, while its own decoder trains."""
    from mal.api import train
    from mal.modeling.labeler import load_trained
    from mal.modeling.sam_decoder import SamBoxDecoder, load_sam_decoder_weights
    images, _, boxes = scenes
    run = train(images, boxes, tmp_path / "run", labeler=LabelerConfig(decoder="sam", crop_size=256, view="image"),
                train_config=replace(recipe("sam").train, lr=1e-3), max_steps=2, batch_size=2, min_area=100,
                num_workers=0, progress=False, precision="32")
    start = SamBoxDecoder()
    load_sam_decoder_weights(start, require(SAM_DECODER_ONNX))
    for model in (load_trained(run), load_trained(run / "checkpoints" / "last.ckpt")):
        assert model.config.reference_score
        ref, own = model.reference_decoder.state_dict(), model.decoder.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in start.state_dict().items())
        assert any(not torch.equal(v, own[k]) for k, v in start.state_dict().items())
