"""The page's HTML: header, notes and a table row per annotation, filled into :data:`template.PAGE`."""
from __future__ import annotations

import html
from typing import Any

from .overlays import overlay_name
from .rows import Row
from .template import PAGE

__all__ = ["render_page"]


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, low: float | None = None) -> str:
    """A 3-decimal number, in bold red below ``low``; a dash for None."""
    if x is None:
        return "&ndash;"
    cls = "num low" if low is not None and x < low else "num"
    return f'<span class="{cls}">{x:.3f}</span>'


def _pred_cell(i: int, r: Row, j: int, col: str, gt_iou: list[dict] | None) -> str:
    """One prediction's overlay with its score (and IoU with gt); a fallback mask is marked red."""
    info = f"score {_num(r.scores[j])}"
    if gt_iou is not None:
        iou = gt_iou[j].get(r.id)
        info += " &middot; IoU gt " + (_num(iou, 0.5) if iou is not None else "crowd")
    fb = r.fallback[j]
    attrs = f' class="cell fallback" data-fallback="{_e(fb)}"' if fb else ' class="cell"'
    badge = f'<br><span class="fb" title="mal_fallback">fallback: {_e(fb)}</span>' if fb else ""
    return (f'<td{attrs}><img src="overlays/{overlay_name(i, r, j)}" alt="{_e(col)} {_e(r.id)}">'
            f"{info}{badge}</td>")


def _row_html(rank: int, i: int, r: Row, im: dict, cat: str, cols: list[str], gt_iou: list[dict] | None) -> str:
    cells = [f'<td class="num">{rank}</td>',
             f'<td>id {_e(r.id)}<br><small>{_e(im.get("file_name", r.image_id))}</small></td>',
             f"<td>{_e(cat)}</td>"]
    if len(cols) >= 2:
        cells.append(f"<td>{_num(r.agree, 0.5)}</td>")
    if gt_iou is not None:
        cells.append(f'<td class="cell"><img src="overlays/{overlay_name(i, r, "gt")}" alt="gt {_e(r.id)}"></td>')
    cells += [_pred_cell(i, r, j, c, gt_iou) for j, c in enumerate(cols)]
    return f'<tr data-ann="{_e(r.id)}" data-cat="{_e(cat)}">{"".join(cells)}</tr>'


def _notes(rows: list[Row], order: list[int], cols: list[str], exif: list[str]) -> list[str]:
    """Notes on fallback masks among the shown rows and on images read as stored (EXIF)."""
    out = []
    n_fb = [sum(bool(rows[i].fallback[j]) for i in order) for j in range(len(cols))]
    if any(n_fb):
        out.append('<p class="meta warn">fallback masks (flagged mal_fallback, marked red; the least '
                   "trustworthy): " + ", ".join(f"{_e(c)} {n}" for c, n in zip(cols, n_fb)) + "</p>")
    for w in exif[:5]:
        out.append(f'<p class="meta warn">{_e(w)}</p>')
    if len(exif) > 5:
        out.append(f'<p class="meta warn">... and {len(exif) - 5} more images read as stored</p>')
    return out


def render_page(rows: list[Row], order: list[int], *, cols: list[str], pnames: list[str], images: dict,
                cat_names: dict, sort: str, left_out: list[str], exif: list[str],
                gt_iou: list[dict] | None = None, mean_iou: list[float | None] | None = None) -> str:
    """The page, showing ``rows[i]`` for ``i`` in ``order``.

    cols / pnames: per prediction file, its column name and its path (or "<dict>"); images: ``{image
    id: image}``; cat_names: ``{category id: name}``; sort: the order used ("disagreement" or "score");
    left_out: notes (plain text) on rows left out; exif: images' EXIF warnings; gt_iou: per file
    ``{annotation id: IoU with the ground truth}`` (adds the gt column), mean_iou: per file its mean.
    """
    def cat(r: Row) -> str:
        return cat_names.get(r.category_id, str(r.category_id))

    present = sorted({cat(rows[i]) for i in order})
    options = '<option value="">all</option>' + "".join(f'<option value="{_e(c)}">{_e(c)}</option>'
                                                         for c in present)
    head = ["#", "annotation", "category"]  # HTML, already escaped
    if len(cols) >= 2:
        head.append(f"IoU {_e(cols[0])} &harr; {_e(cols[1])}")
    if gt_iou is not None:
        head.append("ground truth")
    head += [_e(c) for c in cols]
    body = [_row_html(rank, i, rows[i], images[rows[i].image_id], cat(rows[i]), cols, gt_iou)
            for rank, i in enumerate(order, 1)]

    sort_desc = (f"lowest mask IoU between {_e(cols[0])} and {_e(cols[1])} first" if sort == "disagreement"
                 else f"lowest {_e(cols[0])} score first")
    meta = [f'<p class="meta">{len(rows)} annotations &middot; {len(cols)} prediction file(s): '
            + ", ".join(f"<b>{_e(c)}</b> ({_e(p)})" for c, p in zip(cols, pnames)) + "</p>",
            f'<p class="meta">sorted: {sort_desc}</p>']
    if gt_iou is not None:
        meta.append('<p class="meta">mean IoU with ground truth: ' + ", ".join(
            f"{_e(c)} {_num(m)}" for c, m in zip(cols, mean_iou)) + "</p>")
    meta += [f'<p class="meta warn">{_e(n)}</p>' for n in left_out]
    meta += _notes(rows, order, cols, exif)
    return PAGE.substitute(title=_e(", ".join(cols)), meta="".join(meta), options=options, rows=len(order),
                           head="".join(f"<th>{h}</th>" for h in head), body="\n".join(body))
