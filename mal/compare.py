"""Compare several prediction files for the same boxes against one ground truth, side by side.

Each prediction file is scored with :func:`mal.evaluate.evaluate`; the headline metrics become one
table (a row per metric, a column per file), and the first two files are also compared instance by
instance: for every annotation, which file's mask has the higher IoU with the ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import SIZES, EvalError, evaluate, unscored_line

__all__ = ["TIE_TOL", "column_names", "compare", "format_comparison"]

TIE_TOL = 0.01  # an instance is a win/loss only if the two IoUs differ by more than this

# (key, label, getter on an evaluate() report); the order is the table's row order.
_ROWS: list[tuple[str, str, Any]] = [
    ("miou_instance", "mIoU instance", lambda r: r["miou_instance"]),
    ("miou_class", "mIoU class", lambda r: r["miou_class"]),
    *[(f"miou_{s}", f"mIoU {s}", (lambda s: lambda r: (r["miou_size"].get(s) or {}).get("miou_instance"))(s))
      for s in SIZES],
    ("AP", "AP", lambda r: (r.get("ap") or {}).get("AP")),
    ("AP50", "AP50", lambda r: (r.get("ap") or {}).get("AP50")),
    ("AP75", "AP75", lambda r: (r.get("ap") or {}).get("AP75")),
]


def column_names(preds: list, names: list[str] | None) -> list[str]:
    """One column name per prediction file (paths or dicts): ``names`` if given (one per file), else
    the file stems ("pred1", ... for dicts); repeats get " (2)", " (3)", ... (the table and ``mal show``)."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(preds):
            raise EvalError(f"{len(names)} names given for {len(preds)} prediction files")
    else:
        names = [Path(os.fspath(p)).stem if not isinstance(p, dict) else f"pred{i + 1}"
                 for i, p in enumerate(preds)]
    # Columns must be distinguishable: a/masks.json and b/masks.json would both be "masks".
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _head_to_head(a: dict, b: dict, name_a: str, name_b: str) -> dict:
    """Per-instance wins/losses/ties of report ``a`` against report ``b`` (same gt, same ids)."""
    iou_b = {r["id"]: r["iou"] for r in b["per_instance"]}
    diffs = [r["iou"] - iou_b[r["id"]] for r in a["per_instance"]]
    wins = sum(d > TIE_TOL for d in diffs)
    losses = sum(d < -TIE_TOL for d in diffs)
    return {
        "a": name_a, "b": name_b,
        "wins": int(wins), "losses": int(losses), "ties": int(len(diffs) - wins - losses),
        "mean_iou_diff": float(np.mean(diffs)) if diffs else None,
        "tolerance": TIE_TOL,
    }


def compare(gt: str | os.PathLike | dict, preds: list, names: list[str] | None = None) -> dict:
    """Score every prediction file against ``gt`` and put the results side by side.

    Returns a JSON-serialisable dict:
      ``names``            column names (file stems unless ``names`` is given; made unique),
      ``files``            the prediction paths as strings,
      ``num_instances``    instances scored (the same for every file),
      ``size_counts``      instances per size bucket,
      ``table``            a list of rows ``{"key", "label", "values": [one per file]}``
                           (None where a metric is undefined, e.g. no small instances),
      ``head_to_head``     (two or more files) wins/losses/ties of the first file against the
                           second per instance (|IoU difference| > ``TIE_TOL`` decides) and the
                           mean IoU difference (first minus second); otherwise None,
      ``reports``          each file's evaluate() report without ``per_instance``.
    Raises EvalError if a file is unreadable or does not describe the same boxes as ``gt``.
    """
    preds = list(preds)
    if not preds:
        raise EvalError("compare needs at least one prediction file")
    cols = column_names(preds, names)
    reports = [evaluate(gt, p) for p in preds]
    first = reports[0]
    scored = [{r["id"] for r in rep["per_instance"]} for rep in reports]
    for name, ids in zip(cols[1:], scored[1:]):
        if ids != scored[0]:
            raise EvalError(f"{name} and {cols[0]} label different annotations of the ground truth "
                            f"({len(ids ^ scored[0])} differ): side by side, every file must label the same ones")
    result = {
        "gt": "<dict>" if isinstance(gt, dict) else os.fspath(gt),
        "names": cols,
        "files": ["<dict>" if isinstance(p, dict) else os.fspath(p) for p in preds],
        "num_instances": first["num_instances"],
        "unscored": first["unscored"],
        "size_counts": {s: (first["miou_size"].get(s) or {}).get("count", 0) for s in SIZES},
        "table": [{"key": k, "label": label, "values": [get(r) for r in reports]}
                  for k, label, get in _ROWS],
        "head_to_head": (_head_to_head(reports[0], reports[1], cols[0], cols[1])
                         if len(reports) >= 2 else None),
        "reports": {n: {k: v for k, v in r.items() if k != "per_instance"} for n, r in zip(cols, reports)},
    }
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_comparison(result: dict) -> str:
    """The :func:`compare` result as a plain-text table plus the head-to-head line."""
    names = result["names"]
    labels = []
    for row in result["table"]:
        label = row["label"]
        size = row["key"][len("miou_"):]
        if size in result["size_counts"]:
            label += f" (n={result['size_counts'][size]})"
        labels.append(label)
    w0 = max(len("metric"), *(len(s) for s in labels))
    widths = [max(len(n), 7) for n in names]
    lines = ["  ".join(["metric".ljust(w0), *(n.rjust(w) for n, w in zip(names, widths))])]
    lines.append("  ".join(["-" * w0, *("-" * w for w in widths)]))
    for label, row in zip(labels, result["table"]):
        lines.append("  ".join([label.ljust(w0), *(_fmt(v).rjust(w) for v, w in zip(row["values"], widths))]))
    lines.insert(0, f"{result['num_instances']} instances")
    if result.get("unscored"):
        lines.insert(1, unscored_line(result["unscored"]))
    h = result.get("head_to_head")
    if h:
        diff = "n/a" if h["mean_iou_diff"] is None else f"{h['mean_iou_diff']:+.4f}"
        lines.append(f"{h['a']} vs {h['b']} per instance (|IoU difference| > {h['tolerance']:g}): "
                     f"{h['wins']} wins, {h['losses']} losses, {h['ties']} ties; "
                     f"mean IoU difference {diff}")
    return "\n".join(lines)
