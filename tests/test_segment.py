"""Phase 2: the Mask R-CNN segmenter, its COCO AP, and the retention command's refusals."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mal.cli import main
from mal.demo import make_scenes
from mal.segment.data import check_disjoint, check_same_boxes, hash_split, split_images
from mal.segment.evaluate import coco_ap
from mal.segment.model import SegmenterConfig, build_segmenter, load_segmenter

from conftest import TINYVIT_SAM, require

# A tiny timm backbone (test_resnet: ~0.5M params) and small images keep each run to seconds.
TINY = ["--backbone", "test_resnet", "--min-size", "96", "--max-size", "128", "--batch-size", "2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    images, gt, boxes = make_scenes(tmp_path_factory.mktemp("scenes"), num_images=8, size=(96, 128), seed=3)
    return images, gt, boxes


def _ids(tmp_path: Path, name: str, ids) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(str(i) for i in ids) + "\n")
    return p


def test_timm_backbone_levels_and_forward():
    cfg = SegmenterConfig(backbone="test_resnet", categories=[{"id": 1, "name": "a"}], min_size=96, max_size=128)
    model = build_segmenter(cfg).eval()
    assert model.backbone.strides == [8, 16, 32, 64, 128]
    with torch.no_grad():
        out = model([torch.rand(3, 96, 120)])[0]
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[-2:] == (96, 120)


def test_coco_ap_perfect_and_wrong(scenes):
    """The AP code itself: gt echoed back as detections scores 1.0; boxes moved off target score less."""
    _, gt_path, _ = scenes
    gt = json.loads(Path(gt_path).read_text())
    ids = {im["id"] for im in gt["images"]}
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "segmentation": a["segmentation"], "score": 1.0} for a in gt["annotations"]]
    r = coco_ap(gt, perfect, ids, class_agnostic=False)
    assert r["bbox"]["AP"] == pytest.approx(1.0) and r["segm"]["AP"] == pytest.approx(1.0)
    shifted = [{**p, "bbox": [p["bbox"][0] + p["bbox"][2] * 0.6] + p["bbox"][1:]} for p in perfect]
    assert coco_ap(gt, shifted, ids, class_agnostic=False)["bbox"]["AP"] < 0.5
    wrong_class = [{**p, "category_id": 1 + p["category_id"] % 3} for p in perfect]
    assert coco_ap(gt, wrong_class, ids, class_agnostic=False)["segm"]["AP"] < 0.5
    assert coco_ap(gt, [{**p, "category_id": 1} for p in wrong_class], ids, class_agnostic=True)["segm"]["AP"] \
        == pytest.approx(1.0)
    assert coco_ap(gt, [], ids, class_agnostic=False)["segm"]["AP"] == 0.0


@pytest.mark.slow
def test_segment_train_eval_resume_cli(scenes, tmp_path, capsys):
    images, gt, _ = scenes
    run = tmp_path / "run"
    args = ["segment", "train", "--images", str(images), "--annotations", str(gt), "--out", str(run), *TINY]
    assert main([*args, "--max-steps", "2"]) == 0
    model, cfg = load_segmenter(run)
    assert [c["id"] for c in cfg.categories] == [1, 2, 3] and not cfg.class_agnostic
    first = {k: v.clone() for k, v in model.state_dict().items()}
    # resume continues the same run to 4 steps (Lightning restores optimizer + step)
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert any(not torch.equal(first[k], v) for k, v in load_segmenter(run)[0].state_dict().items())
    capsys.readouterr()
    report_path = tmp_path / "ap.json"
    assert main(["segment", "eval", "--model", str(run), "--images", str(images), "--gt", str(gt),
                 "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "segm" in out and "bbox" in out
    report = json.loads(report_path.read_text())
    for t in ("bbox", "segm"):
        assert set(report[t]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert 0.0 <= report[t]["AP"] <= 1.0
    assert report["images"] == 8 and report["protocol"] == "full"
    # mask_only: the same model's masks on the gt boxes (one detection per instance, box AP 1)
    assert main(["segment", "eval", "--model", str(run), "--images", str(images), "--gt", str(gt),
                 "--protocol", "mask_only", "--json", str(report_path)]) == 0
    assert "protocol mask_only" in capsys.readouterr().out
    mask_only = json.loads(report_path.read_text())
    assert mask_only["detections"] == len(json.loads(Path(gt).read_text())["annotations"])
    assert mask_only["bbox"]["AP"] == pytest.approx(1.0) and 0.0 <= mask_only["segm"]["AP"] <= 1.0
    assert 0.0 <= mask_only["mIoU"] <= 1.0


@pytest.mark.slow
def test_segment_train_class_subset_cli(scenes, tmp_path, capsys):
    """--classes: the run keeps one class; its evaluation scores that class only."""
    images, gt, _ = scenes
    run = tmp_path / "run"
    assert main(["segment", "train", "--images", str(images), "--annotations", str(gt), "--out", str(run),
                 *TINY, "--max-steps", "1", "--classes", "triangle"]) == 0
    _, cfg = load_segmenter(run)
    assert cfg.category_ids == [2] and [c["name"] for c in cfg.categories] == ["triangle"]
    report_path = tmp_path / "ap.json"
    assert main(["segment", "eval", "--model", str(run), "--images", str(images), "--gt", str(gt),
                 "--protocol", "mask_only", "--json", str(report_path)]) == 0
    n_triangles = sum(a["category_id"] == 2 for a in json.loads(Path(gt).read_text())["annotations"])
    assert json.loads(report_path.read_text())["detections"] == n_triangles
    capsys.readouterr()
    assert main(["segment", "train", "--images", str(images), "--annotations", str(gt), "--out", str(run),
                 *TINY, "--classes", "hexagon"]) == 2
    assert "unknown classes ['hexagon']" in capsys.readouterr().err


def test_segment_train_needs_masks(scenes, tmp_path, capsys):
    images, _, boxes = scenes  # boxes only: nothing to train a segmenter on
    rc = main(["segment", "train", "--images", str(images), "--annotations", str(boxes), "--out",
               str(tmp_path / "r"), *TINY, "--max-steps", "1"])
    assert rc == 2
    assert "has no segmentation" in capsys.readouterr().err
    assert not (tmp_path / "r" / "segmenter.safetensors").exists()


@pytest.mark.slow
def test_retention_end_to_end(scenes, tmp_path, capsys, monkeypatch, caplog):
    """Two seeds, both protocols, a small bootstrap, through the CLI; "same" is the human file again."""
    images, gt, _ = scenes
    tr, ev = _ids(tmp_path, "train.txt", range(1, 6)), _ids(tmp_path, "eval.txt", range(6, 9))
    ids = {im["id"] for im in json.loads(Path(gt).read_text())["images"]}
    assert ids == set(range(1, 9)), "the scene ids this test assumes"
    rc = main(["retention", "--images", str(images), "--gt", str(gt), "--pseudo", f"same={gt}",
               "--train-ids", str(tr), "--eval-ids", str(ev), "--out", str(tmp_path / "ret"), *TINY,
               "--max-steps", "2", "--class-agnostic", "--precision", "32", "--seeds", "2", "--bootstrap", "20",
               "--lr", "2e-4"])  # 2 steps at the default 1e-3 push every score under the threshold
    assert rc == 0
    out = capsys.readouterr().out
    assert "human" in out and "same" in out and "untrained" in out
    assert "protocol full" in out and "protocol mask_only" in out
    rep = json.loads((tmp_path / "ret" / "retention.json").read_text())
    assert rep["train_images"] == 5 and rep["eval_images"] == 3 and rep["seeds"] == [0, 1]
    h, s = rep["models"]["human"], rep["models"]["same"]
    assert [r["seed"] for r in h["runs"]] == [r["seed"] for r in s["runs"]] == [0, 1]
    ret = tmp_path / "ret"
    for k in (0, 1):
        hr, sr = h["runs"][k], s["runs"][k]
        # Same labels, same seed, same schedule: byte-identical weights, hence the same AP.
        assert (ret / f"human/seed{k}/segmenter.safetensors").read_bytes() == \
            (ret / f"same/seed{k}/segmenter.safetensors").read_bytes()
        for p, u in rep["untrained"].items():
            # Every model is scored on the 3 held-out images, and detects something there.
            assert hr[p]["images"] == sr[p]["images"] == u["images"] == 3 and hr[p]["detections"] > 0
            assert sr[p]["segm"] == hr[p]["segm"]
        assert hr["full"]["segm"] != rep["untrained"]["full"]["segm"]  # trained: not the floor
        # mask_only: one detection per held-out gt instance, the gt box itself
        n_gt = sum(a["image_id"] >= 6 for a in json.loads(Path(gt).read_text())["annotations"])
        assert hr["mask_only"]["detections"] == n_gt and hr["mask_only"]["bbox"]["AP"] == pytest.approx(1.0)
    # Another seed, another model.
    assert (ret / "human/seed0/segmenter.safetensors").read_bytes() != (ret / "human/seed1/segmenter.safetensors").read_bytes()
    for p in ("full", "mask_only"):
        assert s[p]["segm"] == h[p]["segm"]
        ap = h[p]["segm"]["AP"]
        assert ap["per_seed"] == [r[p]["segm"]["AP"] for r in h["runs"]] and ap["std"] is not None
        assert ap["min"] <= ap["mean"] <= ap["max"] and ap["lo"] <= ap["hi"]
        # retention 1 for every seed whose human model scores above 0 (a 2-step model may not); None otherwise
        defined = [1.0 if r[p]["segm"]["AP"] else None for r in h["runs"]]
        assert s[p]["retention"]["per_seed"] == defined
        if None not in defined:
            assert s[p]["retention"]["mean"] == s[p]["retention"]["lo"] == s[p]["retention"]["hi"] == 1.0
    assert h["runs"][0]["full"]["segm"]["AP"] > 0  # seed 0: a ratio that is a number
    # mask_only mIoU: the seed summary with its interval, and the same labels' ratio of exactly 1
    miou = h["mask_only"]["mIoU"]
    assert miou["per_seed"] == [r["mask_only"]["mIoU"] for r in h["runs"]] and 0 < miou["mean"] <= 1
    assert miou["lo"] <= miou["mean"] <= miou["hi"] or miou["lo"] == pytest.approx(miou["hi"])
    mr = s["mask_only"]["mIoU_retention"]
    assert mr["per_seed"] == [1.0, 1.0] and mr["lo"] == mr["hi"] == pytest.approx(1.0)
    assert "retention (mIoU)" in out

    # An interrupted job resumes: finished runs are neither trained nor evaluated again, and the
    # report (intervals included) is the same.
    import mal.segment.retention as retention_module

    def no_eval(*a, **k):
        raise AssertionError("a finished run was evaluated again")
    monkeypatch.setattr(retention_module, "evaluate_segmenter", no_eval)
    caplog.set_level("INFO", logger="mal")
    gt_again = Path(gt).parent / ".." / Path(gt).parent.name / Path(gt).name  # the same file, spelled otherwise
    assert main(["retention", "--images", str(images), "--gt", str(gt_again), "--pseudo", f"same={gt}",
                 "--train-ids", str(tr), "--eval-ids", str(ev), "--out", str(ret), *TINY, "--max-steps", "2",
                 "--class-agnostic", "--precision", "32", "--seeds", "2", "--bootstrap", "20", "--lr", "2e-4",
                 "--no-untrained", "--resume"]) == 0
    assert "segmenter already trained (2 steps)" in caplog.text
    again = json.loads((ret / "retention.json").read_text())
    for name in ("human", "same"):
        for p in ("full", "mask_only"):
            assert again["models"][name][p] == rep["models"][name][p]


def test_retention_refuses_overlapping_images(scenes, tmp_path, capsys):
    images, gt, _ = scenes
    tr, ev = _ids(tmp_path, "train.txt", range(1, 6)), _ids(tmp_path, "eval.txt", range(5, 9))
    rc = main(["retention", "--images", str(images), "--gt", str(gt), "--pseudo", str(gt),
               "--train-ids", str(tr), "--eval-ids", str(ev), "--out", str(tmp_path / "ret"), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train and eval images overlap" in err and "[5]" in err
    assert not (tmp_path / "ret").exists()


def test_overlap_by_file_name_and_split_field():
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "s": "tr"}, {"id": 2, "file_name": "a.jpg", "s": "ev"},
                       {"id": 3, "file_name": "b.jpg", "s": "ev"}]}
    tr, ev = split_images(coco, split_key="s", train_split="tr", eval_split="ev")
    assert (tr, ev) == ({1}, {2, 3})
    with pytest.raises(ValueError, match=r"1 file names \(e.g. \['a.jpg'\]\)"):
        check_disjoint(coco, tr, ev)
    with pytest.raises(ValueError, match="need both"):
        split_images(coco, split_key="s", train_split="train2017", eval_split="ev")
    tr, ev = split_images({"images": [{"id": i, "file_name": f"{i}"} for i in range(10)]}, eval_fraction=0.3)
    assert len(ev) == 3 and not tr & ev and tr | ev == set(range(10))


def test_segment_train_stops_on_a_non_finite_loss(scenes, tmp_path, capsys, monkeypatch):
    """A NaN loss stops training at once with one line naming the step and the loss terms; no model."""
    from torchvision.models.detection import MaskRCNN
    images, gt, _ = scenes

    def nan_losses(self, images, targets=None):
        w = next(p for p in self.parameters() if p.requires_grad)
        return {"loss_classifier": w.sum() * 0 + 0.5, "loss_mask": w.sum() * float("nan")}
    monkeypatch.setattr(MaskRCNN, "forward", nan_losses)
    run = tmp_path / "r"
    rc = main(["segment", "train", "--images", str(images), "--annotations", str(gt), "--out", str(run),
               *TINY, "--max-steps", "3", "--precision", "32", "--num-workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "stopped at step 0" in err and "loss_mask nan" in err and "loss_classifier 0.5" in err
    assert not (run / "segmenter.safetensors").exists()


def test_segment_precision_auto_is_fp32_on_cpu(monkeypatch):
    """bf16 autocast made Mask R-CNN's losses NaN on a CPU; `auto` trains it in fp32 there."""
    import mal.runtime as runtime
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == "bf16"  # the labeler keeps bf16 on such CPUs
    assert runtime.resolve_precision("auto", cpu, cpu_bf16=False) == "32"
    assert runtime.resolve_precision("bf16", cpu, cpu_bf16=False) == "bf16"  # asked for: given


def test_detections_cap_follows_the_densest_training_image(scenes, tmp_path):
    """Up to 1.5x the most instances on a training image (never below 100) are kept per image at test
    time, with proposals to match: a dense image's objects past the 100th are not dropped."""
    from mal.segment.train import train_segmenter
    images, gt, _ = scenes
    coco = json.loads(Path(gt).read_text())
    one = coco["annotations"][0]
    coco["annotations"] += [{**one, "id": 10_000 + k} for k in range(200)]  # image of `one`: 200+ instances
    most = max(sum(a["image_id"] == i["id"] for a in coco["annotations"]) for i in coco["images"])
    run = train_segmenter(images, coco, tmp_path / "r", config=SegmenterConfig(backbone="test_resnet",
                          min_size=96, max_size=128), max_steps=1, num_workers=0, progress=False)
    model, cfg = load_segmenter(run)
    assert cfg.detections_per_image == int(np.ceil(1.5 * most)) > 100
    assert model.roi_heads.detections_per_img == cfg.detections_per_image
    assert model.rpn._post_nms_top_n["testing"] == 2 * cfg.detections_per_image
    old = build_segmenter(SegmenterConfig(backbone="test_resnet", categories=[{"id": 1, "name": "a"}]))
    assert old.roi_heads.detections_per_img == 100  # configs saved before the field keep torchvision's


def test_hash_split_is_stable_per_image_and_nested(scenes, tmp_path, capsys):
    """Each image's side is fixed by its file name alone: other images, ids and order do not move it;
    a smaller training fraction is a subset of a larger one with the same eval images."""
    images = [{"id": i, "file_name": f"img_{i:04d}.png"} for i in range(400)]
    tr, ev = hash_split({"images": images}, eval_fraction=0.2)
    assert not tr & ev and tr | ev == set(range(400)) and 50 < len(ev) < 110  # ~80 expected
    renumbered = [{"id": 1000 + im["id"], "file_name": im["file_name"]} for im in reversed(images[::2])]
    tr2, ev2 = hash_split({"images": renumbered}, eval_fraction=0.2)
    assert {i - 1000 for i in ev2} == ev & set(range(0, 400, 2))
    small, ev3 = hash_split({"images": images}, eval_fraction=0.2, train_fraction=0.2)
    assert ev3 == ev and small < tr and 40 < len(small) < 120
    assert hash_split({"images": images}, eval_fraction=0.2, salt="b")[1] != ev
    with pytest.raises(ValueError, match="train fraction"):
        hash_split({"images": images}, eval_fraction=0.5, train_fraction=0.6)

    _, gt, _ = scenes
    assert main(["segment", "split", "--gt", str(gt), "--out", str(tmp_path / "s"), "--eval-fraction", "0.4"]) == 0
    out = capsys.readouterr().out
    read = lambda n: {int(x) for x in (tmp_path / "s" / n).read_text().splitlines() if not x.startswith("#")}  # noqa: E731
    coco = json.loads(Path(gt).read_text())
    assert (read("train_ids.txt"), read("eval_ids.txt")) == hash_split(coco, eval_fraction=0.4)
    boxes = json.loads((tmp_path / "s" / "train_boxes.json").read_text())
    assert {im["id"] for im in boxes["images"]} == read("train_ids.txt")
    assert boxes["annotations"] and not any("segmentation" in a for a in boxes["annotations"])
    assert f"eval: {len(read('eval_ids.txt'))} images" in out


def test_retention_refuses_different_boxes(scenes, tmp_path, capsys):
    images, gt, _ = scenes
    coco = json.loads(Path(gt).read_text())
    moved = json.loads(json.dumps(coco))
    moved["annotations"][0]["bbox"][0] += 5
    del moved["annotations"][1]
    bad = tmp_path / "moved.json"
    bad.write_text(json.dumps(moved))
    tr, ev = _ids(tmp_path, "train.txt", range(1, 6)), _ids(tmp_path, "eval.txt", range(6, 9))
    rc = main(["retention", "--images", str(images), "--gt", str(gt), "--pseudo", f"moved={bad}",
               "--train-ids", str(tr), "--eval-ids", str(ev), "--out", str(tmp_path / "ret"), *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not have the same boxes" in err and "1 missing" in err and "1 with a different box" in err
    with pytest.raises(ValueError, match="different box/category"):
        wrong_cat = json.loads(json.dumps(coco))
        wrong_cat["annotations"][0]["category_id"] = 99
        check_same_boxes(coco, wrong_cat, set(range(1, 9)), "x")
    renamed = json.loads(json.dumps(coco))
    renamed["images"][2]["file_name"] = "other.png"
    with pytest.raises(ValueError, match=r"1 training images are missing or differ .*\[3\]"):
        check_same_boxes(coco, renamed, set(range(1, 9)), "x")


def test_tinyvit_sam_backbone_loads_shared_weights():
    w = require(TINYVIT_SAM)
    model = build_segmenter(SegmenterConfig(categories=[{"id": 1, "name": "object"}]), weights=w)
    assert model.backbone.strides == [8, 16, 32, 64]  # SAM TinyViT: last stage keeps stride 16
    np.testing.assert_array_equal(model.transform.image_mean, [0.485, 0.456, 0.406])
