"""Bad input, table-driven, through the CLI (`mal label --engine box`, in-process): every kind of broken
COCO file or image gives exit code 2 with a message naming the offending annotation/file and leaves
no output behind, or is decoded correctly, or is skipped and reported with --skip-bad-images."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_KV_FLAGS, set_at
from PIL import Image

from mal.cli import main
from mal.coco_masks import decode_rle
from mal.data.coco import load_boxes
from mal.data.dataset import TrainCrops
from mal.data.images import ImageError, read_rgb

W, H = 40, 30  # every test image, upright


def _coco() -> dict:
    return {
        "images": [{"id": i, "file_name": f, "width": W, "height": H}
                   for i, f in ((1, "a.png"), (2, "b.png"), (3, "c.png"))],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 12, 10]},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 40, 30]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [20, 10, 8, 8]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def job(tmp_path):
    """An images folder with three valid PNGs; the test breaks something, then calls ``run``."""
    images = tmp_path / "images"
    images.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        Image.fromarray(_rgb(i)).save(images / name)
    return images


@pytest.fixture
def run(tmp_path, job, capsys, caplog):
    """Write the COCO file (a dict, or raw text), run `mal label --engine box`, return (rc, all text, out)."""
    def go(coco: dict | str, *extra: str, name: str = "out"):
        ann = tmp_path / f"{name}.boxes.json"
        ann.write_text(coco if isinstance(coco, str) else json.dumps(coco))
        out = tmp_path / name / "masks.json"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mal"):
            rc = main(["label", "--engine", "box", "--images", str(job), "--annotations", str(ann),
                       "--out", str(out), "--num-workers", "0", *extra])
        cap = capsys.readouterr()
        return rc, cap.out + cap.err + caplog.text, out
    return go


def _no_output(out) -> bool:
    return not out.exists() and not list(out.parent.glob("*.tmp")) if out.parent.exists() else True


def _pop(path):
    def f(c):
        obj = c
        for k in path[:-1]:
            obj = obj[k]
        obj.pop(path[-1])
    return f


# --- the COCO file: always an error, whatever the flags ---------------------------------------------

COCO_CASES = [
    # id, mutation of _coco() (or raw text), phrases the message must contain (incl. what is at fault)
    ("malformed_json", '{"images": [\n  {"id": 1,,}', ["invalid JSON at line 2, column", ".boxes.json"]),
    ("empty_file", "", ["file is empty"]),
    ("not_an_object", "[1, 2]", ["must contain a JSON object"]),
    ("missing_key", _pop(("categories",)), ['missing top-level "categories"']),
    ("ill_typed_key", set_at(("images",), {"id": 1}), ['"images" must be a list, got dict']),
    ("duplicate_image_id", set_at(("images", 1, "id"), 1), ["image id 1 (b.png): duplicate image id"]),
    ("duplicate_annotation_id", set_at(("annotations", 1, "id"), 1), ["annotation id 1: duplicate annotation id"]),
    ("unknown_image_id", set_at(("annotations", 2, "image_id"), 9), ["annotation id 3: unknown image_id 9"]),
    ("unknown_category_id", set_at(("annotations", 0, "category_id"), 5),
     ["annotation id 1: unknown category_id 5"]),
    ("bbox_wrong_length", set_at(("annotations", 1, "bbox"), [1, 2, 3]),
     ["annotation id 2: bbox must be a list of 4 numbers"]),
    ("bbox_not_numbers", set_at(("annotations", 1, "bbox"), [1, 2, "3", 4]),
     ["annotation id 2: bbox must be a list of 4 numbers"]),
    ("bbox_nan", '{"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], "annotations": '
     '[{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, NaN, 3, 3]}], "categories": [{"id": 1}]}',
     ["annotation id 7: bbox contains NaN or inf"]),
    ("bbox_inf", set_at(("annotations", 1, "bbox"), [1, 2, 1e999, 4]), ["annotation id 2: bbox contains NaN or inf"]),
    ("zero_width", set_at(("annotations", 3, "bbox"), [20, 10, 0, 8]),
     ["annotation id 4: bbox has zero or negative size (w=0"]),
    ("negative_height", set_at(("annotations", 0, "bbox"), [2, 2, 10, -8]),
     ["annotation id 1: bbox has zero or negative size", "h=-8"]),
    ("entirely_outside", set_at(("annotations", 1, "bbox"), [50, 5, 10, 10]),
     ["annotation id 2: bbox [50, 5, 10, 10] is entirely outside image id 2 (40x30)"]),
    ("missing_width", _pop(("images", 2, "width")), ["image id 3 (c.png): missing width"]),
    ("non_integer_height", set_at(("images", 0, "height"), 30.5),
     ["image id 1 (a.png): height must be a positive integer, got 30.5"]),
    ("bad_iscrowd", set_at(("annotations", 0, "iscrowd"), "no"), ["annotation id 1: iscrowd must be 0 or 1"]),
    ("missing_image_file", set_at(("images", 1, "file_name"), "gone.png"),
     ["image id 2 (gone.png): file not found"]),
    ("directory_not_file", set_at(("images", 1, "file_name"), "sub"), ["image id 2 (sub): not a regular file"]),
]


@pytest.mark.parametrize("mutate, phrases", [c[1:] for c in COCO_CASES], ids=[c[0] for c in COCO_CASES])
@pytest.mark.parametrize("flags", [(), ("--skip-bad-images",)], ids=["default", "skip"])
def test_coco_problems_stop_before_any_work(run, job, mutate, phrases, flags):
    (job / "sub").mkdir()
    coco = mutate if isinstance(mutate, str) else _coco()
    if callable(mutate):
        mutate(coco)
    rc, text, out = run(coco, *flags)
    assert rc == 2, text
    assert "mal label: error:" in text
    for p in phrases:
        assert p in text, f"{p!r} not in {text!r}"
    assert _no_output(out)


def test_many_missing_files_one_report(run, job, tmp_path):
    coco = _coco()
    coco["images"] += [{"id": 10 + i, "file_name": f"lost_{i}.png", "width": W, "height": H} for i in range(30)]
    coco["annotations"] += [{"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": [1, 1, 5, 5]}
                            for i in range(30)]
    rc, text, out = run(coco)
    assert rc == 2 and "30 problem(s) in the COCO file" in text
    assert "lost_0.png" in text and "... and 10 more" in text and _no_output(out)
    rc, text, _ = run(_coco(), "--images", str(tmp_path / "elsewhere"), name="wrongdir")  # wrong folder
    assert rc == 2 and "none of the 3 annotated image files exists under" in text


def test_box_partly_outside_is_clipped_or_strict_error(run):
    coco = _coco()
    coco["annotations"][1]["bbox"] = [30, 20, 20, 20]  # image 2 is 40x30
    rc, text, out = run(coco)
    assert rc == 0 and "annotation id 2: bbox [30, 20, 20, 20] partly outside image id 2" in text
    ann = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    assert decode_rle(ann[2]["segmentation"]).sum() == 10 * 10  # clipped to the image
    rc, text, out = run(coco, "--strict", name="strict")
    assert rc == 2 and "annotation id 2: bbox [30, 20, 20, 20] partly outside" in text and "--strict" in text
    assert _no_output(out)
    rc, text, _ = run(coco, "--strict", "--skip-bad-images", name="both")
    assert rc == 2 and "contradict" in text


# --- images that cannot be used: an error, or skipped and reported with --skip-bad-images -----------

def _png_bytes(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


SKIPPABLE = [
    # id, how b.png (image id 2) is broken, phrase
    ("not_an_image", lambda p: p.write_text("this is a text file"), "not an image file"),
    ("zero_bytes", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("truncated_png", lambda p: p.write_bytes(_png_bytes(_rgb())[:300]), "truncated or corrupt"),
    ("corrupt_png_bytes", lambda p: p.write_bytes(_png_bytes(_rgb())[:60] + bytes(300) + _png_bytes(_rgb())[360:]),
     "cannot decode image"),
    ("truncated_jpeg", lambda p: (Image.fromarray(_rgb()).save(p, "JPEG"), p.write_bytes(p.read_bytes()[:-300])),
     "truncated or corrupt"),
    ("wrong_size", lambda p: Image.fromarray(_rgb()[:20]).save(p), "image is 40x20 but the COCO file says 40x30"),
]


@pytest.mark.parametrize("damage, phrase", [c[1:] for c in SKIPPABLE], ids=[c[0] for c in SKIPPABLE])
def test_unusable_image_error_skip_or_strict(run, job, damage, phrase):
    damage(job / "b.png")
    rc, text, out = run(_coco())
    assert rc == 2 and "b.png" in text and phrase in text and _no_output(out)

    rc, text, out = run(_coco(), "--strict", name="strict")
    assert rc == 2 and "b.png" in text and phrase in text and _no_output(out)

    rc, text, out = run(_coco(), "--skip-bad-images", name="skip")
    assert rc == 0 and "b.png" in text and phrase in text  # reported
    kept = json.loads(out.read_text())["annotations"]
    assert sorted(a["id"] for a in kept) == [1, 3, 4]  # image 2's box is left out


# --- unusual but valid images: decoded, labeled at the right size ------------------------------------

def _exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def _smooth() -> np.ndarray:
    """A smooth colour gradient: survives JPEG compression nearly unchanged (random noise does not)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.dstack([x * 6, y * 8, 255 - x * 3]).astype(np.uint8)


def _gray(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2)


def _save(p, arr, *args, **kw):
    Image.fromarray(arr, *args).save(p, **kw)


DECODABLE = [
    # id, file name, writer of image 2 (upright size 40x30), expected RGB pixels, max abs error
    ("grayscale", "b.png", lambda p: _save(p, _rgb()[..., 0]), _gray(_rgb()[..., 0]), 0),
    ("gray_alpha", "b.png", lambda p: _save(p, _rgb()[..., :2].copy(), "LA"), _gray(_rgb()[..., 0]), 0),
    ("palette_transparency", "b.png", lambda p: Image.fromarray(_smooth()).quantize(16).save(p, transparency=0),
     np.asarray(Image.fromarray(_smooth()).quantize(16).convert("RGB")), 0),
    ("rgba", "b.png", lambda p: _save(p, np.dstack([_rgb(), _rgb(1)[..., 0]])), _rgb(), 0),
    ("16_bit", "b.png", lambda p: _save(p, _rgb()[..., 0].astype(np.uint16) * 257), _gray(_rgb()[..., 0]), 0),
    ("32_bit_float_tiff", "b.tif", lambda p: _save(p, _rgb()[..., 0].astype(np.float32) / 255),
     _gray(_rgb()[..., 0]), 1),
    ("cmyk_jpeg", "b.jpg", lambda p: Image.fromarray(_smooth()).convert("CMYK").save(p, "JPEG", quality=95),
     _smooth(), 12),
    # Stored sideways (30 wide, 40 high) with "rotate 90" in EXIF: upright it is 40x30, as the COCO file says.
    ("exif_rotated", "b.jpg", lambda p: _save(p, np.ascontiguousarray(np.rot90(_smooth())), quality=95,
                                              exif=_exif(6)), _smooth(), 12),
]


@pytest.mark.parametrize("file_name, write, expected, atol", [c[1:] for c in DECODABLE],
                         ids=[c[0] for c in DECODABLE])
def test_unusual_images_are_decoded(run, job, file_name, write, expected, atol):
    (job / "b.png").unlink()
    write(job / file_name)
    got = read_rgb(job / file_name).astype(int)
    assert got.shape == (H, W, 3) and np.abs(got - expected).max() <= atol
    coco = _coco()
    coco["images"][1]["file_name"] = file_name
    rc, text, out = run(coco, "--strict")
    assert rc == 0, text
    ann = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    assert sorted(ann) == [1, 2, 3, 4]
    mask = decode_rle(ann[2]["segmentation"])
    assert mask.shape == (H, W) and mask.sum() == 12 * 10


def test_exif_ignored_by_the_annotation_tool(run, job):
    """The COCO size is the stored (un-rotated) one: the boxes were drawn on the stored pixels, so those
    are used, with a warning; `mal label --strict` refuses and writes nothing."""
    Image.fromarray(_rgb()).save(job / "b.jpg", "JPEG", exif=_exif(6))  # stored 40x30, upright 30x40
    coco = _coco()
    coco["images"][1]["file_name"] = "b.jpg"
    rc, text, out = run(coco)
    assert rc == 0 and "b.jpg: its EXIF orientation turns it to 30x40, but the COCO file says 40x30" in text
    assert decode_rle(json.loads(out.read_text())["annotations"][1]["segmentation"]).shape == (H, W)
    rc, text, out = run(coco, "--strict", name="strict")
    assert rc == 2 and "b.jpg" in text and "not using the stored pixels because of --strict" in text
    assert _no_output(out)


# --- training: unreadable images are skipped (reported) or, with strict, an error ---------------------

def test_training_skips_unreadable_images_unless_strict(job, caplog):
    (job / "b.png").write_bytes(b"")
    for strict in (False, True):
        ds = TrainCrops(load_boxes(_coco(), job, strict=strict), 32, min_area=10)
        i = next(k for k, r in enumerate(ds.records) if r.file_name == "b.png")
        if strict:
            with pytest.raises(ImageError, match=r"b.png: empty file .*--strict"):
                ds[i]
            continue
        with caplog.at_level(logging.WARNING, logger="mal"):
            item = ds[i]  # the next readable box instead
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
        assert "training without this image" in caplog.text and "b.png" in caplog.text
        assert ds.bad_files == {"b.png"}


TINY_TRAIN = TINY_KV_FLAGS + ["--crop-size", "32", "--min-area", "10", "--batch-size", "4", "--max-steps", "1",
                              "--accelerator", "cpu", "--precision", "32"]


@pytest.mark.slow  # mal train, a DataLoader worker process
def test_train_strict_stops_on_clipped_box_and_unreadable_image(job, tmp_path, capsys):
    coco = _coco()
    coco["annotations"][0]["bbox"] = [-3, 2, 10, 8]
    ann = tmp_path / "boxes.json"
    ann.write_text(json.dumps(coco))
    base = ["train", "--images", str(job), "--annotations", str(ann), *TINY_TRAIN]
    assert main([*base, "--out", str(tmp_path / "r1"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "annotation id 1: bbox [-3, 2, 10, 8] partly outside" in err and not (tmp_path / "r1").exists()

    coco["annotations"][0]["bbox"] = [2, 2, 10, 8]
    ann.write_text(json.dumps(coco))
    (job / "b.png").write_bytes(b"")
    # Read in a DataLoader worker: the message must still be the file's, not the worker's traceback.
    assert main([*base, "--out", str(tmp_path / "r2"), "--strict", "--num-workers", "1"]) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("mal train: error: "))
    assert line == f"mal train: error: {job / 'b.png'}: empty file (0 bytes) (--strict: not skipping it)"
    assert "Original Traceback" not in err and not (tmp_path / "r2/model.safetensors").exists()
