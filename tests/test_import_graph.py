"""The package's import graph: layered packages, ``sim`` and ``serve`` as two drivers of
``control`` that never import each other, and no import cycle between files.

Every import statement counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import dopd

ROOT = Path(dopd.__file__).parent

LAYERS: dict[str, int] = {
    "(core)": 0,  # dopd/*.py: types, errors, registry, config helpers
    "data": 1, "perf": 1, "metrics": 1,
    "workload": 2, "engine": 2,
    "kv": 3,
    "control": 4,
    "sim": 5, "serve": 5,
    "bench": 6,
    "experiments": 7,
    "cli": 8,
}
"""A package may import only packages of a lower layer (and itself); docs/architecture.md
draws the same picture."""

KNOWN_FILE_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom,
             mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        raw = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        raw = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for target in raw:
        while target not in mods and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in mods and target != name and target.startswith("dopd."):
            out.append(target)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges[name].update(_targets(name, path, node, mods))
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and not (ROOT / parts[1]).is_dir():
        return "(core)"
    return parts[1] if len(parts) > 1 else "(core)"


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.add(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(frozenset(comp))
    return found


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _modules()}
    assert packages <= set(LAYERS), f"packages without a layer: {packages - set(LAYERS)}"


def test_packages_import_only_lower_layers() -> None:
    bad = []
    for source, targets in _graph().items():
        for target in targets:
            a, b = _package(source), _package(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{source} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_sim_and_serve_never_import_each_other() -> None:
    for source, targets in _graph().items():
        for target in targets:
            assert {_package(source), _package(target)} != {"sim", "serve"}, (source, target)


def test_no_file_cycles() -> None:
    cycles = set(_cycles(_graph())) - KNOWN_FILE_CYCLES
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        frozenset({"a", "b", "c"})]
