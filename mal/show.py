"""A static HTML page for eyeballing masks: one row per annotation, one column per prediction file.

``show`` writes ``out_dir/index.html`` and PNG overlays under ``out_dir/overlays/``. The page is
self-contained (inline CSS and a few lines of inline JavaScript for the category filter; no network
resources), so it opens from disk in any browser and can be zipped and shared.

Rows are ordered to put the annotations most worth looking at first: with two or more prediction
files, those where the first two files disagree most (lowest mask IoU between them); with one
file, the lowest-scoring masks.
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .data.images import read_rgb
from .evaluate import EvalError, evaluate

__all__ = ["show"]

THUMB = 256  # overlay long side, px
EXPAND = 1.3  # crop = box scaled by this around its centre
MASK_RGB = (255, 0, 255)  # translucent fill + contour
BOX_RGB = (255, 220, 0)  # box outline
ALPHA = 0.5


# --------------------------------------------------------------------------- loading


def _load(path: str | os.PathLike | dict, role: str) -> dict:
    if isinstance(path, dict):
        return path
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EvalError(f"cannot read {role} file {os.fspath(path)}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) \
            or not isinstance(data.get("images"), list):
        raise EvalError(f"{role} file {os.fspath(path)} is not COCO JSON with 'images' and 'annotations'")
    return data


def _rle(seg: Any, h: int, w: int, aid: Any, name: str) -> dict:
    """Any COCO segmentation -> compressed RLE (bytes counts) at (h, w)."""
    try:
        if isinstance(seg, list):
            polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6]
            if not polys:
                return mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))
            return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        if isinstance(seg, dict) and "counts" in seg:
            if [int(s) for s in seg.get("size", ())] != [h, w]:
                raise EvalError(f"annotation {aid} in {name}: RLE size {seg.get('size')} != image size [{h}, {w}]")
            if isinstance(seg["counts"], list):
                return mask_utils.frPyObjects(seg, h, w)
            c = seg["counts"]
            return {"size": [h, w], "counts": c.encode() if isinstance(c, str) else c}
    except EvalError:
        raise
    except Exception as e:
        raise EvalError(f"annotation {aid} in {name}: cannot decode segmentation: {e}") from e
    raise EvalError(f"annotation {aid} in {name}: no usable segmentation")


def _iou(a: dict, b: dict) -> float:
    aa, ab = int(mask_utils.area(a)), int(mask_utils.area(b))
    if aa == 0 and ab == 0:
        return 1.0
    if aa == 0 or ab == 0:
        return 0.0
    return float(mask_utils.iou([a], [b], [0])[0, 0])


# --------------------------------------------------------------------------- overlays


def _crop_box(bbox, h: int, w: int) -> tuple[int, int, int, int]:
    """Box [x, y, bw, bh] expanded EXPAND x around its centre, clipped -> x0, y0, x1, y1 (non-empty)."""
    x, y, bw, bh = (float(v) for v in bbox)
    cx, cy = x + bw / 2, y + bh / 2
    hw, hh = max(bw * EXPAND, 8.0) / 2, max(bh * EXPAND, 8.0) / 2
    x0, y0 = int(np.clip(np.floor(cx - hw), 0, w - 1)), int(np.clip(np.floor(cy - hh), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(cx + hw), x0 + 1, w)), int(np.clip(np.ceil(cy + hh), y0 + 1, h))
    return x0, y0, x1, y1


def _overlay(img: np.ndarray, mask: np.ndarray | None, bbox) -> np.ndarray:
    """BGR thumbnail of the crop around ``bbox`` with ``mask`` tinted and outlined and the box drawn."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = _crop_box(bbox, h, w) if bbox is not None else (0, 0, w, h)
    crop = img[y0:y1, x0:x1]
    s = THUMB / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    out = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    colour, box_colour = MASK_RGB[::-1], BOX_RGB[::-1]
    if mask is not None:
        m = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        tint = np.array(colour, np.float32)
        out[m] = (out[m].astype(np.float32) * (1 - ALPHA) + tint * ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        # A dark halo under each line keeps it visible on any background colour.
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3)
        cv2.drawContours(out, contours, -1, colour, 1)
    if bbox is not None:
        bx, by, bw, bh = (float(v) for v in bbox)
        p0 = (int(round((bx - x0) * s)), int(round((by - y0) * s)))
        p1 = (int(round((bx + bw - x0) * s)) - 1, int(round((by + bh - y0) * s)) - 1)
        cv2.rectangle(out, p0, p1, (0, 0, 0), 3)
        cv2.rectangle(out, p0, p1, box_colour, 1)
    return out


def _safe(x: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(x))[:40]


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}
.meta{margin:4px 0;font-size:14px}
.warn{color:#a40000;font-weight:bold}
table{border-collapse:collapse;margin-top:12px;background:#fff}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}
th{background:#eee;position:sticky;top:0}
td.cell{text-align:center}
td.cell img{display:block;margin:0 auto 2px;max-width:256px;image-rendering:pixelated}
.num{font-variant-numeric:tabular-nums}
.low{color:#b00000;font-weight:bold}
tr[hidden]{display:none}
"""

# The category filter. The URL hash (#cat=<name>) selects a category on load and follows changes,
# so a filtered view can be bookmarked or shared.
_JS = """
(function () {
  var sel = document.getElementById('cat'), shown = document.getElementById('shown');
  function apply() {
    var v = sel.value, n = 0;
    document.querySelectorAll('tr[data-ann]').forEach(function (r) {
      r.hidden = v !== '' && r.getAttribute('data-cat') !== v;
      if (!r.hidden) n++;
    });
    shown.textContent = String(n);
  }
  var m = /^#cat=(.*)$/.exec(location.hash);
  if (m) {
    var want = decodeURIComponent(m[1]);
    for (var i = 0; i < sel.options.length; i++) if (sel.options[i].value === want) sel.value = want;
  }
  sel.addEventListener('change', function () {
    try { history.replaceState(null, '', sel.value ? '#cat=' + encodeURIComponent(sel.value) : '#'); }
    catch (e) { /* some browsers refuse URL changes on file:// pages; filtering still works */ }
    apply();
  });
  apply();
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, low: float | None = None) -> str:
    if x is None:
        return "&ndash;"
    cls = "num low" if low is not None and x < low else "num"
    return f'<span class="{cls}">{x:.3f}</span>'


def _write_text_atomic(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared page should be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- public API


def show(images_dir: str | os.PathLike, preds: list, out_dir: str | os.PathLike, *,
         gt: str | os.PathLike | dict | None = None, names: list[str] | None = None,
         max_items: int | None = None) -> Path:
    """Write ``out_dir/index.html`` comparing the masks of ``preds`` (COCO JSON files of the same
    boxes) side by side, with PNG overlays in ``out_dir/overlays/``. Returns the page's path.

    gt:        optional ground truth; adds a gt column and each file's IoU with it.
    names:     column names (default: file stems).
    max_items: show only the first ``max_items`` rows of the sort order; the page says how many
               annotations were left out.
    Raises EvalError if the files do not describe the same annotations, ImageError if an image
    cannot be read.
    """
    from .compare import _names  # same column naming as the comparison table

    preds = list(preds)
    if not preds:
        raise EvalError("show needs at least one prediction file")
    if max_items is not None and max_items < 0:
        raise ValueError(f"max_items must be >= 0, got {max_items}")
    cols = _names(preds, names)
    datas = [_load(p, "prediction") for p in preds]
    pnames = ["<dict>" if isinstance(p, dict) else os.fspath(p) for p in preds]

    # Every file must describe exactly the same annotations (the side-by-side would be meaningless).
    anns = [{a["id"]: a for a in d["annotations"]} for d in datas]
    for j in range(1, len(anns)):
        if set(anns[j]) != set(anns[0]):
            miss, extra = set(anns[0]) - set(anns[j]), set(anns[j]) - set(anns[0])
            raise EvalError(f"{pnames[j]} has different annotations from {pnames[0]}: "
                            f"{len(miss)} missing, {len(extra)} extra")
        for aid, a in anns[0].items():
            if a.get("image_id") != anns[j][aid].get("image_id"):
                raise EvalError(f"annotation {aid}: image_id differs between {pnames[0]} and {pnames[j]}")
    images = {im["id"]: im for im in datas[0]["images"]}

    gt_data = gt_anns = None
    gt_iou: list[dict] = []
    if gt is not None:
        gt_data = _load(gt, "ground-truth")
        gt_anns = {a["id"]: a for a in gt_data["annotations"]}
        # evaluate() checks the boxes match and gives the IoU of each (non-crowd) instance.
        gt_iou = [{r["id"]: r["iou"] for r in evaluate(gt_data, d, compute_ap=False)["per_instance"]}
                  for d in datas]
        mean_iou = [float(np.mean(list(g.values()))) if g else None for g in gt_iou]

    cat_src = (gt_data or {}).get("categories") or datas[0].get("categories") or []
    cat_names = {c["id"]: str(c.get("name", c["id"])) for c in cat_src}

    # Masks as RLE (cheap), agreement between the first two files, sort order.
    rles: list[dict] = [{} for _ in datas]
    rows = []
    for aid, a in anns[0].items():
        im = images.get(a.get("image_id"))
        if im is None:
            raise EvalError(f"annotation {aid}: image_id {a.get('image_id')} not in {pnames[0]} images")
        h, w = int(im["height"]), int(im["width"])
        for j, d in enumerate(anns):
            rles[j][aid] = _rle(d[aid].get("segmentation"), h, w, aid, pnames[j])
        scores = [d[aid].get("score") for d in anns]
        agree = _iou(rles[0][aid], rles[1][aid]) if len(anns) >= 2 else None
        rows.append({"id": aid, "image_id": a["image_id"], "category_id": a.get("category_id"),
                     "bbox": a.get("bbox"), "scores": scores, "agree": agree})
    order = list(range(len(rows)))
    if len(anns) >= 2:
        order.sort(key=lambda i: rows[i]["agree"])
    else:
        order.sort(key=lambda i: (rows[i]["scores"][0] is None, rows[i]["scores"][0] or 0.0))
    total = len(order)
    if max_items is not None:
        order = order[:max_items]
    left_out = total - len(order)

    # Overlays, one image read per image.
    out_dir = Path(out_dir)
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict = defaultdict(list)
    for i in order:
        by_image[rows[i]["image_id"]].append(i)
    images_dir = Path(images_dir)
    for iid, idxs in by_image.items():
        im = images[iid]
        img = read_rgb(images_dir / im["file_name"])
        if img.shape[:2] != (int(im["height"]), int(im["width"])):
            raise EvalError(f"{images_dir / im['file_name']} is {img.shape[1]}x{img.shape[0]} but the "
                            f"annotations say {im['width']}x{im['height']}")
        for i in idxs:
            r = rows[i]
            stem = f"{i:05d}_{_safe(r['id'])}"
            r["files"] = []
            for j in range(len(anns)):
                m = mask_utils.decode(rles[j][r["id"]]).astype(bool)
                fname = f"{stem}_p{j}.png"
                cv2.imwrite(str(ov_dir / fname), _overlay(img, m, r["bbox"]))
                r["files"].append(fname)
            if gt_anns is not None:
                g = gt_anns[r["id"]]
                gm = mask_utils.decode(_rle(g.get("segmentation"), img.shape[0], img.shape[1],
                                            r["id"], "ground truth")).astype(bool)
                r["gt_file"] = f"{stem}_gt.png"
                cv2.imwrite(str(ov_dir / r["gt_file"]), _overlay(img, gm, r["bbox"]))

    # The page.
    present = sorted({cat_names.get(rows[i]["category_id"], str(rows[i]["category_id"])) for i in order})
    opts = '<option value="">all</option>' + "".join(f'<option value="{_e(c)}">{_e(c)}</option>'
                                                      for c in present)
    head = ["#", "annotation", "category"]  # HTML, already escaped
    if len(anns) >= 2:
        head.append(f"IoU {_e(cols[0])} &harr; {_e(cols[1])}")
    if gt_anns is not None:
        head.append("ground truth")
    head += [_e(c) for c in cols]

    body = []
    for rank, i in enumerate(order, 1):
        r = rows[i]
        cat = cat_names.get(r["category_id"], str(r["category_id"]))
        im = images[r["image_id"]]
        cells = [f'<td class="num">{rank}</td>',
                 f'<td>id {_e(r["id"])}<br><small>{_e(im.get("file_name", r["image_id"]))}</small></td>',
                 f"<td>{_e(cat)}</td>"]
        if len(anns) >= 2:
            cells.append(f"<td>{_num(r['agree'], 0.5)}</td>")
        if gt_anns is not None:
            cells.append(f'<td class="cell"><img src="overlays/{r["gt_file"]}" alt="gt {_e(r["id"])}"></td>')
        for j, c in enumerate(cols):
            info = f"score {_num(r['scores'][j])}"
            if gt_anns is not None:
                iou = gt_iou[j].get(r["id"])
                info += " &middot; IoU gt " + (_num(iou, 0.5) if iou is not None else "crowd")
            cells.append(f'<td class="cell"><img src="overlays/{r["files"][j]}" alt="{_e(c)} {_e(r["id"])}">'
                         f"{info}</td>")
        body.append(f'<tr data-ann="{_e(r["id"])}" data-cat="{_e(cat)}">{"".join(cells)}</tr>')

    sort_desc = (f"lowest mask IoU between {_e(cols[0])} and {_e(cols[1])} first" if len(anns) >= 2
                 else "lowest score first")
    meta = [f'<p class="meta">{total} annotations &middot; {len(cols)} prediction file(s): '
            + ", ".join(f"<b>{_e(c)}</b> ({_e(p)})" for c, p in zip(cols, pnames)) + "</p>",
            f'<p class="meta">sorted: {sort_desc}</p>']
    if gt_anns is not None:
        meta.append('<p class="meta">mean IoU with ground truth: ' + ", ".join(
            f"{_e(c)} {_num(m)}" for c, m in zip(cols, mean_iou)) + "</p>")
    if left_out:
        meta.append(f'<p class="meta warn">showing the first {len(order)} of {total} annotations '
                    f"(max_items={max_items}); {left_out} left out</p>")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>mal masks: {_e(", ".join(cols))}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Masks side by side</h1>
{"".join(meta)}
<p class="meta"><label for="cat">category</label> <select id="cat">{opts}</select>
&nbsp;<span id="shown">{len(order)}</span> of {len(order)} rows shown</p>
<table>
<thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
<script>{_JS}</script>
</body>
</html>
"""
    index = out_dir / "index.html"
    _write_text_atomic(page, index)
    return index
