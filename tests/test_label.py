"""Labeling loop: batching across images, bad images, output contract (tiny random model)."""
import json

import pytest
from conftest import TINY_KV

from mal.labeling.label import LabelError, label
from mal.modeling.labeler import LabelerConfig, build_labeler

TINY = LabelerConfig(**TINY_KV)


@pytest.fixture(scope="module")
def model():
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

