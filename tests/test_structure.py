"""The package's import structure: no import cycles (function-level imports included),
``reparam`` independent of ``tensorfact``, the test oracles outside the library's graph, and
the one-way dependencies inside ``tensorfact`` (DESIGN.md section 4)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("reparam", "tensorfact")


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """Modules of the two packages that ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = _graph()


def test_walker_sees_function_level_imports():
    # api imports the methods inside functions only; the walker must see those edges
    assert "tensorfact.methods.svi" in GRAPH["tensorfact.api"]
    assert "tensorfact.results.io" in GRAPH["tensorfact.results.fit"]


def test_cycle_detector_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(planted) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_reparam_imports_nothing_from_tensorfact():
    bad = {m: sorted(d for d in deps if d.startswith("tensorfact"))
           for m, deps in GRAPH.items() if m.startswith("reparam")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_test_oracles_are_outside_the_library_graph():
    users = {m for m, deps in GRAPH.items() if not m.startswith("tensorfact.testing")
             and any(d.startswith("tensorfact.testing") for d in deps)}
    assert users == set()


LAYERS = {  # a module of a layer may import modules of its own or lower layers only
    "tensorfact.spec": 0, "tensorfact.effects": 0, "tensorfact.names": 0, "tensorfact.data": 0,
    "tensorfact.checks": 0,
    "tensorfact.model": 1, "tensorfact.results": 1, "tensorfact.collapsed": 2,
    "tensorfact.methods": 3,
}


def _layer(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) is not None))
def test_dependencies_run_one_way(module):
    layer = _layer(module)
    upward = sorted(d for d in GRAPH[module] if (_layer(d) or -1) > layer)
    assert upward == []


def test_results_depend_only_on_spec_names_data_checks():
    allowed = ("tensorfact.spec", "tensorfact.effects", "tensorfact.names", "tensorfact.data",
               "tensorfact.checks",
               "tensorfact.results", "tensorfact.plot")
    bad = {m: sorted(d for d in deps if d.startswith("tensorfact") and not d.startswith(allowed))
           for m, deps in GRAPH.items() if m.startswith("tensorfact.results")}
    assert {m: d for m, d in bad.items() if d} == {}
