"""The package's layering, read from the source with ``ast`` (nothing is imported):

- no import cycle between modules of ``mal``, counting imports inside functions too (a lazy import
  hides a cycle from Python at import time, not from the reader);
- ``mal.modeling`` and ``mal.segment`` (phase 2) do not import ``mal.engines``;
- ``mal.labeling`` does not import the command line (``mal.cli``, ``mal.segment.cli``), and each of
  its modules imports only those below it in the package's order (:data:`LABELING`, as the package
  docstring lists them).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mal"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("mal",) + path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of mal that module ``name`` imports anywhere in its source (``from pkg import sub``
    counts as importing ``pkg.sub`` when that is a module, else ``pkg``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # import mal.a.b.c (an attribute) -> mal.a.b
                t = t.rpartition(".")[0]
            if t.startswith("mal") and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read():
    """The reader sees the imports it is meant to check (a broken reader would pass everything)."""
    assert len(MODULES) > 50
    assert "mal.errors" in GRAPH["mal.cli"]
    assert "mal.data.crops" in GRAPH["mal.engines.box"]  # relative, two levels
    assert "mal.api" in GRAPH["mal.demo"]                 # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles between modules of mal:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("lower, upper", [("mal.modeling", "mal.engines"), ("mal.segment", "mal.engines"),
                                          ("mal.labeling", "mal.cli"), ("mal.labeling", "mal.segment.cli")])
def test_lower_layers_do_not_import_upper_ones(lower, upper):
    bad = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() if _in(m, lower)
                 for t in ts if _in(t, upper))
    assert not bad, "\n".join(bad)


# mal.labeling's modules, top to bottom: the way of `mal label` from the entry to the merged file.
LABELING = ["label", "labelers", "loop", "record", "merge", "manifest", "store", "plan"]


def test_labeling_modules_import_only_those_below_them():
    names = [f"mal.labeling.{m}" for m in LABELING]
    assert sorted(m for m in MODULES if m.startswith("mal.labeling.")) == sorted(names), \
        "a module of mal/labeling/ is missing from LABELING (or gone)"
    assert not {t for t in GRAPH["mal.labeling"] if _in(t, "mal.labeling")}, "mal/labeling/__init__.py imports"
    bad = [f"{m} imports {t}" for i, m in enumerate(names) for t in sorted(GRAPH[m])
           if t in names and names.index(t) <= i]
    assert not bad, "\n".join(bad)
    doc = ast.get_docstring(ast.parse(MODULES["mal.labeling"].read_text()))
    listed = [m for m in LABELING if f":mod:`.{m}`" in doc]
    assert sorted(listed, key=lambda m: doc.index(f":mod:`.{m}`")) == LABELING, "the package docstring lists another order"
