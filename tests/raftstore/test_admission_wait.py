"""Writes wait for a proposal slot (raftstore.store `_admit_write`): a write finding its
region's queue full waits, first come first served, in a line of at most `queue_limit`
writes; it is answered TIMED_OUT ("waited Xs behind N proposals in flight") just before its
deadline, recorded CANCELED when its caller cancels, and QUEUE_SATURATED at once when the line
is full. In-process under trio's MockClock (a real Store on real LMDB, a stub region leader,
proposals held by the test); then one real store process where the RPC deadline and the
client's Cancel travel on the wire."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from fake_coordinator import FakeCoordinator
from test_processes import start_store as start_process_store

from nokvpy.protocol import AdmissionClass, AdmissionReason, PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.admin import FailpointSetRequest
from nokvpy.protocol.raftstore_cmds import KvResult
from nokvpy.protocol.store_rpc import ExecutionStatusRequest, KvContext, PutRequest
from nokvpy.rpc import Identity, RemoteError, RpcClient, RpcError
from nokvpy.rpc.ports import free_ports
from nokvpy.storage import Env
from raftstore.admission import RegionView
from raftstore.store import Store, StoreConfig

R = AdmissionReason
EPOCH = RegionEpoch(1, 1)
DESC = RegionDescriptor(1, b"", b"", EPOCH, (PeerMeta(1, 101),))
CTX = KvContext(1, EPOCH, 1)
ROOT = Path(__file__).resolve().parents[2]


class StubPeer:
    """The leader replica of region 1 as the write path sees it (no raft underneath)."""

    region_id, peer_id, leader_peer_id, descriptor, is_leader = 1, 101, 101, DESC, True

    def __init__(self):
        self.in_flight = 0
        self.group = object()
        self.sm = SimpleNamespace(applied=0)

    def leader_store_id(self) -> int:
        return 1

    def view(self, now: float) -> RegionView:
        return RegionView(DESC, 101, True, 101, 1, queue_depth=self.in_flight)


class HeldProposals:
    """Stands in for the driver: every proposal waits until the test releases one."""

    def __init__(self):
        self.proposed: list[bytes] = []
        self._release = trio.Semaphore(0)

    async def propose_at(self, group, data, conf_change=False, on_commit=None):
        self.proposed.append(data)
        await self._release.acquire()
        return len(self.proposed), KvResult(True)

    def release(self) -> None:
        self._release.release()


@pytest.fixture
def store(tmp_path):
    env = Env.open(tmp_path / "s")
    s = Store(StoreConfig(1, "nokv", "127.0.0.1:1", queue_limit=1), env,
              RpcClient(Identity("nokv", "store", 1)))
    s.peers[1] = StubPeer()
    s.driver = HeldProposals()  # only propose_at is used by the write path
    try:
        yield s
    finally:
        env.close()


def put(store: Store, key: bytes, timeout: float | None):
    deadline = None if timeout is None else trio.current_time() + timeout
    return store.on_put(PutRequest(CTX, key, b"v"), SimpleNamespace(deadline=deadline))


async def outcome(store, key, timeout, into: dict) -> None:
    try:
        into[key] = await put(store, key, timeout)
    except RemoteError as exc:
        into[key] = exc


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_a_waiting_write_times_out_just_before_its_deadline(store, autojump_clock):
    got: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, store, b"a", 30.0, got)
        await settle()
        assert store.peers[1].in_flight == 1
        t0 = trio.current_time()
        await outcome(store, b"b", 1.0, got)
        waited = trio.current_time() - t0
        store.driver.release()
    exc = got[b"b"]
    assert isinstance(exc, RemoteError) and (exc.kind, exc.reason) == ("rejected", "TIMED_OUT")
    assert 0.85 <= waited < 1.0, waited  # answered before the caller's deadline
    assert "waited 0.90s behind 1 proposals in flight on region 1" in exc.message
    assert exc.details["admission"].leader_store_id == 1
    assert store.tracker.admissions["WRITE/TIMED_OUT"] == 1
    assert "WRITE/QUEUE_SATURATED" not in store.tracker.admissions
    assert got[b"a"].applied_index == 1 and store.driver.proposed == [store.driver.proposed[0]]
    assert store._waiting == {}


async def test_a_waiting_write_gets_the_slot_when_it_frees(store, autojump_clock):
    got: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, store, b"a", 30.0, got)
        await settle()
        nursery.start_soon(outcome, store, b"b", 30.0, got)
        await settle()
        assert len(store._waiting[1]) == 1 and len(store.driver.proposed) == 1
        await trio.sleep(5)
        store.driver.release()  # a applies; b takes its slot and proposes
        await settle()
        assert len(store.driver.proposed) == 2 and store.peers[1].in_flight == 1
        store.driver.release()
    assert got[b"a"].applied_index == 1 and got[b"b"].applied_index == 2
    assert store.tracker.admissions["WRITE/ACCEPTED"] == 2
    assert store._waiting == {}


async def test_the_line_is_first_come_first_served_and_bounded(store, autojump_clock):
    store.limits = store.limits.__class__(queue_limit=2)
    got: dict = {}
    async with trio.open_nursery() as nursery:
        for key in (b"a", b"b"):  # two in flight (the limit)
            nursery.start_soon(outcome, store, key, 60.0, got)
            await settle()
        for key in (b"c", b"d"):  # two waiting (the line's limit)
            nursery.start_soon(outcome, store, key, 60.0, got)
            await settle()
        await outcome(store, b"e", 60.0, got)  # the line is full: refused at once
        exc = got[b"e"]
        assert isinstance(exc, RemoteError) and exc.reason == "QUEUE_SATURATED"
        assert "2 proposals in flight and 2 writes waiting for a slot (limit 2 each)" in \
            exc.message
        # a newcomer does not overtake the line when one slot frees
        store.driver.release()
        await settle()
        assert [k for k in got if not isinstance(got[k], RemoteError)] == [b"a"]
        assert len(store.driver.proposed) == 3 and len(store._waiting[1]) == 1
        for _ in range(3):
            store.driver.release()
            await settle()
    order = [bytes(p) for p in store.driver.proposed]
    assert [next(k for k in (b"a", b"b", b"c", b"d") if k in p) for p in order] == [
        b"a", b"b", b"c", b"d"]
    assert store.tracker.admissions["WRITE/QUEUE_SATURATED"] == 1


async def test_a_cancelled_waiter_is_recorded_canceled_and_leaves_the_line(store,
                                                                          autojump_clock):
    got: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, store, b"a", 30.0, got)
        await settle()
        with trio.CancelScope() as scope:

            async def cancel_soon():
                await trio.sleep(0.5)
                scope.cancel()

            nursery.start_soon(cancel_soon)
            await put(store, b"b", 30.0)
        assert scope.cancelled_caught
        assert store.tracker.admissions["WRITE/CANCELED"] == 1
        last = store.tracker.last_admission[AdmissionClass.WRITE]
        assert last.reason == R.CANCELED and "waited 0.50s" in last.detail
        assert store._waiting == {}
        store.driver.release()
    assert store.tracker.outcomes["REJECTED"] == 0  # a cancelled write is not answered


async def test_a_write_without_a_deadline_waits_at_most_the_default_timeout(store,
                                                                           autojump_clock):
    store.cfg.default_write_timeout = 3.0
    got: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, store, b"a", None, got)
        await settle()
        t0 = trio.current_time()
        await outcome(store, b"b", None, got)
        assert 2.7 <= trio.current_time() - t0 < 3.0
        store.driver.release()
    assert got[b"b"].reason == "TIMED_OUT"


async def test_a_waiter_learns_of_a_lost_leadership_at_once(store, autojump_clock):
    got: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outcome, store, b"a", 30.0, got)
        await settle()
        nursery.start_soon(outcome, store, b"b", 30.0, got)
        await settle()
        t0 = trio.current_time()
        store.peers[1].is_leader = False
        store.peers[1].view = lambda now: RegionView(DESC, 101, False, 102, 2, queue_depth=1)
        store._on_role_change(SimpleNamespace(group_id=1, is_leader=False))
        await settle()
        assert got[b"b"].reason == "NOT_LEADER" and trio.current_time() == t0
        store.driver.release()


# ---- on the wire: one real store process ----------------------------------------------------


def start_store(sid: int, port: int, coord: str, data: Path, log: Path,
                queue_limit: int) -> subprocess.Popen:
    return start_process_store(sid, port, coord, data, log,
                               {"NOKV_QUEUE_LIMIT": str(queue_limit)})


async def body_of(rpc: RpcClient, addr: str) -> dict | None:
    try:
        return (await rpc.call(addr, ExecutionStatusRequest(), timeout=2.0)).body
    except RpcError:
        return None


async def poll(what: str, predicate, timeout: float = 30.0):
    with trio.fail_after(timeout):
        while True:
            got = await predicate()
            if got:
                return got
            await trio.sleep(0.05)


@pytest.mark.cluster
async def test_timed_out_and_canceled_on_the_wire(tmp_path):
    """Three store processes (queue limit 1); the leader's followers are stopped (SIGSTOP) and
    its ticks stretched (so it keeps leading): one write stays in flight. A second write with
    a 1 s deadline is answered rejected/TIMED_OUT, with the reason on the wire, before the
    client's deadline; a third, cancelled by its client while it waits, is WRITE/CANCELED in
    the store's ExecutionStatus."""
    procs: dict[int, subprocess.Popen] = {}
    ports = free_ports(3)
    addrs = {sid: f"127.0.0.1:{ports[sid - 1]}" for sid in (1, 2, 3)}
    rpc = RpcClient(Identity("nokv", "admin", 99))  # failpoints are an operator's RPC
    try:
        async with trio.open_nursery() as nursery:
            coord = await nursery.start(FakeCoordinator(3).serve)
            for sid in (1, 2, 3):
                procs[sid] = start_store(sid, ports[sid - 1], coord, tmp_path / f"s{sid}",
                                         tmp_path / f"s{sid}.log", queue_limit=1)

            async def a_leader():
                for sid, addr in addrs.items():
                    body = await body_of(rpc, addr)
                    if body and body["leader_count"] == 1:
                        return sid
                return None

            leader = await poll("a leader", a_leader)
            addr = addrs[leader]
            ctx = KvContext(1, EPOCH, leader)
            await rpc.call(addr, PutRequest(ctx, b"warm", b"up"), timeout=10.0)
            # keep leading without a quorum (no check-quorum step-down for 100 elections)
            await rpc.call(addr, FailpointSetRequest("driver.tick", "return(100)"), timeout=5.0)
            for sid, p in procs.items():
                if sid != leader:
                    p.send_signal(signal.SIGSTOP)
            first: dict = {}

            async def held_write():
                try:
                    first["reply"] = await rpc.call(addr, PutRequest(ctx, b"k1", b"v"),
                                                    timeout=60.0)
                except RpcError as exc:
                    first["error"] = exc

            nursery.start_soon(held_write)

            async def in_flight():
                body = await body_of(rpc, addr)
                return body and body["queue_depths"].get("1") == 1

            await poll("the first write in flight", in_flight)
            t0 = trio.current_time()
            with pytest.raises(RemoteError) as refused:
                await rpc.call(addr, PutRequest(ctx, b"k2", b"v"), timeout=1.0)
            waited = trio.current_time() - t0
            exc = refused.value
            assert (exc.kind, exc.reason) == ("rejected", "TIMED_OUT"), exc
            assert "behind 1 proposals in flight on region 1" in exc.message, exc.message
            assert exc.details["admission"].reason == R.TIMED_OUT
            assert waited < 1.0, waited

            async def cancelled_write():
                with trio.CancelScope() as scope:
                    cancel_scopes.append(scope)
                    await rpc.call(addr, PutRequest(ctx, b"k3", b"v"), timeout=30.0)

            cancel_scopes: list[trio.CancelScope] = []
            nursery.start_soon(cancelled_write)

            async def waiting():
                body = await body_of(rpc, addr)
                return body and body["queue_waiters"].get("1") == 1

            await poll("the third write waiting for a slot", waiting)
            cancel_scopes[0].cancel()  # the client sends Cancel for it

            async def canceled():
                body = await body_of(rpc, addr)
                return body if body and body["admissions"].get("WRITE/CANCELED") else None

            body = await poll("WRITE/CANCELED in the store's admissions", canceled)
            assert body["admissions"]["WRITE/TIMED_OUT"] == 1
            assert body["last_admission"]["WRITE"]["reason"] == "CANCELED"
            assert body["queue_waiters"] == {} and body["queue_limit"] == 1
            assert not first, first  # the first write is still held
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await rpc.aclose()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(10)

