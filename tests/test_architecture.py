"""The package's shape, checked: every module small enough to read in one sitting, and no import circle.

The import graph is built with `ast` from every `import` and `from ... import` in pipeline/, function-level
(lazy) ones included: a lazy import only hides a circle from Python's loader, not from a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "competitions")
MAX_LINES = 300


def modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package is its __init__.py)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its body; `from a import b` counts as
    importing a.b when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is the module's own package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a.b: the module is a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(package, root)
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle [a, b, ..., a] per group of modules that import each other (a strongly connected component,
    Tarjan's algorithm), so one failure names every circle at once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:  # node is the root of a component: pop it off the stack
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(_circle_through(min(component), component, graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _circle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest circle from `start` back to itself inside `component` (breadth-first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return chain[::-1] + [start]
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in a component of the import graph without a way back to it")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_300_lines(package):
    long = {str(path.relative_to(ROOT)): n for path in modules(package).values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along a real seam): {long}"


def test_the_pipeline_package_has_no_import_circle():
    found = circles(import_graph("pipeline"))
    assert not found, ("import circles (move what both sides need into a module both import): "
                       + "; ".join(" -> ".join(circle) for circle in found))


def test_the_circle_check_finds_a_circle_closed_by_a_function_level_import(tmp_path):
    """The check can fail: a lazy import that closes a circle is found, relative and `from p import m` imports
    resolve to the module, and a name imported from a module is not mistaken for a module."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("from . import a\n\ndef g():\n    pass\n")
    (package / "d.py").write_text("import pkg.a\nfrom pkg.c import g\n")
    graph = import_graph("pkg", tmp_path)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a", "pkg.c"}}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (package / "b.py").write_text("def f():\n    pass\n")
    assert circles(import_graph("pkg", tmp_path)) == []
