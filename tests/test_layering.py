"""Import boundaries of DESIGN.md section 2, checked on the source tree.

- nokvpy/raft is pure: no trio, msgpack, lmdb, socket, time, os, threading, asyncio, and no
  use of the module-level `random` functions (randomness comes from an injected Random).
- only nokvpy/wire imports msgpack; only nokvpy/storage imports lmdb; only nokvpy/rpc opens
  sockets (imports socket or calls trio's socket/TCP openers).
- pure modules (rooted state, catalog, serving rules, transition assessment) stay I/O-free.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IO_MODULES = {"trio", "msgpack", "lmdb", "socket", "time", "os", "threading", "asyncio"}
PURE_PACKAGES = ["nokvpy/raft"]
PURE_FILES = [
    "metaroot/state.py",
    "metaroot/grants.py",
    "coordinator/catalog.py",
    "coordinator/rootview.py",
    "coordinator/serving.py",
    "coordinator/assessment.py",
    "nokvpy/protocol/transitions.py",
]
OWNERS = {"msgpack": "nokvpy/wire", "lmdb": "nokvpy/storage", "socket": "nokvpy/rpc"}
SOCKET_CALLS = {"open_tcp_stream", "open_tcp_listeners", "serve_tcp", "socket"}


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


def pure_violations(source: str) -> list[str]:
    tree = ast.parse(source)
    return sorted(imported_modules(tree) & IO_MODULES) + module_random_uses(tree)


def python_files() -> list[Path]:
    roots = ["nokvpy", "metaroot", "coordinator", "raftstore", "jepsen-lite/jepsen_lite"]
    return [p for r in roots for p in sorted((ROOT / r).rglob("*.py"))]


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
