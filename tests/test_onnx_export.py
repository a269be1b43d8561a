"""`mal export-onnx`: the exported labeler labels like the torch model (a handful of threshold pixels
at most), through `mal label --model DIR` and the predictor; non-labeler ONNX files are refused in
one line naming the file."""
import json

import numpy as np
import pytest
import torch

from conftest import save_tiny_labeler
from mal.cli import main
from mal.coco_masks import decode_rle
from mal.modeling.load import load_labeler
from mal.modeling.onnx_labeler import OnnxLabeler


@pytest.fixture(scope="module", params=["kv_crop", "sam_image"])
def run(request, tmp_path_factory):
    return save_tiny_labeler(request.param, tmp_path_factory.mktemp(request.param))


def _masks(path):
    return {a["id"]: (decode_rle(a["segmentation"]), a["score"])
            for a in json.loads(path.read_text())["annotations"]}


def test_export_round_trip_same_masks(scenes, run, tmp_path, capsys):
    images, _, boxes = scenes
    assert main(["export-onnx", "--model", str(run), "--out", str(tmp_path / "onnx")]) == 0
    assert "mal label --model" in capsys.readouterr().out
    common = ["--images", str(images), "--annotations", str(boxes), "--num-workers", "0", "--batch-size", "4"]
    assert main(["label", "--model", str(run), "--precision", "32", "--out", str(tmp_path / "torch.json"), *common]) == 0
    assert main(["label", "--model", str(tmp_path / "onnx"), "--out", str(tmp_path / "onnx.json"), *common]) == 0
    t, o = _masks(tmp_path / "torch.json"), _masks(tmp_path / "onnx.json")
    assert t.keys() == o.keys() and len(t) > 10
    differ = sum(int((t[k][0] != o[k][0]).sum()) for k in t)
    total = sum(m.size for m, _ in t.values())
    print(f"{run.name}: {differ} of {total} pixels differ over {len(t)} masks")
    assert differ <= 10
    assert max(abs(t[k][1] - o[k][1]) for k in t) < 1e-3


def test_exported_graphs_match_torch_for_any_batch(run, tmp_path):
    from mal.api import export_onnx
    model = load_labeler(run)
    onnx = OnnxLabeler(export_onnx(model, tmp_path / "onnx"))
    assert onnx.config == model.config
    S = model.config.crop_size
    torch.manual_seed(1)
    crops = torch.rand(1 if model.config.view == "image" else 4, 3, S, S) * 255
    boxes = torch.tensor([[2.0, 3, S - 5, S - 9], [S / 4, S / 4, S / 2, S], [0, 0, S, S], [9, 1, 20, 30]])
    index = torch.zeros(4, dtype=torch.long) if len(crops) == 1 else torch.tensor([3, 2, 1, 0])
    with torch.no_grad():
        ref, ref_iou = model.decode(model.embed(crops), boxes, S, index)
    for n in (1, 4):  # batch sizes other than the export's
        got, iou = onnx.decode(onnx.embed(crops), boxes[:n], S, index[:n])
        assert torch.allclose(got, ref[:n], atol=1e-3)
        assert (iou is None) == (ref_iou is None)
        assert iou is None or torch.allclose(iou, ref_iou[:n], atol=1e-3)  # sam: both decoders' heads


def test_predictor_runs_the_export(scenes, run, tmp_path):
    from mal.api import export_onnx
    from mal.data.images import read_rgb
    from mal.predictor import MaskPredictor
    images, _, _ = scenes
    image = read_rgb(next(images.iterdir()))
    boxes = np.array([[4.0, 5, 40, 50], [10, 10, 60, 30]])
    masks = []
    for model in (run, export_onnx(run, tmp_path / "onnx")):
        p = MaskPredictor.from_run(model, precision="32")
        p.set_image(image)
        masks.append(p.predict(boxes)[0])
    assert masks[0].shape == masks[1].shape == (2, *image.shape[:2])
    assert (masks[0] != masks[1]).sum() <= 2


def _label_with(model, scenes, tmp_path, capsys) -> str:
    images, _, boxes = scenes
    rc = main(["label", "--model", str(model), "--images", str(images), "--annotations", str(boxes),
               "--out", str(tmp_path / "out.json"), "--num-workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.json").exists()
    return err


def test_onnx_that_is_not_a_labeler_is_one_line(scenes, tmp_path, capsys):
    other = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(other), dynamo=False)
    err = _label_with(other, scenes, tmp_path, capsys)
    assert str(other) in err and "not a mal labeler export" in err
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not onnx at all")
    err = _label_with(corrupt, scenes, tmp_path, capsys)
    assert str(corrupt) in err and "cannot read as an ONNX model" in err


def test_unfinished_export_dir_is_one_line(scenes, run, tmp_path, capsys):
    from mal.api import export_onnx
    d = export_onnx(run, tmp_path / "onnx")
    (d / "config.json").unlink()  # what a killed export leaves: the config is written last
    err = _label_with(d, scenes, tmp_path, capsys)
    assert "config.json: missing" in err and "mal export-onnx" in err
