"""The metaroot package's import graph: no cycles, no imports hidden inside functions or
TYPE_CHECKING blocks, and the pure core modules never import the fold (metaroot.state)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "metaroot"
CORE = ["errors", "persistent", "facts", "classify", "validate", "grants", "handlers"]


def parsed() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PKG.glob("*.py"))}


def metaroot_imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "metaroot":
                found.update(a.name for a in node.names)
            elif node.module.startswith("metaroot."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("metaroot."))
    return found


def test_every_import_is_at_module_level():
    for name, tree in parsed().items():
        top = {id(n) for n in tree.body}
        nested = [n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in top]
        assert not nested, f"metaroot/{name}.py imports inside a block at lines {nested}"


def test_import_graph_is_acyclic():
    trees = parsed()
    graph = {name: metaroot_imports(tree, False) & set(trees) for name, tree in trees.items()}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, (*path, node))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("name", CORE)
def test_core_modules_never_import_the_fold(name):
    assert "state" not in metaroot_imports(parsed()[name], False)


@pytest.mark.parametrize("name", [*CORE, "state"])
def test_core_modules_stay_small(name):
    assert len((PKG / f"{name}.py").read_text().splitlines()) < 600
