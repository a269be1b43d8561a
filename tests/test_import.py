"""mal import --format label-studio: export -> edits in Label Studio's own format -> import gives the
edited masks exactly, marks what a person changed, and refuses files that are not of this labeled file."""
import copy
import json

import numpy as np
import pytest

from mal.coco_masks import decode_rle
from mal.data.coco import load_boxes
from mal.data.given_masks import load_given_masks
from mal.export import ExportError, export, import_masks

brush = pytest.importorskip("label_studio_sdk.converter.brush")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # label_studio_sdk's pydantic models


@pytest.fixture
def reviewed(scenes, tmp_path):
    """The scenes' true masks as the labeled file, exported for Label Studio, then "reviewed" as Label
    Studio exports it: task 1 submitted with region ann1 repainted, ann2 redrawn as a polygon, ann3
    kept, one region drawn from scratch and any other deleted; task 2 submitted unchanged; task 3
    cancelled; the rest never opened. Returns (labeled file, export list, {id: expected mask}, images, boxes)."""
    images, gt, boxes = scenes
    export(gt, tmp_path / "x", formats="label-studio")
    tasks = json.loads((tmp_path / "x/label_studio/tasks.json").read_text())
    coco = json.loads(gt.read_text())
    true = {a["id"]: decode_rle(a["segmentation"]) for a in coco["annotations"]}
    H, W = 160, 200
    for n, t in enumerate(tasks):
        t["id"] = 100 + n
        t["annotations"] = []
    t1, t2, t3 = tasks[0], tasks[1], tasks[2]
    ids1 = [int(r["id"][3:]) for r in t1["predictions"][0]["result"]]
    assert len(ids1) >= 3, "scene 0 should have 3+ shapes"
    a, b, c = ids1[:3]
    result = copy.deepcopy(t1["predictions"][0]["result"][:3])
    painted = true[a].copy()
    painted[:, : W // 2] = False  # half of it erased with the brush
    painted[5:9, 5:9] = True
    result[0]["value"]["rle"] = brush.mask2rle(painted.astype(np.uint8) * 255)
    x0, y0, x1, y1 = 40, 30, 90, 70  # a rectangle polygon: pixels [40, 90) x [30, 70)
    result[1].update(type="polygonlabels", value={"points": [[x0 / W * 100, y0 / H * 100], [x1 / W * 100, y0 / H * 100],
                                                             [x1 / W * 100, y1 / H * 100], [x0 / W * 100, y1 / H * 100]],
                                                  "polygonlabels": ["polygon"], "closed": True})
    poly = np.zeros((H, W), bool)
    poly[y0:y1, x0:x1] = True
    result.append({**copy.deepcopy(result[2]), "id": "Xy12abCd"})  # drawn from scratch
    t1["annotations"] = [{"id": 1, "result": [], "was_cancelled": True}, {"id": 2, "result": result}]
    t2["annotations"] = [{"id": 3, "result": copy.deepcopy(t2["predictions"][0]["result"])}]
    t3["annotations"] = [{"id": 4, "result": [], "was_cancelled": True}]
    expected = {a: painted, b: poly, c: true[c], **{int(r["id"][3:]): true[int(r["id"][3:])]
                                                    for r in t2["predictions"][0]["result"]}}
    return gt, tasks, expected, (a, b), images, boxes


def _write(tasks, path):
    path.write_text(json.dumps(tasks))
    return path


def test_round_trip_gives_the_edited_masks_exactly(reviewed, tmp_path):
    gt, tasks, expected, changed, images, boxes = reviewed
    res = import_masks(gt, _write(tasks, tmp_path / "ls.json"), tmp_path / "masks.json")
    out = json.loads((tmp_path / "masks.json").read_text())
    got = {a["id"]: a for a in out["annotations"]}
    assert sorted(got) == sorted(expected)
    for aid, m in expected.items():
        assert np.array_equal(decode_rle(got[aid]["segmentation"]), m), aid
        assert got[aid]["mal_reviewed"] is (aid in changed)
    n1 = len(tasks[0]["predictions"][0]["result"])
    assert (res.changed, res.accepted, res.tasks, res.drawn, res.deleted) == (2, len(expected) - 2, 2, 1, n1 - 3)
    assert res.not_submitted == len(tasks) - 2
    # mal train --masks takes the file as it is, and --masks-reviewed-only exactly the changed ones
    data = load_boxes(boxes, images)
    assert sorted(load_given_masks(tmp_path / "masks.json", data).rles) == sorted(expected)
    assert sorted(load_given_masks(tmp_path / "masks.json", data, reviewed_only=True).rles) == sorted(changed)


def _region(tasks):
    return tasks[0]["annotations"][1]["result"][0]


@pytest.mark.parametrize("mutate, text", [
    (lambda t: _region(t).update(id="ann999"), "task 100: region ann999 is annotation 999, which image 1 of"),
    (lambda t: t[0]["data"].update(coco_image_id=77), "task 100 is for image 77, which"),
    (lambda t: t[0]["data"].update(image="/data/upload/3/other.png"), "task 100 shows '/data/upload/3/other.png', not "
                                                                       "scene_000.png"),
    (lambda t: t[0]["data"].pop("coco_image_id"), "task 100 has no data.coco_image_id"),
    (lambda t: _region(t).update(original_width=640), "task 100: region ann"),
    (lambda t: _region(t)["value"].update(rle=brush.mask2rle(np.ones((10, 10), np.uint8))),
     "brush RLE of 400 values, not 200x160x4"),
    (lambda t: t[1].update(data=dict(t[0]["data"])), "task 101: image 1 has a second task (also task 100)"),
    ("[{not json", "cannot read Label Studio export"),
    ('{"tasks": []}', "is not a Label Studio JSON export (a list of tasks)"),
])
def test_bad_review_file_is_one_line_error_and_nothing_written(reviewed, tmp_path, capsys, mutate, text):
    from mal.cli import main
    gt, tasks, *_ = reviewed
    path = tmp_path / "ls.json"
    if isinstance(mutate, str):
        path.write_text(mutate)
    else:
        mutate(tasks)
        _write(tasks, path)
    rc = main(["import", "--format", "label-studio", "--pred", str(gt), "--input", str(path),
               "--out", str(tmp_path / "masks.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and text in err[0], err
    assert not (tmp_path / "masks.json").exists()


def test_nothing_submitted_is_an_error(reviewed, tmp_path):
    gt, tasks, *_ = reviewed
    for t in tasks:
        t["annotations"] = []
    with pytest.raises(ExportError, match="no reviewed mask"):
        import_masks(gt, _write(tasks, tmp_path / "ls.json"), tmp_path / "masks.json")
    assert not (tmp_path / "masks.json").exists()
