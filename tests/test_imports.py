"""No import cycles between selfalign's modules.

The graph is read from the source (ast): every `import selfalign...` / `from selfalign... import`
anywhere in a module, including those inside functions (a lazy import is still a dependency),
except under `if TYPE_CHECKING:` (never executed). A cycle fails the test with its modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str, current: str, modules: set[str], is_pkg: bool) -> set[str]:
    """The package's modules that `tree` imports (a `from X import name` that names a submodule
    counts as importing that submodule)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against the current package
                parts = current.split(".")
                parts = parts[: len(parts) - node.level + is_pkg]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] == package:
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in modules and m != current}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {_module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    return {name: _imports(ast.parse(p.read_text(encoding="utf-8")), package, name, modules,
                           p.name == "__init__.py")
            for name, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
            strong(v)
    return found


def test_selfalign_has_no_import_cycles() -> None:
    graph = import_graph(SRC, "selfalign")
    assert "selfalign.pipeline" in graph and "selfalign.evaluate.judge" in graph
    assert "selfalign.io" in graph["selfalign.records"]  # the graph sees real edges
    assert "selfalign.sources" in graph["selfalign.evaluate.heldout"]  # lazy imports count
    # evaluation reads a finished run: it needs no orchestrator for its helpers (logging, data sources)
    assert not [m for m in graph if m.startswith("selfalign.evaluate.") and "selfalign.pipeline" in graph[m]]
    assert cycles(graph) == [], f"import cycles: {cycles(graph)}"


def test_the_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\nimport pkg.a\n")
    (pkg / "d.py").write_text("import pkg.c\n")  # c -> d only for type checking: no cycle
    (pkg / "sub" / "__init__.py").write_text("from .x import y\n")
    (pkg / "sub" / "x.py").write_text("y = 1\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.sub"] == {"pkg.sub.x"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
