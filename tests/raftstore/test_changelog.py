"""A region's change log, for watches: the change table (revision order, key filters, limits
that keep a revision whole, floors, trims, drops), what the state machine records for each
kind of command, trimming across versions, hand-offs at splits and merges, snapshot installs
and the watch read of one region; with a hypothesis property that every key keeps its whole
history while its range moves between regions."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.protocol.raftstore_cmds import KvCommand, KvOp, KvOpKind
from nokvpy.protocol.store_rpc import (
    CompareOp,
    CompareTarget,
    KvContext,
    TxnCompare,
    TxnOp,
    TxnOpKind,
)
from nokvpy.protocol.watch import DELETE, PUT, KvWatchRequest
from nokvpy.raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMetadata
from nokvpy.storage import ChangeTable, Env, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import encode
from raftstore import changelog
from raftstore.apply import RegionStateMachine
from raftstore.changelog import RegionChanges
from raftstore.commands import admin_command, delete_range_command, txn_command
from raftstore.kvformat import VersionedKV
from raftstore.topology.apply import INIT_INDEX  # a split child's first applied index
from raftstore.watchpath import _invalid, _read

EPOCH = RegionEpoch(1, 1)
DESC = RegionDescriptor(1, b"b", b"y", EPOCH, (PeerMeta(1, 101),))
EVERYTHING = 1 << 30  # a read limit no test reaches
VALUE, EQ = CompareTarget.VALUE, CompareOp.EQ


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "db", map_size=1 << 22)
    try:
        yield e
    finally:
        e.close()


def commit(env: Env, *stage) -> None:
    """Commit one batch holding what each `stage(batch)` stages."""
    b = WriteBatch()
    for fn in stage:
        fn(b)
    env.commit_sync(b)


def read(env: Env, table: ChangeTable, region: int, after=(0, 0), lo=b"", hi=b"",
         limit=EVERYTHING):
    """`table.read`, each change without its origin region (`read_full` keeps it)."""
    changes, more = read_full(env, table, region, after, lo, hi, limit)
    return [c[:6] for c in changes], more


def read_full(env: Env, table: ChangeTable, region: int, after=(0, 0), lo=b"", hi=b"",
              limit=EVERYTHING):
    return env.read(lambda txn: table.read(txn, region, after, lo, hi, limit))


def log_of(env: Env, table: ChangeTable, region: int, lo=b"", hi=b""):
    changes, more = read(env, table, region, lo=lo, hi=hi)
    assert not more
    return changes


def identity(raw: bytes) -> bytes:
    return raw


# ---- the change table --------------------------------------------------------------------


def stage_changes(table: ChangeTable, region: int,
                  changes) -> Callable[[WriteBatch], None]:
    def stage(b: WriteBatch) -> None:
        for version, index, seq, kind, key, value in changes:
            table.stage_change(b, region, version, index, seq, kind, key, value)
    return stage


def test_changes_read_back_in_revision_order(env):
    table = ChangeTable(env)
    mine = [  # staged out of order; an empty value is a value, a delete has none
        (2, 1, 0, PUT, b"a", b""),
        (1, 5, 1, PUT, b"b", b"2"),
        (1, 5, 0, PUT, b"a", b"1"),
        (1, 3, 0, DELETE, b"c", None),
        (1, 300, 0, PUT, b"z", b"big index"),
    ]
    commit(env, stage_changes(table, 7, mine),
           stage_changes(table, 6, [(9, 9, 0, PUT, b"a", b"other")]),
           stage_changes(table, 8, [(1, 1, 0, PUT, b"a", b"other")]),
           lambda b: table.stage_floor(b, 7, 1, 2))
    want = [
        (1, 3, 0, DELETE, b"c", None),
        (1, 5, 0, PUT, b"a", b"1"),
        (1, 5, 1, PUT, b"b", b"2"),
        (1, 300, 0, PUT, b"z", b"big index"),
        (2, 1, 0, PUT, b"a", b""),
    ]
    assert read(env, table, 7) == (want, False)  # the floor record is no change
    assert read(env, table, 7, after=(1, 3)) == (want[1:], False)
    assert read(env, table, 7, after=(1, 4)) == (want[1:], False)
    assert read(env, table, 7, after=(1, 5)) == (want[3:], False)
    assert read(env, table, 7, after=(1, 300)) == (want[4:], False)
    assert read(env, table, 7, after=(2, 1)) == ([], False)
    assert read(env, table, 5) == ([], False)
    assert read(env, table, 8) == ([(1, 1, 0, PUT, b"a", b"other")], False)


def test_reads_filter_by_key_range(env):
    table = ChangeTable(env)
    keys = [b"a", b"b", b"bb", b"c", b"d", b"z"]
    commit(env, stage_changes(table, 7, [(1, i + 1, 0, PUT, k, k) for i, k in enumerate(keys)]))

    def keys_of(lo, hi):
        return [c[4] for c in read(env, table, 7, lo=lo, hi=hi)[0]]

    assert keys_of(b"", b"") == keys
    assert keys_of(b"b", b"c") == [b"b", b"bb"]
    assert keys_of(b"bb", b"") == [b"bb", b"c", b"d", b"z"]  # hi b"": unbounded
    assert keys_of(b"", b"b") == [b"a"]
    assert keys_of(b"e", b"y") == []


def test_a_limit_never_splits_a_revision(env):
    table = ChangeTable(env)
    changes = [(1, 1, s, PUT, k, b"1") for s, k in enumerate([b"a", b"b", b"c"])]
    changes += [(1, 2, 0, DELETE, b"a", None)]
    changes += [(1, 3, s, PUT, k, b"3") for s, k in enumerate([b"b", b"c"])]
    commit(env, stage_changes(table, 7, changes))
    got, more = read(env, table, 7, limit=1)
    assert got == changes[:3] and more  # the whole of revision (1, 1), and more remain
    got, more = read(env, table, 7, limit=4)
    assert got == changes[:4] and more
    got, more = read(env, table, 7, after=(1, 2), limit=1)
    assert got == changes[4:] and not more
    assert read(env, table, 7, limit=6) == (changes, False)
    # a key filter: (1, 1) holds two changes of [b, d), and the limit still keeps it whole
    got, more = read(env, table, 7, lo=b"b", hi=b"d", limit=1)
    assert got == changes[1:3] and more


change_st = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(0, 3),
                      st.sampled_from([b"a", b"b", b"c", b"d"]), st.booleans())


@settings(max_examples=50, deadline=None, print_blob=True)
@given(st.lists(change_st, max_size=25), st.integers(1, 5),
       st.sampled_from([(b"", b""), (b"b", b""), (b"a", b"c"), (b"c", b"d")]))
def test_paging_with_any_limit_returns_every_change_once(raw, limit, bounds):
    lo, hi = bounds
    by_rev = {(v, i, s): (v, i, s, DELETE if d else PUT, k, None if d else b"v%d" % i)
              for v, i, s, k, d in raw}
    everything = sorted(by_rev.values())
    want = [c for c in everything if c[4] >= lo and (not hi or c[4] < hi)]
    with tempfile.TemporaryDirectory() as tmp, Env.open(Path(tmp) / "db",
                                                        map_size=1 << 22) as env:
        table = ChangeTable(env)
        commit(env, stage_changes(table, 7, everything))
        pages, after = [], (0, 0)
        for _ in range(len(everything) + 2):
            page, more = read(env, table, 7, after=after, lo=lo, hi=hi, limit=limit)
            pages.append(page)
            if page:
                after = page[-1][:2]
            if not more:
                break
        else:
            pytest.fail("paging did not end")
        assert [c for page in pages for c in page] == want
        seen: set[tuple[int, int]] = set()
        for page in pages:  # a revision's changes all come in one page
            revs = {c[:2] for c in page}
            assert not revs & seen
            seen |= revs
            # a page stops at the first revision boundary past the limit
            assert len(page) < limit or len({c[:2] for c in page[limit - 1:]}) == 1


def test_floor_records_round_trip(env):
    table = ChangeTable(env)
    assert table.floor(7) is None
    commit(env, lambda b: table.stage_floor(b, 7, 3, 9))
    assert table.floor(7) == (3, 9)
    assert env.read(lambda txn: table.floor(7, txn=txn)) == (3, 9)
    commit(env, lambda b: table.stage_floor(b, 7, 4, 2**40))
    assert table.floor(7) == (4, 2**40)
    assert table.floor(6) is None and table.floor(8) is None


def test_trim_deletes_below_a_revision_and_keeps_the_floor(env):
    table = ChangeTable(env)
    mine = [(1, 1, 0, PUT, b"a", b"1"), (1, 5, 0, PUT, b"b", b"1"), (1, 5, 1, PUT, b"c", b"1"),
            (2, 1, 0, PUT, b"a", b"2"), (2, 4, 0, PUT, b"a", b"3"), (2, 4, 1, PUT, b"b", b"3"),
            (2, 7, 0, DELETE, b"a", None)]
    others = [(1, 1, 0, PUT, b"a", b"x"), (3, 9, 0, PUT, b"q", b"y")]
    commit(env, stage_changes(table, 7, mine), stage_changes(table, 6, others),
           stage_changes(table, 8, others), lambda b: table.stage_floor(b, 7, 1, 0),
           lambda b: table.stage_floor(b, 8, 1, 0))
    commit(env, lambda b: table.stage_trim(b, 7, 2, 4))
    assert log_of(env, table, 7) == mine[4:]  # (2, 4) and above
    assert table.floor(7) == (1, 0)  # the floor record stays (the caller moves it)
    assert log_of(env, table, 6) == others and log_of(env, table, 8) == others
    assert table.floor(8) == (1, 0)
    commit(env, lambda b: table.stage_trim(b, 7, 9, 0))  # above everything: all go
    assert log_of(env, table, 7) == [] and table.floor(7) == (1, 0)


def test_drop_removes_one_region_and_nothing_else(env):
    table = ChangeTable(env)
    changes = [(1, 1, 0, PUT, b"a", b"1"), (2, 2**40, 3, DELETE, b"b", None)]
    for region in (6, 7, 8):
        commit(env, stage_changes(table, region, changes),
               lambda b, r=region: table.stage_floor(b, r, 1, r))
    commit(env, lambda b: table.stage_drop(b, 7))
    assert log_of(env, table, 7) == [] and table.floor(7) is None
    for region in (6, 8):
        assert log_of(env, table, region) == changes and table.floor(region) == (1, region)


def test_first_index_of_a_version(env):
    table = ChangeTable(env)
    commit(env, stage_changes(table, 7, [(1, 3, 0, PUT, b"a", b"1"), (1, 9, 0, PUT, b"a", b"1"),
                                         (2, 12, 1, PUT, b"a", b"1"),
                                         (2, 40, 0, PUT, b"a", b"1")]),
           stage_changes(table, 8, [(5, 1, 0, PUT, b"a", b"1")]),
           lambda b: table.stage_floor(b, 7, 1, 0), lambda b: table.stage_floor(b, 8, 1, 0))
    assert table.first_index_of(7, 1) == 3
    assert table.first_index_of(7, 2) == 12
    assert table.first_index_of(7, 3) is None
    assert table.first_index_of(7, 5) is None  # region 8's version 5 is not region 7's
    assert table.first_index_of(8, 5) == 1
    assert table.first_index_of(9, 1) is None
    commit(env, lambda b: table.stage_trim(b, 7, 2, 13))
    assert table.first_index_of(7, 1) is None and table.first_index_of(7, 2) == 40


# ---- what the state machine records ------------------------------------------------------


class Applier:
    """A region's state machine with a change log, fed entries with consecutive indexes."""

    def __init__(self, env: Env, desc: RegionDescriptor = DESC, keep: int = 4096,
                 index: int = 0):
        self.env = env
        self.table = ChangeTable(env)
        self.sm = RegionStateMachine(desc.region_id, env, VersionedKV(env), LocalMeta(env),
                                     RaftLogStore(env), desc, index, 1 if index else 0)
        self.sm.changes = RegionChanges(self.table, desc.region_id, keep)
        self.index = index

    @property
    def changes(self) -> RegionChanges:
        assert self.sm.changes is not None
        return self.sm.changes

    @property
    def epoch(self) -> RegionEpoch:
        assert self.sm.descriptor is not None
        return self.sm.descriptor.epoch

    def entries(self, *payloads: bytes) -> list[Entry]:
        out = []
        for p in payloads:
            self.index += 1
            out.append(Entry(1, self.index, EntryType.NORMAL, p))
        return out

    def stage(self, *payloads: bytes):
        entries = self.entries(*payloads)
        batch = WriteBatch()
        return batch, entries, self.sm.stage_apply(batch, entries)

    def apply(self, *payloads: bytes) -> list:
        batch, entries, results = self.stage(*payloads)
        self.env.commit_sync(batch)
        self.sm.after_commit(entries, results)
        return results

    def kv(self, *ops, epoch: RegionEpoch | None = None, region: int | None = None) -> bytes:
        return encode(KvCommand(self.sm.region_id if region is None else region,
                                epoch or self.epoch, [KvOp(*op) for op in ops]))

    def put(self, key: bytes, value: bytes, **kw) -> bytes:
        return self.kv((KvOpKind.PUT, key, value), **kw)

    def txn(self, compares=(), success=(), failure=(), epoch: RegionEpoch | None = None):
        return txn_command(self.sm.region_id, epoch or self.epoch, list(compares),
                           list(success), list(failure))

    def delete_range(self, start: bytes, end: bytes, epoch: RegionEpoch | None = None):
        return delete_range_command(self.sm.region_id, epoch or self.epoch, start, end, 0)

    def log(self):
        """Every change the region's log holds (LMDB), in revision order."""
        return log_of(self.env, self.table, self.sm.region_id)


def test_the_state_machine_records_what_each_command_wrote(env):
    a = Applier(env)
    TPUT, TDEL = TxnOpKind.PUT, TxnOpKind.DELETE
    a.apply(a.put(b"c", b"1"))
    assert a.log() == [(1, 1, 0, PUT, b"c", b"1")]  # the user value, not the stored form
    a.apply(a.kv((KvOpKind.DELETE, b"c")))
    res = a.apply(a.kv((KvOpKind.CAS, b"d", b"x", b"nope")))  # fails: d is absent
    assert res[0].ok and not res[0].succeeded
    res = a.apply(a.kv((KvOpKind.CAS, b"d", b"x", None)))  # succeeds: creates d
    assert res[0].succeeded
    a.apply(a.kv((KvOpKind.CAS, b"d", None, b"x")))  # a CAS to None deletes
    res = a.apply(a.txn(success=[TxnOp(TPUT, b"e", b"1"), TxnOp(TPUT, b"f", b"2"),
                                 TxnOp(TDEL, b"c"), TxnOp(TxnOpKind.GET, b"e"),
                                 TxnOp(TPUT, b"e", b"3")]))
    assert res[0].succeeded
    res = a.apply(a.txn([TxnCompare(b"e", VALUE, EQ, b"no")],  # the failure branch: empty
                        [TxnOp(TPUT, b"e", b"never")]))
    assert res[0].ok and not res[0].succeeded
    a.apply(a.kv((KvOpKind.PUT, b"g", b"7"), (KvOpKind.PUT, b"h", b"7"),
                 (KvOpKind.PUT, b"i", b"7")))
    res = a.apply(a.delete_range(b"f", b"i"))  # live keys f, g, h (not i, not deleted c)
    assert res[0].deleted == 3
    assert a.log() == [
        (1, 1, 0, PUT, b"c", b"1"),
        (1, 2, 0, DELETE, b"c", None),
        (1, 4, 0, PUT, b"d", b"x"),
        (1, 5, 0, DELETE, b"d", None),
        (1, 6, 0, PUT, b"e", b"1"),
        (1, 6, 1, PUT, b"f", b"2"),
        (1, 6, 2, DELETE, b"c", None),
        (1, 6, 3, PUT, b"e", b"3"),
        (1, 8, 0, PUT, b"g", b"7"),
        (1, 8, 1, PUT, b"h", b"7"),
        (1, 8, 2, PUT, b"i", b"7"),
        (1, 9, 0, DELETE, b"f", None),
        (1, 9, 1, DELETE, b"g", None),
        (1, 9, 2, DELETE, b"h", None),
    ]
    assert a.changes.recorded == 14 and a.changes.pending == {}
    assert a.changes.floor == (1, 0) and a.table.floor(1) == (1, 0)


def test_refused_commands_record_nothing(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"))
    stale = RegionEpoch(0, 1)
    res = a.apply(
        a.put(b"c", b"2", epoch=stale),  # proposed under an older version
        a.txn(success=[TxnOp(TxnOpKind.PUT, b"c", b"2")], epoch=stale),
        a.delete_range(b"", b"", epoch=stale),
        a.put(b"c", b"2", region=9),  # another region's command
        a.kv((KvOpKind.PUT, b"c", b"2"), (KvOpKind.PUT, b"z", b"2")),  # z is not in [b, y)
        a.txn([TxnCompare(b"c", VALUE, EQ, b"other")], [TxnOp(TxnOpKind.PUT, b"c", b"3")]),
        a.kv((KvOpKind.CAS, b"c", b"4", b"1"), (KvOpKind.CAS, b"d", b"4", b"absent?")),
        a.delete_range(b"m", b"p"),  # nothing live there
        b"\x93garbage",  # undecodable
    )
    assert [r.ok and getattr(r, "succeeded", True) for r in res[:5]] == [False] * 5
    assert not res[5].succeeded and not res[6].succeeded and res[7].deleted == 0
    assert a.log() == [(1, 1, 0, PUT, b"c", b"1")]
    assert a.sm.applied == 10 and a.sm.kv.get(b"c") == b"1"


def test_the_floor_starts_at_the_first_apply(env):
    a = Applier(env, index=9)  # a region whose log starts later (no floor record yet)
    assert a.changes.floor is None
    a.apply(a.put(b"c", b"1"))
    assert a.changes.floor == (1, 9) and a.table.floor(1) == (1, 9)
    a.apply(a.put(b"c", b"2"))
    assert a.changes.floor == (1, 9)  # it does not move with later applies
    # a first apply that writes nothing: history starts after it
    b = Applier(env, dc_replace(DESC, region_id=2), index=3)
    b.apply(b"")
    assert b.changes.floor == (1, 4) and b.table.floor(2) == (1, 4)
    # a restart reads it back
    assert RegionChanges(a.table, 1).floor == (1, 9)


def test_pending_holds_staged_changes_until_the_last_apply_is_durable(env):
    a = Applier(env)
    b1, e1, r1 = a.stage(a.put(b"c", b"1"))
    b2, e2, r2 = a.stage(a.kv((KvOpKind.CAS, b"c", b"2", b"1")))  # sees the held-back put
    assert r2[0].succeeded
    assert sorted(a.changes.pending.values()) == [(1, 1, 0, PUT, b"c", b"1", 1),
                                                  (1, 2, 0, PUT, b"c", b"2", 1)]
    assert a.log() == []  # nothing durable yet
    env.commit_sync(b1)
    a.sm.after_commit(e1, r1)
    assert len(a.changes.pending) == 2  # the second apply is still staged
    env.commit_sync(b2)
    a.sm.after_commit(e2, r2)
    assert a.changes.pending == {}
    assert a.log() == [(1, 1, 0, PUT, b"c", b"1"), (1, 2, 0, PUT, b"c", b"2")]


def test_a_replay_after_a_crash_records_each_change_once(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"))
    a.stage(a.put(b"c", b"2"), a.put(b"d", b"2"))  # never committed: a crash
    again = Applier(env, index=1)  # the restart: the replay pointer says 1
    assert again.changes.floor == (1, 0)
    again.apply(again.put(b"c", b"2"), again.put(b"d", b"2"))
    again.apply(again.put(b"c", b"3"))
    assert again.log() == [(1, 1, 0, PUT, b"c", b"1"), (1, 2, 0, PUT, b"c", b"2"),
                           (1, 3, 0, PUT, b"d", b"2"), (1, 4, 0, PUT, b"c", b"3")]


# ---- trimming ----------------------------------------------------------------------------


def revisions(a: Applier) -> list[tuple[int, int]]:
    return [c[:2] for c in a.log()]


def test_trimming_keeps_keep_indexes_and_older_versions_until_then(env, monkeypatch):
    monkeypatch.setattr(changelog, "TRIM_EVERY", 1)
    a = Applier(env, keep=20)
    for i in range(40):
        a.apply(a.put(b"c", b"%d" % i))
    # below (1, 40 - 20) go; the floor says the history is whole above (1, 19)
    assert revisions(a) == [(1, i) for i in range(20, 41)]
    assert a.changes.floor == (1, 19) and a.table.floor(1) == (1, 19)
    # a range change: the region's version moves on (as a split's apply would)
    a.sm.descriptor = dc_replace(DESC, epoch=RegionEpoch(2, 1))
    for i in range(20):  # indexes 41..60: fewer than `keep` of version 2
        a.apply(a.put(b"d", b"%d" % i))
    assert revisions(a) == [(1, i) for i in range(20, 41)] + [(2, i) for i in range(41, 61)]
    assert a.changes.floor == (1, 19)  # version 1 stays whole above its floor
    a.apply(a.put(b"d", b"x"))  # 61: keep indexes of version 2 exist, version 1 goes
    assert revisions(a) == [(2, i) for i in range(41, 62)]
    assert a.changes.floor == (2, 40) and a.table.floor(1) == (2, 40)
    for _ in range(9):
        a.apply(a.put(b"d", b"y"))
    assert revisions(a) == [(2, i) for i in range(50, 71)]
    assert a.changes.floor == (2, 49) and a.table.floor(1) == (2, 49)
    # what survives is exactly what a watch from the floor would need
    assert read(env, a.table, 1, after=a.changes.floor)[0] == a.log()


def test_trimming_waits_for_trim_every_indexes(env):
    a = Applier(env, keep=20)
    for i in range(30):
        a.apply(a.put(b"c", b"%d" % i))
    assert len(a.log()) == 30 and a.changes.trims == 0
    a.index = changelog.TRIM_EVERY + 100 - 1  # a later entry (the log jumped)
    a.apply(a.put(b"c", b"late"))
    last = changelog.TRIM_EVERY + 100
    assert revisions(a) == [(1, last)] and a.changes.trims == 1
    assert a.changes.floor == (1, last - 20 - 1)


def test_a_version_without_changes_trims_nothing(env, monkeypatch):
    monkeypatch.setattr(changelog, "TRIM_EVERY", 1)
    a = Applier(env, keep=5)
    for _ in range(10):
        a.apply(a.put(b"c", b"1"))
    a.sm.descriptor = dc_replace(DESC, epoch=RegionEpoch(2, 1))
    kept = a.log()
    for _ in range(20):
        a.apply(b"")  # the new version writes nothing
    assert a.log() == kept and a.changes.floor == (1, 4)


# ---- hand-off at splits and merges -------------------------------------------------------


def make_changes(env: Env, region: int, floor: tuple[int, int] | None, keep=4096):
    table = ChangeTable(env)
    if floor is not None:
        commit(env, lambda b: table.stage_floor(b, region, *floor))
    return RegionChanges(table, region, keep)


def test_hand_on_copies_the_range_committed_and_pending_once(env):
    src = make_changes(env, 1, None)
    b = WriteBatch()
    src.record(b, 1, 4, [(b"a", b"1"), (b"m", b"1")], identity)
    src.record(b, 1, 5, [(b"x", b"1")], identity)
    env.commit_sync(b)
    src.committed()
    assert src.floor == (1, 3)
    b = WriteBatch()
    src.record(b, 1, 6, [(b"n", b"1"), (b"b", b"1")], identity)
    env.commit_sync(b)  # durable, and still pending (its apply is not acknowledged yet)
    b = WriteBatch()
    src.record(b, 1, 7, [(b"m", None)], identity)  # staged only
    src.record(b, 1, 8, [(b"z", b"1")], identity)
    floor, moved = src.hand_on(b, 2, b"m", b"y", None, (0, 0))
    want = [(1, 4, 1, PUT, b"m", b"1"), (1, 5, 0, PUT, b"x", b"1"),
            (1, 6, 0, PUT, b"n", b"1"), (1, 7, 0, DELETE, b"m", None)]
    assert floor == (1, 3) and moved == [c + (1,) for c in want]  # made by region 1
    env.commit_sync(b)
    src.committed()
    table = src.table
    assert log_of(env, table, 2) == want and table.floor(2) == (1, 3)
    assert {c[6] for c in read_full(env, table, 2)[0]} == {1}  # they keep their origin
    assert RegionChanges(table, 2).floor == (1, 3)  # the child's replica starts there
    # the source keeps its own log (its range no longer covers what it handed on)
    assert len(log_of(env, table, 1)) == 7
    # an unbounded range
    b = WriteBatch()
    _, moved = src.hand_on(b, 3, b"m", b"", None, (0, 0))
    assert [c[4] for c in moved] == [b"m", b"x", b"n", b"m", b"z"]


def test_a_merge_target_gets_the_higher_floor(env):
    src = make_changes(env, 1, (1, 3))
    dst = make_changes(env, 2, (2, 10))
    b = WriteBatch()
    src.record(b, 1, 4, [(b"m", b"1")], identity)
    floor, moved = src.hand_on(b, 2, b"m", b"", dst.floor, (0, 0))
    assert floor == (2, 10) and moved == [(1, 4, 0, PUT, b"m", b"1", 1)]
    dst.took_over(floor, moved)
    assert dst.floor == (2, 10) and dst.pending == {(1, 4, 1, 0): moved[0]}
    env.commit_sync(b)
    assert src.table.floor(2) == (2, 10)
    # the other way round: the source's floor is the higher one
    low = make_changes(env, 3, (1, 1))
    b = WriteBatch()
    floor, moved = dst.hand_on(b, 3, b"", b"", low.floor, (0, 0))
    low.took_over(floor, moved)
    env.commit_sync(b)
    assert floor == (2, 10) and low.floor == (2, 10) and src.table.floor(3) == (2, 10)
    assert log_of(env, src.table, 3) == [(1, 4, 0, PUT, b"m", b"1")]


def test_a_split_in_the_apply_hands_on_changes_of_the_same_batch(env):
    """A split handler runs inside stage_apply: the child gets the parent's changes of its
    range, including those of earlier entries of the same batch."""
    a = Applier(env)
    a.apply(a.put(b"n", b"0"))
    right = RegionDescriptor(2, b"m", b"y", RegionEpoch(2, 1), DESC.peers)

    def split(sm, batch, e, cmd):
        sm.staged_descriptor = dc_replace(DESC, end_key=b"m", epoch=RegionEpoch(2, 1))
        sm.changes.hand_on(batch, 2, right.start_key, right.end_key, None, (0, 0))
        return None

    a.sm.admin_handlers["split"] = split
    batch, entries, results = a.stage(a.put(b"c", b"1"), a.put(b"p", b"1"),
                                      admin_command("split", 1, EPOCH),
                                      a.put(b"p", b"2", epoch=RegionEpoch(2, 1)))
    env.commit_sync(batch)
    a.sm.after_commit(entries, results)
    assert results[3].error == "key_not_in_region"  # p left the parent
    assert log_of(env, a.table, 2) == [(1, 1, 0, PUT, b"n", b"0"), (1, 3, 0, PUT, b"p", b"1")]
    assert a.table.floor(2) == (1, 0) == a.changes.floor


def test_a_merge_of_split_siblings_keeps_both_sides_changes(env):
    """Split siblings share a version and index their own raft logs (the child from
    INIT_INDEX): their changes can share a revision, and merging them back must keep both."""
    parent = make_changes(env, 1, (0, 0))
    b = WriteBatch()
    parent.record(b, 1, 3, [(b"a", b"0"), (b"n", b"0")], identity)
    parent.hand_on(b, 2, b"m", b"", None, (0, 0))  # the split entry, index 4: both sides version 2
    env.commit_sync(b)
    parent.committed()
    child = RegionChanges(parent.table, 2)
    b = WriteBatch()
    parent.record(b, 2, 5, [(b"a", b"1")], identity)
    parent.record(b, 2, 6, [(b"b", b"1")], identity)
    child.record(b, 2, INIT_INDEX + 1, [(b"n", b"1")], identity)  # index 6 of the child
    env.commit_sync(b)
    parent.committed()
    child.committed()
    b = WriteBatch()  # commit_merge at the parent's index 7: the merged version is 3
    floor, moved = child.hand_on(b, 1, b"m", b"", parent.floor, (0, 0))
    parent.took_over(floor, moved)
    child.stage_drop(b)
    env.commit_sync(b)
    got = read_full(env, parent.table, 1)[0]
    assert (2, 6, 0, PUT, b"b", b"1", 1) in got  # the parent's own write
    assert (2, 6, 0, PUT, b"n", b"1", 2) in got  # the child's write at the same revision


# ---- snapshot installs -------------------------------------------------------------------


def test_restore_drops_the_log_and_starts_at_the_snapshot(env):
    mine = make_changes(env, 1, None)
    other = make_changes(env, 2, None)
    b = WriteBatch()
    mine.record(b, 1, 1, [(b"a", b"1")], identity)
    other.record(b, 1, 1, [(b"a", b"1")], identity)
    env.commit_sync(b)
    other.committed()
    b = WriteBatch()
    mine.record(b, 1, 2, [(b"a", b"2")], identity)  # pending when the snapshot comes
    mine.restore(b, 3, 50)
    assert mine.pending == {} and mine.floor == (3, 50)
    env.commit_sync(b)
    assert log_of(env, mine.table, 1) == [] and mine.table.floor(1) == (3, 50)
    assert log_of(env, mine.table, 2) == [(1, 1, 0, PUT, b"a", b"1")]
    assert mine.table.floor(2) == (1, 0)


def test_a_snapshot_install_restores_the_change_log(env, tmp_path):
    """The snapshot carries the leader's change log and floor: a replica filled by it (one
    that may lead the region later) answers watches from the same history, not `compacted`
    for every cursor below the snapshot."""
    leader = Applier(env)
    for i in range(5):
        leader.apply(leader.put(b"c", b"%d" % i))
    index, data = leader.sm.snapshot()
    assert index == 5
    with Env.open(tmp_path / "follower", map_size=1 << 22) as env2:
        f = Applier(env2)
        f.apply(f.put(b"d", b"stale"), f.put(b"e", b"stale"))
        b = WriteBatch()
        f.sm.stage_restore(b, Snapshot(SnapshotMetadata(index, 1, ConfState((101,))), data))
        env2.commit_sync(b)
        assert f.sm.applied == 5
        assert f.log() == leader.log() and len(f.log()) == 5  # the stale changes are gone
        assert f.changes.floor == leader.changes.floor == f.table.floor(1) == (1, 0)
        f.index = 5
        f.apply(f.put(b"c", b"6"))
        assert f.log()[-1] == (1, 6, 0, PUT, b"c", b"6")


def test_a_snapshot_from_a_store_without_a_change_log_starts_the_floor_there(env, tmp_path):
    leader = Applier(env)
    leader.sm.changes = None  # --watch-keep 0
    for i in range(5):
        leader.apply(leader.put(b"c", b"%d" % i))
    index, data = leader.sm.snapshot()
    with Env.open(tmp_path / "follower", map_size=1 << 22) as env2:
        f = Applier(env2)
        f.apply(f.put(b"d", b"stale"))
        b = WriteBatch()
        f.sm.stage_restore(b, Snapshot(SnapshotMetadata(index, 1, ConfState((101,))), data))
        env2.commit_sync(b)
        assert f.log() == [] and f.changes.floor == (1, 5) and f.table.floor(1) == (1, 5)


# ---- property: every key keeps its whole history as its range moves ----------------------


@dataclass
class Reg:
    id: int
    lo: bytes
    hi: bytes  # b"": unbounded
    version: int
    index: int
    changes: RegionChanges | None = None

    def owns(self, key: bytes) -> bool:
        return self.lo <= key and (not self.hi or key < self.hi)


@dataclass
class World:
    """Regions of one store sharing one open batch (applies held back until a flush)."""

    env: Env
    table: ChangeTable
    global_index: bool
    regions: list[Reg] = field(default_factory=list)
    history: dict[bytes, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    batch: WriteBatch = field(default_factory=WriteBatch)
    next_id: int = 10
    clock: int = 100

    def owner(self, key: bytes) -> Reg:
        (r,) = [r for r in self.regions if r.owns(key)]
        return r

    def next_index(self, r: Reg) -> int:
        if self.global_index:
            self.clock += 1
            r.index = self.clock
        else:
            r.index += 1
        return r.index

    def flush(self) -> None:
        self.env.commit_sync(self.batch)
        self.batch = WriteBatch()
        for r in self.regions:
            assert r.changes is not None
            r.changes.committed()

    def write(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        r = self.owner(writes[0][0])
        writes = [(k, v) for k, v in writes if r.owns(k)]
        i = self.next_index(r)
        assert r.changes is not None
        r.changes.record(self.batch, r.version, i, writes, identity)
        r.changes.applied(self.batch, r.version, i)
        for k, v in writes:
            self.history.setdefault(k, []).append((PUT if v is not None else DELETE, v))

    def split(self, key: bytes) -> None:
        r = self.owner(key)
        if key == r.lo:
            return
        assert r.changes is not None
        i = self.next_index(r)
        r.version += 1
        child = Reg(self.next_id, key, r.hi, r.version, INIT_INDEX)
        if self.global_index:
            child.index = self.clock
        self.next_id += 1
        floor_before = r.changes.floor
        r.changes.hand_on(self.batch, child.id, key, r.hi, None, (0, 0))
        r.hi = key
        r.changes.applied(self.batch, r.version, i)
        self.flush()
        child.changes = RegionChanges(self.table, child.id)  # created once it is durable
        self.regions.append(child)
        assert child.changes.floor == floor_before

    def merge(self, key: bytes, into_left: bool) -> None:
        left = self.owner(key)
        if not left.hi:
            return
        right = self.owner(left.hi)
        target, source = (left, right) if into_left else (right, left)
        assert target.changes is not None and source.changes is not None
        self.next_index(source)  # prepare_merge freezes the source
        i = self.next_index(target)  # commit_merge applies on the target
        version = max(target.version, source.version) + 1
        floor, moved = source.changes.hand_on(self.batch, target.id, source.lo, source.hi,
                                              target.changes.floor, (0, 0))
        target.changes.took_over(floor, moved)
        source.changes.stage_drop(self.batch)
        target.version = version
        target.lo, target.hi = left.lo, right.hi
        target.changes.applied(self.batch, target.version, i)
        self.regions.remove(source)

    def check(self) -> None:
        """Every key's history, read from the region that owns it now."""
        self.flush()
        for r in self.regions:
            assert r.changes is not None
            assert r.changes.floor == (0, 0) == self.table.floor(r.id)
            got = log_of(self.env, self.table, r.id, r.lo, r.hi)
            for key in {c[4] for c in got} | {k for k in self.history if r.owns(k)}:
                mine = [c for c in got if c[4] == key]
                assert [(c[3], c[5]) for c in mine] == self.history.get(key, []), key
                revs = [c[:3] for c in mine]
                assert revs == sorted(set(revs)), key


KEYS = [b"a", b"b", b"c", b"d", b"e", b"f"]
value_st = st.one_of(st.none(), st.sampled_from([b"", b"0", b"1", b"2"]))
step_st = st.one_of(
    st.tuples(st.just("write"), st.lists(st.tuples(st.sampled_from(KEYS), value_st),
                                         min_size=1, max_size=3)),
    st.tuples(st.just("split"), st.sampled_from(KEYS)),
    st.tuples(st.just("merge"), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("flush")),
)


def run_world(steps, global_index: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, Env.open(Path(tmp) / "db",
                                                        map_size=1 << 22) as env:
        table = ChangeTable(env)
        w = World(env, table, global_index)
        b = WriteBatch()
        for rid, lo, hi in ((1, b"", b"c"), (2, b"c", b"")):
            table.stage_floor(b, rid, 0, 0)
            w.regions.append(Reg(rid, lo, hi, 1, INIT_INDEX))
        env.commit_sync(b)
        for r in w.regions:
            r.changes = RegionChanges(table, r.id)
        for step in steps:
            if step[0] == "write":
                w.write(step[1])
            elif step[0] == "split":
                w.split(step[1])
            elif step[0] == "merge":
                w.merge(step[1], step[2])
            else:
                w.flush()
        w.check()


@settings(max_examples=50, deadline=None, print_blob=True)
@given(st.lists(step_st, max_size=30))
# a merge target hands on, in the same batch, what it just took over (only in `pending`)
@example([("write", [(b"d", b"1")]), ("merge", b"a", True), ("split", b"d")])
def test_every_key_keeps_its_whole_history_across_splits_and_merges(steps):
    """Indexes unique across regions: whatever the hand-offs, the owner has every change."""
    run_world(steps, global_index=True)


@settings(max_examples=50, deadline=None, print_blob=True)
@given(st.lists(step_st, max_size=30))
@example([("split", b"d"), ("write", [(b"c", b"1")]), ("write", [(b"e", b"1")]),
          ("write", [(b"e", b"2")]), ("merge", b"c", True)])
def test_with_per_region_indexes_every_key_keeps_its_whole_history(steps):
    """Each region indexes its own raft log (a split child from INIT_INDEX), as on a store."""
    run_world(steps, global_index=False)


# ---- the watch read ----------------------------------------------------------------------


def request(after_version: int, after_index: int, limit: int = 1000, start=b"", end=b""):
    return KvWatchRequest(KvContext(1, EPOCH, 1), start, end, after_version, after_index,
                          limit)


def test_a_watch_starting_now_gets_the_staged_head(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"))
    peer = SimpleNamespace(sm=a.sm)
    reply = _read(peer, request(-1, 0, start=b"a", end=b"d"))
    assert reply.events == [] and not reply.compacted
    assert (reply.head_version, reply.head_index) == (1, 1)
    assert (reply.served_start, reply.served_end, reply.region_id) == (b"b", b"d", 1)
    a.stage(a.put(b"c", b"2"))  # held back: staged, not durable
    reply = _read(peer, request(-1, 0))
    assert a.sm.applied == 1 and reply.head_index == a.sm.staged_index() == 2
    assert reply.events == []


def test_a_cursor_below_the_floor_is_compacted(env):
    a = Applier(env, index=9)
    a.apply(a.put(b"c", b"1"))
    peer = SimpleNamespace(sm=a.sm)
    reply = _read(peer, request(1, 3))
    assert reply.compacted and reply.events == []
    assert (reply.floor_version, reply.floor_index) == (1, 9)
    reply = _read(peer, request(1, 9))  # at the floor: whole
    assert not reply.compacted and reply.events == [(1, 10, 0, PUT, b"c", b"1", 1)]


def test_a_cursor_at_or_above_the_head_gets_nothing(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"), a.put(b"d", b"1"))
    peer = SimpleNamespace(sm=a.sm)
    for after in ((1, 2), (1, 7), (2, 0)):
        reply = _read(peer, request(*after))
        assert reply.events == [] and not reply.compacted
        assert (reply.head_version, reply.head_index) == (1, 2)


def test_changes_above_the_in_memory_head_are_left_out(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"))
    peer = SimpleNamespace(sm=a.sm)
    batch, entries, results = a.stage(a.put(b"c", b"2"), a.put(b"d", b"2"))
    env.commit_sync(batch)  # durable in LMDB, the state machine's view not moved yet
    assert len(a.log()) == 3
    reply = _read(peer, request(1, 0))
    assert reply.events == [(1, 1, 0, PUT, b"c", b"1", 1)]
    assert (reply.head_version, reply.head_index) == (1, 1)
    a.sm.after_commit(entries, results)
    reply = _read(peer, request(1, 1))
    assert reply.events == [(1, 2, 0, PUT, b"c", b"2", 1), (1, 3, 0, PUT, b"d", b"2", 1)]
    assert (reply.head_version, reply.head_index) == (1, 3)


def test_a_limited_reply_moves_the_cursor_to_its_last_revision(env):
    a = Applier(env)
    a.apply(a.kv((KvOpKind.PUT, b"c", b"1"), (KvOpKind.PUT, b"d", b"1"),
                 (KvOpKind.PUT, b"e", b"1")))
    a.apply(a.put(b"c", b"2"))
    a.apply(a.put(b"x", b"3"))
    peer = SimpleNamespace(sm=a.sm)
    reply = _read(peer, request(1, 0, limit=2))
    assert [c[:3] for c in reply.events] == [(1, 1, 0), (1, 1, 1), (1, 1, 2)]
    assert (reply.head_version, reply.head_index) == (1, 1)
    reply = _read(peer, request(1, 1, limit=2, end=b"f"))  # x is outside the range
    assert [c[:3] for c in reply.events] == [(1, 2, 0)]
    assert (reply.head_version, reply.head_index) == (1, 3)


def test_an_accepted_cursor_never_breaks_the_read(env):
    a = Applier(env)
    a.apply(a.put(b"c", b"1"))
    a.sm.descriptor = dc_replace(DESC, epoch=RegionEpoch(2, 1))  # a range change since
    a.apply(a.put(b"c", b"2", epoch=RegionEpoch(2, 1)))
    assert _invalid(request(1, 2**64 - 1)) == "watch revision out of range"
    req = request(1, 2**63 - 1)  # the highest index accepted: past everything of version 1
    assert _invalid(req) == ""
    reply = _read(SimpleNamespace(sm=a.sm), req)
    assert reply.events == [(2, 2, 0, PUT, b"c", b"2", 1)]


async def test_a_durable_apply_wakes_waiting_watches(env):
    a = Applier(env)
    woke = []

    async def waiter():
        await a.changes.wait_applied(60)
        woke.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        a.apply(a.put(b"c", b"1"))  # after_commit -> committed() -> wake
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [True]
    with trio.move_on_after(5) as scope:  # a zero wait returns at once
        await a.changes.wait_applied(0)
    assert not scope.cancelled_caught


async def test_each_durable_apply_wakes_watches_while_later_ones_are_still_staged(env):
    """Under steady load the staged queue is seldom empty: a watch must wake when the head
    moves, not only when the queue drains (it waited for a gap: p50 100 ms put-to-event)."""
    a = Applier(env)
    b1, e1, r1 = a.stage(a.put(b"c", b"1"))
    b2, e2, r2 = a.stage(a.put(b"c", b"2"))  # held back behind the first
    woke = []

    async def waiter():
        await a.changes.wait_applied(60)
        woke.append(a.sm.applied)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        env.commit_sync(b1)
        a.sm.after_commit(e1, r1)  # the second apply is still staged
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [1]
        assert len(a.changes.pending) == 2  # kept until the last staged apply is durable
    env.commit_sync(b2)
    a.sm.after_commit(e2, r2)
    assert a.changes.pending == {}
