"""The package's modules import only downward: the import graph drawn from the source has no circles.

The graph is read with ``ast`` (nothing is imported): every ``import segsynth...`` and ``from segsynth... import``
anywhere in a module (top level, inside functions, under ``if TYPE_CHECKING:``), relative imports resolved.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segsynth"

# Known circles, tolerated until their fix lands (any other circle fails the test). Each entry: the modules of one
# circle; a circle among some of them only is tolerated too. Delete the entry once the circle is gone.
KNOWN_CYCLES: list[frozenset[str]] = []


def module_files(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (an imported name that is not a module counts as its module)."""
    modules = module_files(package)
    top = package.name

    def owner(name: str) -> str | None:  # the longest prefix that is a module of the package
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_pkg) in modules.items():
        here = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                dep = owner(target) if target.split(".")[0] == top else None
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A closed path through the component's first module, for the failure message: a -> b -> ... -> a."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    lines = [" -> ".join(one_cycle(graph, component))]
    lines += [f"    {m} imports {', '.join(sorted(graph[m] & set(component)))}" for m in component]
    return "\n".join(lines)


def test_segsynth_has_no_import_circles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["segsynth.cli"], "the graph reader found too little: is the path right?"
    found = [c for c in circles(graph) if not any(set(c) <= known for known in KNOWN_CYCLES)]
    assert not found, "import circles (each module should import only downward):\n" + "\n".join(
        describe(graph, c) for c in found)


def test_the_reader_sees_every_kind_of_import_and_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")                       # absolute, module name
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")                # relative, in a function
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\nfrom pkg.sub import thing\n")             # relative, package attr
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.b"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a"}, "pkg.d": {"pkg.a", "pkg.sub"}}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert one_cycle(graph, ["pkg.a", "pkg.c", "pkg.sub.b"]) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert circles(import_graph(pkg)) == []
