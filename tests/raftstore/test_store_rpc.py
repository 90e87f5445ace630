"""Store RPCs over real loopback sockets: KV operations, read modes, refusals with their
admission hints, outcome-unknown writes, ExecutionStatus, failpoints, tombstones, gating."""

from __future__ import annotations

import trio
from fake_coordinator import TOKEN
from store_cluster import InProcCluster

from nokvpy import failpoints
from nokvpy.protocol import AdmissionReason, PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.admin import FailpointClearRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import StoreHeartbeatReply
from nokvpy.protocol.store_rpc import (
    MAX_VALUE_SIZE,
    ExecutionStatusReply,
    ExecutionStatusRequest,
    GetRequest,
    KvContext,
    PutRequest,
    ReadMode,
    ScanRequest,
)
from nokvpy.raft import Message, MessageType
from nokvpy.rpc import Identity, RemoteError, RpcClient
from nokvpy.wire import RaftEnvelope
from raftstore.store import Store

R = AdmissionReason
EPOCH = RegionEpoch(1, 1)


class Ctx:
    def __init__(self, deadline: float = float("inf")):
        self.deadline = deadline


def kctx(store: Store, **kw) -> KvContext:
    return KvContext(1, kw.pop("epoch", EPOCH), kw.pop("store_id", store.store_id), **kw)


async def call_rejected(rpc, store: Store, req) -> RemoteError:
    try:
        await rpc.call(store.cfg.address, req, timeout=5)
    except RemoteError as exc:
        assert exc.kind == "rejected", exc
        assert exc.details["admission"].reason.name == exc.reason
        return exc
    raise AssertionError(f"{req} was not refused")


def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, bool | int | str)


async def test_kv_operations_and_read_modes(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        follower = next(s for s in cluster.live() if s is not leader)
        async with cluster.client() as client:
            for i in range(10):
                await client.put(b"k%d" % i, b"v%d" % i)
            await client.delete(b"k3")
            assert await client.get(b"k3") is None
            assert await client.compare_and_swap(b"k1", b"v1", b"w1") == (True, None)
            assert await client.compare_and_swap(b"k1", b"v1", b"x") == (False, b"w1")
            assert await client.compare_and_swap(b"new", None, b"n") == (True, None)
            assert await client.compare_and_swap(b"k2", b"v2", None) == (True, None)
            assert await client.get(b"k2") is None
            pairs = await client.scan(b"k", b"l", limit=100)
            assert [k for k, _ in pairs] == [b"k0", b"k1", b"k4", b"k5", b"k6", b"k7", b"k8",
                                             b"k9"]
            index = await client.put(b"last", b"1")
        rpc = RpcClient(Identity("nokv", "client", 7))
        # scan on the leader: limit and `more`
        reply = await rpc.call(leader.cfg.address, ScanRequest(kctx(leader), b"k", b"", 3), 5)
        assert [k for k, _ in reply.pairs] == [b"k0", b"k1", b"k4"] and reply.more
        # follower read index: served by the follower once it applied the leader's commit
        reply = await rpc.call(follower.cfg.address,
                               GetRequest(kctx(follower, read_mode=ReadMode.FOLLOWER), b"last"),
                               5)
        assert reply.value == b"1" and reply.read_index >= index
        # bounded-stale read within budget reports its staleness
        with trio.fail_after(5):
            while follower.peers[1].sm.applied < index:
                await trio.sleep(0.01)
        reply = await rpc.call(follower.cfg.address, GetRequest(
            kctx(follower, read_mode=ReadMode.BOUNDED_STALE, max_stale_index=1000,
                 max_stale_ms=60_000), b"last"), 5)
        assert reply.value == b"1" and reply.stale_by_index >= 0 and reply.stale_by_ms >= 0
        # a linearizable read on a follower is refused with the leader as hint
        exc = await call_rejected(rpc, follower, GetRequest(kctx(follower), b"last"))
        adm = exc.details["admission"]
        assert exc.reason == "NOT_LEADER" and adm.leader_store_id == leader.store_id
        await rpc.aclose()
        nursery.cancel_scope.cancel()


async def test_refusals_carry_reasons_and_hints(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        follower = next(s for s in cluster.live() if s is not leader)
        with trio.fail_after(5):
            while follower.peers[1].leader_peer_id != 100 + leader.store_id:
                await trio.sleep(0.01)
        rpc = RpcClient(Identity("nokv", "client", 7))
        exc = await call_rejected(rpc, follower, PutRequest(kctx(follower), b"a", b"1"))
        assert exc.reason == "NOT_LEADER"
        assert exc.details["admission"].leader_peer_id == 100 + leader.store_id
        exc = await call_rejected(rpc, leader, PutRequest(kctx(leader, store_id=9), b"a", b"1"))
        assert exc.reason == "STORE_NOT_MATCH"
        exc = await call_rejected(rpc, leader, PutRequest(
            KvContext(5, EPOCH, leader.store_id), b"a", b"1"))
        assert exc.reason == "NOT_HOSTED"
        exc = await call_rejected(rpc, leader, PutRequest(
            kctx(leader, epoch=RegionEpoch(0, 1)), b"a", b"1"))
        adm = exc.details["admission"]
        assert exc.reason == "EPOCH_MISMATCH" and adm.current_epoch == EPOCH
        assert adm.descriptor == cluster.coord.region
        for req in (PutRequest(kctx(leader), b"", b"1"),
                    PutRequest(kctx(leader), b"a", b"x" * (MAX_VALUE_SIZE + 1)),
                    PutRequest(kctx(leader, read_mode=ReadMode.FOLLOWER), b"a", b"1")):
            assert (await call_rejected(rpc, leader, req)).reason == "INVALID"
        body = (await rpc.call(leader.cfg.address, ExecutionStatusRequest(), 5)).body
        assert body["last_admission"]["WRITE"]["reason"] == "INVALID"
        assert body["admissions"]["WRITE/EPOCH_MISMATCH"] == 1
        await rpc.aclose()
        nursery.cancel_scope.cancel()


async def test_without_quorum_writes_are_unknown_and_reads_refused(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put(b"k", b"v")
        for s in list(cluster.live()):
            if s is not leader:
                await cluster.kill(s.store_id)
        # proposed on a leader that can no longer commit: the deadline passes, outcome unknown
        try:
            await leader.on_put(PutRequest(kctx(leader), b"k", b"w"),
                                Ctx(trio.current_time() + 0.1))
        except RemoteError as exc:
            assert (exc.kind, exc.reason) == ("timeout", "outcome_unknown"), exc
        else:
            raise AssertionError("a write without quorum succeeded")
        body = leader.status()
        assert body["outcomes"]["FAILED"] >= 1
        # check-quorum makes it step down: reads and writes are refused, bounded-stale reads
        # are refused once the leader contact is older than the budget
        with trio.fail_after(10):
            while leader.peers[1].is_leader:
                await trio.sleep(0.02)
        await trio.sleep(0.3)
        for mode, reason in ((ReadMode.LINEARIZABLE, R.NOT_LEADER), (ReadMode.FOLLOWER, R.STALE)):
            try:
                await leader.on_get(GetRequest(kctx(leader, read_mode=mode), b"k"), Ctx())
            except RemoteError as exc:
                assert exc.reason == reason.name, exc
            else:
                raise AssertionError(mode)
        stale = kctx(leader, read_mode=ReadMode.BOUNDED_STALE, max_stale_ms=200)
        try:
            await leader.on_get(GetRequest(stale, b"k"), Ctx())
        except RemoteError as exc:
            assert exc.reason == "STALE" and "last heard from its leader" in exc.message
        else:
            raise AssertionError("stale read served")
        reply = await leader.on_get(GetRequest(kctx(leader, read_mode=ReadMode.BOUNDED_STALE),
                                               b"k"), Ctx())
        assert reply.value == b"v" and reply.stale_by_ms >= 200
        nursery.cancel_scope.cancel()


async def test_execution_status_and_failpoints(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        rpc = RpcClient(Identity("nokv", "client", 7))
        names = ["store.before_persist", "store.after_persist_before_send",
                 "store.before_apply", "store.after_apply"]
        try:
            for name in names:
                await rpc.call(leader.cfg.address, FailpointSetRequest(name, "sleep(0)"), 5)
            async with cluster.client() as client:
                await client.put(b"fp", b"1")
            with trio.fail_after(10):  # the ack may precede the apply batch's fsync
                while not all(failpoints.hits().get(n, 0) > 0 for n in names):
                    await trio.sleep(0.01)
        finally:
            await rpc.call(leader.cfg.address, FailpointClearRequest(""), 5)
        reply = await rpc.call(leader.cfg.address, ExecutionStatusRequest(), 5)
        assert isinstance(reply, ExecutionStatusReply)
        body = reply.body
        assert plain(body), body
        assert body["store_id"] == leader.store_id and body["region_count"] == 1
        assert body["leader_count"] == 1
        rs = body["restart_state"]
        assert rs["state"] == "READY" and rs["outbox_backlog"] == 0 and "needs" in rs
        assert body["outcomes"]["APPLIED"] >= 1 and body["last_admission"]["WRITE"]["reason"] \
            == "ACCEPTED"
        for key in ("queue_depths", "drops", "transitions", "outbox", "counters"):
            assert key in body
        wal = body["storage"]["wal"]  # the raft log's WAL: one fsync per persisted turn
        assert wal["fsyncs"] >= 1 and wal["frames"] >= wal["fsyncs"] and wal["segments"] == 1
        assert wal["torn_bytes"] == 0 and body["storage"]["lmdb"]["transactions"] >= 1
        await rpc.aclose()
        nursery.cancel_scope.cancel()


async def test_raft_gate_counts_every_drop(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        s = next(x for x in cluster.live() if x is not leader)
        with trio.fail_after(5):
            while 1 not in s.peers or not s.peers[1].initialized:
                await trio.sleep(0.01)
        me = s.store_id
        hb = Message(MessageType.HEARTBEAT, to=100 + me, frm=999, term=1)
        s.on_envelope(RaftEnvelope(1, 9, me + 1, 1, 1, hb))
        assert s.drops["wrong_store"] == 1
        s.on_envelope(RaftEnvelope(77, 9, me, 1, 1, Message(MessageType.VOTE, to=5, frm=6)))
        assert s.drops["unknown_region"] == 1 and 77 not in s.peers
        s.on_envelope(RaftEnvelope(1, 9, me, 0, 1, hb))  # stale epoch from a non-member
        assert s.drops["stale_epoch"] == 1
        s.on_envelope(RaftEnvelope(1, 9, me, 1, 1, Message(MessageType.HEARTBEAT, to=555)))
        assert s.drops["wrong_peer"] == 1
        nursery.cancel_scope.cancel()


async def test_tombstoned_region_is_removed_and_stays_removed(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put(b"t", b"1")
        cluster.coord.tombstoned.append(1)
        with trio.fail_after(10):
            while any(s.counters["regions_destroyed"] < 1 for s in cluster.live()):
                await trio.sleep(0.02)
        assert all(1 not in s.peers for s in cluster.live())
        s1 = cluster.store(1)
        assert s1.kv.get(b"t") is None and 1 in s1.tombstones
        assert s1.meta.region(1) is None and s1.meta.tombstone(1) is not None
        s1.on_envelope(RaftEnvelope(1, 2, 1, 1, 1, Message(MessageType.HEARTBEAT, to=101,
                                                           frm=102, term=5)))
        assert s1.drops["tombstoned"] >= 1 and 1 not in s1.peers
        await cluster.kill(1)
        cluster.coord.tombstoned.clear()  # even if the coordinator forgot, it never comes back
        s1 = await cluster.start_store(1)
        assert 1 not in s1.peers and 1 in s1.tombstones
        await trio.sleep(0.5)
        assert 1 not in s1.peers
        nursery.cancel_scope.cancel()


async def test_full_cluster_restart_reelects_and_keeps_data(tmp_path):
    """Every store restarts from its data dir: membership comes back from the persisted conf
    state, so the group elects a leader again and serves what it stored."""
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            for i in range(20):
                await client.put(b"r%02d" % i, b"%d" % i)
        for sid in (1, 2, 3):
            await cluster.kill(sid)
        for sid in (1, 2, 3):
            await cluster.start_store(sid)
        await cluster.wait_leader()
        async with cluster.client() as client:
            got = await client.batch_get([b"r%02d" % i for i in range(20)])
            assert got == {b"r%02d" % i: b"%d" % i for i in range(20)}
            await client.put(b"after", b"restart")
            assert await client.get(b"after") == b"restart"
        nursery.cancel_scope.cancel()


async def test_stray_message_peer_is_dropped_when_abandoned(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path, options={"uninitialized_gc_after": 0.6})
        await cluster.start()
        await cluster.wait_leader()
        s1 = cluster.store(1)
        created = s1.counters["peers_created_by_message"]
        hb = Message(MessageType.HEARTBEAT, to=4201, frm=4202, term=3)
        s1.on_envelope(RaftEnvelope(42, 2, 1, 1, 1, hb))
        assert 42 in s1.peers and not s1.peers[42].initialized
        assert s1.counters["peers_created_by_message"] == created + 1
        # it cannot serve
        try:
            await s1.on_get(GetRequest(KvContext(42, EPOCH, 1), b"k"), Ctx())
        except RemoteError as exc:
            assert exc.reason == "NOT_HOSTED"
        with trio.fail_after(10):
            while 42 in s1.peers or s1.counters["uninitialized_dropped"] < 1:
                await trio.sleep(0.05)
        assert s1.counters["uninitialized_dropped"] == 1 and 42 not in s1.tombstones
        nursery.cancel_scope.cancel()


async def test_queue_saturation_is_refused_and_the_client_backs_off(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path, options={"queue_limit": 2})
        await cluster.start()
        leader = await cluster.wait_leader()
        results: list[str] = []

        async def put(i: int) -> None:
            try:
                await leader.on_put(PutRequest(kctx(leader), b"q%d" % i, b"v"), Ctx())
                results.append("ok")
            except RemoteError as exc:
                results.append(exc.reason)

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(put, i)
        assert results.count("QUEUE_SATURATED") >= 1 and results.count("ok") >= 2
        assert set(results) <= {"ok", "QUEUE_SATURATED"}
        assert leader.status()["admissions"]["WRITE/QUEUE_SATURATED"] >= 1
        async with cluster.client() as client:
            async with trio.open_nursery() as n:
                for i in range(20):
                    n.start_soon(client.put, b"c%d" % i, b"v")
            got = await client.batch_get([b"c%d" % i for i in range(20)])
            assert all(v == b"v" for v in got.values())
        nursery.cancel_scope.cancel()


async def test_test_only_unsafe_ack_acknowledges_without_quorum(tmp_path):
    """The deliberately broken mode jepsen-lite must catch really is broken."""
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path, options={"unsafe_ack": True,
                                                           "unsafe_reads": True})
        await cluster.start()
        leader = await cluster.wait_leader()
        for s in list(cluster.live()):
            if s is not leader:
                await cluster.kill(s.store_id)
        with trio.fail_after(1):
            reply = await leader.on_put(PutRequest(kctx(leader), b"k", b"lost"), Ctx())
        assert reply.succeeded  # acknowledged, yet it can never commit
        nursery.cancel_scope.cancel()


async def test_a_peer_of_a_split_region_waits_for_its_snapshot_not_the_catalog(tmp_path):
    """A store paused through a split hears the child region's leader (creating peer 11,
    uninitialized) and the coordinator's should_host for it before its own parent replica
    has applied the split. The child's log does not start at index 1 (it began at the split
    with the parent's data), so the peer is not built from the catalog's descriptor: that
    made it "initialized" with no data at applied 0, whose range then kept out the snapshot
    of the next child (and that child's the other way), and neither region recovered.
    It stays uninitialized until a snapshot (or the local split) initializes it."""
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        s = cluster.store(1)
        hb = Message(MessageType.HEARTBEAT, to=11, frm=13, term=6)
        s.on_envelope(RaftEnvelope(10, 3, 1, 3, 3, hb))
        assert 10 in s.peers and not s.peers[10].initialized
        child = RegionDescriptor(10, b"k/065", b"k/096", RegionEpoch(3, 3),
                                 (PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 13)))
        reply = StoreHeartbeatReply(True, [child], [], [], {}, TOKEN)
        await s.on_heartbeat_reply(reply)
        assert not s.peers[10].initialized and s.meta.region(10) is None
        assert s.counters["adopt_refused_epoch_changed"] == 1
        # nor after a membership change: old conf changes do not apply to today's descriptor
        moved = RegionDescriptor(40, b"y", b"z", RegionEpoch(1, 2),
                                 (PeerMeta(1, 41), PeerMeta(2, 42), PeerMeta(3, 43)))
        s.on_envelope(RaftEnvelope(40, 3, 1, 1, 2, Message(MessageType.HEARTBEAT, to=41,
                                                           frm=43, term=2)))
        await s.on_heartbeat_reply(StoreHeartbeatReply(True, [moved], [], [], {}, TOKEN))
        assert not s.peers[40].initialized
        assert s.counters["adopt_refused_epoch_changed"] == 2
        # a region still at its founding epoch replays its log from index 1: it adopts
        fresh = RegionDescriptor(30, b"x", b"y", RegionEpoch(1, 1),
                                 (PeerMeta(1, 31), PeerMeta(2, 32), PeerMeta(3, 33)))
        s.on_envelope(RaftEnvelope(30, 3, 1, 1, 1, Message(MessageType.HEARTBEAT, to=31,
                                                           frm=33, term=2)))
        await s.on_heartbeat_reply(StoreHeartbeatReply(True, [fresh], [], [], {}, TOKEN))
        assert s.peers[30].initialized and s.peers[30].descriptor == fresh
        nursery.cancel_scope.cancel()
