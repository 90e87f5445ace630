"""The KV state machine: in-batch overlay, idempotent replay after a crash, apply-time epoch
and range checks, snapshots, scans."""

from __future__ import annotations

import pytest

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.raftstore_cmds import KvCommand, KvOp, KvOpKind, KvResult
from nokvpy.raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMetadata
from nokvpy.storage import KV, Env, LocalMeta, RaftLogStore, ReplayPointer, WriteBatch
from nokvpy.wire import encode
from raftstore.apply import RegionStateMachine

EPOCH = RegionEpoch(1, 1)
DESC = RegionDescriptor(1, b"b", b"y", EPOCH, (PeerMeta(1, 101),))
PUT, DEL, CAS = KvOpKind.PUT, KvOpKind.DELETE, KvOpKind.CAS


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "db", map_size=1 << 22)
    try:
        yield e
    finally:
        e.close()


def make_sm(env, desc=DESC, ptr: ReplayPointer | None = None):
    meta = LocalMeta(env)
    ptr = ptr or meta.replay_pointer(desc.region_id) or ReplayPointer(0, 0)
    return RegionStateMachine(desc.region_id, env, KV(env), meta, RaftLogStore(env), desc,
                              ptr.applied_index, ptr.applied_term)


def entry(index, *ops, term=1, epoch=EPOCH, region=1):
    return Entry(term, index, EntryType.NORMAL,
                 encode(KvCommand(region, epoch, [KvOp(*op) for op in ops])))


def apply(env, sm, entries, commit=True):
    batch = WriteBatch()
    results = sm.stage_apply(batch, entries)
    if commit:
        env.commit_sync(batch)
        sm.after_commit(entries, results)
    return results


def test_later_entries_in_a_batch_see_earlier_writes(env):
    sm = make_sm(env)
    ents = [
        entry(1, (PUT, b"c", b"1")),
        entry(2, (CAS, b"c", b"2", b"1")),  # sees the put of entry 1
        entry(3, (CAS, b"d", b"x", None)),  # absent -> created
        entry(4, (CAS, b"d", b"z", None)),  # no longer absent: fails, sees b"x"
        entry(5, (DEL, b"c")),
        entry(6, (CAS, b"c", b"3", None)),  # deleted in entry 5: absent again
    ]
    res = apply(env, sm, ents)
    assert [r.succeeded for r in res] == [True, True, True, False, True, True]
    assert res[3].current == b"x"
    assert sm.kv.get(b"c") == b"3" and sm.kv.get(b"d") == b"x"
    assert sm.applied == 6 and sm.meta.replay_pointer(1) == ReplayPointer(6, 1)
    assert sm.total_writes == 5


def test_cas_delete_and_multi_op_atomicity(env):
    sm = make_sm(env)
    apply(env, sm, [entry(1, (PUT, b"c", b"1"), (PUT, b"e", b"5"))])
    res = apply(env, sm, [entry(2, (CAS, b"c", None, b"1"), (CAS, b"e", b"6", b"nope"))])
    assert not res[0].succeeded and res[0].current == b"5"
    assert sm.kv.get(b"c") == b"1"  # first op not applied: the command is all or nothing
    res = apply(env, sm, [entry(3, (CAS, b"c", None, b"1"))])
    assert res[0].succeeded and sm.kv.get(b"c") is None


def test_replay_after_a_crash_is_idempotent(env):
    sm = make_sm(env)
    apply(env, sm, [entry(1, (PUT, b"c", b"1")), entry(2, (PUT, b"k", b"0"))])
    tail = [entry(3, (CAS, b"c", b"2", b"1")), entry(4, (PUT, b"k", b"4")),
            entry(5, (CAS, b"c", b"3", b"2"))]
    first = apply(env, sm, tail, commit=False)  # crash before the batch commits
    assert sm.kv.get(b"c") == b"1"
    # restart: the pointer says 2 was applied; raft re-delivers 3..5 and they apply once
    sm2 = make_sm(env)
    assert sm2.applied == 2
    again = apply(env, sm2, tail)
    assert again == first
    assert sm2.kv.get(b"c") == b"3" and sm2.kv.get(b"k") == b"4"
    assert sm2.meta.replay_pointer(1) == ReplayPointer(5, 1)


def test_stale_epoch_and_foreign_keys_are_refused_whole(env):
    sm = make_sm(env)
    res = apply(env, sm, [
        entry(1, (PUT, b"c", b"1"), epoch=RegionEpoch(0, 1)),
        entry(2, (PUT, b"c", b"1"), (PUT, b"z", b"1")),
        entry(3, (PUT, b"c", b"2"), region=9),
        Entry(1, 4, EntryType.NORMAL, b"\x93garbage"),
        Entry(1, 5, EntryType.NORMAL, b""),  # a new leader's empty entry
        entry(6, (PUT, b"c", b"ok"), epoch=RegionEpoch(1, 7)),  # conf_ver does not matter
    ])
    assert [r.error if r else None for r in res] == [
        "epoch_mismatch", "key_not_in_region", "epoch_mismatch", "invalid", None, ""]
    assert sm.kv.get(b"c") == b"ok" and sm.applied == 6


def test_snapshot_roundtrip(env, tmp_path):
    sm = make_sm(env)
    apply(env, sm, [entry(1, (PUT, b"c", b"1"), (PUT, b"x", b"2"))])
    index, data = sm.snapshot()
    assert index == 1
    with Env.open(tmp_path / "other", map_size=1 << 22) as env2:
        kv2 = KV(env2)
        b = WriteBatch()
        kv2.stage_put(b, b"a", b"outside")  # outside the region: untouched
        kv2.stage_put(b, b"d", b"stale")  # inside: replaced
        env2.commit_sync(b)
        sm2 = RegionStateMachine(1, env2, kv2, LocalMeta(env2), RaftLogStore(env2), None)
        snap = Snapshot(SnapshotMetadata(1, 1, ConfState((101,))), data)
        b = WriteBatch()
        sm2.stage_restore(b, snap)
        env2.commit_sync(b)
        assert sm2.descriptor == DESC and sm2.applied == 1
        assert kv2.scan(b"", None) == [(b"a", b"outside"), (b"c", b"1"), (b"x", b"2")]
        assert LocalMeta(env2).replay_pointer(1) == ReplayPointer(1, 1)


def test_scan_is_clipped_to_the_region(env):
    sm = make_sm(env)
    kv = sm.kv
    b = WriteBatch()
    for k in (b"a", b"b", b"c", b"d", b"y", b"z"):
        kv.stage_put(b, k, k)
    env.commit_sync(b)
    pairs, more = sm.scan(b"", b"", 10)
    assert [k for k, _ in pairs] == [b"b", b"c", b"d"] and not more
    pairs, more = sm.scan(b"b", b"", 2)
    assert [k for k, _ in pairs] == [b"b", b"c"] and more
    pairs, more = sm.scan(b"c", b"d", 5)
    assert [k for k, _ in pairs] == [b"c"] and not more


def test_results_are_kv_results(env):
    sm = make_sm(env)
    (res,) = apply(env, sm, [entry(1, (PUT, b"c", b"1"))])
    assert isinstance(res, KvResult) and res.ok and res.succeeded


async def test_snapshots_are_built_off_the_event_loop_and_cached(env):
    import trio

    from nokvpy.raft import SnapshotTemporarilyUnavailableError

    sm = make_sm(env)
    apply(env, sm, [entry(1, (PUT, b"c", b"1"))])
    async with trio.open_nursery() as nursery:
        def spawn(fn):
            nursery.start_soon(fn)
            return True

        sm.spawn = spawn
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            sm.snapshot()
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            sm.snapshot()  # still building: no second build
        with trio.fail_after(5):
            while sm._snap_cache is None:
                await trio.sleep(0.01)
        assert sm.snapshots_built == 1
        apply(env, sm, [entry(2, (PUT, b"d", b"2"))])
        index, data = sm.snapshot()  # the cached image: still usable (log not compacted)
        assert index == 1 and sm.snapshots_built == 1
        sm.on_conf_change(None, None)  # a membership change invalidates it
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            sm.snapshot()
        with trio.fail_after(5):
            while sm._snap_cache is None:
                await trio.sleep(0.01)
        assert sm.snapshot()[0] == 2
        # nor one from before the last range change (replay_floor): a region snapshot of the
        # old range overlaps the regions split off since, and every follower store hosting
        # one refused it for as long as it was offered (60 s; random topology seed 39)
        apply(env, sm, [entry(3, (PUT, b"e", b"3"))])
        sm.replay_floor = 3
        with pytest.raises(SnapshotTemporarilyUnavailableError):
            sm.snapshot()
        with trio.fail_after(5):
            while sm._snap_cache is None:
                await trio.sleep(0.01)
        assert sm.snapshot()[0] == 3
