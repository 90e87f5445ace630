"""Real store processes (`nokv store serve`) on loopback: kill -9 the leader, every
acknowledged write stays readable after failover. The fake coordinator runs in the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from fake_coordinator import FakeCoordinator

from nokvpy.client import Client
from nokvpy.protocol.store_rpc import ExecutionStatusReply, ExecutionStatusRequest
from nokvpy.rpc import Identity, RpcClient, RpcError
from nokvpy.rpc.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster


def start_store(sid: int, port: int, coord: str, data: Path, log: Path,
                extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
    env.pop("NOKV_FAILPOINTS", None)
    cmd = [sys.executable, "-m", "nokvpy.cli.main", "store", "serve", "--id", str(sid),
           "--listen", f"127.0.0.1:{port}", "--coordinator", coord, "--data", str(data),
           "--tick-ms", "50", "--enable-failpoints"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


async def status(rpc: RpcClient, addr: str) -> dict | None:
    try:
        reply = await rpc.call(addr, ExecutionStatusRequest(), timeout=1.0)
    except RpcError:
        return None
    assert isinstance(reply, ExecutionStatusReply)
    return reply.body


async def wait_leader(rpc, addrs: dict[int, str], exclude=()) -> int:
    with trio.fail_after(30):
        while True:
            for sid, addr in addrs.items():
                if sid in exclude:
                    continue
                body = await status(rpc, addr)
                if body and body["leader_count"] == 1:
                    return sid
            await trio.sleep(0.1)


@asynccontextmanager
async def three_stores(tmp_path: Path):
    """Three store processes and a fake coordinator: yields (procs, addrs, coordinator
    address, admin rpc). Every process is killed by pid on the way out."""
    procs: dict[int, subprocess.Popen] = {}
    ports = free_ports(3)
    addrs = {sid: f"127.0.0.1:{ports[sid - 1]}" for sid in (1, 2, 3)}
    try:
        async with trio.open_nursery() as nursery:
            fake = FakeCoordinator(3)
            coord = await nursery.start(fake.serve)
            for sid in (1, 2, 3):
                procs[sid] = start_store(sid, ports[sid - 1], coord, tmp_path / f"s{sid}",
                                         tmp_path / f"s{sid}.log")
            rpc = RpcClient(Identity("nokv", "client", 99))
            try:
                yield procs, addrs, coord, rpc
            finally:
                await rpc.aclose()
            nursery.cancel_scope.cancel()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def test_kill_9_leader_keeps_acknowledged_writes(tmp_path):
    async with three_stores(tmp_path) as (procs, addrs, coord, rpc):
        leader = await wait_leader(rpc, addrs)
        acked: dict[bytes, bytes] = {}
        async with Client([coord], timeout=10.0) as client:
            for i in range(100):
                key, value = b"p%03d" % i, b"v%d" % i
                await client.put(key, value)
                acked[key] = value
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait(10)
            new_leader = await wait_leader(rpc, addrs, exclude=(leader,))
            assert new_leader != leader
            for i in range(100, 130):
                key, value = b"p%03d" % i, b"w%d" % i
                await client.put(key, value)
                acked[key] = value
            got = await client.batch_get(sorted(acked))
            assert got == acked
            body = await status(rpc, addrs[new_leader])
            assert body["restart_state"]["state"] == "READY"
            assert body["outcomes"]["APPLIED"] >= 30
            # each of the 30 writes the new leader applied was first reported committed
            assert body["outcomes"].get("COMMITTED", 0) >= 30, body["outcomes"]


async def test_sigterm_stops_gracefully_and_identity_mismatch_refuses(tmp_path):
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    data = tmp_path / "s1"
    proc = None
    try:
        async with trio.open_nursery() as nursery:
            fake = FakeCoordinator(1)
            coord = await nursery.start(fake.serve)
            proc = start_store(1, port, coord, data, tmp_path / "s1.log")
            rpc = RpcClient(Identity("nokv", "client", 99))
            await wait_leader(rpc, {1: addr})
            async with Client([coord], timeout=10.0) as client:
                await client.put(b"k", b"v")
            await rpc.aclose()
            proc.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(proc.wait, 15) == 0
            nursery.cancel_scope.cancel()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        bad = subprocess.run(
            [sys.executable, "-m", "nokvpy.cli.main", "store", "serve", "--id", "2",
             "--listen", addr, "--coordinator", "127.0.0.1:1", "--data", str(data)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1
        lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("nokv store:")]
        assert len(lines) == 1 and "belongs to store 1" in lines[0], bad.stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_failed_wal_fsync_stops_the_leader_and_loses_nothing_acknowledged(tmp_path):
    """A failed fdatasync of the raft log's WAL is never retried: the store stops. The
    others elect a leader, every acknowledged write stays readable, and the store restarts
    from its WAL and catches up."""
    from nokvpy.protocol.admin import FailpointSetRequest

    async with three_stores(tmp_path) as (procs, addrs, coord, rpc):
        leader = await wait_leader(rpc, addrs)
        acked: dict[bytes, bytes] = {}
        async with Client([coord], timeout=10.0) as client:
            for i in range(30):
                await client.put(b"f%03d" % i, b"v%d" % i)
                acked[b"f%03d" % i] = b"v%d" % i
            await rpc.call(addrs[leader], FailpointSetRequest("storage.wal_before_sync",
                                                              "raise"), 5)
            unknown = 0
            for i in range(30, 60):
                key, value = b"f%03d" % i, b"w%d" % i
                try:
                    await client.put(key, value)
                except Exception:  # noqa: BLE001 - outcome unknown while the leader dies
                    unknown += 1
                    continue
                acked[key] = value
            with trio.fail_after(15):
                while procs[leader].poll() is None:
                    await trio.sleep(0.05)
            assert procs[leader].returncode != 0
            log_text = (tmp_path / f"s{leader}.log").read_text(errors="replace")
            assert "WAL" in log_text and "fsync failed" in log_text
            new_leader = await wait_leader(rpc, addrs, exclude=(leader,))
            assert new_leader != leader
            assert len(acked) >= 50, (len(acked), unknown)
            assert await client.batch_get(sorted(acked)) == acked
            port = int(addrs[leader].rsplit(":", 1)[1])
            procs[leader] = start_store(leader, port, coord, tmp_path / f"s{leader}",
                                        tmp_path / f"s{leader}.log")
            await client.put(b"after", b"restart")
            acked[b"after"] = b"restart"
            with trio.fail_after(30):
                while True:
                    body = await status(rpc, addrs[leader])
                    if (body and body["regions"].get("1", {}).get("applied_index", 0)
                            >= (await status(rpc, addrs[new_leader]))["regions"]["1"]
                            ["applied_index"]):
                        break
                    await trio.sleep(0.1)
            assert body["restart_state"]["state"] == "READY"
            assert body["storage"]["wal"]["segments"] >= 1
