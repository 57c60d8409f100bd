"""The imports of ``corral`` and ``bench`` run one way: no module imports, even indirectly, a module that imports it.

Read from the source (ast), not by importing it: every import statement counts, at module level, under
``TYPE_CHECKING`` or inside a function, because each is a dependency a reader has to follow (and a function-level
import that dodges a circle at run time still is one). The layers: the engine (QEMU, QMP) at the bottom, the domain
services (vm, storage, ...) above it, the API, the daemon and the command line on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The top: nothing below them may import these.
TOP = ("corral.api", "corral.daemon", "corral.cli", "corral.client")
#: Modules outside the engine it may import: the base (errors, paths, files) and the plain data a command line is
#: built from (a VM's spec, a disk's layer chain). No service.
ENGINE_MAY_IMPORT = {"corral.errors", "corral.fileio", "corral.paths", "corral.vm.spec", "corral.vm.arch",
                     "corral.storage.chain"}


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name, for its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``from a import b`` is module ``a.b`` when that exists)."""
    mods = modules(package)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str | None] = set()
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == package}
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                if source.split(".")[0] != package:
                    continue
                deps |= {f"{source}.{a.name}" if f"{source}.{a.name}" in mods else resolve(source)
                         for a in node.names}
        graph[mod] = {d for d in deps if d is not None and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: every strongly connected set of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["corral", "bench"])
def test_no_import_cycles(package: str) -> None:
    graph = imports(package)
    assert len(graph) > 5, "the walk found the package's modules"
    assert cycles(graph) == [], "modules that import each other (directly or through others): make one of them " \
        "not need the other (pass what it needs as an argument or a Protocol, or move the shared piece lower)"


def test_nothing_below_the_api_imports_it() -> None:
    wrong = {(mod, dep) for mod, deps in imports("corral").items() if not mod.startswith(TOP)
             for dep in deps if dep.startswith(TOP)}
    assert wrong == set()


def test_the_engine_imports_no_service() -> None:
    wrong = {(mod, dep) for mod, deps in imports("corral").items() if mod.startswith("corral.engine")
             for dep in deps if not dep.startswith("corral.engine") and dep not in ENGINE_MAY_IMPORT}
    assert wrong == set()
