"""mal import --format png: the per-instance PNGs of `mal export --format png`, edited in any paint tool,
read back as the edited masks under their annotation ids; bad folders are one line, nothing written."""
import json
import shutil

import cv2
import numpy as np
import pytest

from mal.cli import main
from mal.coco_masks import decode_rle
from mal.data.coco import load_boxes
from mal.data.given_masks import load_given_masks
from mal.export import ExportError, export, import_masks


@pytest.fixture
def edited(scenes, tmp_path):
    """The scenes' masks exported as PNGs, then edited: on scene_000 one mask half erased (saved grey),
    one repainted and saved as RGB, one file deleted; scene_001 untouched; every other image's folder
    removed. Returns (labeled file, png folder, {id: expected mask}, changed ids, deleted id, images, boxes)."""
    images, gt, boxes = scenes
    export(gt, tmp_path / "x", formats="png", png="instances")
    root = tmp_path / "x" / "png"
    coco = json.loads(gt.read_text())
    true = {a["id"]: decode_rle(a["segmentation"]).astype(bool) for a in coco["annotations"]}
    stems = sorted(d.name for d in (root / "masks").iterdir())
    assert stems[:2] == ["scene_000", "scene_001"]
    for s in stems[2:]:
        shutil.rmtree(root / "masks" / s)
    a, b, c = sorted(int(f.stem) for f in (root / "masks/scene_000").glob("*.png"))[:3]
    half = true[a].copy()
    ys, xs = np.nonzero(half)
    half[:, : (xs.min() + xs.max()) // 2] = False  # the left half of the object
    cv2.imwrite(str(root / f"masks/scene_000/{a}.png"), half.astype(np.uint8) * 255)
    painted = true[b].copy()
    painted[2:6, 2:6] = True
    rgb = np.zeros((*painted.shape, 3), np.uint8)
    rgb[painted] = (0, 0, 200)  # a red brush in a paint tool
    cv2.imwrite(str(root / f"masks/scene_000/{b}.png"), rgb)
    (root / f"masks/scene_000/{c}.png").unlink()
    expected = {int(f.stem): true[int(f.stem)] for s in stems[:2] for f in (root / "masks" / s).glob("*.png")}
    expected.update({a: half, b: painted})
    return gt, root, expected, {a, b}, c, images, boxes, len(stems) - 2


def test_png_round_trip_gives_the_edited_masks_exactly(edited, tmp_path, capsys):
    gt, root, expected, changed, deleted, images, boxes, removed = edited
    assert main(["import", "--format", "png", "--pred", str(gt), "--input", str(root),
                 "--out", str(tmp_path / "masks.json")]) == 0
    assert "2 changed by a person" in capsys.readouterr().out
    got = {a["id"]: a for a in json.loads((tmp_path / "masks.json").read_text())["annotations"]}
    assert sorted(got) == sorted(expected) and deleted not in got
    for aid, m in expected.items():
        assert np.array_equal(decode_rle(got[aid]["segmentation"]).astype(bool), m), aid
        assert got[aid]["mal_reviewed"] is (aid in changed)
    res = import_masks(gt, root.parent, tmp_path / "again.json", format="png")  # the export folder works too
    assert (res.changed, res.accepted, res.tasks, res.deleted, res.not_submitted) == \
        (2, len(expected) - 2, 2, 1, removed)
    data = load_boxes(boxes, images)
    assert sorted(load_given_masks(tmp_path / "masks.json", data, reviewed_only=True).rles) == sorted(changed)


@pytest.mark.parametrize("damage, text", [
    (lambda r, a: cv2.imwrite(str(r / f"masks/scene_000/{a}.png"), np.zeros((10, 12), np.uint8)),
     "is 12x10 px; image scene_000.png is 200x160"),
    (lambda r, a: (r / f"masks/scene_000/{a}.png").rename(r / "masks/scene_000/999.png"),
     "image scene_000.png of"),
    (lambda r, a: (r / "masks/scene_001").rename(r / "masks/other"), "has no image with the file stem 'other'"),
    (lambda r, a: (r / f"masks/scene_000/{a}.png").write_bytes(b"not a png"), "not a readable image"),
    (lambda r, a: shutil.rmtree(r / "masks"), "no reviewed mask"),
])
def test_bad_png_folder_is_one_line_error_and_nothing_written(edited, tmp_path, capsys, damage, text):
    gt, root, expected, changed, *_ = edited
    damage(root, min(changed))
    rc = main(["import", "--format", "png", "--pred", str(gt), "--input", str(root),
               "--out", str(tmp_path / "masks.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and text in err[0], err
    assert not (tmp_path / "masks.json").exists()


def test_missing_png_folder_is_named(scenes, tmp_path):
    _, gt, _ = scenes
    with pytest.raises(ExportError, match="no such folder"):
        import_masks(gt, tmp_path / "nope", tmp_path / "m.json", format="png")
