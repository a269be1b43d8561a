"""Labeling loop: batching across images, bad images, output contract (tiny random model)."""
import json

import numpy as np
import pytest
import torch
from conftest import TINY_KV

from mal.labeling.label import LabelError, label
from mal.modeling.labeler import LabelerConfig, build_labeler

TINY = LabelerConfig(**TINY_KV)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # the same weights whatever ran before (test order)
    return build_labeler(TINY).eval()


def test_batches_spanning_images_give_identical_output(scenes, model, tmp_path):
    images, _, boxes = scenes
    outs = []
    for bs in (1, 3, 100):
        label(model, images, boxes, tmp_path / f"{bs}.json", batch_size=bs, num_workers=0, progress=False,
              precision="32")  # bf16 (auto on AMX CPUs) rounds differently for other batch shapes
        outs.append(json.loads((tmp_path / f"{bs}.json").read_text())["annotations"])
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0]) == len(json.loads(boxes.read_text())["annotations"])


def test_input_segmentation_is_ignored(scenes, model, tmp_path):
    images, gt, boxes = scenes
    label(model, images, gt, tmp_path / "from_gt.json", num_workers=0, progress=False)
    label(model, images, boxes, tmp_path / "from_boxes.json", num_workers=0, progress=False)
    a = json.loads((tmp_path / "from_gt.json").read_text())["annotations"]
    b = json.loads((tmp_path / "from_boxes.json").read_text())["annotations"]
    assert [x["segmentation"] for x in a] == [x["segmentation"] for x in b]


def test_kept_masks_replace_the_labelers_verbatim(scenes, model, tmp_path):
    """mal label --keep-masks: the boxes with a person's mask get it (score 1, mal_human), the others
    the labeler's mask as without it; the job's manifest holds the file, so a resume with another is
    refused; a mask for no box stops before any output."""
    from mal.coco_masks import decode_rle
    from mal.errors import MalError
    from mal.labeling.store import PartsError
    images, gt, boxes = scenes
    people = json.loads(gt.read_text())
    people["annotations"] = people["annotations"][1::3]
    kept_ids = {a["id"] for a in people["annotations"]}
    label(model, images, boxes, tmp_path / "plain.json", num_workers=0, progress=False, precision="32")
    label(model, images, boxes, tmp_path / "kept.json", num_workers=0, progress=False, precision="32",
          keep_masks=people, work_dir=tmp_path / "kept.parts", keep_parts=True)
    plain = {a["id"]: a for a in json.loads((tmp_path / "plain.json").read_text())["annotations"]}
    kept = {a["id"]: a for a in json.loads((tmp_path / "kept.json").read_text())["annotations"]}
    assert kept.keys() == plain.keys() and 0 < len(kept_ids) < len(kept)
    for a in people["annotations"]:
        k = kept[a["id"]]
        assert np.array_equal(decode_rle(k["segmentation"]), decode_rle(a["segmentation"]))
        assert k["score"] == 1.0 and k["mal_human"] is True and "mal_fallback" not in k
        assert k["area"] == int(decode_rle(a["segmentation"]).sum())
        assert k["segmentation"] != plain[a["id"]]["segmentation"]  # the random model's mask was another
    for i in kept.keys() - kept_ids:
        assert kept[i]["segmentation"] == plain[i]["segmentation"] and "mal_human" not in kept[i]
    # People's masks sit out of the category shift: no score in the chunk headers, the merge leaves them.
    headers = [json.loads(c.read_text().splitlines()[0]) for c in (tmp_path / "kept.parts").glob("shard-*/chunk-*")]
    scores = {i: v for h in headers for i, v in zip(h["ann_ids"], h["scores"])}
    assert scores.keys() == kept.keys() and all((scores[i] is None) == (i in kept_ids) for i in scores)
    # Only the masks a person changed (mal import's mal_reviewed: true), when asked, over two review rounds.
    reviewed = {**people, "annotations": [{**a, "mal_reviewed": a is people["annotations"][0]}
                                          for a in people["annotations"]]}
    second_round = {**people, "annotations": [{**people["annotations"][1], "mal_reviewed": True}]}
    label(model, images, boxes, tmp_path / "reviewed.json", num_workers=0, progress=False,
          keep_masks=[reviewed, second_round], keep_reviewed_only=True)
    human = [a["id"] for a in json.loads((tmp_path / "reviewed.json").read_text())["annotations"] if "mal_human" in a]
    assert human == [people["annotations"][0]["id"], people["annotations"][1]["id"]]
    # Another file of kept masks is another job: its work dir is not resumed.
    work = tmp_path / "work"
    kw = dict(num_workers=0, progress=False, work_dir=work, chunk_images=2)
    label(model, images, boxes, tmp_path / "a.json", shard="0/2", keep_masks=people, **kw)
    other = {**people, "annotations": people["annotations"][:1]}
    with pytest.raises(PartsError, match=r"--keep-masks file\(s\) differs"):
        label(model, images, boxes, tmp_path / "a.json", shard="1/2", keep_masks=other, **kw)
    with pytest.raises(PartsError, match=r"--keep-masks file\(s\) differs"):  # a round added
        label(model, images, boxes, tmp_path / "a.json", shard="1/2", keep_masks=[people, other], **kw)
    bad = {**people, "annotations": [{**people["annotations"][0], "id": 999}]}
    with pytest.raises(MalError, match="annotation 999 is not a box of"):
        label(model, images, boxes, tmp_path / "bad.json", num_workers=0, progress=False, keep_masks=bad)
    assert not (tmp_path / "bad.json").exists()


def test_corrupt_image_stops_cleanly_or_is_skipped(scenes, model, tmp_path):
    images, _, boxes = scenes
    bad_dir = tmp_path / "images"
    bad_dir.mkdir()
    for f in images.iterdir():
        (bad_dir / f.name).write_bytes(f.read_bytes())
    (bad_dir / "scene_002.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out.json"
    with pytest.raises(LabelError, match="scene_002.png"):
        label(model, bad_dir, boxes, out, num_workers=0, progress=False)
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == []
    assert not (tmp_path / "out.json.parts").exists()  # failed before its first chunk: nothing left
    s = label(model, bad_dir, boxes, out, num_workers=0, progress=False, skip_bad_images=True)
    assert len(s.skipped_images) == 1 and "scene_002.png" in s.skipped_images[0]
    kept = json.loads(out.read_text())["annotations"]
    assert kept and all(a["image_id"] != 3 for a in kept)


def transformed_scenes(images, boxes, out, mirror=False, pad=0):
    """The scenes placed ``pad`` px from the top left of a canvas 3x their size (boxes then small for
    the image), and/or left-right mirrored (images and boxes), as another data set."""
    from PIL import Image
    coco = json.loads(boxes.read_text())
    (out / "images").mkdir(parents=True)
    for f in images.iterdir():
        im = Image.open(f)
        if pad:
            canvas = Image.new("RGB", (3 * im.width, 3 * im.height), (90, 90, 90))
            canvas.paste(im, (pad, pad))
            im = canvas
        (im.transpose(Image.FLIP_LEFT_RIGHT) if mirror else im).save(out / "images" / f.name)
    for i in coco["images"]:
        i["width"], i["height"] = (3 * i["width"], 3 * i["height"]) if pad else (i["width"], i["height"])
    width = {i["id"]: i["width"] for i in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        x, y = x + pad, y + pad
        a["bbox"] = [width[a["image_id"]] - x - w if mirror else x, y, w, h]
    (out / "boxes.json").write_text(json.dumps(coco))
    return out / "images", out / "boxes.json"


@pytest.mark.parametrize("config", ["sam_image", "kv_crop", "sam_tiles"])
def test_flip_tta_labels_an_image_and_its_mirror_alike(scenes, tmp_path, config):
    """With tta, each mask is the mean of the image's and its mirror's probabilities, so labeling the
    mirrored scenes gives the mirror of every mask; without it the (random) model gives other masks.
    (Exactly so for boxes without an edge on a pixel centre, as the scenes' integer boxes.) "sam_tiles":
    small boxes in a large image, labeled on zoomed tiles, which the mirror plans anew."""
    from pycocotools import mask as mask_utils
    from conftest import TINY_SAM_IMAGE
    import torch
    torch.manual_seed(0)
    cfg = {"sam_image": TINY_SAM_IMAGE, "kv_crop": TINY_KV, "sam_tiles": dict(TINY_SAM_IMAGE, box_frame=32.0)}
    labeler = build_labeler(LabelerConfig(**cfg[config])).eval()
    images, _, boxes = scenes
    if config == "sam_tiles":
        images, boxes = transformed_scenes(images, boxes, tmp_path / "padded", pad=37)
    flipped_images, flipped_boxes = transformed_scenes(images, boxes, tmp_path / "mirror", mirror=True)

    def masks(imgs, bxs, name, tta, flip=False):
        label(labeler, imgs, bxs, tmp_path / name, num_workers=0, progress=False, precision="32", tta=tta)
        anns = json.loads((tmp_path / name).read_text())["annotations"]
        return {a["id"]: (m[:, ::-1] if flip else m, a["score"])
                for a in anns for m in [mask_utils.decode(a["segmentation"])]}

    with_tta = masks(images, boxes, "tta.json", True)
    mirrored = masks(flipped_images, flipped_boxes, "tta_mirror.json", True, flip=True)
    assert all((with_tta[i][0] == mirrored[i][0]).all() and with_tta[i][1] == pytest.approx(mirrored[i][1], abs=2e-4)
               for i in with_tta)
    plain = masks(images, boxes, "plain.json", False)
    plain_mirrored = masks(flipped_images, flipped_boxes, "plain_mirror.json", False, flip=True)
    assert sum((plain[i][0] != plain_mirrored[i][0]).any() for i in plain) > len(plain) // 2


def test_flip_tta_is_for_the_trained_labeler(scenes, model, tmp_path):
    from mal.engines import build_engine
    images, _, boxes = scenes
    with pytest.raises(LabelError, match="trained labeler"):
        label(build_engine("box"), images, boxes, tmp_path / "out.json", progress=False, tta=True)
    assert not (tmp_path / "out.json").exists()
    # The trained labeler as an engine takes tta itself, and its identity (for --resume) records it.
    plain, flipped = build_engine("mal", model=model), build_engine("mal", model=model, tta=True)
    assert flipped.identity == {**plain.identity, "tta": "flip"}
