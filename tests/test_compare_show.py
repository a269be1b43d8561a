"""mal.compare (side-by-side metrics) and mal.show (static HTML viewer), on generated scenes.

The browser test opens the page in real headless Chromium. Console errors are detected from
Chromium's own log: with ``--enable-logging=stderr --v=0`` every console message of the page
(console.log/console.error and uncaught exceptions alike) is written to stderr as a line like
``[pid:tid:time:INFO:CONSOLE:12] "Uncaught ReferenceError: ...", source: file:///... (12)``.
Chromium 156 logs console.error at INFO level too, so the level cannot be relied on: the page logs
nothing itself, so *any* CONSOLE line (which covers "Uncaught" and "ERROR:CONSOLE") is a failure.
A control page with a deliberate error checks that this detection actually fires.
"""

import copy
import hashlib
import json
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mal.cli import main
from mal.compare import compare, format_comparison
from mal.data.images import read_rgb
from mal.demo import make_scenes
from mal.evaluate import EvalError, evaluate
from mal.coco_masks import decode_rle, encode_rle
from mal.show import show

CHROMIUM = Path("/usr/bin/chromium")


def _variant(gt: dict, eroded_mod: int) -> dict:
    """gt with a score per annotation and the masks of ids with id % 3 == eroded_mod eroded."""
    d = copy.deepcopy(gt)
    for a in d["annotations"]:
        a["score"] = round(0.5 + 0.01 * a["id"], 3)
        if a["id"] % 3 == eroded_mod:
            m = decode_rle(a["segmentation"]).astype(np.uint8)
            a["segmentation"] = encode_rle(cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool))
    return d


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    images, gt_path, _ = make_scenes(root / "data", num_images=6)
    gt = json.loads(gt_path.read_text())
    a, b = root / "eroded_a.json", root / "eroded_b.json"
    a.write_text(json.dumps(_variant(gt, 1)))  # A eroded on id%3==1, B on id%3==2, both exact on id%3==0
    b.write_text(json.dumps(_variant(gt, 2)))
    return {"root": root, "images": images, "gt_path": gt_path, "gt": gt, "a": a, "b": b}


def _ious(gt: dict, pred_path: Path) -> dict:
    pred = {p["id"]: p for p in json.loads(pred_path.read_text())["annotations"]}
    out = {}
    for g in gt["annotations"]:
        gm, pm = decode_rle(g["segmentation"]), decode_rle(pred[g["id"]]["segmentation"])
        out[g["id"]] = (gm & pm).sum() / (gm | pm).sum()
    return out


# --------------------------------------------------------------------------- compare


def test_compare_table_and_head_to_head(scenes):
    gt, a, b = scenes["gt"], scenes["a"], scenes["b"]
    res = compare(scenes["gt_path"], [a, b, scenes["gt_path"]], names=None)
    json.dumps(res)  # JSON-serialisable
    assert res["names"] == ["eroded_a", "eroded_b", "gt"]
    n = len(gt["annotations"])
    assert res["num_instances"] == n
    rows = {r["label"]: r["values"] for r in res["table"]}
    assert list(rows) == ["mIoU instance", "mIoU class", "mIoU small", "mIoU medium", "mIoU large",
                          "AP", "AP50", "AP75"]

    # Independent numpy check of the mIoU rows.
    ia, ib = _ious(gt, a), _ious(gt, b)
    cats = {g["id"]: g["category_id"] for g in gt["annotations"]}
    for col, iou in ((0, ia), (1, ib)):
        assert rows["mIoU instance"][col] == pytest.approx(np.mean(list(iou.values())), abs=1e-12)
        per_cat = [np.mean([v for k, v in iou.items() if cats[k] == c]) for c in set(cats.values())]
        assert rows["mIoU class"][col] == pytest.approx(np.mean(per_cat), abs=1e-12)
    # gt against itself is perfect; AP rows are exactly evaluate()'s.
    assert [rows[k][2] for k in ("mIoU instance", "mIoU class", "AP", "AP50", "AP75")] == [1.0] * 5
    for col, p in enumerate((a, b)):
        rep = evaluate(scenes["gt_path"], p)
        assert [rows[k][col] for k in ("AP", "AP50", "AP75")] == [rep["ap"][k] for k in ("AP", "AP50", "AP75")]
        for s in ("small", "medium", "large"):
            want = rep["miou_size"][s]["miou_instance"] if rep["miou_size"][s] else None
            assert rows[f"mIoU {s}"][col] == want
    assert rows["mIoU large"] == [None, None, None]  # 160x200 scenes have no large objects

    # Head-to-head A vs B: win if IoU(A) - IoU(B) > 0.01.
    d = {k: ia[k] - ib[k] for k in ia}
    h = res["head_to_head"]
    assert (h["a"], h["b"]) == ("eroded_a", "eroded_b")
    assert h["wins"] == sum(v > 0.01 for v in d.values())
    assert h["losses"] == sum(v < -0.01 for v in d.values())
    assert h["ties"] == n - h["wins"] - h["losses"]
    assert h["mean_iou_diff"] == pytest.approx(np.mean(list(d.values())), abs=1e-12)
    # The scenario really exercises all three outcomes: B wins where only A is eroded, and vice versa.
    assert h["wins"] == sum(1 for k in ia if k % 3 == 2) and h["losses"] == sum(1 for k in ia if k % 3 == 1)
    assert h["ties"] == sum(1 for k in ia if k % 3 == 0) > 0

    text = format_comparison(res)
    assert "eroded_a" in text and "eroded_b" in text and "mIoU large (n=0)" in text
    assert f"{h['wins']} wins, {h['losses']} losses, {h['ties']} ties" in text
    assert f"{rows['mIoU instance'][0]:.3f}" in text


def test_compare_names_and_errors(scenes, tmp_path):
    res = compare(scenes["gt_path"], [scenes["a"], scenes["a"]])
    assert res["names"] == ["eroded_a", "eroded_a (2)"]  # duplicate stems stay distinguishable
    assert res["head_to_head"]["ties"] == res["num_instances"] and res["head_to_head"]["mean_iou_diff"] == 0
    one = compare(scenes["gt_path"], [scenes["a"]], names=["mine"])
    assert one["names"] == ["mine"] and one["head_to_head"] is None
    assert "wins" not in format_comparison(one)
    with pytest.raises(EvalError, match="names"):
        compare(scenes["gt_path"], [scenes["a"]], names=["x", "y"])
    with pytest.raises(EvalError):
        compare(scenes["gt_path"], [])
    short = json.loads(scenes["a"].read_text())
    short["annotations"] = short["annotations"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(short))
    with pytest.raises(EvalError, match="label different annotations"):  # a sample, but not the same one
        compare(scenes["gt_path"], [scenes["a"], tmp_path / "short.json"])
    short["annotations"][0]["bbox"][0] += 5
    (tmp_path / "moved.json").write_text(json.dumps(short))
    with pytest.raises(EvalError, match="differ"):
        compare(scenes["gt_path"], [tmp_path / "moved.json"])


# --------------------------------------------------------------------------- show


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-ann="([^"]*)"', page)


def test_show_writes_every_annotation_worst_first(scenes, tmp_path):
    out = tmp_path / "view"
    index = show(scenes["images"], [scenes["a"], scenes["b"]], out, gt=scenes["gt_path"])
    assert index == out / "index.html"
    page = index.read_text()
    ids = [str(a["id"]) for a in scenes["gt"]["annotations"]]
    rows = _rows(page)
    assert sorted(rows) == sorted(ids)  # every annotation exactly once
    # Worst agreement between A and B first: the first row has the lowest A<->B mask IoU.
    pa = {p["id"]: decode_rle(p["segmentation"]) for p in json.loads(scenes["a"].read_text())["annotations"]}
    pb = {p["id"]: decode_rle(p["segmentation"]) for p in json.loads(scenes["b"].read_text())["annotations"]}
    agree = {str(k): (pa[k] & pb[k]).sum() / max((pa[k] | pb[k]).sum(), 1) for k in pa}
    assert [agree[r] for r in rows] == sorted(agree[r] for r in rows)
    # One overlay per annotation per file plus the gt column, all referenced and present.
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 3 * len(ids) and len(set(srcs)) == len(srcs)
    for s in srcs:
        img = cv2.imread(str(out / s))
        assert img is not None and max(img.shape[:2]) == 256, s
    # Self-contained: no external resources.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<select" in page and '<option value="">all</option>' in page
    for c in {"ellipse", "triangle", "polygon"} & {c["name"] for c in scenes["gt"]["categories"]}:
        assert f'<option value="{c}">' in page
    assert "left out" not in page
    assert not list(out.glob("*.tmp"))


def test_show_single_file_sorts_by_score_and_reports_left_out(scenes, tmp_path):
    out = tmp_path / "one"
    page = show(scenes["images"], [scenes["b"]], out, names=["bee"], max_items=3).read_text()
    anns = sorted(json.loads(scenes["b"].read_text())["annotations"], key=lambda a: a["score"])
    assert _rows(page) == [str(a["id"]) for a in anns[:3]]  # lowest score first
    left = len(anns) - 3
    assert f"{left} left out" in page and f"first 3 of {len(anns)}" in page
    assert len(list((out / "overlays").glob("*.png"))) == 3


def _scored(scenes, tmp_path, fallback_ids=()) -> tuple[Path, dict]:
    """File A with scores in no particular id order (one annotation unscored), the given ids
    replaced by a box fallback as `mal label` writes them (score 0, flagged mal_fallback)."""
    d = json.loads(scenes["a"].read_text())
    for a in d["annotations"]:
        a["score"] = round(((a["id"] * 37) % 101) / 101, 4)  # distinct: 37 is coprime to 101
        if a["id"] in fallback_ids:
            a["score"], a["mal_fallback"] = 0.0, "box"
    unscored = d["annotations"][len(d["annotations"]) // 2]
    del unscored["score"]
    path = tmp_path / "scored.json"
    path.write_text(json.dumps(d))
    ranked = sorted((a for a in d["annotations"] if "score" in a), key=lambda a: a["score"])
    return path, {"by_score": [str(a["id"]) for a in ranked] + [str(unscored["id"])]}


def test_show_sort_by_score_and_least_sure(scenes, tmp_path):
    scored, want = _scored(scenes, tmp_path)
    by_score = want["by_score"]
    assert by_score != sorted(by_score, key=int)  # the score order is not the id order

    # Two files, sort="score": the first file's lowest score first, the unscored mask last.
    page = show(scenes["images"], [scored, scenes["b"]], tmp_path / "s", sort="score").read_text()
    assert _rows(page) == by_score
    assert "sorted: lowest scored score first" in page and "left out" not in page

    # least_sure=4: exactly the 4 lowest-score masks, lowest first; the page says what was dropped.
    n = len(by_score)
    page = show(scenes["images"], [scored, scenes["b"]], tmp_path / "l", sort="score", least_sure=4).read_text()
    assert _rows(page) == by_score[:4]
    assert f"least_sure=4: only the 4 lowest-score masks of scored are shown; {n - 4} more confident" in page
    assert len(list((tmp_path / "l" / "overlays").glob("*.png"))) == 2 * 4

    # With the default (auto = disagreement for two files) the same 4 are ordered by A<->B IoU.
    page = show(scenes["images"], [scored, scenes["b"]], tmp_path / "d", least_sure=4).read_text()
    pa = {str(p["id"]): decode_rle(p["segmentation"]) for p in json.loads(scored.read_text())["annotations"]}
    pb = {str(p["id"]): decode_rle(p["segmentation"]) for p in json.loads(scenes["b"].read_text())["annotations"]}
    agree = {k: (pa[k] & pb[k]).sum() / max((pa[k] | pb[k]).sum(), 1) for k in by_score[:4]}
    assert _rows(page) == sorted(by_score[:4], key=lambda k: agree[k])  # stable: ties keep score order

    # least_sure then max_items: both rules reported.
    page = show(scenes["images"], [scored], tmp_path / "m", least_sure=5, max_items=2).read_text()
    assert _rows(page) == by_score[:2]
    assert f"{n - 5} more confident annotations left out" in page
    assert "first 2 of 5 least-sure annotations (max_items=2); 3 left out" in page


def test_show_options_are_checked(scenes, tmp_path):
    with pytest.raises(ValueError, match="two prediction files"):
        show(scenes["images"], [scenes["a"]], tmp_path, sort="disagreement")
    with pytest.raises(ValueError, match="sort must be one of"):
        show(scenes["images"], [scenes["a"]], tmp_path, sort="iou")
    with pytest.raises(ValueError, match="least_sure must be >= 0"):
        show(scenes["images"], [scenes["a"]], tmp_path, least_sure=-1)
    unscored = json.loads(scenes["a"].read_text())
    for a in unscored["annotations"]:
        del a["score"]
    with pytest.raises(ValueError, match="no 'score'"):
        show(scenes["images"], [unscored], tmp_path, least_sure=3)


def test_show_refuses_files_of_different_boxes(scenes, tmp_path):
    """The same-boxes check evaluate uses: a side by side of other boxes would draw one file's box
    over another file's mask."""
    moved = json.loads(scenes["b"].read_text())
    moved["annotations"][1]["bbox"][0] += 2
    aid = moved["annotations"][1]["id"]
    with pytest.raises(EvalError, match=rf"does not have the same boxes as .*eroded_a.json: 1 with a different "
                                        rf"box/image \(e\.g\. \[{aid}\]; annotation {aid}: bbox"):
        show(scenes["images"], [scenes["a"], moved], tmp_path / "v")
    assert not (tmp_path / "v").exists()


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_show_page_and_overlays_byte_identical(scenes, tmp_path):
    """Every byte of two pages (HTML and PNGs) as the single-module show.py wrote them before it was
    split into rows / overlays / page (commit e42c409). Changed the page on purpose? Update the digests."""
    a, b = json.loads(scenes["a"].read_text()), json.loads(scenes["b"].read_text())
    a["annotations"][0]["mal_fallback"] = "box"
    show(scenes["images"], [a, b], tmp_path / "v1", gt=scenes["gt"], names=["A<1>", "b&b"])
    show(scenes["images"], [b], tmp_path / "v2", least_sure=4, max_items=3)
    assert _digest(tmp_path / "v1") == "86495dc3af1a127091aa4b8276c71a64f6dd5c9749fb62701a2aa3ed54472cdd"
    assert _digest(tmp_path / "v2") == "eda4ae0e81b39b8833b54a88c4a374421f69b792040aab4bd713451927d756ae"


def test_show_marks_fallback_masks(scenes, tmp_path):
    ids = [a["id"] for a in scenes["gt"]["annotations"]]
    fb = {ids[1], ids[-2]}
    scored, want = _scored(scenes, tmp_path, fallback_ids=fb)
    page = show(scenes["images"], [scored, scenes["b"]], tmp_path / "v", sort="score").read_text()
    assert set(_rows(page)[:2]) == {str(i) for i in fb}  # score 0: the least sure come first
    cells = dict(re.findall(r'<tr data-ann="([^"]*)"[^>]*>(.*?)</tr>', page))
    for aid, row in cells.items():
        # Only the first file's cell of a fallback row is marked; every prediction cell shows its score.
        marked = re.findall(r'<td class="cell fallback" data-fallback="box">'
                            r'<img src="overlays/[^"]*_p(\d)\.png"', row)
        assert marked == (["0"] if int(aid) in fb else []), aid
        assert ("fallback: box" in row) == (int(aid) in fb)
        assert len(re.findall(r"score (<span|&ndash;)", row)) == 2  # the unscored mask shows a dash
    assert "fallback masks (flagged mal_fallback" in page and "scored 2, eroded_b 0" in page


def _exif_scene(root: Path) -> tuple[Path, Path, np.ndarray]:
    """A 120x80 JPEG (stored) tagged EXIF orientation 6, whose COCO entry gives the stored size as an
    annotation tool ignoring the tag would: top half red, bottom half blue; one box in the blue."""
    images = root / "images"
    images.mkdir()
    stored = np.zeros((80, 120, 3), np.uint8)
    stored[:40] = (255, 0, 0)
    stored[40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 80 wide, 120 high
    Image.fromarray(stored).save(images / "rot.jpg", quality=95, exif=exif)
    mask = np.zeros((80, 120), bool)
    mask[50:65, 15:35] = True
    coco = {"images": [{"id": 1, "file_name": "rot.jpg", "width": 120, "height": 80}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 45, 30, 25],
                             "segmentation": encode_rle(mask), "score": 0.9, "iscrowd": 0}]}
    pred = root / "pred.json"
    pred.write_text(json.dumps(coco))
    return images, pred, stored


def test_show_exif_stored_size_uses_stored_pixels(tmp_path, capsys):
    images, pred, _ = _exif_scene(tmp_path)
    assert read_rgb(images / "rot.jpg").shape == (120, 80, 3)  # the tag is real: upright is 80x120
    out = tmp_path / "view"
    assert main(["show", "--images", str(images), "--pred", str(pred), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert _rows(page) == ["7"]
    assert "rot.jpg: its EXIF orientation turns it to 80x120, but the COCO file says 120x80" in page
    (src,) = re.findall(r'<img src="([^"]+)"', page)
    ov = cv2.imread(str(out / src))  # BGR
    # Crop = box x 1.3 around its centre in stored pixels: x 5..45, y 41..74 (40 x 33), long side 256.
    assert ov.shape[1] == 256 and ov.shape[0] == round(33 * 256 / 40)
    s = 256 / 40
    corner = ov[int(2 * s), int(2 * s)].astype(int)  # stored (7, 43): blue, outside mask and box
    inside = ov[int((57 - 41) * s), int((25 - 5) * s)].astype(int)  # mask centre: blue tinted magenta
    assert np.abs(corner - (255, 0, 0)).max() < 25, corner
    assert np.abs(inside - (255, 0, 127)).max() < 25, inside


def test_show_unreadable_image_is_one_line_naming_it(tmp_path, capsys):
    images, pred, _ = _exif_scene(tmp_path)
    (images / "rot.jpg").write_bytes(b"not a jpeg")
    assert main(["show", "--images", str(images), "--pred", str(pred), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mal show: error: ") and "rot.jpg" in err and "\n" not in err


def test_show_cli_sort_score_least_sure(scenes, tmp_path):
    scored, want = _scored(scenes, tmp_path)
    out = tmp_path / "cli"
    assert main(["show", "--images", str(scenes["images"]), "--pred", str(scored), "--pred", str(scenes["b"]),
                 "--sort", "score", "--least-sure", "3", "--out", str(out)]) == 0
    assert _rows((out / "index.html").read_text()) == want["by_score"][:3]


# --------------------------------------------------------------------------- real browser


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln or "Uncaught" in ln or "ERROR:CONSOLE" in ln]


@pytest.mark.slow  # starts a browser
def test_page_in_headless_chromium(scenes, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    out = tmp_path / "view"
    index = show(scenes["images"], [scenes["a"], scenes["b"]], out, gt=scenes["gt_path"])
    ids = {str(a["id"]) for a in scenes["gt"]["annotations"]}

    # 1. Screenshot: a real rendering, not a blank page.
    shot = tmp_path / "shot.png"
    r = _chromium(index.as_uri(), tmp_path / "p1", f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.exists(), r.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # text, tables and overlays, not one colour
    assert _console_lines(r.stderr) == []

    # 2. DOM after the scripts ran, opened filtered to one category through the URL hash.
    cat = scenes["gt"]["categories"][1]["name"]
    cid = scenes["gt"]["categories"][1]["id"]
    r = _chromium(index.as_uri() + f"#cat={cat}", tmp_path / "p2", "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _console_lines(r.stderr) == []
    dom = r.stdout
    rows = re.findall(r'<tr data-ann="([^"]*)" data-cat="([^"]*)"( hidden="")?>', dom)
    assert {a for a, _, _ in rows} == ids and len(rows) == len(ids)  # every annotation row is in the DOM
    visible = [a for a, c, hidden in rows if not hidden]
    n_cat = sum(a["category_id"] == cid for a in scenes["gt"]["annotations"])
    assert len(visible) == n_cat and all(c == cat for a, c, hidden in rows if not hidden)
    assert f'<span id="shown">{n_cat}</span>' in dom  # the filter script ran without error

    # 3. Control: the detection above does see a page's errors.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   "<script>noSuchFunction();</script></body></html>")
    r = _chromium(bad.as_uri(), tmp_path / "p3", "--dump-dom")
    assert any("Uncaught" in ln for ln in _console_lines(r.stderr)), r.stderr[-2000:]
