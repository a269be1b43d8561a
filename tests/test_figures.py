"""bench/figure.py and bench/examples.py on tiny synthetic inputs (and BENCHMARKS.md's own figure tables)."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import examples  # noqa: E402
import figure  # noqa: E402

from mal.coco_masks import encode_rle  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(capsys, argv) -> str:
    capsys.readouterr()
    assert figure.main(argv + ["--table-only"]) == 0
    return capsys.readouterr().out


def test_figure_from_labelers_json_and_eval_report(tmp_path, capsys):
    result = {"command": "python bench/labelers.py", "rows": [
        {"row": "box", "miou_instance": 0.5971, "miou_size": {"small": 0.6031, "medium": 0.58, "large": 0.6144}},
        {"row": "sam", "miou_instance": 0.8361, "miou_size": {"small": 0.828, "medium": 0.9306, "large": None}},
    ]}
    report = {"miou_instance": 0.7449, "miou_class": 0.7,
              "miou_size": {"small": {"miou_instance": 0.7012, "miou_class": 0.7, "count": 3},
                            "medium": {"miou_instance": 0.7593, "miou_class": 0.7, "count": 2}, "large": None}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    (tmp_path / "report.json").write_text(json.dumps(report))
    argv = ["--dataset", "mini", str(tmp_path / "result.json"), f"mal={tmp_path / 'report.json'}"]
    out = _table(capsys, argv)
    assert out.splitlines() == [
        "**mini**", "", "| labeler | all | S | M | L |", "|---|---|---|---|---|",
        "| box | 0.597 | 0.603 | 0.580 | 0.614 |",
        "| sam | 0.836 | 0.828 | 0.931 | — |",
        "| mal | 0.745 | 0.701 | 0.759 | — |",
    ]
    png = tmp_path / "fig" / "labelers.png"
    assert figure.main(argv + ["--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_figure_from_markdown_tables(tmp_path, capsys):
    md = tmp_path / "B.md"
    md.write_text("""# x
<!-- figure:photos -->
| labeler | all | S | M | L | mask AP | run |
|---|---|---|---|---|---|---|
| filled box (`--engine box`) | 0.597 | 0.603 | 0.580 | 0.614 | 0.220 | A |
| **`mal train`** | **0.748** | **0.708** | 0.762 | 0.810 | 0.524 | A |
<!-- /figure:photos -->
text between
<!-- figure:cells -->
| labeler | all | S | M | L |
|---|---|---|---|---|
| ellipse | 0.807 | 0.807 | 0.810 | — |
<!-- /figure:cells -->
""")
    out = _table(capsys, ["--from-benchmarks", str(md)])
    assert out == ("**photos**\n\n| labeler | all | S | M | L |\n|---|---|---|---|---|\n"
                   "| filled box (`--engine box`) | 0.597 | 0.603 | 0.580 | 0.614 |\n"
                   "| `mal train` | 0.748 | 0.708 | 0.762 | 0.810 |\n\n"
                   "**cells**\n\n| labeler | all | S | M | L |\n|---|---|---|---|---|\n"
                   "| ellipse | 0.807 | 0.807 | 0.810 | — |\n")
    png = tmp_path / "f.png"
    assert figure.main(["--from-benchmarks", str(md), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_benchmarks_figure_tables_are_the_readme_table(capsys):
    """BENCHMARKS.md's Quality tables parse, and the README shows exactly the numbers the figure draws."""
    sets = figure.datasets_from_benchmarks(ROOT / "BENCHMARKS.md")
    assert [t for t, _ in sets] == ["coco2017_mini", "dsb2018_nuclei"]
    for _, rows in sets:
        assert len(rows) >= 5 and all(v["all"] is not None and v["S"] is not None for _, v in rows)
    assert figure.markdown(sets) in (ROOT / "README.md").read_text()


def _coco(masks: dict, h: int, w: int, boxes: dict) -> dict:
    return {"images": [{"id": 1, "file_name": "im.png", "height": h, "width": w}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": boxes[i], "area": int(m.sum()),
                             "iscrowd": 0, "segmentation": encode_rle(m)} for i, m in masks.items()]}


def test_examples_pick_the_most_differing_instances(tmp_path):
    h, w = 64, 96
    boxes = {1: [0, 0, 16, 16], 2: [20, 0, 16, 16], 3: [40, 0, 16, 16], 4: [60, 0, 16, 16], 5: [0, 40, 4, 4]}

    def box_mask(i, frac=1.0):
        x, y, bw, bh = boxes[i]
        m = np.zeros((h, w), bool)
        m[y:y + bh, x:x + int(bw * frac)] = True
        return m

    human = {i: box_mask(i) for i in boxes}
    a = {i: box_mask(i) for i in boxes}
    # b agrees with a on 1 (IoU 1), half on 2 (0.5), not at all on 3 (0) and a quarter on 4 (0.25);
    # 5 disagrees completely too, but its box is smaller than --min-size.
    b = {1: box_mask(1), 2: box_mask(2, 0.5), 3: np.zeros((h, w), bool), 4: box_mask(4, 0.25),
         5: np.zeros((h, w), bool)}
    files = {}
    for name, masks in (("gt", human), ("a", a), ("b", b)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(_coco(masks, h, w, boxes)))
    rows, rles, images = examples.pick(files["gt"], files["a"], files["b"], k=2, min_size=8)
    assert [r.id for r in rows] == [3, 4]
    assert [r.agree for r in rows] == [0.0, pytest.approx(0.25)]

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "im.png"), np.full((h, w, 3), 90, np.uint8))
    out = tmp_path / "ex.png"
    assert examples.main(["--images", str(tmp_path / "images"), "--gt", str(files["gt"]),
                          "--a", f"sam={files['a']}", "--b", f"mal={files['b']}", "--k", "3",
                          "--min-size", "8", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
