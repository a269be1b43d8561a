"""End to end on the built-in synthetic scenes: train briefly on CPU, label, evaluate, via the CLI."""
import json

import pytest

from mal.cli import main
from mal.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run_demo(tmp_path_factory.mktemp("demo"), progress=False)


@pytest.mark.slow
def test_labels_beat_filled_box(demo):
    mal, box = demo["mal"], demo["box"]
    assert mal["num_instances"] == box["num_instances"] > 20
    assert mal["miou_instance"] > box["miou_instance"] + 0.03, (mal["miou_instance"], box["miou_instance"])


@pytest.mark.slow
def test_output_is_valid_coco_with_true_areas(demo):
    out = json.loads(demo["masks"].read_text())
    boxes = json.loads((demo["masks"].parent / "data/boxes.json").read_text())
    assert out["images"] == boxes["images"] and out["categories"] == boxes["categories"]
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in boxes["annotations"]]
    from mal.coco_masks import decode_rle
    for a, b in zip(out["annotations"], boxes["annotations"]):
        assert a["bbox"] == b["bbox"] and a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        m = decode_rle(a["segmentation"])
        assert a["area"] == int(m.sum()) > 0 and 0.0 <= a["score"] <= 1.0
        x, y, w, h = a["bbox"]
        ys, xs = m.nonzero()
        assert xs.min() >= int(x) and xs.max() < x + w + 1 and ys.min() >= int(y) and ys.max() < y + h + 1


@pytest.mark.slow
def test_cli_label_and_eval(demo, tmp_path, capsys):
    data = demo["masks"].parent / "data"
    out = tmp_path / "again.json"
    assert main(["label", "--model", str(demo["run"]), "--images", str(data / "images"),
                 "--annotations", str(data / "boxes.json"), "--out", str(out), "--num-workers", "0"]) == 0
    assert json.loads(out.read_text())["annotations"] == json.loads(demo["masks"].read_text())["annotations"]
    assert main(["eval", "--gt", str(data / "gt.json"), "--pred", str(out), "--json", str(tmp_path / "r.json")]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["num_instances"] == demo["mal"]["num_instances"]
