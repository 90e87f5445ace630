"""Transactions and range deletes without a cluster: compare evaluation, the admission
refusals built for them, and the state machine (the branch taken, atomicity, modification
indexes, the apply-time epoch check, limits, the overlay of batches held back), with a
hypothesis property against a dict model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    PeerMeta,
    RegionDescriptor,
    RegionEpoch,
)
from nokvpy.protocol.raftstore_cmds import KvCommand, KvOp, KvOpKind
from nokvpy.protocol.store_rpc import (
    MAX_DELETE_RANGE_KEYS,
    MAX_KEY_SIZE,
    MAX_TXN_OPS,
    MAX_VALUE_SIZE,
    CompareOp,
    CompareTarget,
    DeleteRangeCommand,
    DeleteRangeRequest,
    KvContext,
    TxnCommand,
    TxnCompare,
    TxnGetResult,
    TxnOp,
    TxnOpKind,
    TxnRequest,
)
from nokvpy.raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMetadata
from nokvpy.storage import KV, Env, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import decode, encode
from raftstore.admission import (
    RegionView,
    cross_region_refusal,
    delete_range_invalid,
    delete_range_refusal,
    txn_invalid,
    txn_keys,
    txn_refusal,
)
from raftstore.apply import RegionStateMachine
from raftstore.commands import delete_range_command, txn_command
from raftstore.kvformat import HEADER_SIZE, VersionedKV, pack_stored, unpack_stored
from raftstore.txnapply import compare_holds

EPOCH = RegionEpoch(1, 1)
DESC = RegionDescriptor(1, b"b", b"y", EPOCH, (PeerMeta(1, 101),))
EQ, NE = CompareOp.EQ, CompareOp.NE
VALUE, EXISTS, MOD = CompareTarget.VALUE, CompareTarget.EXISTS, CompareTarget.MOD
PUT, DEL, GET = TxnOpKind.PUT, TxnOpKind.DELETE, TxnOpKind.GET
R = AdmissionReason


# ---- compare evaluation (pure) ---------------------------------------------------------


@pytest.mark.parametrize("cmp, value, region, index, holds", [
    (TxnCompare(b"k", VALUE, EQ, b"v"), b"v", 1, 5, True),
    (TxnCompare(b"k", VALUE, EQ, b"v"), b"w", 1, 5, False),
    (TxnCompare(b"k", VALUE, EQ, b"v"), None, 0, 0, False),  # missing: no value
    (TxnCompare(b"k", VALUE, NE, b"v"), None, 0, 0, True),
    (TxnCompare(b"k", VALUE, NE, b"v"), b"v", 1, 5, False),
    (TxnCompare(b"k", VALUE, EQ, b""), b"", 1, 5, True),  # the empty value is a value
    (TxnCompare(b"k", VALUE, EQ, b""), None, 0, 0, False),
    (TxnCompare(b"k", EXISTS, EQ), b"", 1, 5, True),
    (TxnCompare(b"k", EXISTS, EQ), None, 0, 0, False),
    (TxnCompare(b"k", EXISTS, NE), None, 0, 0, True),
    (TxnCompare(b"k", EXISTS, NE), b"x", 1, 5, False),
    (TxnCompare(b"k", MOD, EQ, mod_index=5), b"x", 1, 5, True),  # index only: any region
    (TxnCompare(b"k", MOD, EQ, mod_index=5), b"x", 9, 5, True),
    (TxnCompare(b"k", MOD, EQ, mod_index=5, mod_region=1), b"x", 1, 5, True),
    (TxnCompare(b"k", MOD, EQ, mod_index=5, mod_region=1), b"x", 9, 5, False),  # rewritten
    (TxnCompare(b"k", MOD, EQ, mod_index=5), b"x", 1, 6, False),
    (TxnCompare(b"k", MOD, NE, mod_index=5), b"x", 1, 6, True),
    (TxnCompare(b"k", MOD, EQ, mod_index=0), None, 0, 0, True),  # 0: missing
    (TxnCompare(b"k", MOD, EQ, mod_index=0), b"x", 1, 5, False),
    (TxnCompare(b"k", MOD, EQ, mod_index=5), None, 0, 0, False),
    (TxnCompare(b"k", MOD, NE, mod_index=0), b"x", 1, 5, True),
])
def test_compare_holds(cmp, value, region, index, holds):
    assert compare_holds(cmp, value, region, index) is holds


def test_stored_values_carry_region_and_index():
    raw = pack_stored(b"value", 7, 1234)
    assert len(raw) == HEADER_SIZE + 5
    assert unpack_stored(raw) == (b"value", 7, 1234)
    assert unpack_stored(pack_stored(b"", 1, 1)) == (b"", 1, 1)
    assert unpack_stored(b"legacy") == (b"legacy", 0, 0)  # no header: index 0


# ---- admission refusals (pure) ---------------------------------------------------------


def ctx(region=1, version=1, store=1) -> KvContext:
    return KvContext(region, RegionEpoch(version, 1), store)


def txn(compares=(), success=(), failure=()) -> TxnRequest:
    return TxnRequest(ctx(), list(compares), list(success), list(failure))


@pytest.mark.parametrize("req, words", [
    (txn(), "at least one compare or operation"),
    (txn(success=[TxnOp(PUT, b"k")]), "needs a value"),
    (txn(success=[TxnOp(GET, b"k", b"v")]), "carries no value"),
    (txn(failure=[TxnOp(DEL, b"")]), "empty key"),
    (txn([TxnCompare(b"k" * (MAX_KEY_SIZE + 1), EXISTS)]), "exceeds the limit"),
    (txn([TxnCompare(b"k", VALUE, EQ, None)]), "needs a value"),
    (txn([TxnCompare(b"k", MOD, EQ, mod_index=-1)]), "negative"),
    (txn(success=[TxnOp(PUT, b"k", b"v" * (MAX_VALUE_SIZE + 1))]), "exceeds the limit"),
    (txn([TxnCompare(b"k", EXISTS)] * (MAX_TXN_OPS + 1)), f"limit of {MAX_TXN_OPS}"),
    (txn(success=[TxnOp(PUT, b"k%d" % i, b"v" * MAX_VALUE_SIZE) for i in range(5)]),
     "exceed the limit of"),
])
def test_malformed_transactions_are_invalid(req, words):
    assert words in txn_invalid(req)
    adm = txn_refusal(req)
    assert adm.reason == R.INVALID and adm.cls == AdmissionClass.WRITE and words in adm.detail


def test_well_formed_transactions_pass_and_route_by_their_first_key():
    req = txn([TxnCompare(b"c", VALUE, EQ, b"1")], [TxnOp(PUT, b"d", b"2"), TxnOp(GET, b"e")],
              [TxnOp(DEL, b"f")])
    assert txn_invalid(req) == "" and txn_refusal(req) is None
    assert txn_keys(req) == [b"c", b"d", b"e", b"f"]
    assert txn_invalid(txn(success=[TxnOp(PUT, b"k", b"")])) == ""  # empty value is fine


def view(desc=DESC) -> RegionView:
    return RegionView(desc, 101, True, 101, 1)


def test_cross_region_is_refused_naming_the_keys_and_the_region():
    adm = cross_region_refusal(ctx(), [b"c", b"d", b"z", b"a"], 1, view())
    assert adm.reason == R.INVALID and adm.detail.startswith("cross_region: ")
    assert "b'z', b'a' are outside region 1" in adm.detail and "b'c'" in adm.detail
    assert adm.leader_store_id == 1
    # every key inside: nothing to refuse
    assert cross_region_refusal(ctx(), [b"c", b"x"], 1, view()) is None
    # cannot be told here: admission answers (NOT_HOSTED, STORE_NOT_MATCH, EPOCH_MISMATCH,
    # KEY_NOT_IN_REGION for the first key), which re-routes the caller
    assert cross_region_refusal(ctx(), [b"c", b"z"], 1, None) is None
    assert cross_region_refusal(ctx(store=2), [b"c", b"z"], 1, view()) is None
    assert cross_region_refusal(ctx(version=2), [b"c", b"z"], 1, view()) is None
    assert cross_region_refusal(ctx(region=3), [b"c", b"z"], 1, view()) is None
    assert cross_region_refusal(ctx(), [b"z", b"c"], 1, view()) is None


@pytest.mark.parametrize("start, end, limit, words", [
    (b"k", b"k", 0, "empty range"),
    (b"z", b"a", 0, "inverted range"),
    (b"a", b"z", -1, "limit"),
    (b"a" * (MAX_KEY_SIZE + 1), b"", 0, "key limit"),
])
def test_bad_ranges_are_invalid(start, end, limit, words):
    assert words in delete_range_invalid(start, end, limit)
    adm = delete_range_refusal(DeleteRangeRequest(ctx(), start, end, limit))
    assert adm.reason == R.INVALID and words in adm.detail


def test_good_ranges_pass():
    for start, end in ((b"", b""), (b"a", b""), (b"a", b"b"), (b"", b"a")):
        assert delete_range_invalid(start, end, 0) == ""
        assert delete_range_refusal(DeleteRangeRequest(ctx(), start, end, 5)) is None


def test_entry_payloads_round_trip():
    cmp = [TxnCompare(b"a", MOD, NE, None, 3, 1)]
    ops = [TxnOp(PUT, b"b", b"1"), TxnOp(GET, b"c")]
    data = txn_command(4, RegionEpoch(2, 3), cmp, ops, [TxnOp(DEL, b"d")])
    assert decode(data) == TxnCommand(4, RegionEpoch(2, 3), cmp, ops, [TxnOp(DEL, b"d")])
    data = delete_range_command(4, RegionEpoch(2, 3), b"a", b"", 7)
    assert decode(data) == DeleteRangeCommand(4, RegionEpoch(2, 3), b"a", b"", 7)


# ---- the state machine -----------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "db", map_size=1 << 22)
    try:
        yield e
    finally:
        e.close()


def make_sm(env, desc=DESC, kv=None) -> RegionStateMachine:
    return RegionStateMachine(desc.region_id, env, kv or VersionedKV(env), LocalMeta(env),
                              RaftLogStore(env), desc)


class Applier:
    """Entries with consecutive indexes, applied one batch at a time."""

    def __init__(self, env, sm):
        self.env, self.sm, self.index = env, sm, sm.applied

    def entry(self, payload: bytes, term: int = 1) -> Entry:
        self.index += 1
        return Entry(term, self.index, EntryType.NORMAL, payload)

    def apply(self, *payloads: bytes, commit: bool = True) -> list:
        entries = [self.entry(p) for p in payloads]
        batch = WriteBatch()
        results = self.sm.stage_apply(batch, entries)
        if commit:
            self.env.commit_sync(batch)
            self.sm.after_commit(entries, results)
        return results

    def txn(self, compares=(), success=(), failure=(), epoch=EPOCH, region=1):
        return self.apply(txn_command(region, epoch, list(compares), list(success),
                                      list(failure)))[0]

    def put(self, key: bytes, value: bytes):
        return self.apply(encode(KvCommand(1, EPOCH, [KvOp(KvOpKind.PUT, key, value)])))[0]

    def delete_range(self, start: bytes, end: bytes, limit: int = 0, epoch=EPOCH):
        return self.apply(delete_range_command(1, epoch, start, end, limit))[0]

    def state(self) -> dict[bytes, bytes]:
        return dict(self.sm.scan(b"", b"", 10_000)[0])


def test_the_branch_the_compares_pick_runs_and_gets_see_it(env):
    a = Applier(env, make_sm(env))
    a.put(b"c", b"1")
    ok = a.txn([TxnCompare(b"c", VALUE, EQ, b"1"), TxnCompare(b"d", EXISTS, NE)],
               [TxnOp(PUT, b"d", b"2"), TxnOp(GET, b"d"), TxnOp(DEL, b"c"), TxnOp(GET, b"c")],
               [TxnOp(PUT, b"e", b"no")])
    assert ok.ok and ok.succeeded and ok.writes == 2
    assert ok.gets == [TxnGetResult(b"d", b"2", a.index, 1), TxnGetResult(b"c", None)]
    failed = a.txn([TxnCompare(b"c", EXISTS, EQ)], [TxnOp(PUT, b"e", b"yes")],
                   [TxnOp(PUT, b"f", b"else"), TxnOp(GET, b"d")])
    assert failed.ok and not failed.succeeded
    assert failed.gets == [TxnGetResult(b"d", b"2", a.index - 1, 1)]
    assert a.state() == {b"d": b"2", b"f": b"else"}
    assert a.sm.total_writes == 1 + 2 + 1


def test_mod_index_moves_on_every_kind_of_write(env):
    a = Applier(env, make_sm(env))

    def mod(key: bytes) -> tuple[int, int]:
        got = a.txn(success=[TxnOp(GET, key)]).gets[0]
        return got.mod_index, got.mod_region

    a.put(b"k", b"1")
    assert mod(b"k") == (1, 1)
    a.apply(encode(KvCommand(1, EPOCH, [KvOp(KvOpKind.CAS, b"k", b"2", b"1")])))
    assert mod(b"k") == (3, 1)
    a.txn(success=[TxnOp(PUT, b"k", b"3")])
    assert mod(b"k") == (5, 1)
    # a compare on the index read last: holds once, then the write moved it
    first = a.txn([TxnCompare(b"k", MOD, EQ, mod_index=5, mod_region=1)],
                  [TxnOp(PUT, b"k", b"4")])
    again = a.txn([TxnCompare(b"k", MOD, EQ, mod_index=5, mod_region=1)],
                  [TxnOp(PUT, b"k", b"5")])
    assert first.succeeded and not again.succeeded
    assert mod(b"k") == (7, 1)
    a.delete_range(b"k", b"l")
    assert mod(b"k") == (0, 0)
    created = a.txn([TxnCompare(b"k", MOD, EQ, mod_index=0)], [TxnOp(PUT, b"k", b"new")])
    assert created.succeeded and mod(b"k") == (a.index - 1, 1)


def test_a_failed_validation_writes_nothing(env):
    a = Applier(env, make_sm(env))
    a.put(b"c", b"1")
    for bad in (
        dict(success=[TxnOp(PUT, b"d", b"2"), TxnOp(PUT, b"z", b"outside")]),
        dict(compares=[TxnCompare(b"a", EXISTS)], success=[TxnOp(PUT, b"d", b"2")]),
    ):
        res = a.txn(**bad)
        assert not res.ok and res.error == "key_not_in_region"
    assert a.state() == {b"c": b"1"}


def test_stale_epochs_are_refused_at_apply(env):
    a = Applier(env, make_sm(env))
    a.put(b"c", b"1")
    res = a.txn(success=[TxnOp(PUT, b"c", b"2")], epoch=RegionEpoch(0, 1))
    assert not res.ok and res.error == "epoch_mismatch"
    res = a.txn(success=[TxnOp(PUT, b"c", b"3")], region=9)
    assert not res.ok and res.error == "epoch_mismatch"
    res = a.delete_range(b"", b"", epoch=RegionEpoch(2, 1))
    assert not res.ok and res.error == "epoch_mismatch"
    # conf_ver does not matter (a peer change moves no keys)
    assert a.txn(success=[TxnOp(PUT, b"c", b"4")], epoch=RegionEpoch(1, 9)).succeeded
    assert a.state() == {b"c": b"4"}


def test_mod_compares_need_a_versioned_table(env):
    a = Applier(env, make_sm(env, kv=KV(env)))
    a.put(b"c", b"1")
    assert a.txn([TxnCompare(b"c", VALUE, EQ, b"1")], [TxnOp(PUT, b"d", b"2")]).succeeded
    res = a.txn([TxnCompare(b"c", MOD, EQ, mod_index=1)], [TxnOp(PUT, b"d", b"3")])
    assert not res.ok and res.error == "mod_index_unsupported"
    assert KV(env).get(b"d") == b"2"  # a plain table stores values as they are


def test_delete_range_is_clipped_to_the_region_and_says_where_it_stopped(env):
    a = Applier(env, make_sm(env))
    outside = KV(env)
    b = WriteBatch()
    outside.stage_put(b, b"a", b"out")  # below the region
    outside.stage_put(b, b"z", b"out")  # above it
    env.commit_sync(b)
    for i in range(10):
        a.put(b"k%d" % i, b"v")
    res = a.delete_range(b"k3", b"k7", limit=2)
    assert (res.ok, res.deleted, res.more, res.next_key) == (True, 2, True, b"k5")
    res = a.delete_range(b"k5", b"k7", limit=2)  # exactly the rest: not cut
    assert (res.deleted, res.more, res.next_key) == (2, False, b"")
    res = a.delete_range(b"", b"")  # the whole keyspace: only the region's part
    assert (res.deleted, res.more) == (6, False)
    assert a.state() == {} and outside.get(b"a") == b"out" and outside.get(b"z") == b"out"
    assert a.delete_range(b"k", b"l").deleted == 0


def test_delete_range_caps_one_entry(env, monkeypatch):
    monkeypatch.setattr("raftstore.apply.MAX_DELETE_RANGE_KEYS", 3)
    a = Applier(env, make_sm(env))
    for i in range(5):
        a.put(b"k%d" % i, b"v")
    res = a.delete_range(b"k", b"l")  # no limit: the cap per entry
    assert (res.deleted, res.more, res.next_key) == (3, True, b"k3")
    res = a.delete_range(b"k", b"l", limit=10)
    assert (res.deleted, res.more) == (2, False)
    assert MAX_DELETE_RANGE_KEYS == 10_000


def test_held_back_batches_are_seen_by_later_ones(env):
    """The driver may stage a region's next apply before the previous batch is durable:
    compares, gets and range deletes of the later batch see the staged writes."""
    a = Applier(env, make_sm(env))
    a.put(b"c", b"1")
    a.put(b"d", b"1")
    e1 = [a.entry(txn_command(1, EPOCH, [], [TxnOp(PUT, b"e", b"2"), TxnOp(DEL, b"c")], []))]
    b1 = WriteBatch()
    r1 = a.sm.stage_apply(b1, e1)
    e2 = [a.entry(txn_command(1, EPOCH, [TxnCompare(b"e", VALUE, EQ, b"2"),
                                         TxnCompare(b"c", EXISTS, NE)],
                              [TxnOp(GET, b"e")], [])),
          a.entry(delete_range_command(1, EPOCH, b"c", b"f", 0))]
    b2 = WriteBatch()
    r2 = a.sm.stage_apply(b2, e2)
    assert r2[0].succeeded and r2[0].gets == [TxnGetResult(b"e", b"2", e1[0].index, 1)]
    assert r2[1].deleted == 2  # d (durable) and e (staged); c was deleted by the staged batch
    env.commit_sync(b1)
    a.sm.after_commit(e1, r1)
    env.commit_sync(b2)
    a.sm.after_commit(e2, r2)
    assert a.state() == {}


def test_snapshots_carry_modification_indexes(env, tmp_path):
    a = Applier(env, make_sm(env))
    a.put(b"c", b"1")
    a.txn(success=[TxnOp(PUT, b"d", b"2")])
    index, data = a.sm.snapshot()
    with Env.open(tmp_path / "other", map_size=1 << 22) as env2:
        sm2 = RegionStateMachine(1, env2, VersionedKV(env2), LocalMeta(env2),
                                 RaftLogStore(env2), None)
        b = WriteBatch()
        sm2.stage_restore(b, Snapshot(SnapshotMetadata(index, 1, ConfState((101,))), data))
        env2.commit_sync(b)
        a2 = Applier(env2, sm2)
        got = a2.txn(success=[TxnOp(GET, b"c"), TxnOp(GET, b"d")]).gets
        assert got == [TxnGetResult(b"c", b"1", 1, 1), TxnGetResult(b"d", b"2", 2, 1)]


# ---- property: random operations against a dict model ----------------------------------

KEYS = [b"a", b"b", b"c", b"d", b"x", b"y", b"z"]  # region: [b, y); few keys, many collisions
VALUES = [b"", b"0", b"1", b"2"]
key_st = st.sampled_from(KEYS)
inside_st = st.sampled_from([k for k in KEYS if DESC.contains(k)])
val_st = st.sampled_from(VALUES)
compare_st = st.one_of(
    st.builds(lambda k, op, v: TxnCompare(k, VALUE, op, v), inside_st,
              st.sampled_from([EQ, NE]), val_st),
    st.builds(lambda k, op: TxnCompare(k, EXISTS, op), inside_st, st.sampled_from([EQ, NE])),
    st.builds(lambda k, op, i: TxnCompare(k, MOD, op, mod_index=i), inside_st,
              st.sampled_from([EQ, NE]), st.integers(0, 12)),
)
op_st = st.one_of(
    st.builds(lambda k, v: TxnOp(PUT, k, v), inside_st, val_st),
    st.builds(lambda k: TxnOp(DEL, k), inside_st),
    st.builds(lambda k: TxnOp(GET, k), inside_st),
)
step_st = st.one_of(
    st.tuples(st.just("txn"), st.lists(compare_st, max_size=3), st.lists(op_st, max_size=4),
              st.lists(op_st, max_size=4)),
    st.tuples(st.just("txn_outside"), st.lists(op_st, max_size=2), key_st.filter(
        lambda k: not DESC.contains(k))),
    st.tuples(st.just("put"), key_st, val_st),
    st.tuples(st.just("delete"), key_st),
    st.tuples(st.just("range"), st.sampled_from([b""] + KEYS), st.sampled_from([b""] + KEYS),
              st.integers(0, 4)),
)


class Model:
    """What the region should hold: key -> (value, index of the entry that wrote it)."""

    def __init__(self):
        self.data: dict[bytes, tuple[bytes, int]] = {}

    def holds(self, c: TxnCompare) -> bool:
        value, mod = self.data.get(c.key, (None, 0))
        return compare_holds(c, value, 1 if value is not None else 0, mod)

    def step(self, step, index: int):
        kind = step[0]
        if kind == "txn":
            _, compares, success, failure = step
            held = all(self.holds(c) for c in compares)
            gets = []
            for op in success if held else failure:
                if op.kind == PUT:
                    self.data[op.key] = (op.value, index)
                elif op.kind == DEL:
                    self.data.pop(op.key, None)
                else:
                    value, mod = self.data.get(op.key, (None, 0))
                    gets.append(TxnGetResult(op.key, value, mod, 1 if value is not None else 0))
            return ("txn", True, held, gets)
        if kind == "txn_outside":
            return ("txn", False, "key_not_in_region")
        if kind in ("put", "delete"):
            if not DESC.contains(step[1]):
                return ("kv", False)
            if kind == "put":
                self.data[step[1]] = (step[2], index)
            else:
                self.data.pop(step[1], None)
            return ("kv", True)
        _, start, end, limit = step
        if end and start >= end:
            return ("range", False)
        keys = sorted(k for k in self.data if k >= start and (not end or k < end))
        cut = keys[:limit] if limit else keys
        for k in cut:
            del self.data[k]
        more = bool(limit) and len(keys) > limit
        return ("range", True, len(cut), more, keys[limit] if more else b"")


def payload(step) -> bytes:
    kind = step[0]
    if kind == "txn":
        return txn_command(1, EPOCH, step[1], step[2], step[3])
    if kind == "txn_outside":
        return txn_command(1, EPOCH, [], [*step[1], TxnOp(PUT, step[2], b"v")], [])
    if kind == "put":
        return encode(KvCommand(1, EPOCH, [KvOp(KvOpKind.PUT, step[1], step[2])]))
    if kind == "delete":
        return encode(KvCommand(1, EPOCH, [KvOp(KvOpKind.DELETE, step[1])]))
    return delete_range_command(1, EPOCH, step[1], step[2], step[3])


def observed(step, res):
    kind = step[0]
    if kind in ("txn", "txn_outside"):
        return ("txn", True, res.succeeded, res.gets) if res.ok else ("txn", False, res.error)
    if kind in ("put", "delete"):
        return ("kv", res.ok)
    if not res.ok:
        return ("range", False)
    return ("range", True, res.deleted, res.more, res.next_key)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(step_st, min_size=1, max_size=25),
       cuts=st.lists(st.sampled_from([True, True, False]), min_size=25, max_size=25),
       holds=st.lists(st.booleans(), min_size=25, max_size=25))
def test_random_operations_match_a_dict_model(steps, cuts, holds):
    """Entries go in batches (cut at random); a batch may be held back (staged, not yet
    durable) while the next one is staged, as the driver does: every result and the final
    state match the model."""
    with tempfile.TemporaryDirectory() as tmp, Env.open(Path(tmp) / "db",
                                                        map_size=1 << 22) as env:
        sm = make_sm(env)
        a = Applier(env, sm)
        model = Model()
        held: list[tuple[WriteBatch, list[Entry], list]] = []
        pending: list[tuple[object, Entry]] = []

        def stage(hold: bool) -> None:
            if not pending:
                return
            entries = [e for _, e in pending]
            batch = WriteBatch()
            results = sm.stage_apply(batch, entries)
            for (step, e), res in zip(pending, results, strict=True):
                assert observed(step, res) == model.step(step, e.index), (step, e.index)
            pending.clear()
            held.append((batch, entries, results))
            if not hold:
                flush()

        def flush() -> None:
            for batch, entries, results in held:
                env.commit_sync(batch)
                sm.after_commit(entries, results)
            held.clear()

        for i, step in enumerate(steps):
            pending.append((step, a.entry(payload(step))))
            if cuts[i]:
                stage(holds[i])
        stage(False)
        flush()
        want = {k: v for k, (v, _) in model.data.items()}
        assert a.state() == want
        mods = a.txn(success=[TxnOp(GET, k) for k in sorted(model.data)]).gets
        assert [(g.key, g.mod_index) for g in mods] == [
            (k, model.data[k][1]) for k in sorted(model.data)]
