"""Failpoints: spec parsing, every action, count/probability modifiers, env loading, off path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import timeit
from pathlib import Path

import pytest
import trio

from nokvpy import failpoints as fp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean():
    fp.clear_all()
    fp.reset_hits()
    yield
    fp.clear_all()
    fp.reset_hits()


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("raise", [("raise", None, 1.0, None)]),
        ("panic", [("raise", None, 1.0, None)]),
        ("2*raise", [("raise", None, 1.0, 2)]),
        ("50%exit", [("exit", 137, 0.5, None)]),
        ("exit(3)", [("exit", 3, 1.0, None)]),
        ("sleep(200)", [("sleep", 0.2, 1.0, None)]),
        ("delay(5)", [("delay", 0.005, 1.0, None)]),
        ("25%3*drop", [("drop", None, 0.25, 3)]),
        ('return("x")', [("return", "x", 1.0, None)]),
        ("return(7)", [("return", 7, 1.0, None)]),
        ("return(true)", [("return", True, 1.0, None)]),
        ("return", [("return", None, 1.0, None)]),
        ("1*sleep(100)->raise", [("sleep", 0.1, 1.0, 1), ("raise", None, 1.0, None)]),
        (" off ", [("off", None, 1.0, None)]),
    ],
)
def test_parse(spec, expected):
    got = [(t.action, t.arg, t.probability, t.remaining) for t in fp.parse(spec)]
    assert got == expected


@pytest.mark.parametrize(
    "spec", ["", "boom", "sleep", "sleep(x)", "exit(x)", "0*raise", "150%raise", "raise(1)",
             "2*", "%raise", "sleep(-1)"],
)
def test_parse_errors(spec):
    with pytest.raises(fp.FailpointSpecError):
        fp.parse(spec)


# ---------------------------------------------------------------- actions


def test_off_path_returns_none_and_is_cheap():
    assert not fp.enabled()
    assert fp.check("anything") is None
    per_call = min(timeit.repeat(lambda: fp.check("x"), number=20000, repeat=3)) / 20000
    assert per_call < 2e-6  # a function call and one dict-is-empty test


def test_unrelated_failpoint_does_not_fire():
    fp.set("a", "raise")
    assert fp.check("b") is None
    assert fp.hits() == {}


def test_raise():
    fp.set("a", "raise")
    with pytest.raises(fp.FailpointError) as info:
        fp.check("a")
    assert info.value.name == "a"
    assert fp.hits() == {"a": 1}


def test_drop_and_return():
    fp.set("d", "drop")
    fp.set("r", 'return("stale")')
    assert fp.check("d") is fp.DROP
    assert fp.check("r") == fp.Return("stale")


def test_sync_sleep():
    fp.set("s", "sleep(30)")
    t = time.monotonic()
    assert fp.check("s") is None
    assert time.monotonic() - t >= 0.03


async def test_async_sleep_uses_trio_clock(autojump_clock):
    fp.set("s", "sleep(5000)")
    t = trio.current_time()
    assert await fp.acheck("s") is None
    assert trio.current_time() - t >= 5.0  # virtual time: the mock clock jumped


async def test_async_raise_and_drop():
    fp.set("a", "1*raise->drop")
    with pytest.raises(fp.FailpointError):
        await fp.acheck("a")
    assert await fp.acheck("a") is fp.DROP


def test_exit_in_a_subprocess():
    code = "from nokvpy import failpoints as f; f.set('x', 'exit(42)'); f.check('x'); print('no')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert r.returncode == 42 and r.stdout == b""
    assert b"failpoint 'x': exit(42)" in r.stderr


# ---------------------------------------------------------------- modifiers


def test_count_fires_n_times_then_turns_off():
    fp.set("a", "2*raise")
    for _ in range(2):
        with pytest.raises(fp.FailpointError):
            fp.check("a")
    assert fp.check("a") is None
    assert fp.list_active() == {}
    assert fp.hits() == {"a": 2}


def test_chain_falls_through():
    fp.set("a", "2*off->1*drop->raise")
    assert fp.check("a") is None
    assert fp.check("a") is None
    assert fp.check("a") is fp.DROP
    with pytest.raises(fp.FailpointError):
        fp.check("a")
    assert "a" in fp.list_active()


def test_probability_is_seeded_and_roughly_right():
    def run():
        fp.seed(1234)
        fp.set("p", "50%drop")
        return [fp.check("p") is fp.DROP for _ in range(2000)]

    first = run()
    assert first == run()  # reproducible
    assert 800 < sum(first) < 1200


def test_set_off_clears_and_list_active():
    fp.set("a", "raise")
    fp.set("b", "50%exit")
    assert fp.list_active() == {"a": "raise", "b": "50%exit"}
    fp.set("a", "off")
    fp.clear("b")
    assert fp.list_active() == {} and not fp.enabled()
    with pytest.raises(fp.FailpointSpecError):
        fp.set("bad=name", "raise")


# ---------------------------------------------------------------- environment


def test_load_from_env_mapping():
    loaded = fp.load_from_env({"NOKV_FAILPOINTS": "a=raise; b=2*drop;;", "NOKV_FAILPOINTS_SEED": "5"})
    assert loaded == {"a": "raise", "b": "2*drop"}
    assert fp.list_active() == {"a": "raise", "b": "2*drop"}
    with pytest.raises(fp.FailpointSpecError):
        fp.load_from_env({"NOKV_FAILPOINTS": "c=raise;d"})
    assert "c" not in fp.list_active()  # validated before activating any


def run_child(spec: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NOKV_FAILPOINTS=spec, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=ROOT,
                          timeout=60)


def test_env_var_is_loaded_at_import_in_a_subprocess():
    r = run_child("x=drop;y=3*off->exit(9)",
                  "from nokvpy import failpoints as f\n"
                  "print(f.list_active(), f.check('x') is f.DROP, flush=True)\n"
                  "for _ in range(4): f.check('y')\n")
    assert r.stdout.decode().strip() == "{'x': 'drop', 'y': '3*off->exit(9)'} True"
    assert r.returncode == 9


def test_bad_env_var_fails_loudly_at_import():
    r = run_child("x=explode", "import nokvpy.failpoints")
    assert r.returncode != 0 and b"unknown failpoint action" in r.stderr


# ---------------------------------------------------------------- the known names


def test_known_failpoints_are_exactly_the_call_sites():
    """Every name a call site checks is in `KNOWN` (so the admin RPC accepts it) and every
    name in `KNOWN` is checked somewhere (so a documented failpoint really fires)."""
    import re

    pattern = re.compile(r'(?:\bcheck|\bacheck|\b_fp|\braise_injected)\("([a-z_]+\.[a-z_]+)"')
    found: set[str] = set()
    for pkg in ("nokvpy", "raftstore", "metaroot", "coordinator"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "failpoints.py":
                continue  # its docstring's examples are not call sites
            found.update(pattern.findall(path.read_text()))
    assert found == set(fp.KNOWN)


def test_every_known_failpoint_is_documented():
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in fp.KNOWN if f"`{name}`" not in text]
    assert missing == []


async def test_the_admin_rpc_refuses_an_unknown_failpoint_and_changes_nothing():
    from nokvpy.adminsvc import register_failpoint_admin
    from nokvpy.protocol.admin import FailpointSetRequest
    from nokvpy.rpc import RemoteError

    handlers = {}

    class Server:
        def register(self, kind, fn):
            handlers[kind] = fn

    register_failpoint_admin(Server())
    fp.clear_all()
    with pytest.raises(RemoteError) as err:
        await handlers[FailpointSetRequest](FailpointSetRequest("no.such.failpoint", "raise"), None)
    assert err.value.reason == "unknown_failpoint" and "driver.tick" in str(err.value)
    assert fp.list_active() == {}
    reply = await handlers[FailpointSetRequest](FailpointSetRequest("driver.tick", "sleep(1)"), None)
    assert reply.active == {"driver.tick": "sleep(1)"}
    fp.clear_all()
