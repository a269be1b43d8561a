"""A static HTML page for eyeballing masks: one row per annotation, one column per prediction file.

``show`` writes ``out_dir/index.html`` and PNG overlays under ``out_dir/overlays/``. The page is
self-contained (inline CSS and a few lines of inline JavaScript for the category filter; no network
resources), so it opens from disk in any browser and can be zipped and shared.

Rows are ordered to put the annotations most worth looking at first (``sort``): "disagreement",
those where the first two files disagree most (lowest mask IoU between them), or "score", the
first file's lowest-scoring masks; "auto" (default) is disagreement with two or more files, score
with one. ``least_sure=N`` keeps only the first file's N lowest-score masks, so a reviewer fixes
just those; the page says how many rows were left out and by which rule. Masks that labeling
replaced by a fallback (flagged ``mal_fallback``, the least trustworthy) are marked in red.

Images are read as ``mal label`` reads them (:func:`mal.data.images.read_sized_image`): EXIF
orientation applied, or the stored pixels when only they match the COCO size (noted on the page).
An unreadable image, or one whose size disagrees with the COCO file, stops ``show`` with an
:class:`~mal.data.images.ImageError` naming the file: a page silently missing rows would mislead.
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

from .data.images import ImageError, read_sized_image
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
td.fallback{background:#ffe4e4;outline:2px solid #b00000;outline-offset:-2px}
.fb{display:inline-block;margin-top:2px;padding:0 4px;background:#b00000;color:#fff;font-weight:bold}
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


# --------------------------------------------------------------------------- rows and order

SORTS = ("auto", "disagreement", "score")


def _score(v: Any) -> float | None:
    """A usable score, or None (missing, not a number, NaN): such masks sort after scored ones."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        return None
    return float(v)


def _check_same(anns: list[dict], pnames: list[str]) -> None:
    """Every file must describe exactly the same annotations (the side-by-side would be meaningless)."""
    for j in range(1, len(anns)):
        if set(anns[j]) != set(anns[0]):
            miss, extra = set(anns[0]) - set(anns[j]), set(anns[j]) - set(anns[0])
            raise EvalError(f"{pnames[j]} has different annotations from {pnames[0]}: "
                            f"{len(miss)} missing, {len(extra)} extra")
        for aid, a in anns[0].items():
            if a.get("image_id") != anns[j][aid].get("image_id"):
                raise EvalError(f"annotation {aid}: image_id differs between {pnames[0]} and {pnames[j]}")


def _check_options(sort: str, least_sure: int | None, max_items: int | None, n_files: int) -> None:
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if sort == "disagreement" and n_files < 2:
        raise ValueError("sort 'disagreement' needs at least two prediction files")
    for name, v in (("max_items", max_items), ("least_sure", least_sure)):
        if v is not None and v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def _select(rows: list[dict], n_files: int, sort: str, least_sure: int | None, max_items: int | None,
            col0: str) -> tuple[list[int], str, list[str]]:
    """Indices of the rows to show, in order; the sort used ("auto" resolved) and notes on what was
    left out (HTML, ``col0`` already escaped). ``least_sure`` picks rows by score before ``sort``
    orders them, so "the 50 least sure, most disagreeing first" works too."""
    def by_score(i: int) -> tuple[bool, float]:
        s = rows[i]["scores"][0]
        return s is None, s or 0.0

    order, notes = list(range(len(rows))), []
    if least_sure is not None:
        order = sorted(order, key=by_score)[:least_sure]
        if len(order) < len(rows):
            notes.append(f"least_sure={least_sure}: only the {len(order)} lowest-score masks of {col0} "
                         f"are shown; {len(rows) - len(order)} more confident annotations left out")
    if sort == "auto":
        sort = "disagreement" if n_files >= 2 else "score"
    if sort == "disagreement":
        order.sort(key=lambda i: rows[i]["agree"])
    else:
        order.sort(key=by_score)
    if max_items is not None and len(order) > max_items:
        kind = "least-sure annotations" if least_sure is not None else "annotations"
        notes.append(f"showing the first {max_items} of {len(order)} {kind} (max_items={max_items}); "
                     f"{len(order) - max_items} left out")
        order = order[:max_items]
    return order, sort, notes


# --------------------------------------------------------------------------- overlays on disk


def _read(images_dir: Path, im: dict) -> tuple[np.ndarray, str | None]:
    """An image's pixels as `mal label` reads them, and its EXIF warning if any; ImageError if unusable."""
    item = read_sized_image(images_dir / im["file_name"], im["width"], im["height"])
    if "error" in item:
        raise ImageError(item["error"])
    return item["pixels"], item.get("warning")


def _write_overlays(rows: list[dict], order: list[int], images: dict, images_dir: Path,
                    rles: list[dict], gt_anns: dict | None, ov_dir: Path) -> list[str]:
    """PNG overlays of the rows in ``order``, reading each image once; sets each row's ``files``
    (and ``gt_file``). Returns the images' EXIF warnings."""
    by_image: dict = defaultdict(list)
    for i in order:
        by_image[rows[i]["image_id"]].append(i)
    warnings = []
    for iid, idxs in by_image.items():
        img, warning = _read(images_dir, images[iid])
        if warning:
            warnings.append(warning)
        for i in idxs:
            r = rows[i]
            stem = f"{i:05d}_{_safe(r['id'])}"
            r["files"] = []
            for j, masks in enumerate(rles):
                fname = f"{stem}_p{j}.png"
                cv2.imwrite(str(ov_dir / fname), _overlay(img, mask_utils.decode(masks[r["id"]]).astype(bool),
                                                          r["bbox"]))
                r["files"].append(fname)
            if gt_anns is not None:
                g = gt_anns[r["id"]]
                gm = mask_utils.decode(_rle(g.get("segmentation"), img.shape[0], img.shape[1],
                                            r["id"], "ground truth")).astype(bool)
                r["gt_file"] = f"{stem}_gt.png"
                cv2.imwrite(str(ov_dir / r["gt_file"]), _overlay(img, gm, r["bbox"]))
    return warnings


# --------------------------------------------------------------------------- page parts


def _pred_cell(r: dict, j: int, col: str, gt_iou: list[dict] | None) -> str:
    """One prediction's overlay with its score (and IoU with gt); a fallback mask is marked red."""
    info = f"score {_num(r['scores'][j])}"
    if gt_iou is not None:
        iou = gt_iou[j].get(r["id"])
        info += " &middot; IoU gt " + (_num(iou, 0.5) if iou is not None else "crowd")
    fb = r["fallback"][j]
    attrs = f' class="cell fallback" data-fallback="{_e(fb)}"' if fb else ' class="cell"'
    badge = f'<br><span class="fb" title="mal_fallback">fallback: {_e(fb)}</span>' if fb else ""
    return (f'<td{attrs}><img src="overlays/{r["files"][j]}" alt="{_e(col)} {_e(r["id"])}">'
            f"{info}{badge}</td>")


def _row_html(rank: int, r: dict, im: dict, cat: str, cols: list[str], gt_iou: list[dict] | None) -> str:
    cells = [f'<td class="num">{rank}</td>',
             f'<td>id {_e(r["id"])}<br><small>{_e(im.get("file_name", r["image_id"]))}</small></td>',
             f"<td>{_e(cat)}</td>"]
    if len(cols) >= 2:
        cells.append(f"<td>{_num(r['agree'], 0.5)}</td>")
    if gt_iou is not None:
        cells.append(f'<td class="cell"><img src="overlays/{r["gt_file"]}" alt="gt {_e(r["id"])}"></td>')
    cells += [_pred_cell(r, j, c, gt_iou) for j, c in enumerate(cols)]
    return f'<tr data-ann="{_e(r["id"])}" data-cat="{_e(cat)}">{"".join(cells)}</tr>'


def _notes(rows: list[dict], order: list[int], cols: list[str], exif: list[str]) -> list[str]:
    """Page notes on fallback masks among the shown rows and on images read as stored (EXIF)."""
    out = []
    n_fb = [sum(bool(rows[i]["fallback"][j]) for i in order) for j in range(len(cols))]
    if any(n_fb):
        out.append('<p class="meta warn">fallback masks (flagged mal_fallback, marked red; the least '
                   "trustworthy): " + ", ".join(f"{_e(c)} {n}" for c, n in zip(cols, n_fb)) + "</p>")
    for w in exif[:5]:
        out.append(f'<p class="meta warn">{_e(w)}</p>')
    if len(exif) > 5:
        out.append(f'<p class="meta warn">... and {len(exif) - 5} more images read as stored</p>')
    return out


# --------------------------------------------------------------------------- public API


def show(images_dir: str | os.PathLike, preds: list, out_dir: str | os.PathLike, *,
         gt: str | os.PathLike | dict | None = None, names: list[str] | None = None,
         max_items: int | None = None, sort: str = "auto", least_sure: int | None = None) -> Path:
    """Write ``out_dir/index.html`` comparing the masks of ``preds`` (COCO JSON files of the same
    boxes) side by side, with PNG overlays in ``out_dir/overlays/``. Returns the page's path.

    gt:         optional ground truth; adds a gt column and each file's IoU with it.
    names:      column names (default: file stems).
    sort:       "disagreement" (lowest mask IoU between the first two files first), "score" (the
                first file's lowest score first; unscored masks last) or "auto": disagreement with
                two or more files, score with one.
    least_sure: show only the first file's ``least_sure`` lowest-score masks (then ordered by
                ``sort``); the page says how many annotations were left out.
    max_items:  show only the first ``max_items`` rows of the sort order; the page says how many
                annotations were left out.
    Raises EvalError if the files do not describe the same annotations, ImageError (naming the
    file) if an image cannot be read or its size disagrees with the COCO file, ValueError for bad
    options (sorting or picking by score when the first file has no scores).
    """
    from .compare import _names  # same column naming as the comparison table

    preds = list(preds)
    if not preds:
        raise EvalError("show needs at least one prediction file")
    _check_options(sort, least_sure, max_items, len(preds))
    cols = _names(preds, names)
    datas = [_load(p, "prediction") for p in preds]
    pnames = ["<dict>" if isinstance(p, dict) else os.fspath(p) for p in preds]
    anns = [{a["id"]: a for a in d["annotations"]} for d in datas]
    _check_same(anns, pnames)
    images = {im["id"]: im for im in datas[0]["images"]}

    gt_data = gt_anns = gt_iou = None
    if gt is not None:
        gt_data = _load(gt, "ground-truth")
        gt_anns = {a["id"]: a for a in gt_data["annotations"]}
        # evaluate() checks the boxes match and gives the IoU of each (non-crowd) instance.
        gt_iou = [{r["id"]: r["iou"] for r in evaluate(gt_data, d, compute_ap=False)["per_instance"]}
                  for d in datas]
        mean_iou = [float(np.mean(list(g.values()))) if g else None for g in gt_iou]

    cat_src = (gt_data or {}).get("categories") or datas[0].get("categories") or []
    cat_names = {c["id"]: str(c.get("name", c["id"])) for c in cat_src}

    # Masks as RLE (cheap), agreement between the first two files, scores and fallback flags.
    rles: list[dict] = [{} for _ in datas]
    rows = []
    for aid, a in anns[0].items():
        im = images.get(a.get("image_id"))
        if im is None:
            raise EvalError(f"annotation {aid}: image_id {a.get('image_id')} not in {pnames[0]} images")
        h, w = int(im["height"]), int(im["width"])
        for j, d in enumerate(anns):
            rles[j][aid] = _rle(d[aid].get("segmentation"), h, w, aid, pnames[j])
        agree = _iou(rles[0][aid], rles[1][aid]) if len(anns) >= 2 else None
        rows.append({"id": aid, "image_id": a["image_id"], "category_id": a.get("category_id"),
                     "bbox": a.get("bbox"), "scores": [_score(d[aid].get("score")) for d in anns],
                     "fallback": [d[aid].get("mal_fallback") for d in anns], "agree": agree})
    if (sort == "score" or least_sure is not None) and rows and all(r["scores"][0] is None for r in rows):
        raise ValueError(f"{pnames[0]} has no 'score' on its annotations: cannot sort by score or "
                         "pick the least sure masks")
    order, used, left_notes = _select(rows, len(anns), sort, least_sure, max_items, _e(cols[0]))
    total = len(rows)

    out_dir = Path(out_dir)
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True, exist_ok=True)
    exif = _write_overlays(rows, order, images, Path(images_dir), rles, gt_anns, ov_dir)

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
    body = [_row_html(rank, rows[i], images[rows[i]["image_id"]],
                      cat_names.get(rows[i]["category_id"], str(rows[i]["category_id"])), cols, gt_iou)
            for rank, i in enumerate(order, 1)]

    sort_desc = (f"lowest mask IoU between {_e(cols[0])} and {_e(cols[1])} first" if used == "disagreement"
                 else f"lowest {_e(cols[0])} score first")
    meta = [f'<p class="meta">{total} annotations &middot; {len(cols)} prediction file(s): '
            + ", ".join(f"<b>{_e(c)}</b> ({_e(p)})" for c, p in zip(cols, pnames)) + "</p>",
            f'<p class="meta">sorted: {sort_desc}</p>']
    if gt_anns is not None:
        meta.append('<p class="meta">mean IoU with ground truth: ' + ", ".join(
            f"{_e(c)} {_num(m)}" for c, m in zip(cols, mean_iou)) + "</p>")
    meta += [f'<p class="meta warn">{n}</p>' for n in left_notes]
    meta += _notes(rows, order, cols, exif)
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
