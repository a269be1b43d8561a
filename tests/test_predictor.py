"""MaskPredictor (set_image / predict in memory) gives the masks `mal label` writes, for each decoder
and view, and through build_engine("mal"); engines go through it too."""
import json

import numpy as np
import pytest

from conftest import save_tiny_labeler
from mal.data.crops import box_mask, xywh_to_xyxy
from mal.data.images import ImageError, read_rgb
from mal.errors import MalError
from mal.engines import build_engine, label_with_engine
from mal.labeling.label import label
from mal.labeling.merge import category_offsets, shifted_score
from mal.coco_masks import decode_rle
from mal.predictor import MaskPredictor


@pytest.fixture(scope="module", params=["kv_crop", pytest.param("sam_image", marks=pytest.mark.slow)])
def run(request, tmp_path_factory):
    """A saved labeler with random weights (a `mal train` run directory as far as loading goes)."""
    return save_tiny_labeler(request.param, tmp_path_factory.mktemp(request.param))


def _by_image(coco: dict) -> dict:
    out = {}
    for a in coco["annotations"]:
        out.setdefault(a["image_id"], []).append(a)
    return out


@pytest.mark.parametrize("tta", [False, True])
def test_predictor_equals_mal_label(scenes, run, tmp_path, tta):
    images, _, boxes = scenes
    label(run, images, boxes, tmp_path / "label.json", batch_size=4, num_workers=0, progress=False, precision="32",
          tta=tta)
    written = {a["id"]: a for a in json.loads((tmp_path / "label.json").read_text())["annotations"]}
    coco = json.loads(boxes.read_text())
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    predictor = MaskPredictor.from_run(run, precision="32", batch_size=3, tta=tta)  # another batching
    own = {}  # the predictor's scores: the heads' own; mal label's are pooled over the job's categories
    for image_id, anns in _by_image(coco).items():
        predictor.set_image(read_rgb(images / files[image_id]))
        masks, scores = predictor.predict(np.stack([xywh_to_xyxy(a["bbox"]) for a in anns]))
        assert masks.dtype == bool and masks.shape[1:] == predictor.image.shape[:2]
        for a, m, s, fb in zip(anns, masks, scores, predictor.fallbacks):
            w = written[a["id"]]
            assert np.array_equal(m, decode_rle(w["segmentation"])), a["id"]
            assert fb == w.get("mal_fallback")
            own[a["id"]] = round(float(s), 4), fb
    assert len(own) == len(written) > 10
    anns = coco["annotations"]  # in input order, as the merge sums them
    offsets = category_offsets(np.array([a["category_id"] for a in anns]),
                               np.array([np.nan if own[a["id"]][1] else own[a["id"]][0] for a in anns]))
    assert len(offsets) > 1, "the scenes should have several categories"
    for a in anns:
        (s, fb), w = own[a["id"]], written[a["id"]]["score"]
        assert w == (s if fb else shifted_score(s, offsets[a["category_id"]])), a["id"]


def test_mal_engine_labels_like_mal_label(scenes, run, tmp_path):
    images, _, boxes = scenes
    label(run, images, boxes, tmp_path / "label.json", num_workers=0, progress=False, precision="32")
    label_with_engine(build_engine("mal", model=run, precision="32"), images, boxes, tmp_path / "engine.json",
                      num_workers=0, progress=False)
    a, b = (json.loads((tmp_path / f).read_text())["annotations"] for f in ("label.json", "engine.json"))
    assert [x["segmentation"] for x in a] == [x["segmentation"] for x in b]


def test_predict_again_and_subsets_reuse_the_image(scenes, run):
    images, _, boxes = scenes
    coco = json.loads(boxes.read_text())
    first = coco["images"][0]
    anns = _by_image(coco)[first["id"]]
    xyxy = np.stack([xywh_to_xyxy(a["bbox"]) for a in anns])
    predictor = MaskPredictor.from_run(run, precision="32")
    rgb = read_rgb(images / first["file_name"])
    predictor.set_image(rgb)
    masks, scores = predictor.predict(xyxy)
    again, _ = predictor.predict(xyxy[1:2])
    assert np.array_equal(again[0], masks[1])
    # The same pixels as gray+alpha or 4 channels: decoded as files are (alpha dropped).
    predictor.set_image(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    assert np.array_equal(predictor.predict(xyxy)[0], masks)


def test_bad_calls_are_clear(run):
    predictor = MaskPredictor.from_run(run)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict([[0, 0, 5, 5]])
    with pytest.raises(ImageError, match="shape"):
        predictor.set_image(np.zeros((8, 8, 2), np.uint8))
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    # The rule and the words of mal label's COCO checks (one clip_box for both).
    with pytest.raises(ValueError, match="box 1 has zero or negative size"):
        predictor.predict([[0, 0, 5, 5], [3, 3, 3, 9]])
    with pytest.raises(ValueError, match=r"box 0 \[40.0, 0.0, 50.0, 5.0\] is entirely outside the 30x20 image"):
        predictor.predict([[40, 0, 50, 5]])
    with pytest.raises(ValueError, match=r"box 0 \[29.5, 0.0, 35.0, 5.0\] is smaller than 1 px after clipping to the 30x20 image: w=0.5"):
        predictor.predict([[29.5, 0, 35, 5]])
    with pytest.raises(ValueError, match="box 0 contains NaN or inf"):
        predictor.predict([[0, 0, np.nan, 5]])
    masks, scores = predictor.predict(np.zeros((0, 4)))
    assert masks.shape == (0, 20, 30) and scores.shape == (0,)
    masks, _ = predictor.predict([[-5, 2, 10, 8]])  # partly outside: clipped, as mal label clips it
    assert not masks[0][:, 10:].any() and not masks[0][:2].any()
    with pytest.raises(MalError, match="tta .* is for the trained labeler"):
        MaskPredictor(build_engine("box"), tta=True)


def test_engine_predictor_clips_and_falls_back():
    img = np.zeros((20, 30, 3), np.uint8)
    predictor = MaskPredictor(build_engine("box"))
    predictor.set_image(img)
    masks, scores = predictor.predict([[2, 3, 12, 9]])
    assert np.array_equal(masks[0], box_mask([2, 3, 12, 9], 20, 30) > 0) and scores[0] == 1.0

    class Empty:  # an engine that finds nothing: the filled box, score 0, flagged
        name = "empty"

        def predict(self, image, boxes):
            return [np.zeros(image.shape[:2], bool) for _ in boxes], np.ones(len(boxes))

    predictor = MaskPredictor(Empty())
    predictor.set_image(img)
    masks, scores = predictor.predict([[2, 3, 12, 9]])
    assert masks[0].sum() == 60 and scores[0] == 0.0 and predictor.fallbacks == ["box"]


def test_mirror_average_keeps_an_edge_column_that_only_the_box_covers():
    """A box edge on a pixel centre (x.5) is inside the box and outside its mirror (half-open [x0, x1)):
    there the box's own probability counts alone, not halved by the mirror's zero."""
    from mal.predictor import to_mask
    box, window = np.array([2.5, 1.0, 6.5, 5.0]), np.array([0, 0, 10, 8])
    mirror_window = np.array([0, 0, 10, 8])  # the crop window in the mirrored image
    sure = np.full((4, 4), 0.8, np.float32)  # view crop: probabilities over the window
    mask, score, fallback = to_mask(sure, window, box, 8, 10, 0.5, 0.7, None, (sure, mirror_window, 0.9))
    assert fallback is None and score == pytest.approx(0.8)
    assert (mask == (box_mask(box, 8, 10) > 0)).all()  # columns 2-5, 2 included
    doubtful = np.full((4, 4), 0.2, np.float32)  # the mirror disagrees: the average decides
    mask, _, _ = to_mask(sure, window, box, 8, 10, 0.55, None, None, (doubtful, mirror_window, None))
    assert mask[:, 3:6].sum() == 0 and mask[1:5, 2].all()  # 0.5 inside both; 0.8 alone on column 2


@pytest.mark.parametrize("pad,tta", [(0, False), (37, False), (37, True)])
def test_each_frame_is_encoded_once_per_image(scenes, tmp_path, monkeypatch, pad, tta):
    """With zoomed tiles on (box_frame > 0, as the sam recipe) the frames depend on the boxes passed
    together: the whole image (pad 0) or several tiles (small boxes in a large image, pad 37), and with
    tta their mirrors. The predictor's masks are mal label's; a frame is encoded at the first predict
    that needs it and not again until the next image, nor when only some of the frames are cached, nor
    when the cache holds fewer frames than one call needs."""
    import torch
    import mal.predictor
    from conftest import TINY_SAM_IMAGE
    from test_label import transformed_scenes
    from mal.modeling.labeler import LabelerConfig, build_labeler
    torch.manual_seed(0)
    model = build_labeler(LabelerConfig(**dict(TINY_SAM_IMAGE, box_frame=32.0))).eval()
    images, boxes = transformed_scenes(*scenes[::2], tmp_path / "padded", pad=pad)
    label(model, images, boxes, tmp_path / "label.json", num_workers=0, progress=False, precision="32", tta=tta)
    written = {a["id"]: a for a in json.loads((tmp_path / "label.json").read_text())["annotations"]}
    coco = json.loads(boxes.read_text())
    predictor = MaskPredictor(model, precision="32", tta=tta)
    encoded = []
    embed = model.embed
    model.embed = lambda crops: encoded.append(len(crops)) or embed(crops)
    first = coco["images"][0]
    anns = _by_image(coco)[first["id"]]
    xyxy = np.stack([xywh_to_xyxy(a["bbox"]) for a in anns])
    predictor.set_image(read_rgb(images / first["file_name"]))
    assert not encoded  # which frames: the boxes say
    masks, _ = predictor.predict(xyxy)
    frames = sum(encoded)
    assert frames == (1 + tta if pad == 0 else (2 + 2 * tta))  # the whole image, or tiles (and mirrors)
    for a, m in zip(anns, masks):
        assert np.array_equal(m, decode_rle(written[a["id"]]["segmentation"])), a["id"]
    assert np.array_equal(predictor.predict(xyxy)[0], masks) and sum(encoded) == frames  # nothing encoded
    predictor._frame_feats.popitem(last=False)  # one frame forgotten: only it is encoded again
    assert np.array_equal(predictor.predict(xyxy)[0], masks) and sum(encoded) == frames + 1
    monkeypatch.setattr(mal.predictor, "FRAME_CACHE", 1)  # fewer than a call needs: still right
    assert np.array_equal(predictor.predict(xyxy)[0], masks) and len(predictor._frame_feats) == 1
    predictor.set_image(read_rgb(images / first["file_name"]))  # a new image: all encoded again
    before = sum(encoded)
    predictor.predict(xyxy)
    assert sum(encoded) - before == frames
