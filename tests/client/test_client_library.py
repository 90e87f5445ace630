"""The client library as users meet it: `nokvpy.connect`, `Client.from_cluster_dir`,
`SyncClient` (from scripts, threads, trio and asyncio) and the examples of docs/client.md and
the README, each run as a script against one real local cluster (1 metaroot, 1 coordinator,
1 store, started with `nokv cluster up` in a temporary directory and stopped by pid in a
finalizer)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

import nokvpy
from nokvpy.client import (
    Client,
    InvalidRequestError,
    SyncClient,
    UnavailableError,
    WrongEventLoopError,
    connect,
)
from nokvpy.client.loopcheck import require_trio
from nokvpy.client.settings import address_settings, target_settings
from nokvpy.cluster.local import ClusterError, LocalCluster, pid_alive

REPO = Path(__file__).resolve().parents[2]
# a ```python block, and the ```text block after it (its expected output), if any
EXAMPLE = re.compile(r"```python\n(.*?)```\n(?:\n(?:It prints:\n\n)?```text\n(.*?)```)?", re.S)


def examples(path: str) -> list[tuple[str, str, str | None]]:
    text = (REPO / path).read_text()
    return [(f"{path}:{text[:m.start()].count(chr(10)) + 1}", m.group(1), m.group(2))
            for m in EXAMPLE.finditer(text)]


DOC_EXAMPLES = examples("docs/client.md") + examples("README.md")


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("NOKV_DIR", "NOKV_CLUSTER_ID", "NOKV_CLUSTER_SECRET", "NOKV_FAILPOINTS"):
        env.pop(name, None)
    return env


def nokv(*args: object, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nokvpy.cli.main", *map(str, args)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory) -> Path:
    """A running local cluster; its directory. Every process is stopped by pid afterwards."""
    directory = tmp_path_factory.mktemp("nokv-client") / "c"
    local = LocalCluster(directory)
    try:
        up = nokv("cluster", "up", "--dir", directory, "--stores", "1", "--replication", "1")
        assert up.returncode == 0, (up.stderr, nokv("cluster", "logs", "--dir", directory).stdout)
        yield directory
    finally:
        pids = [pid for p in (local.load().processes if local.exists() else [])
                if (pid := local.pid(p.name)) is not None]
        try:
            nokv("cluster", "down", "--dir", directory, timeout=60)
        finally:
            for pid in pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


# ---- the documentation's examples ---------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("where,code,expected", DOC_EXAMPLES, ids=[e[0] for e in DOC_EXAMPLES])
def test_documented_example_runs(cluster_dir, tmp_path, where, code, expected):
    """Each example runs as a script in a directory where `./c` is the cluster, and prints
    the output written after it."""
    (tmp_path / "c").symlink_to(cluster_dir)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (where, result.stdout, result.stderr)
    if expected is not None:
        assert result.stdout == expected, where
    if where.startswith("README"):
        assert result.stdout == "b'bob'\n"


def test_every_client_example_is_collected():
    wheres = [w for w, _, _ in DOC_EXAMPLES]
    assert sum(w.startswith("docs/client.md") for w in wheres) >= 5
    assert sum(w.startswith("README.md") for w in wheres) == 1


# ---- where a client connects --------------------------------------------------------------


def test_address_settings_and_their_defaults(monkeypatch):
    monkeypatch.delenv("NOKV_CLUSTER_ID", raising=False)
    monkeypatch.delenv("NOKV_CLUSTER_SECRET", raising=False)
    assert address_settings("127.0.0.1:1, 127.0.0.1:2") == {
        "coordinators": ["127.0.0.1:1", "127.0.0.1:2"], "cluster_id": "nokv", "secret": None}
    monkeypatch.setenv("NOKV_CLUSTER_ID", "c1")
    monkeypatch.setenv("NOKV_CLUSTER_SECRET", "s3cret")
    assert address_settings(["[::1]:5"]) == {
        "coordinators": ["[::1]:5"], "cluster_id": "c1", "secret": b"s3cret"}
    assert address_settings("h:1", cluster_id="c2", secret=b"x")["cluster_id"] == "c2"
    for bad in ("localhost:", "h:port", ",", ""):
        with pytest.raises(ValueError, match="expected host:port"):
            address_settings(bad)
    # a string with `:` that is not a directory is addresses; without one it is a directory
    assert target_settings("h:1", timeout=3.0, cluster_id="c3") == {
        "coordinators": ["h:1"], "cluster_id": "c3", "secret": b"s3cret", "timeout": 3.0}
    with pytest.raises(ClusterError, match="no cluster in .*localhost"):
        target_settings("localhost")


@pytest.mark.cluster
def test_from_cluster_dir_reads_cluster_json(cluster_dir):
    spec = json.loads((cluster_dir / "cluster.json").read_text())
    coordinators = [p["address"] for p in spec["processes"] if p["kind"] == "coordinator"]
    for path in (cluster_dir, str(cluster_dir), cluster_dir / "cluster.json"):
        client = Client.from_cluster_dir(path, timeout=3.0)
        assert client.coordinators == coordinators and client.timeout == 3.0
        assert client.rpc.identity.cluster_id == spec["cluster_id"]
        assert client.rpc.identity.secret == spec["secret"].encode()
    with pytest.raises(ClusterError, match="no cluster in"):
        Client.from_cluster_dir(cluster_dir / "nothing")
    with pytest.raises(ClusterError, match="no cluster in"):
        nokvpy.connect(cluster_dir / "nothing")


# ---- SyncClient ---------------------------------------------------------------------------


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nokv-sync-client"]


@pytest.mark.cluster
def test_sync_client_operations_threads_and_lifetime(cluster_dir):
    with nokvpy.connect(cluster_dir) as client:
        assert client.put(b"lib/a", b"1") > 0
        assert client.get(b"lib/a") == b"1"
        assert client.compare_and_swap(b"lib/a", b"0", b"2") == (False, b"1")
        assert client.compare_and_swap(b"lib/a", b"1", None) == (True, None)
        assert client.get(b"lib/a") is None

        def writer(t: int) -> None:
            for i in range(10):
                client.put(b"lib/t%d/%d" % (t, i), b"v")

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(client.scan(b"lib/t", b"lib/u", limit=1000)) == 60
        assert client.batch_get([b"lib/t0/0", b"lib/none"]) == {b"lib/t0/0": b"v", b"lib/none": None}
        with pytest.raises(InvalidRequestError, match="keys are bytes"):
            client.get("lib/a")  # the async client's typed errors, raised in the caller
        assert client.call(lambda c: c.get(b"lib/t0/1")) == b"v"
    client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.get(b"lib/t0/0")
    assert sync_threads() == []  # close() joined the client's thread

    with pytest.raises(ValueError, match="at least one coordinator"):
        SyncClient([])
    assert sync_threads() == []


def test_sync_client_to_nothing_fails_within_its_timeout():
    with connect("127.0.0.1:1", timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="no coordinator reachable"):
            client.get(b"k")
        assert time.monotonic() - start < 5.0


@pytest.mark.cluster
def test_sync_client_from_asyncio_and_trio(cluster_dir):
    with SyncClient.from_cluster_dir(cluster_dir) as client:
        client.put(b"lib/loop", b"x")

        async def under_asyncio() -> list:
            direct = client.get(b"lib/loop")  # blocks the loop, but works
            threaded = await asyncio.gather(*(asyncio.to_thread(client.get, b"lib/loop")
                                              for _ in range(4)))
            return [direct, *threaded]

        assert asyncio.run(under_asyncio()) == [b"x"] * 5

        async def under_trio() -> bytes:
            with pytest.raises(RuntimeError, match="use nokvpy.Client"):
                client.get(b"lib/loop")  # would block the trio loop: refused
            return await trio.to_thread.run_sync(client.get, b"lib/loop")

        assert trio.run(under_trio) == b"x"


# ---- the async Client outside trio ----------------------------------------------------------


def test_async_client_under_asyncio_names_sync_client():
    client = Client(["127.0.0.1:1"])

    async def main() -> None:
        for call in (lambda: client.get(b"k"), lambda: client.put(b"k", b"v"),
                     lambda: client.route(b"k"), lambda: client.scan()):
            with pytest.raises(WrongEventLoopError, match="under asyncio.*SyncClient"):
                await call()
        body_ran = False
        with pytest.raises(WrongEventLoopError, match="SyncClient"):
            async with Client(["127.0.0.1:1"]):
                body_ran = True
        assert not body_ran  # `async with` fails on entry

    asyncio.run(main())


async def test_require_trio_is_silent_under_trio():
    require_trio()  # no error: trio runs here
    with pytest.raises(WrongEventLoopError, match="outside trio"):
        await trio.to_thread.run_sync(require_trio)  # a worker thread runs no trio loop
