"""Import boundaries of DESIGN.md section 2 and docs/architecture.md, checked on the source tree.

- nokvpy/raft is pure: no trio, msgpack, lmdb, socket, time, os, threading, asyncio, and no
  use of the module-level `random` functions (randomness comes from an injected Random).
- only nokvpy/wire imports msgpack; only nokvpy/storage imports lmdb; only nokvpy/rpc opens
  sockets (imports socket or calls trio's socket/TCP openers).
- pure modules (rooted state, catalog, serving rules, transition assessment) stay I/O-free.
- a. every module's imports, top-level and inside functions, are allowed by the "may import"
  table of docs/architecture.md, parsed from the doc (so the two cannot drift).
- b. services never import each other: metaroot, coordinator and raftstore do not import one
  another (SERVICE_EXCEPTIONS: the coordinator reads metaroot's pure rooted state).
- c. no private names across modules: no `from m import _x`, no `m._x` of another project
  module (tests are exempt).
- d. every I/O-free module is on the pure list (PURE_PACKAGES / PURE_FILES), and pure modules
  import only I/O-free modules.
- e. no import cycles between project modules, function-level imports included.

Each rule has a test that plants a violation (in a copy of the tree, or a source string) and
checks that the checker fails on it. Known violations in code this file cannot fix are listed
explicitly (KNOWN_*), and an entry that no longer occurs fails its test.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import shutil
import sys
import textwrap
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IO_MODULES = {"trio", "msgpack", "lmdb", "socket", "time", "os", "threading", "asyncio",
              "subprocess", "pathlib", "signal", "ssl", "shutil", "tempfile", "select",
              "selectors", "multiprocessing"}
PURE_PACKAGES = ["nokvpy/raft", "nokvpy/protocol"]
PURE_FILES = [
    "metaroot/state.py",
    "metaroot/grants.py",
    "coordinator/catalog.py",
    "coordinator/rootview.py",
    "coordinator/serving.py",
    "coordinator/assessment.py",
    "nokvpy/protocol/transitions.py",
    "metaroot/errors.py",
    "metaroot/persistent.py",
    "metaroot/facts.py",
    "metaroot/classify.py",
    "metaroot/validate.py",
    "metaroot/handlers.py",
    "coordinator/rootcatalog.py",
    # added with the layering rules (rule d: every I/O-free module is listed)
    "coordinator/scheduler.py",
    "coordinator/stores.py",
    "coordinator/transitions.py",
    "raftstore/admission.py",
    "raftstore/execution.py",
    "raftstore/topology/lifecycle.py",
    "nokvpy/client/leases.py",
    "nokvpy/storage/errors.py",
    "nokvpy/storage/schema.py",
    "nokvpy/wire/errors.py",
    "nokvpy/wire/framing.py",
    "nokvpy/wire/raft_codec.py",
    "nokvpy/wire/raft_msgs.py",
    "nokvpy/wire/rpc_msgs.py",
    "nokvpy/wire/schema.py",
    "nokvpy/rpc/errors.py",
    "nokvpy/rpc/identity.py",
    "nokvpy/client/errors.py",
    "nokvpy/client/failover.py",
    "jepsen-lite/jepsen_lite/commands.py",
    "jepsen-lite/jepsen_lite/faults.py",
    "nokvpy/replication/statemachine.py",
    "nokvpy/storage/raftlog_codec.py",
    "nokvpy/metrics.py",
    "raftstore/metrics.py",
    "metaroot/metrics.py",
    "nokvpy/client/checks.py",
    "nokvpy/client/scan.py",
]
OWNERS = {"msgpack": "nokvpy/wire", "lmdb": "nokvpy/storage", "socket": "nokvpy/rpc"}
SOCKET_CALLS = {"open_tcp_stream", "open_tcp_listeners", "serve_tcp", "socket"}
SOURCE_ROOTS = ["nokvpy", "metaroot", "coordinator", "raftstore", "jepsen-lite/jepsen_lite"]
PROJECT = {"nokvpy", "metaroot", "coordinator", "raftstore", "jepsen_lite"}


def imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def module_random_uses(tree: ast.AST) -> list[str]:
    """`random.random()`, `random.choice(...)`, `from random import randint`: global RNG use.
    `random.Random(...)` (constructing an injected generator) is allowed."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "random" and node.attr != "Random":
                bad.append(f"random.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            bad.extend(f"from random import {a.name}" for a in node.names if a.name != "Random")
    return bad


def socket_calls(tree: ast.AST) -> list[str]:
    return [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in SOCKET_CALLS
        and isinstance(node.value, ast.Name) and node.value.id in {"trio", "socket"}
    ]


def logging_handler_uses(tree: ast.AST) -> list[str]:
    """Configuring where logs go (`logging.basicConfig`, a handler) is I/O; `getLogger` is not."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
            node.attr == "addHandler" or (isinstance(node.value, ast.Name) and node.value.id ==
                                          "logging" and (node.attr in ("basicConfig", "handlers")
                                                         or node.attr.endswith("Handler")))):
            found.add(f"logging {node.attr}")
        elif isinstance(node, ast.Import):
            found.update(f"import {a.name}" for a in node.names if a.name == "logging.handlers")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("logging"):
            found.update(f"logging {a.name}" for a in node.names
                         if a.name in ("basicConfig", "handlers") or a.name.endswith("Handler"))
    return sorted(found)


def pure_violations(source: str) -> list[str]:
    tree = ast.parse(source)
    return (sorted(imported_modules(tree) & IO_MODULES) + logging_handler_uses(tree)
            + module_random_uses(tree))


def python_files(root: Path = ROOT) -> list[Path]:
    return [p for r in SOURCE_ROOTS for p in sorted((root / r).rglob("*.py"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_pure_core_has_no_io_and_no_global_random():
    files = [p for pkg in PURE_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    files += [ROOT / f for f in PURE_FILES if (ROOT / f).exists()]
    assert files, "no pure modules found"
    problems = {rel(p): v for p in files if (v := pure_violations(p.read_text()))}
    assert problems == {}


def test_single_owner_of_msgpack_lmdb_and_sockets():
    problems = []
    for path in python_files():
        tree = ast.parse(path.read_text())
        mods = imported_modules(tree)
        for mod, owner in OWNERS.items():
            if mod in mods and not rel(path).startswith(owner + "/"):
                problems.append(f"{rel(path)} imports {mod} (only {owner} may)")
        if socket_calls(tree) and not rel(path).startswith("nokvpy/rpc/"):
            problems.append(f"{rel(path)} opens sockets (only nokvpy/rpc may)")
    assert problems == []


@pytest.mark.parametrize(
    "snippet, expected",
    [
        ("import trio", ["trio"]),
        ("import time\nx = time.monotonic()", ["time"]),
        ("from os import path", ["os"]),
        ("import msgpack", ["msgpack"]),
        ("import random\nx = random.random()", ["random.random"]),
        ("from random import choice", ["from random import choice"]),
        ("import random\nrng = random.Random(7)", []),
    ],
)
def test_checker_catches_forbidden_imports(snippet, expected):
    """The check above must fail when a forbidden import is added to the core."""
    assert pure_violations(textwrap.dedent(snippet)) == expected


def test_checker_flags_a_forbidden_import_planted_in_a_core_copy(tmp_path):
    core = ROOT / "nokvpy/raft/types.py"
    planted = core.read_text() + "\nimport lmdb\n"
    assert pure_violations(core.read_text()) == []
    assert pure_violations(planted) == ["lmdb"]


# ---- the project's modules and what each imports -----------------------------------------------

ARCHITECTURE = ROOT / "docs/architecture.md"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def module_name(path: Path, root: Path = ROOT) -> str:
    """`nokvpy/wire/codec.py` -> `nokvpy.wire.codec`; `jepsen-lite/jepsen_lite/x.py` ->
    `jepsen_lite.x`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "jepsen-lite":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute; for `from m import n`, `m.n` when that is a module of the project
    function_level: bool
    type_only: bool  # under `if TYPE_CHECKING:`: never runs

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool = False,
               known: Collection[str] = ()) -> list[Import]:
    """Every import statement of a module, at any depth (functions, conditionals)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(node, FUNCTIONS)
            tc = type_only or (isinstance(node, ast.If) and _is_type_checking(node.test)
                               and any(child is n for n in node.body))
            if isinstance(child, ast.Import):
                found.extend(Import(child.lineno, a.name, fn, tc) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(child, package)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append(Import(child.lineno, sub if sub in known else base, fn, tc))
            visit(child, fn, tc)

    visit(ast.parse(source), False, False)
    return found


def owner_module(name: str, modules: Collection[str]) -> str | None:
    """The module `name` is in: itself when it is a module, else its nearest parent that is."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


class Tree:
    """The project's modules under `root` (a copy of the repository in the planted tests)."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.paths = {module_name(p, root): p for p in python_files(root)}
        self.sources = {m: p.read_text() for m, p in self.paths.items()}
        self.imports = {m: imports_of(src, m, self.paths[m].name == "__init__.py", self.paths)
                        for m, src in self.sources.items()}

    def rel(self, module: str) -> str:
        return self.paths[module].relative_to(self.root).as_posix()

    def deps(self, module: str) -> dict[str, int]:
        """Project modules `module` imports when it runs (function level included, type-only
        imports left out), each with the line of its first import. Importing `a.b.c` also
        runs `a/__init__.py` and `a/b/__init__.py`; those edges are left out: a package's
        `__init__` only names its modules."""
        out: dict[str, int] = {}
        for imp in self.imports[module]:
            if imp.top in PROJECT and not imp.type_only:
                target = owner_module(imp.module, self.paths) or imp.module
                if target != module:
                    out.setdefault(target, imp.line)
        return out


@functools.lru_cache(maxsize=1)
def real_tree() -> Tree:
    return Tree(ROOT)


def copy_tree(dest: Path) -> Path:
    for r in SOURCE_ROOTS:
        shutil.copytree(ROOT / r, dest / r, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def plant(root: Path, rel_path: str, text: str) -> None:
    path = root / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((path.read_text() if path.exists() else "") + textwrap.dedent(text))


# ---- a. the may-import table of docs/architecture.md ----------------------------------------


@dataclass(frozen=True)
class Scope:
    module: str
    exact: bool  # a file row covers that module only; a package row its submodules too

    def covers(self, name: str) -> bool:
        return name == self.module or (not self.exact and name.startswith(self.module + "."))


@dataclass(frozen=True)
class LayerRow:
    label: str
    scopes: tuple[Scope, ...]
    allowed: tuple[Scope, ...]
    everything: bool
    stdlib_only: bool  # "stdlib": no third-party package but the ones the row names
    third_party: frozenset[str]
    cell: str


def path_scope(path: str) -> Scope:
    path = path.strip().rstrip("/")
    exact = path.endswith(".py")
    parts = path.removesuffix(".py").split("/")
    if parts[0] == "jepsen-lite":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return Scope(".".join(parts), exact)


def table_cells(text: str) -> list[tuple[str, str]]:
    """(package cell, may-import cell) of every row of the `| package | role | may import |`
    table."""
    lines = text.splitlines()
    header = [i for i, line in enumerate(lines)
              if [c.strip() for c in line.strip().strip("|").split("|")]
              == ["package", "role", "may import"]]
    assert len(header) == 1, "docs/architecture.md needs one `| package | role | may import |` table"
    rows = []
    for line in lines[header[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[-1]))
    return rows


def layer_table(text: str) -> list[LayerRow]:
    """The rows of the table. A may-import cell lists names separated by `,` or `;`
    (parenthesised text is a comment): `stdlib` / `stdlib only` (no third-party package but
    the ones named), `everything`, `the above` (every `nokvpy` row above this one), the short
    name of another row (`protocol`, `failpoints`, `metaroot`), a module inside one
    (`raft.types`, `metaroot.state`), or a third-party package (`trio`)."""
    cells = table_cells(text)
    scopes = [tuple(path_scope(p) for p in re.findall(r"`([^`]+)`", pkg)) for pkg, _ in cells]
    every = [s for row in scopes for s in row]
    rows = []
    for i, (label, cell) in enumerate(cells):
        allowed: list[Scope] = []
        everything = stdlib_only = False
        third: set[str] = set()
        for token in re.split(r"[,;]", re.sub(r"\([^)]*\)", "", cell).replace("`", "")):
            token = token.strip()
            if not token:
                continue
            if token in ("stdlib", "stdlib only"):
                stdlib_only = True
            elif token == "everything":
                everything = True
            elif token == "the above":
                allowed += [s for row in scopes[:i] for s in row if s.module.startswith("nokvpy.")]
            else:
                head, _, rest = token.partition(".")
                match = [s for s in every if s.module.rsplit(".", 1)[-1] == head]
                if match:
                    s = match[0]
                    allowed.append(Scope(f"{s.module}.{rest}", False) if rest else s)
                elif not rest and importlib.util.find_spec(token) is not None:
                    third.add(token)
                else:
                    raise ValueError(f"may-import table, row {label}: unknown name {token!r}")
        if not scopes[i]:
            raise ValueError(f"may-import table: row {label!r} names no package")
        rows.append(LayerRow(label, scopes[i], tuple(allowed), everything, stdlib_only,
                             frozenset(third), cell))
    return rows


def row_of(module: str, rows: Sequence[LayerRow]) -> LayerRow | None:
    """The row of `module`: the most specific package (or file) that covers it."""
    best: tuple[tuple[int, bool], LayerRow] | None = None
    for row in rows:
        for s in row.scopes:
            if s.covers(module) and (best is None or (len(s.module), s.exact) > best[0]):
                best = ((len(s.module), s.exact), row)
    return best[1] if best else None


def layer_violations(tree: Tree, rows: Sequence[LayerRow]) -> list[tuple[str, int, str, str]]:
    """(file, line, imported module, rule) for every import the table does not allow."""
    problems = []
    for module in sorted(tree.paths):
        row = row_of(module, rows)
        if row is None:
            problems.append((tree.rel(module), 0, "", "no row of the may-import table covers it"))
            continue
        for imp in tree.imports[module]:
            if imp.top in PROJECT:
                if row.everything or any(s.covers(imp.module) for s in row.scopes + row.allowed):
                    continue
            elif not row.stdlib_only or imp.top in row.third_party or imp.top == "__future__" \
                    or imp.top in sys.stdlib_module_names:
                continue
            where = ", in a function" if imp.function_level else ""
            problems.append((tree.rel(module), imp.line, imp.module,
                             f"{row.label} may import: {row.cell}{where}"))
    return problems


# Imports that break the table today, each in a file that is not this change's to edit. The
# goal is an empty set; an entry that no longer occurs fails the test (remove it).
KNOWN_LAYER_VIOLATIONS = {
    # The coordinator process builds the client library's metaroot client (MetaClient, with
    # client.failover's suspect list and client.errors) to reach metaroot: a service that
    # depends on the client library. Fix: move MetaClient below the services (nokvpy/rpc, or
    # a nokvpy/metaclient module) and import it from there.
    ("coordinator/main.py", "nokvpy.client.meta"),
}


def test_the_may_import_table_parses_and_covers_every_module():
    rows = layer_table(ARCHITECTURE.read_text())
    by_label = {r.label: r for r in rows}
    wire = row_of("nokvpy.wire.codec", rows)
    assert wire is not None and Scope("nokvpy.raft.types", False) in wire.allowed
    assert row_of("nokvpy.raft.core", rows).stdlib_only
    assert row_of("jepsen_lite.nemesis", rows) is not None
    assert any(r.everything for r in by_label.values())
    uncovered = [tree_rel for tree_rel, line, _, _ in layer_violations(real_tree(), rows) if not line]
    assert uncovered == []


def test_every_import_is_allowed_by_the_architecture_table():
    """Top-level and function-level imports of every module, against the table's row of that
    module (docs/architecture.md, "Code layout and layering")."""
    found = layer_violations(real_tree(), layer_table(ARCHITECTURE.read_text()))
    new = [f"{f}:{line}: imports {m} ({rule})" for f, line, m, rule in found
           if (f, m) not in KNOWN_LAYER_VIOLATIONS]
    assert new == []
    stale = KNOWN_LAYER_VIOLATIONS - {(f, m) for f, _, m, _ in found}
    assert stale == set(), "fixed: remove from KNOWN_LAYER_VIOLATIONS"


def test_table_checker_flags_imports_planted_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "nokvpy/wire/framing.py", "\nfrom nokvpy.storage import kv\n")
    plant(root, "nokvpy/raft/types.py", """
        def _later():
            import nokvpy.wire
            import trio
        """)
    rows = layer_table(ARCHITECTURE.read_text())
    before = set(layer_violations(real_tree(), rows))
    after = {(f, m) for f, _, m, _ in set(layer_violations(Tree(root), rows)) - before}
    assert after == {("nokvpy/wire/framing.py", "nokvpy.storage.kv"),
                     ("nokvpy/raft/types.py", "nokvpy.wire"), ("nokvpy/raft/types.py", "trio")}


def test_table_parser_reads_rows_and_refuses_unknown_names():
    doc = textwrap.dedent("""
        | package | role | may import |
        |---|---|---|
        | `nokvpy/raft` | core | stdlib only |
        | `nokvpy/failpoints.py` | utility | stdlib, trio (a comment, ignored) |
        | `nokvpy/wire` | codec | raft.types |
        | `metaroot/` | service | the above; `wire` |
        | `jepsen-lite/jepsen_lite` | tools | everything |

        text after the table
        """)
    rows = {r.label.strip("`"): r for r in layer_table(doc)}
    assert rows["nokvpy/raft"].stdlib_only and rows["nokvpy/raft"].allowed == ()
    assert rows["nokvpy/failpoints.py"].third_party == {"trio"}
    assert rows["nokvpy/failpoints.py"].scopes == (Scope("nokvpy.failpoints", True),)
    assert rows["nokvpy/wire"].allowed == (Scope("nokvpy.raft.types", False),)
    assert {s.module for s in rows["metaroot/"].allowed} == {
        "nokvpy.raft", "nokvpy.failpoints", "nokvpy.wire"}
    assert rows["jepsen-lite/jepsen_lite"].scopes == (Scope("jepsen_lite", False),)
    with pytest.raises(ValueError, match="unknown name 'nosuchpackage'"):
        layer_table(doc.replace("raft.types", "nosuchpackage"))


# ---- b. services never import each other --------------------------------------------------

SERVICES = ("metaroot", "coordinator", "raftstore")
# (importing service, imported service): why. Only I/O-free modules of the imported service
# qualify (rule d), never its log, service or process wiring.
SERVICE_EXCEPTIONS = {
    ("coordinator", "metaroot"): "the coordinator is a materialized view of root: it replays "
    "root events with metaroot's pure rooted state (RootState and the modules it is made of, "
    "grants) in its catalog catch-up, transition assessment and grant audit, so that both "
    "sides apply the same rules",
}


def service_violations(tree: Tree) -> list[tuple[str, int, str]]:
    free = io_free_modules(tree)
    problems = []
    for module in sorted(tree.paths):
        src = module.split(".")[0]
        if src not in SERVICES:
            continue
        for imp in tree.imports[module]:
            dst = imp.top
            if dst not in SERVICES or dst == src:
                continue
            target = owner_module(imp.module, tree.paths)
            if (src, dst) in SERVICE_EXCEPTIONS and target in free:
                continue
            problems.append((tree.rel(module), imp.line, imp.module))
    return problems


def test_services_do_not_import_each_other():
    """metaroot, coordinator and raftstore are separate processes: none imports another's
    code (the one exception, SERVICE_EXCEPTIONS, reads pure code only); raftstore imports
    nothing of metaroot or coordinator."""
    assert [f"{f}:{line}: imports {m}" for f, line, m in service_violations(real_tree())] == []
    assert not any(src == "raftstore" for src, _ in SERVICE_EXCEPTIONS)


def test_service_checker_flags_imports_planted_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "raftstore/admission.py", "\nfrom coordinator.catalog import Catalog\n")
    plant(root, "raftstore/reads.py", """
        def _later():
            from metaroot import state
        """)
    plant(root, "coordinator/catalog.py", """
        def _later():
            import metaroot.service
        """)
    new = set(service_violations(Tree(root))) - set(service_violations(real_tree()))
    assert {(f, m) for f, _, m in new} == {
        ("raftstore/admission.py", "coordinator.catalog"),
        ("raftstore/reads.py", "metaroot.state"),
        ("coordinator/catalog.py", "metaroot.service")}


# ---- c. no private names across modules ------------------------------------------------------


def private_name_uses(source: str, module: str, is_package: bool = False,
                      known: Collection[str] = ()) -> list[tuple[int, str]]:
    """(line, what) for every private name (`_x`) of another project module this module
    imports (`from m import _x`) or reads (`m._x`, `import m as a; a._x`). A private module
    (`pkg/_x.py`) may be imported inside its own package."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    aliases: dict[str, str] = {}

    def private_path(dotted: str) -> bool:
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if private(part):
                owner = ".".join(parts[:i])
                if not (package == owner or package.startswith(owner + ".")):
                    return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in PROJECT:
                    continue
                if private_path(a.name):
                    found.append((node.lineno, f"import {a.name}"))
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            if base.split(".")[0] not in PROJECT:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if private_path(base) or (private(a.name) and (sub not in known
                                                               or private_path(sub))):
                    found.append((node.lineno, f"from {base} import {a.name}"))
                if sub in known:
                    aliases[a.asname or a.name] = sub

    def module_of(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = module_of(expr.value)
            if base is not None and f"{base}.{expr.attr}" in known:
                return f"{base}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            target = module_of(node.value)
            if target is not None and target != module:
                found.append((node.lineno, f"{target}.{node.attr}"))
    return sorted(set(found))


def private_violations(tree: Tree) -> list[tuple[str, int, str]]:
    return [(tree.rel(m), line, what) for m in sorted(tree.paths)
            for line, what in private_name_uses(tree.sources[m], m,
                                                tree.paths[m].name == "__init__.py", tree.paths)]


# (file, what) still reaching into another module's private names, in files that are not this
# change's to edit. The goal is an empty set; an entry that no longer occurs fails the test.
KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()


def test_no_private_names_across_modules():
    """No `from m import _x` and no `m._x` of another project module (tests are exempt).
    What two modules share is public; a private module is its package's."""
    found = private_violations(real_tree())
    assert [f"{f}:{line}: {what}" for f, line, what in found
            if (f, what) not in KNOWN_PRIVATE_USES] == []
    assert KNOWN_PRIVATE_USES - {(f, what) for f, _, what in found} == set()


@pytest.mark.parametrize(
    "module, snippet, expected",
    [
        ("nokvpy.rpc.x", "from nokvpy.wire.schema import _kind", ["from nokvpy.wire.schema import _kind"]),
        ("nokvpy.rpc.x", "import nokvpy.wire.schema as s\ns._kind(1)", ["nokvpy.wire.schema._kind"]),
        ("nokvpy.rpc.x", "import nokvpy.wire.schema\nnokvpy.wire.schema._SCALARS", ["nokvpy.wire.schema._SCALARS"]),
        ("nokvpy.rpc.x", "from nokvpy.wire import schema\ndef f():\n    return schema._kind",
         ["nokvpy.wire.schema._kind"]),
        ("nokvpy.rpc.x", "from nokvpy.storage import _crashwriter", ["from nokvpy.storage import _crashwriter"]),
        ("nokvpy.rpc.x", "from nokvpy.storage._crashwriter import Model",
         ["from nokvpy.storage._crashwriter import Model"]),
        ("nokvpy.storage.y", "from nokvpy.storage._crashwriter import Model", []),
        ("nokvpy.storage.y", "from nokvpy.storage import _crashwriter", []),
        ("nokvpy.rpc.x", "from nokvpy.wire.schema import compile_record as _compile", []),
        ("nokvpy.rpc.x", "import os\nos._exit(0)\nself._x = 1\nfrom argparse import _SubParsersAction", []),
        ("nokvpy.rpc.x", "from nokvpy.wire.schema import __all__", []),
    ],
)
def test_private_name_checker(module, snippet, expected):
    known = {"nokvpy.wire", "nokvpy.wire.schema", "nokvpy.storage", "nokvpy.storage._crashwriter"}
    assert [what for _, what in private_name_uses(snippet, module, known=known)] == expected


def test_private_name_checker_flags_a_use_planted_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "nokvpy/rpc/identity.py", """
        def _later():
            from nokvpy.wire import codec
            return codec._protocol_loaded
        """)
    new = set(private_violations(Tree(root))) - set(private_violations(real_tree()))
    assert {(f, what) for f, _, what in new} == {
        ("nokvpy/rpc/identity.py", "nokvpy.wire.codec._protocol_loaded")}


# ---- d. every I/O-free module is on the pure list ----------------------------------------------


def io_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    return sorted(imported_modules(tree) & IO_MODULES) + logging_handler_uses(tree)


def io_free_modules(tree: Tree) -> set[str]:
    """Modules that import no I/O module, and whose project imports (function level included)
    are I/O-free too."""
    free = {m for m, src in tree.sources.items() if not io_imports(src)}
    changed = True
    while changed:
        changed = False
        for m in sorted(free):
            if any(d not in free for d in tree.deps(m)):
                free.discard(m)
                changed = True
    return free


def pure_list(tree: Tree) -> set[str]:
    return {m for m in tree.paths if tree.rel(m) in PURE_FILES
            or any(tree.rel(m).startswith(pkg + "/") for pkg in PURE_PACKAGES)}


def unlisted_io_free(tree: Tree) -> list[str]:
    """I/O-free modules missing from PURE_PACKAGES / PURE_FILES (a package's `__init__` only
    names its modules and is left out)."""
    listed = pure_list(tree)
    return sorted(tree.rel(m) for m in io_free_modules(tree)
                  if m not in listed and tree.paths[m].name != "__init__.py")


def test_every_pure_list_entry_names_a_module():
    missing = [f for f in PURE_FILES if not (ROOT / f).is_file()]
    missing += [p for p in PURE_PACKAGES if not (ROOT / p / "__init__.py").is_file()]
    assert missing == []


def test_every_io_free_module_is_on_the_pure_list():
    """A module that does no I/O (it imports none of IO_MODULES, configures no log handler,
    and imports only such modules) is on the pure list, so that it stays that way."""
    assert unlisted_io_free(real_tree()) == []


def test_pure_modules_import_only_pure_modules():
    """The pure list is closed: a pure module imports (at any level) only I/O-free modules."""
    tree = real_tree()
    free = io_free_modules(tree)
    problems = [f"{tree.rel(m)}:{line}: imports {d}, which is not I/O-free"
                for m in sorted(pure_list(tree)) for d, line in tree.deps(m).items()
                if d not in free]
    assert problems == []


def test_io_free_checker_finds_a_module_planted_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "coordinator/planted_rules.py", """
        from coordinator.catalog import Catalog
        from nokvpy.protocol.enums import ErrorKind
        """)
    plant(root, "coordinator/planted_clock.py", "import time\n")
    plant(root, "coordinator/planted_rpc.py", "def f():\n    from nokvpy.rpc import RpcClient\n")
    plant(root, "coordinator/planted_logs.py",
          "import logging\nlogging.getLogger().addHandler(logging.StreamHandler())\n")
    new = set(unlisted_io_free(Tree(root))) - set(unlisted_io_free(real_tree()))
    assert new == {"coordinator/planted_rules.py"}


# ---- e. no import cycles -------------------------------------------------------------------------


def strongly_connected(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def import_cycles(tree: Tree) -> list[list[str]]:
    """Cycles between project modules, function-level imports included (a lazy import only
    hides a cycle); each cycle as `module:line -> imported module` edges."""
    graph = {m: sorted(tree.deps(m)) for m in tree.paths}
    cycles = []
    for component in strongly_connected(graph):
        members = set(component)
        cycles.append([f"{tree.rel(m)}:{line} -> {d}" for m in component
                       for d, line in sorted(tree.deps(m).items()) if d in members])
    return cycles


def test_no_import_cycles():
    assert import_cycles(real_tree()) == []


def test_strongly_connected_components():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"]}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]
    assert strongly_connected({"a": ["b"], "b": []}) == []


def test_cycle_checker_finds_a_lazy_import_planted_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "nokvpy/wire/errors.py", "\ndef _later():\n    from nokvpy.wire import framing\n")
    before = {tuple(c) for c in import_cycles(real_tree())}
    new = [c for c in import_cycles(Tree(root)) if tuple(c) not in before]
    assert len(new) == 1
    assert any(e.startswith("nokvpy/wire/errors.py:") and e.endswith("-> nokvpy.wire.framing")
               for e in new[0])


MAX_MODULE_LINES = 600  # nokvpy/raft (the etcd-shaped core) is exempt


def oversized_modules(root: Path) -> list[str]:
    """Source modules outside nokvpy/raft longer than MAX_MODULE_LINES, with their length."""
    out = []
    for top in SOURCE_ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("nokvpy/raft/"):
                continue
            lines = path.read_text().count("\n")
            if lines > MAX_MODULE_LINES:
                out.append(f"{rel}: {lines} lines")
    return out


def test_no_module_outside_the_raft_core_is_longer_than_600_lines():
    assert oversized_modules(ROOT) == []


def test_the_size_check_finds_a_module_grown_in_a_copy(tmp_path):
    root = copy_tree(tmp_path)
    plant(root, "raftstore/store.py", "\n# grown\n" * 10)
    (found,) = oversized_modules(root)
    assert found.startswith("raftstore/store.py: ") and int(found.split()[1]) > MAX_MODULE_LINES
