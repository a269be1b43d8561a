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
import json
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from mal.compare import compare, format_comparison
from mal.demo import make_scenes
from mal.evaluate import EvalError, evaluate
from mal.masks import decode_rle, encode_rle
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
    with pytest.raises(EvalError, match="missing"):
        compare(scenes["gt_path"], [scenes["a"], tmp_path / "short.json"])


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


# --------------------------------------------------------------------------- real browser


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln or "Uncaught" in ln or "ERROR:CONSOLE" in ln]


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
