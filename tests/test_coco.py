"""load_coco_json / load_boxes: valid files load, every bad input gives one clear CocoError."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math

import pytest
from conftest import set_at

from mal.data.coco import BoxRecord, CocoError, load_boxes, load_coco_json


def _base() -> dict:
    """Two annotated images (100x80, 50x40) plus one unannotated image; no segmentation."""
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40},
            {"id": 3, "file_name": "unused.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 10, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [10, 20, 30, 40]},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("a.jpg", "b.jpg"):  # unused.jpg deliberately absent: never checked
        (d / name).write_bytes(b"x")
    return d


def _write(tmp_path, coco: dict | str):
    p = tmp_path / "ann.json"
    p.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    return p


def test_valid_file_loads(tmp_path, images_dir):
    ds = load_boxes(_write(tmp_path, _base()), images_dir)
    # Grouped by image file order (1 then 2), then annotation order.
    assert [r.ann_id for r in ds.records] == [11, 12, 10]
    assert ds.records[0] == BoxRecord(11, 1, 2, (10.0, 20.0, 30.0, 40.0), "a.jpg", 100, 80)
    assert ds.warnings == []
    groups = ds.by_image()
    assert [(img["id"], [r.ann_id for r in recs]) for img, recs in groups] == [(1, [11, 12]), (2, [10])]
    assert ds.image_path("a.jpg") == images_dir / "a.jpg"
    assert ds.coco["images"][2]["file_name"] == "unused.jpg"  # JSON kept unchanged


def test_index_keeps_annotations_groups_and_the_hash_of_the_bytes_read(tmp_path, images_dir):
    path = _write(tmp_path, _base())
    ds = load_boxes(path, images_dir)
    by_id = {a["id"]: a for a in ds.coco["annotations"]}
    assert all(r.ann is by_id[r.ann_id] for r in ds.records)
    assert ds.by_image() is ds.groups and ds.records == [r for _, recs in ds.groups for r in recs]
    assert ds.source == str(path) and ds.input_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # A dict: the sha256 of its canonical JSON (what job manifests have always held).
    canonical = json.dumps(_base(), sort_keys=True).encode()
    assert load_boxes(_base(), images_dir).input_sha256 == hashlib.sha256(canonical).hexdigest()


def test_dict_input_and_no_segmentation_needed(images_dir):
    coco = _base()
    assert all("segmentation" not in a for a in coco["annotations"])
    ds = load_boxes(coco, images_dir)
    assert len(ds.records) == 3
    coco["annotations"][0]["id"] = 11  # errors from a dict are labelled "<dict>"
    with pytest.raises(CocoError, match=r"^<dict>: 1 problem\(s\)"):
        load_boxes(coco, images_dir)


BAD_CASES = [
    # id, mutation (or raw text), substrings the error must contain
    ("malformed_json", '{"images": [', ["invalid JSON", "line 1"]),
    ("missing_images_key", lambda c: c.pop("images"), ['missing top-level "images"']),
    ("dup_annotation_id", set_at(("annotations", 1, "id"), 10), ["annotation id 10", "duplicate annotation id"]),
    ("dup_image_id", set_at(("images", 1, "id"), 1), ["image id 1", "duplicate image id"]),
    ("unknown_image_id", set_at(("annotations", 0, "image_id"), 99), ["annotation id 10", "unknown image_id 99"]),
    ("unknown_category_id", set_at(("annotations", 1, "category_id"), 7), ["annotation id 11", "unknown category_id 7"]),
    ("zero_size_box", set_at(("annotations", 0, "bbox"), [5, 5, 0, 10]), ["annotation id 10", "zero or negative"]),
    ("negative_size_box", set_at(("annotations", 1, "bbox"), [5, 5, 10, -3]), ["annotation id 11", "zero or negative"]),
    ("nan_box", set_at(("annotations", 0, "bbox"), [5, math.nan, 3, 3]), ["annotation id 10", "NaN"]),
    ("three_numbers", set_at(("annotations", 1, "bbox"), [1, 2, 3]), ["annotation id 11", "list of 4 numbers"]),
    ("fully_outside", set_at(("annotations", 0, "bbox"), [60, 5, 10, 10]), ["annotation id 10", "entirely outside"]),
    ("sub_pixel_after_clip", set_at(("annotations", 0, "bbox"), [49.5, 5, 10, 10]), ["annotation id 10", "smaller than 1 px"]),
    ("missing_bbox", lambda c: c["annotations"][1].pop("bbox"), ["annotation id 11", "missing bbox"]),
    ("bool_id", set_at(("annotations", 0, "id"), True), ["annotation #0", "non-integer id"]),
    ("float_image_id", set_at(("images", 0, "id"), 1.0), ["image #0 (a.jpg)", "non-integer id"]),
    ("non_positive_width", set_at(("images", 1, "width"), 0), ["image id 2 (b.jpg)", "width"]),
    ("dup_category_id", set_at(("categories", 1, "id"), 1), ["category id 1", "duplicate category id"]),
    ("missing_image_file", set_at(("images", 1, "file_name"), "gone.png"), ["image id 2 (gone.png)", "file not found"]),
    ("empty_file", "  \n", ["file is empty"]),
    ("inf_box", set_at(("annotations", 0, "bbox"), [5, 5, math.inf, 3]), ["annotation id 10", "NaN or inf"]),
    ("string_box", set_at(("annotations", 0, "bbox"), ["5", "5", "3", "3"]), ["annotation id 10", "list of 4 numbers"]),
    ("bad_iscrowd", set_at(("annotations", 2, "iscrowd"), 2), ["annotation id 12", "iscrowd must be 0 or 1"]),
    ("missing_height", lambda c: c["images"][0].pop("height"), ["image id 1 (a.jpg)", "missing height"]),
    ("image_not_object", set_at(("images", 2), "unused.jpg"), ["image #2", "not an object"]),
    ("annotations_not_list", set_at(("annotations",), {}), ['"annotations" must be a list']),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_inputs(tmp_path, images_dir, mutate, expected):
    if isinstance(mutate, str):
        path = _write(tmp_path, mutate)
    else:
        coco = _base()
        mutate(coco)
        path = _write(tmp_path, coco)
    with pytest.raises(CocoError) as exc:
        load_boxes(path, images_dir)
    msg = str(exc.value)
    assert msg.startswith(str(path))
    for s in expected:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_load_coco_json_errors(tmp_path):
    with pytest.raises(CocoError, match="missing.json: file not found"):
        load_coco_json(tmp_path / "missing.json")
    with pytest.raises(CocoError, match="must contain a JSON object"):
        load_coco_json(_write(tmp_path, "[1, 2]"))
    with pytest.raises(CocoError, match='"annotations" must be a list'):
        load_coco_json(_write(tmp_path, '{"images": [], "annotations": {}, "categories": []}'))


def test_partially_outside_box_is_clipped(tmp_path, images_dir, caplog):
    coco = _base()
    coco["annotations"][0]["bbox"] = [-5, 30, 20, 20]  # image 2 is 50x40
    with caplog.at_level(logging.WARNING, logger="mal"):
        ds = load_boxes(_write(tmp_path, coco), images_dir)
    rec = next(r for r in ds.records if r.ann_id == 10)
    assert rec.bbox == (0.0, 30.0, 15.0, 10.0)
    assert len(ds.warnings) == 1 and "annotation id 10" in ds.warnings[0] and "clipped" in ds.warnings[0]
    assert "annotation id 10" in caplog.text
    with pytest.raises(CocoError, match=r"annotation id 10: bbox \[-5, 30, 20, 20\] partly outside .*--strict"):
        load_boxes(coco, images_dir, strict=True)
    coco["annotations"][0]["bbox"] = [0, 30, 50.0000001, 10]  # float noise: silently clipped, even strict
    assert load_boxes(coco, images_dir, strict=True).warnings == []


def test_clipped_boxes_are_counted_past_the_log_cap(images_dir, caplog):
    coco = _base()
    coco["annotations"] = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [-1, 0, 10, 10]} for i in range(30)]
    with caplog.at_level(logging.WARNING, logger="mal"):
        ds = load_boxes(coco, images_dir)
    assert ds.warnings[-1].startswith("clipped 30 boxes partly outside their image")
    assert "... and 10 more warning(s)" in caplog.text and "clipped 30 boxes" in caplog.text


def test_utf8_bom_and_directory(tmp_path, images_dir):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_base()).encode())
    assert len(load_boxes(p, images_dir).records) == 3
    with pytest.raises(CocoError, match="is a directory"):
        load_coco_json(images_dir)


def test_all_files_missing_is_one_line(tmp_path):
    with pytest.raises(CocoError) as exc:
        load_boxes(_base(), tmp_path)
    msg = str(exc.value)
    assert "1 problem(s)" in msg and "none of the 2 annotated image files exists under" in msg
    assert "is the images folder right?" in msg


def test_crowd_skipped_with_warning(tmp_path, images_dir):
    coco = _base()
    coco["annotations"][0]["iscrowd"] = 1
    ds = load_boxes(_write(tmp_path, coco), images_dir)
    assert [r.ann_id for r in ds.records] == [11, 12]
    assert any("1 crowd" in w for w in ds.warnings)
    assert len(load_boxes(coco, images_dir, skip_crowd=False).records) == 3


def test_check_files_off(tmp_path):
    ds = load_boxes(_write(tmp_path, _base()), tmp_path / "nowhere", check_files=False)
    assert len(ds.records) == 3


def test_multiple_problems_reported_together(tmp_path, images_dir):
    coco = _base()
    coco["annotations"][0]["bbox"] = [1, 2, 3]
    coco["annotations"][1]["category_id"] = 42
    coco["annotations"][2]["id"] = 10
    coco["images"][0]["file_name"] = "missing.jpg"
    with pytest.raises(CocoError) as exc:
        load_boxes(_write(tmp_path, coco), images_dir)
    msg = str(exc.value)
    assert "4 problem(s) in the COCO file:" in msg.splitlines()[0]
    for s in ("annotation id 10: bbox must be", "unknown category_id 42", "duplicate annotation id", "missing.jpg"):
        assert s in msg


def test_many_problems_truncated(tmp_path, images_dir):
    coco = _base()
    coco["annotations"] = [
        {"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 0]} for i in range(25)
    ]
    with pytest.raises(CocoError) as exc:
        load_boxes(copy.deepcopy(coco), images_dir)
    lines = str(exc.value).splitlines()
    assert lines[0].endswith("25 problem(s) in the COCO file:")
    assert len(lines) == 1 + 20 + 1 and lines[-1].strip() == "... and 5 more"
