"""Instance mIoU per labeler and size bucket (all / S / M / L), one panel per data set, as grouped bars with
their values; or (--table-only) the markdown table of the same numbers, so a table and the figure beside it
come from one source.

Sources, per data set (``--dataset TITLE SRC...``, repeatable):
- ``result.json`` as `bench/labelers.py` writes it (every row of it, named by its row);
- ``NAME=report.json``, the report `mal eval --json` writes (one labeler).

Or ``--from-benchmarks BENCHMARKS.md``: every markdown table between ``<!-- figure:NAME -->`` and
``<!-- /figure:NAME -->`` (columns found by header: labeler, all, S, M, L; other columns are ignored; a
cell that is not a number, such as "—", is a bucket without boxes), one panel per table, titled NAME.

    python bench/figure.py --from-benchmarks BENCHMARKS.md --out docs/figures/labelers.png
    python bench/figure.py --from-benchmarks BENCHMARKS.md --table-only
    python bench/figure.py --dataset coco2017_mini bench/results/labelers/result.json \\
        --dataset dsb2018_nuclei box=box_report.json sam=sam_report.json --out labelers.png
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

BUCKETS = ("all", "S", "M", "L")
SIZE_KEYS = {"S": "small", "M": "medium", "L": "large"}  # mal eval's miou_size keys
BUCKET_NAMES = {"all": "all boxes", **SIZE_KEYS}

# A data set: (title, rows); a row: (labeler name, {bucket: value as printed, or None}).
Row = tuple[str, dict]
Dataset = tuple[str, list[Row]]


def _fmt(v) -> str | None:
    return None if v is None else f"{float(v):.3f}"


def _size(report_or_row: dict, bucket: str):
    """A bucket's mIoU from a labelers.py row (numbers) or a mal eval report (dicts), None without boxes."""
    v = (report_or_row.get("miou_size") or {}).get(SIZE_KEYS[bucket])
    return v.get("miou_instance") if isinstance(v, dict) else v


def rows_from_json(src: str) -> list[Row]:
    """Rows of one source: ``result.json`` of bench/labelers.py, or ``NAME=report.json`` of mal eval."""
    name, sep, path = src.partition("=")
    if not sep:
        name, path = "", src
    data = json.loads(Path(path).read_text())
    if "rows" in data:  # bench/labelers.py
        if name:
            raise SystemExit(f"{path}: a bench/labelers.py result names its own rows; drop '{name}='")
        return [(r["row"], {"all": _fmt(r["miou_instance"]), **{b: _fmt(_size(r, b)) for b in BUCKETS[1:]}})
                for r in data["rows"]]
    if "miou_instance" in data:  # mal eval --json
        return [(name or Path(path).stem,
                 {"all": _fmt(data["miou_instance"]), **{b: _fmt(_size(data, b)) for b in BUCKETS[1:]}})]
    raise SystemExit(f"{path}: neither a bench/labelers.py result (rows) nor a mal eval report (miou_instance)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _plain(cell: str) -> str:
    """A cell without markdown emphasis (bold); code spans keep their text."""
    return cell.replace("**", "").strip()


def _number(cell: str) -> str | None:
    c = _plain(cell)
    return c if re.fullmatch(r"-?\d+(\.\d+)?", c) else None


def parse_table(lines: list[str], where: str = "table") -> list[Row]:
    """Rows of the first markdown table in ``lines``; columns found by header (labeler, all, S, M, L)."""
    tab = [ln for ln in lines if ln.lstrip().startswith("|")]
    if len(tab) < 3:
        raise SystemExit(f"{where}: no markdown table")
    head = [_plain(c) for c in _cells(tab[0])]
    missing = [c for c in ("labeler", *BUCKETS) if c not in head]
    if missing:
        raise SystemExit(f"{where}: the table has no column {', '.join(missing)} (header: {' | '.join(head)})")
    ix = {c: head.index(c) for c in ("labeler", *BUCKETS)}
    rows = []
    for ln in tab[2:]:
        cells = _cells(ln)
        rows.append((_plain(cells[ix["labeler"]]), {b: _number(cells[ix[b]]) for b in BUCKETS}))
    return rows


def datasets_from_benchmarks(path: str | Path) -> list[Dataset]:
    """Every ``<!-- figure:NAME -->`` ... ``<!-- /figure:NAME -->`` table of a markdown file, in order."""
    text = Path(path).read_text()
    found = re.findall(r"<!-- figure:([\w.-]+) -->\n(.*?)<!-- /figure:\1 -->", text, re.S)
    if not found:
        raise SystemExit(f"{path}: no <!-- figure:NAME --> ... <!-- /figure:NAME --> table")
    return [(name, parse_table(body.splitlines(), f"{path} figure:{name}")) for name, body in found]


def markdown(datasets: list[Dataset]) -> str:
    """The tables the figure shows: per data set a heading and labeler | all | S | M | L ("—": no boxes)."""
    out = []
    for title, rows in datasets:
        out += [f"**{title}**", "", "| labeler | " + " | ".join(BUCKETS) + " |", "|---" * (len(BUCKETS) + 1) + "|"]
        out += ["| " + " | ".join([name] + [v[b] or "—" for b in BUCKETS]) + " |" for name, v in rows]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _key(name: str) -> str:
    return name.split(" (")[0]


def _label(name: str) -> str:
    return "\n".join(textwrap.wrap(name.replace("`", ""), 34)) or "?"


def draw(datasets: list[Dataset], out: str | Path, dpi: int = 100) -> Path:
    """One PNG: a panel per data set, a group of bars per bucket, a bar per labeler (value on top)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per labeler across panels: the name up to its parenthesis ("SAM engine (...)").
    keys = list(dict.fromkeys(_key(n) for _, rows in datasets for n, _ in rows))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colour = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    most = max(len(rows) for _, rows in datasets)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 1.0 + 0.55 * most * len(BUCKETS) / 2) * len(datasets),
                                                         6.2), squeeze=False)
    for ax, (title, rows) in zip(axes[0], datasets):
        buckets = [b for b in BUCKETS if any(v[b] is not None for _, v in rows)]  # no large nuclei: no group
        width = 0.8 / max(1, len(rows))
        for j, (name, vals) in enumerate(rows):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(buckets))]
            ys = [float(vals[b]) if vals[b] is not None else 0.0 for b in buckets]
            bars = ax.bar(xs, ys, width, color=colour[_key(name)], label=_label(name))
            for bar, b in zip(bars, buckets):
                text = vals[b] if vals[b] is not None else "n/a"
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.005, text, ha="center",
                        va="bottom", rotation=90, fontsize=6.5)
        ax.set_xticks(range(len(buckets)), [BUCKET_NAMES[b] for b in buckets])
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("instance mIoU (human masks)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", action="append", default=[], metavar=("TITLE", "SRC"),
                   help="a panel: its title, then result.json files of bench/labelers.py and/or "
                        "NAME=report.json files of `mal eval --json` (repeatable)")
    p.add_argument("--from-benchmarks", type=Path, metavar="MD",
                   help="read the <!-- figure:NAME --> tables of this markdown file (e.g. BENCHMARKS.md)")
    p.add_argument("--out", type=Path, help="the PNG to write")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--table-only", action="store_true", help="print the markdown table the figure shows; no PNG")
    a = p.parse_args(argv)
    datasets: list[Dataset] = datasets_from_benchmarks(a.from_benchmarks) if a.from_benchmarks else []
    for spec in a.dataset:
        if len(spec) < 2:
            p.error("--dataset needs a title and at least one source")
        datasets.append((spec[0], [r for src in spec[1:] for r in rows_from_json(src)]))
    if not datasets:
        p.error("give --dataset TITLE SRC... or --from-benchmarks MD")
    if a.table_only:
        sys.stdout.write(markdown(datasets))
        return 0
    if a.out is None:
        p.error("--out PNG is needed (or --table-only)")
    print(f"wrote {draw(datasets, a.out, a.dpi)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
