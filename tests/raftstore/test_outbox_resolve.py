"""The operator path of the publish outbox (raftstore.outbox, `OutboxRequest`): a blocked
(TERMINAL_BLOCKED) entry is listed, retried or resolved; a resolution removes the blocked entry
and queues its rooted RecoveryRecord in the same local write; bad requests are refused
INVALID and change nothing; the store's current state is READY again once the outbox and the
blocked table are empty. Real LMDB, a real Store and its Topology runtime; the coordinator
link is a fake that accepts or refuses publishes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio

from nokvpy import failpoints
from nokvpy.protocol import (
    EventKind,
    PeerMeta,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
    TopologyStage,
)
from nokvpy.protocol.raftstore_cmds import OutboxEntry
from nokvpy.protocol.store_rpc import OutboxReply, OutboxRequest
from nokvpy.rpc import Identity, RemoteError, RpcClient
from nokvpy.storage import Env, StorageFailedError, WriteBatch
from nokvpy.wire import decode, encode
from raftstore.restart import derive, load_image
from raftstore.store import Store, StoreConfig
from raftstore.topology.service import Topology

S = TopologyStage
TID = "split:1:6d"
PEERS = (PeerMeta(1, 101), PeerMeta(2, 102), PeerMeta(3, 103))


class FakeLink:
    """The coordinator link: refuses every publish permanently until `accept` is set."""

    def __init__(self):
        self.accept = False
        self.published: list[RootEvent] = []

    async def call(self, req):
        if not self.accept:
            raise RemoteError("invalid_argument", "refused_by_test", "root says no",
                              {"retry_class": "PERMANENT"})
        self.published.append(req.event)
        return SimpleNamespace(accepted=True)


def split_event() -> RootEvent:
    base = RegionDescriptor(1, b"", b"", RegionEpoch(1, 1), PEERS)
    left = RegionDescriptor(1, b"", b"m", RegionEpoch(2, 1), PEERS)
    right = RegionDescriptor(2, b"m", b"", RegionEpoch(2, 1), PEERS)
    return RootEvent(EventKind.SPLIT_COMMITTED, RangeSplit(1, b"m", left, right, base),
                     f"terminal:{TID}")


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "store")
    try:
        yield e
    finally:
        failpoints.clear_all()
        e.close()


def make_store(env) -> tuple[Store, Topology, FakeLink]:
    store = Store(StoreConfig(1, "nokv", "127.0.0.1:1"), env,
                  RpcClient(Identity("nokv", "store", 1)))
    link = FakeLink()
    topo = Topology(store, link)
    store.restart = derive(load_image(store.meta, store.raftlog))
    return store, topo, link


async def block_one(store: Store, topo: Topology) -> int:
    """A terminal event the (refusing) link blocks: its blocked seq."""
    topo.lifecycle.track(TID, 1, "split", "executor", S.APPLIED, "applied here")
    topo.lifecycle.move(TID, S.TERMINAL_PENDING, "terminal queued")
    await topo.publisher.enqueue(OutboxEntry(TID, split_event(), "primary", "terminal", 1))
    await topo.publisher.drain_once()
    blocked = store.meta.blocked()
    assert len(blocked) == 1 and not store.meta.outbox()
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_BLOCKED
    return blocked[0].seq


async def call(store: Store, *args) -> OutboxReply:
    return await store.on_outbox(OutboxRequest(*args), None)


def tables(store: Store):
    return store.meta.outbox(), store.meta.blocked()


async def test_list_shows_the_blocked_entry_and_the_store_is_degraded(env):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    reply = await call(store, "list")
    assert reply.detail == "" and reply.body["store_id"] == 1
    (b,) = reply.body["blocked"]
    assert (b["seq"], b["transition_id"], b["event"], b["purpose"], b["role"]) == (
        seq, TID, "SPLIT_COMMITTED", "terminal", "primary")
    assert "root says no" in b["error"]
    assert reply.body["pending"] == []
    assert reply.body["current_state"]["state"] == "DEGRADED"
    assert "1 blocked event(s)" in reply.body["current_state"]["reasons"]
    assert store.current_state().kind.name == "DEGRADED"


@pytest.mark.parametrize("args, words", [
    (("retry", 99), "no blocked outbox entry with seq 99"),
    (("resolve", 99, "published", "why"), "no blocked outbox entry with seq 99"),
    (("resolve", None, "sideways", "why"), "unknown resolution 'sideways'"),
    (("resolve", None, "published", "  "), "needs a reason"),
    (("resolve", None, "abandoned", ""), "needs a reason"),
    (("purge", None), "unknown outbox action 'purge'"),
])
async def test_bad_requests_are_refused_invalid_and_change_nothing(env, args, words):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    args = tuple(seq if a is None else a for a in args)
    before = tables(store)
    with pytest.raises(RemoteError) as refused:
        await call(store, *args)
    assert (refused.value.kind, refused.value.reason) == ("rejected", "INVALID")
    assert words in refused.value.message
    assert refused.value.details["admission"].reason.name == "INVALID"
    assert tables(store) == before
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_BLOCKED


async def test_a_pending_entry_is_not_an_operator_target(env):
    store, topo, link = make_store(env)
    link.accept = False
    seq = await topo.publisher.enqueue(OutboxEntry("split:9:aa", split_event(), "backup",
                                                   "terminal", 9))
    with pytest.raises(RemoteError) as refused:
        await call(store, "resolve", seq, "abandoned", "no")
    assert "is pending, not blocked" in refused.value.message
    assert [s for s, _ in store.meta.outbox()] == [seq]


async def test_resolve_published_records_it_in_root_and_the_store_is_ready_again(env):
    store, topo, link = make_store(env)
    seq = await block_one(store, topo)
    reply = await call(store, "resolve", seq, "published", "root already has it: checked")
    assert f"blocked entry {seq} resolved as published" in reply.detail
    assert reply.body["blocked"] == []
    # the blocked entry is gone and its recovery record is queued, in one write
    outbox, blocked = tables(store)
    assert blocked == [] and len(outbox) == 1
    entry = decode(outbox[0][1])
    assert (entry.transition_id, entry.purpose, entry.region_id) == (TID, "recovery", 1)
    rec = entry.event.payload
    assert entry.event.kind == EventKind.RECOVERY_RECORDED and isinstance(rec, RecoveryRecord)
    assert rec.transition_id == TID and rec.action == "operator_resolved_published"
    assert "root says no" in rec.failure_evidence
    assert "SPLIT_COMMITTED" in rec.remained and "root already has it: checked" in rec.remained
    assert entry.event.request_id == f"recovery:{TID}:operator_resolved_published:1:blocked-{seq}"
    # the lifecycle left TERMINAL_BLOCKED, with the decision in its history
    tracked = topo.lifecycle.get(TID)
    assert tracked.stage == S.TERMINAL_PUBLISHED and tracked.publish_state.name == "PUBLISHED"
    assert "operator resolved" in tracked.history[-1][2]
    assert "root says no" in tracked.last_error  # the evidence stays
    # still DEGRADED while the record waits in the outbox; READY once it is rooted
    assert reply.body["current_state"]["state"] == "DEGRADED"
    link.accept = True
    await topo.publisher.drain_once()
    assert [e.kind for e in link.published] == [EventKind.RECOVERY_RECORDED]
    assert tables(store) == ([], [])
    state = store.current_state()  # level-triggered: no 1 s cache hides the change
    assert state.kind.name == "READY", state
    assert (store.outbox_backlog, store.blocked_events) == (0, 0)
    assert (await call(store, "list")).body["current_state"]["state"] == "READY"


async def test_resolve_abandoned_says_what_was_dropped(env):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    await call(store, "resolve", seq, "abandoned", "plan superseded, do not publish")
    (_, raw), = store.meta.outbox()
    rec = decode(raw).event.payload
    assert rec.action == "operator_abandoned"
    assert "SPLIT_COMMITTED" in rec.undone and "plan superseded" in rec.undone
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_PUBLISHED
    assert "abandoned" in topo.lifecycle.get(TID).history[-1][2]


async def test_retry_puts_it_back_and_the_publisher_publishes_it(env):
    store, topo, link = make_store(env)
    seq = await block_one(store, topo)
    reply = await call(store, "retry", seq)
    outbox, blocked = tables(store)
    assert blocked == [] and len(outbox) == 1
    new_seq, raw = outbox[0]
    assert new_seq > seq and f"moved back into the outbox as entry {new_seq}" in reply.detail
    assert decode(raw) == OutboxEntry(TID, split_event(), "primary", "terminal", 1)
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_PENDING
    assert reply.body["pending"][0]["seq"] == new_seq
    # the cause is fixed: it goes to root and the store is READY
    link.accept = True
    await topo.publisher.drain_once()
    assert [e.kind for e in link.published] == [EventKind.SPLIT_COMMITTED]
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_PUBLISHED
    assert store.current_state().kind.name == "READY"


async def test_retry_while_the_cause_remains_blocks_it_again(env):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    await call(store, "retry", seq)
    await topo.publisher.drain_once()
    (b,) = store.meta.blocked()
    assert b.seq > seq and topo.lifecycle.get(TID).stage == S.TERMINAL_BLOCKED


async def test_an_undecodable_entry_can_only_be_abandoned(env):
    store, topo, _ = make_store(env)
    batch = WriteBatch()
    seq = store.meta.stage_outbox_append(batch, b"\x93garbage")
    await env.commit(batch)
    await topo.publisher.drain_once()
    assert [b.seq for b in store.meta.blocked()] == [seq]
    with pytest.raises(RemoteError) as refused:
        await call(store, "retry", seq)
    assert "does not decode" in refused.value.message
    await call(store, "resolve", seq, "abandoned", "corrupt entry")
    (_, raw), = store.meta.outbox()
    rec = decode(raw).event.payload
    assert rec.transition_id == "" and f"blocked outbox entry {seq} of store 1" in rec.undone


async def test_the_removal_and_the_record_are_one_write(env):
    """A failed commit leaves both tables as they were: never a removed entry without its
    record, nor a record with the entry still blocked."""
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    before = tables(store)
    failpoints.set("storage.before_commit", "raise")
    with pytest.raises(StorageFailedError):
        await topo.publisher.resolve_blocked(seq, "published", "x")
    failpoints.clear_all()
    assert tables(store) == before
    assert topo.lifecycle.get(TID).stage == S.TERMINAL_BLOCKED


async def test_a_restart_after_resolve_finds_only_the_queued_record(env):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    await call(store, "resolve", seq, "published", "ok")
    state = derive(load_image(store.meta, store.raftlog))
    assert (state.kind.name, state.outbox_backlog, state.blocked_events) == ("DEGRADED", 1, 0)
    # a new runtime on the same data tracks nothing as blocked
    store2, topo2, _ = make_store(env)
    topo2.publisher.restore()
    assert topo2.lifecycle.get(TID) is None


async def test_concurrent_resolves_of_one_entry_record_it_once(env):
    store, topo, _ = make_store(env)
    seq = await block_one(store, topo)
    results: list[object] = []

    async def resolve():
        try:
            results.append(await topo.publisher.resolve_blocked(seq, "published", "twice"))
        except Exception as exc:  # noqa: BLE001 - the loser's refusal is the point
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(resolve)
        nursery.start_soon(resolve)
    assert sum(isinstance(r, str) for r in results) == 1
    assert len(store.meta.outbox()) == 1 and store.meta.blocked() == []


def test_outbox_records_round_trip():
    for rec in (OutboxRequest("resolve", 3, "published", "why"), OutboxRequest("list"),
                OutboxReply("list", "", {"blocked": [], "pending": [{"seq": 1}]})):
        assert decode(encode(rec)) == rec
