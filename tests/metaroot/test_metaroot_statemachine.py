"""RootStateMachine on a real LMDB environment, without raft: what the ready loop hands it.

Checks the apply contract the driver relies on: a committed entry never raises (a poison
entry would crash every peer, and again on every restart), refusals change nothing, entries
applied in the same Ready as a snapshot build on the snapshot, and a reload from disk
(checkpoint + retained tail) equals the live state.
"""

from __future__ import annotations

import trio
from metaroot_procs import joined

from metaroot import rootlog
from metaroot.service import Rejection, RootStateMachine
from metaroot.state import RootState
from nokvpy.protocol import AllocatorFence, AllocatorKind, EventKind, RootEvent, RootToken
from nokvpy.protocol.metaroot_rpc import AppendReply, AppendRequest, FenceAllocatorRequest
from nokvpy.raft.types import Entry, Snapshot, SnapshotMetadata
from nokvpy.storage import Env, WriteBatch
from nokvpy.storage.schema import RAFT_DBS
from nokvpy.wire import encode


def open_env(path) -> Env:
    return Env.open(str(path), dbs=RAFT_DBS + rootlog.ROOT_DBS)


async def apply(sm: RootStateMachine, env: Env, entries: list[Entry],
                snapshot: Snapshot | None = None) -> list:
    batch = WriteBatch()
    if snapshot is not None:
        sm.stage_restore(batch, snapshot)
    results = sm.stage_apply(batch, entries) if entries else []
    await env.commit(batch)
    if entries:
        sm.after_commit(entries, results)
    return results


def entry(index: int, record, term: int = 1) -> Entry:
    return Entry(term, index, data=encode(record))


async def test_refusals_never_raise_and_change_nothing(tmp_path):
    env = open_env(tmp_path / "a")
    try:
        sm = RootStateMachine(env, retained_tail=32)
        ok = await apply(sm, env, [entry(1, AppendRequest([joined(1, "r1")]))])
        assert isinstance(ok[0], AppendReply) and sm.state.token.index == 1
        before = sm.state.to_checkpoint()
        poison = [
            entry(2, AppendRequest([joined(2, "r1")])),  # request id reused: mismatch
            entry(3, AppendRequest([joined(1, "r1"), joined(3, "r3")])),  # partial duplicate
            entry(4, FenceAllocatorRequest(AllocatorKind.ID, "x")),  # type error at apply
            entry(5, FenceAllocatorRequest(9, 10)),  # unknown allocator
            entry(6, AppendRequest([RootEvent(EventKind.ID_ALLOCATOR_FENCED,
                                              AllocatorFence(AllocatorKind.ID, "y"))])),
            Entry(1, 7, data=b"\xc1garbage"),  # undecodable
        ]
        results = await apply(sm, env, poison)
        assert all(isinstance(r, Rejection) for r in results), results
        assert [r.reason for r in results[:2]] == ["request_id_mismatch", "partial_duplicate"]
        assert sm.state.to_checkpoint() == before and sm.applied_index() == 7
        # any other exception inside apply (a bug) refuses the entry instead of raising
        real = sm._apply_command

        def broken(batch, state, term, cmd):
            raise RuntimeError("bug")

        sm._apply_command = broken
        results = await apply(sm, env, [entry(8, AppendRequest([joined(5, "r5")]))])
        assert results[0].reason == "unappliable"
        sm._apply_command = real
        assert sm.state.to_checkpoint() == before and sm.applied_index() == 8
        # still applying after the poison
        ok = await apply(sm, env, [entry(9, AppendRequest([joined(3, "r3")]))])
        assert ok[0].first_token == RootToken(1, 2)
    finally:
        env.close()


async def test_entries_in_the_same_ready_as_a_snapshot_build_on_it(tmp_path):
    # a snapshot of a state with 40 events, taken at raft index 50
    leader = RootState()
    for i in range(40):
        leader = leader.apply(RootToken(2, i + 1), joined(i + 1, f"s{i}"))
    snap = Snapshot(SnapshotMetadata(index=50, term=2), encode(leader.to_checkpoint()))
    env = open_env(tmp_path / "b")
    try:
        sm = RootStateMachine(env, retained_tail=32)
        await apply(sm, env, [entry(1, AppendRequest([joined(999, "old")]), term=1)])
        res = await apply(sm, env, [entry(51, AppendRequest([joined(41, "s40")]), term=2)],
                          snapshot=snap)
        assert res[0].first_token == RootToken(2, 41)
        expect = leader.apply(RootToken(2, 41), joined(41, "s40"))
        assert sm.state.to_checkpoint() == expect.to_checkpoint()
        assert sm.applied_index() == 51 and sm.first_retained == 41
        # a restart reads the same state back (checkpoint at 40 + tail event 41)
        env.close()
        env = open_env(tmp_path / "b")
        again = RootStateMachine(env, retained_tail=32)
        assert again.state.to_checkpoint() == expect.to_checkpoint()
        assert again.applied_index() == 51
    finally:
        env.close()


async def test_reload_from_checkpoint_and_tail_equals_live_state(tmp_path):
    env = open_env(tmp_path / "c")
    try:
        sm = RootStateMachine(env, retained_tail=16)
        for i in range(1, 121):
            await apply(sm, env, [entry(i, AppendRequest([joined(i, f"t{i}")]))])
            await trio.sleep(0)
        assert sm.checkpoints >= 3 and sm.first_retained > 1
        assert [ce.token.index for ce in rootlog.events_after(env, sm.first_retained - 1, 100)] \
            == list(range(sm.first_retained, 121))
        live = sm.state.to_checkpoint()
        env.close()
        env = open_env(tmp_path / "c")
        again = RootStateMachine(env, retained_tail=16)
        assert again.state.to_checkpoint() == live
        assert (again.applied_index(), again.first_retained) == (120, sm.first_retained)
    finally:
        env.close()
