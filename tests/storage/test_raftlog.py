"""RaftLogStore / GroupStorage against etcd MemoryStorage semantics, on real LMDB files."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nokvpy.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    SnapshotTemporarilyUnavailableError,
    Storage,
    UnavailableError,
)
from nokvpy.storage import (
    CorruptLogError,
    Env,
    RaftLogStore,
    SnapshotOutOfDateError,
    WriteBatch,
)


def ents(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    return [Entry(term, i, 0, f"{tag}{i}".encode()) for i in range(first, last + 1)]


def commit(store: RaftLogStore, stage) -> None:
    batch = WriteBatch()
    stage(batch)
    store.env.commit_sync(batch)


def reopen(store: RaftLogStore) -> RaftLogStore:
    path = store.env.path
    store.env.close()
    return RaftLogStore(Env.open(path))


@pytest.fixture
def store(env):
    return RaftLogStore(env)


# ---------------------------------------------------------------- protocol boundaries


def test_new_group_is_empty_and_satisfies_the_protocol(store):
    g = store.group(1)
    storage: Storage = g  # structural: GroupStorage implements the core's protocol
    for name in ("initial_state", "entries", "term", "first_index", "last_index", "snapshot"):
        assert callable(getattr(storage, name))
    assert g.is_empty()
    assert (g.first_index(), g.last_index()) == (1, 0)
    assert g.term(0) == 0
    assert g.entries(1, 1) == []
    assert g.initial_state() == (HardState(), ConfState())
    assert g.snapshot() == Snapshot()
    with pytest.raises(UnavailableError):
        g.term(1)
    with pytest.raises(CompactedError):
        g.entries(0, 1)
    with pytest.raises(UnavailableError):
        g.entries(1, 2)


def test_boundaries_after_snapshot_and_appends(store):
    """etcd MemoryStorage: first = snap.index + 1, term(snap.index) = snap.term."""
    cs = ConfState((1, 2, 3), (4,))
    meta = SnapshotMetadata(3, 3, cs)
    commit(store, lambda b: store.stage_ready(b, 1, HardState(5, 1, 3), ents(4, 6, 5),
                                             Snapshot(meta)))
    g = store.group(1)
    assert (g.first_index(), g.last_index()) == (4, 6)
    assert g.term(3) == 3 and g.term(4) == 5 and g.term(6) == 5
    with pytest.raises(CompactedError):
        g.term(2)
    with pytest.raises(UnavailableError):
        g.term(7)
    with pytest.raises(CompactedError):
        g.entries(3, 5)
    with pytest.raises(UnavailableError):
        g.entries(4, 8)
    assert [e.index for e in g.entries(4, 7)] == [4, 5, 6]
    assert g.initial_state() == (HardState(5, 1, 3), cs)
    assert g.snapshot().metadata == meta
    assert g.entries(4, 7, max_size=0) == ents(4, 4, 5)  # always at least one entry
    assert g.entries(4, 7, max_size=1) == ents(4, 4, 5)  # data b"4"
    assert g.entries(4, 7, max_size=2) == ents(4, 5, 5)  # b"4" + b"5"


def test_max_size_counts_data_bytes(store):
    commit(store, lambda b: store.stage_ready(b, 1, None, [Entry(1, i, 0, b"x" * 10)
                                                          for i in range(1, 6)]))
    g = store.group(1)
    assert len(g.entries(1, 6, max_size=10)) == 1
    assert len(g.entries(1, 6, max_size=20)) == 2
    assert len(g.entries(1, 6, max_size=29)) == 2
    assert len(g.entries(1, 6)) == 5


def test_conflicting_suffix_is_overwritten(store):
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(1, 10, 1)))
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(6, 7, 2, "new")))
    g = store.group(1)
    assert g.last_index() == 7
    assert [(e.term, e.data) for e in g.entries(5, 8)] == [(1, b"5"), (2, b"new6"), (2, b"new7")]
    store = reopen(store)
    g = store.group(1)
    assert g.last_index() == 7
    assert g.entries(1, 8) == ents(1, 5, 1) + ents(6, 7, 2, "new")


def test_append_with_a_gap_is_refused_and_compacted_prefix_is_ignored(store):
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(1, 5, 1)))
    with pytest.raises(ValueError, match="missing log entries"):
        store.stage_ready(WriteBatch(), 1, None, ents(7, 8, 1))
    commit(store, lambda b: store.stage_compact(b, 1, 3))
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(2, 7, 2)))  # 2, 3 compacted
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(3), g.term(4)) == (4, 7, 1, 2)


def test_compaction_keeps_the_boundary_term(store):
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(1, 3, 1) + ents(4, 9, 2)))
    commit(store, lambda b: store.stage_compact(b, 1, 5))
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(5)) == (6, 9, 2)
    with pytest.raises(CompactedError):
        g.term(4)
    with pytest.raises(CompactedError):
        store.stage_compact(WriteBatch(), 1, 5)
    with pytest.raises(UnavailableError):
        store.stage_compact(WriteBatch(), 1, 10)
    commit(store, lambda b: store.stage_compact(b, 1, 9))  # compact everything
    g = reopen(store).group(1)
    assert (g.first_index(), g.last_index(), g.term(9)) == (10, 9, 2)


def test_apply_snapshot_resets_log_and_rejects_older(store):
    commit(store, lambda b: store.stage_ready(b, 1, None, ents(1, 20, 1)))
    meta = SnapshotMetadata(10, 1, ConfState((1, 2)))
    commit(store, lambda b: store.stage_apply_snapshot(b, 1, meta))
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(10)) == (11, 10, 1)
    with pytest.raises(SnapshotOutOfDateError):
        store.stage_apply_snapshot(WriteBatch(), 1, SnapshotMetadata(10, 1))
    g = reopen(store).group(1)
    assert (g.first_index(), g.last_index()) == (11, 10)
    assert g.snapshot().metadata == meta


def test_create_snapshot_and_conf_state_override(store):
    commit(store, lambda b: store.stage_ready(b, 1, HardState(2, 1, 8), ents(1, 8, 2)))
    commit(store, lambda b: store.stage_create_snapshot(b, 1, 6, ConfState((1, 2, 3))))
    g = store.group(1)
    assert g.snapshot().metadata == SnapshotMetadata(6, 2, ConfState((1, 2, 3)))
    assert g.first_index() == 1  # creating a snapshot does not compact
    assert g.initial_state()[1] == ConfState((1, 2, 3))
    commit(store, lambda b: store.stage_conf_state(b, 1, 8, ConfState((1, 2), (3,))))
    assert g.initial_state()[1] == ConfState((1, 2), (3,))
    g = reopen(store).group(1)
    assert g.initial_state() == (HardState(2, 1, 8), ConfState((1, 2), (3,)))


def test_snapshot_provider_attaches_data(store):
    g = store.group(1)
    g.snapshot_provider = lambda meta: Snapshot(meta, b"kv-data")
    assert g.snapshot().data == b"kv-data"

    def busy(meta):
        raise SnapshotTemporarilyUnavailableError()

    g.snapshot_provider = busy
    with pytest.raises(SnapshotTemporarilyUnavailableError):
        g.snapshot()


def test_view_changes_only_after_commit(store):
    batch = WriteBatch()
    store.stage_ready(batch, 1, HardState(1, 1, 3), ents(1, 3, 1))
    g = store.group(1)
    assert g.last_index() == 0 and g.initial_state()[0] == HardState()
    store.env.commit_sync(batch)
    assert g.last_index() == 3 and g.initial_state()[0] == HardState(1, 1, 3)


def test_groups_are_isolated_listed_and_destroyed(store):
    top = (1 << 64) - 1
    commit(store, lambda b: [store.stage_ready(b, gid, HardState(1, 0, gid), ents(1, gid % 7, 1))
                             for gid in (1, 2, 3, top)])
    assert store.list_groups() == [1, 2, 3, (1 << 64) - 1]
    assert store.group(2).last_index() == 2 and store.group(3).last_index() == 3
    commit(store, lambda b: store.stage_destroy_group(b, 2))
    assert store.group(2).is_empty()
    assert store.list_groups() == [1, 3, (1 << 64) - 1]
    store = reopen(store)
    assert store.group(2).is_empty() and store.group(3).entries(1, 4) == ents(1, 3, 1)
    assert store.group(top).last_index() == top % 7


def test_entries_beyond_the_cache_come_from_disk(tmp_path):
    env = Env.open(tmp_path / "db")
    store = RaftLogStore(env, cache_entries=8)
    for lo in range(1, 200, 10):
        commit(store, lambda b, lo=lo: store.stage_ready(b, 1, None, ents(lo, lo + 9, 1 + lo // 50)))
    g = store.group(1)
    expect = [e for lo in range(1, 200, 10) for e in ents(lo, lo + 9, 1 + lo // 50)]
    assert g.entries(1, 201) == expect
    assert g.entries(150, 201, max_size=30) == expect[149:149 + len(g.entries(150, 201, 30))]
    assert [g.term(i) for i in range(1, 201)] == [e.term for e in expect]
    env.close()


def test_gap_on_disk_is_reported_as_corruption(tmp_path):
    env = Env.open(tmp_path / "db")
    store = RaftLogStore(env)
    commit(store, lambda b: store.stage_ready(b, 7, None, ents(1, 5, 1)))
    batch = WriteBatch()
    from nokvpy.storage.raftlog import log_key
    batch.delete("raft_log", log_key(7, 3))
    env.commit_sync(batch)
    with pytest.raises(CorruptLogError, match="gap after index 2"):
        RaftLogStore(env).group(7)
    env.close()


async def test_write_ready_group_commits_many_groups(store):
    items = [(gid, HardState(1, 1, 4), ents(1, 4, 1, f"g{gid}-"), None) for gid in range(1, 9)]
    before = store.env.stats.transactions
    await store.write_ready(items)
    assert store.env.stats.transactions == before + 1
    for gid in range(1, 9):
        assert store.group(gid).entries(1, 5) == ents(1, 4, 1, f"g{gid}-")


# ---------------------------------------------------------------- property vs a reference


class Model:
    """etcd MemoryStorage in a dozen lines: ents[0] is the dummy (snapshot/boundary) entry."""

    def __init__(self):
        self.ents = [Entry(0, 0)]
        self.hs = HardState()
        self.snap = SnapshotMetadata()

    def first(self):
        return self.ents[0].index + 1

    def last(self):
        return self.ents[0].index + len(self.ents) - 1

    def term(self, i):
        off = self.ents[0].index
        if i < off:
            raise CompactedError
        if i - off >= len(self.ents):
            raise UnavailableError
        return self.ents[i - off].term

    def entries(self, lo, hi):
        off = self.ents[0].index
        if lo <= off:
            raise CompactedError
        if hi > self.last() + 1:
            raise UnavailableError
        return self.ents[lo - off:hi - off]

    def append(self, es):
        first = self.first()
        if es[-1].index < first:
            return
        if first > es[0].index:
            es = es[first - es[0].index:]
        off = es[0].index - self.ents[0].index
        assert off <= len(self.ents)
        self.ents = self.ents[:off] + es

    def compact(self, i):
        off = self.ents[0].index
        self.ents = [Entry(self.ents[i - off].term, i)] + self.ents[i - off + 1:]

    def apply_snapshot(self, meta):
        self.snap = meta
        self.ents = [Entry(meta.term, meta.index)]


def assert_matches(g, m: Model):
    assert (g.first_index(), g.last_index()) == (m.first(), m.last())
    assert g.initial_state()[0] == m.hs
    assert g.snapshot().metadata == m.snap
    lo, hi = m.first() - 1, m.last() + 1
    for i in range(max(0, lo - 2), hi + 2):
        try:
            want = m.term(i)
        except (CompactedError, UnavailableError) as exc:
            with pytest.raises(type(exc)):
                g.term(i)
        else:
            assert g.term(i) == want, i
    assert g.entries(m.first(), m.last() + 1) == m.entries(m.first(), m.last() + 1)
    for lo in (m.first() - 1, m.first() + 1, m.last()):
        for hi in (m.last(), m.last() + 1, m.last() + 2):
            if lo > hi or lo < 1:
                continue
            try:
                want = m.entries(lo, hi)
            except (CompactedError, UnavailableError) as exc:
                with pytest.raises(type(exc)):
                    g.entries(lo, hi)
            else:
                assert g.entries(lo, hi) == want


_counter = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ops_match_reference_model(tmp_path, data):
    path = tmp_path / f"db{next(_counter)}"
    env = Env.open(path, map_size=1 << 20, sync=False)
    store = RaftLogStore(env, cache_entries=data.draw(st.integers(1, 16)))
    models = {1: Model(), 2: Model()}
    max_term = 1
    try:
        for _ in range(data.draw(st.integers(1, 25))):
            gid = data.draw(st.sampled_from([1, 2]))
            m = models[gid]
            op = data.draw(st.sampled_from(["append", "append", "append", "compact", "snapshot",
                                            "hs", "reopen"]))
            batch = WriteBatch()
            if op == "append":
                start = data.draw(st.integers(max(1, m.first() - 2), m.last() + 1))
                n = data.draw(st.integers(1, 12))
                max_term += data.draw(st.integers(0, 1))
                es = [Entry(max_term, i, 0, f"{gid}:{max_term}:{i}".encode())
                      for i in range(start, start + n)]
                store.stage_ready(batch, gid, None, es)
                m.append(list(es))
            elif op == "compact":
                if m.last() < m.first():
                    continue
                i = data.draw(st.integers(m.first(), m.last()))
                store.stage_compact(batch, gid, i)
                m.compact(i)
            elif op == "snapshot":
                i = max(m.last(), m.snap.index) + data.draw(st.integers(1, 5))
                max_term += 1
                meta = SnapshotMetadata(i, max_term, ConfState((1, 2, 3)))
                store.stage_ready(batch, gid, None, [], Snapshot(meta))
                m.apply_snapshot(meta)
            elif op == "hs":
                hs = HardState(max_term, data.draw(st.integers(0, 3)), m.last())
                store.stage_ready(batch, gid, hs, [])
                m.hs = hs
            else:
                env.close()
                env = Env.open(path, sync=False)
                store = RaftLogStore(env, cache_entries=data.draw(st.integers(1, 16)))
            env.commit_sync(batch)
            for g_id, model in models.items():
                assert_matches(store.group(g_id), model)
        env.close()
        env = Env.open(path, sync=False)
        for g_id, model in models.items():
            assert_matches(RaftLogStore(env).group(g_id), model)
    finally:
        env.close()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matches_the_raft_cores_memory_storage(tmp_path, data):
    """Differential check against nokvpy.raft.storage.MemoryStorage (when it exists)."""
    mem_mod = pytest.importorskip("nokvpy.raft.storage")
    mem = mem_mod.MemoryStorage()
    env = Env.open(tmp_path / f"mem{next(_counter)}", map_size=1 << 20, sync=False)
    store = RaftLogStore(env, cache_entries=4)
    g = store.group(1)
    term = 1
    try:
        for _ in range(data.draw(st.integers(1, 15))):
            batch = WriteBatch()
            op = data.draw(st.sampled_from(["append", "append", "compact", "snapshot"]))
            first, last = mem.first_index(), mem.last_index()
            if op == "append":
                start = data.draw(st.integers(max(1, first - 1), last + 1))
                term += data.draw(st.integers(0, 1))
                es = [Entry(term, i, 0, b"d%d" % i) for i in range(start, start + 5)]
                store.stage_ready(batch, 1, None, es)
                mem.append([Entry(e.term, e.index, e.type, e.data) for e in es])
            elif op == "compact" and last >= first:
                i = data.draw(st.integers(first, last))
                store.stage_compact(batch, 1, i)
                mem.compact(i)
            elif op == "snapshot":
                term += 1
                meta = SnapshotMetadata(last + 3, term, ConfState((1,)))
                store.stage_apply_snapshot(batch, 1, meta)
                mem.apply_snapshot(Snapshot(meta))
            env.commit_sync(batch)
            assert (g.first_index(), g.last_index()) == (mem.first_index(), mem.last_index())
            for i in range(mem.first_index() - 2, mem.last_index() + 2):
                try:
                    want = mem.term(i)
                except (CompactedError, UnavailableError) as exc:
                    with pytest.raises(type(exc)):
                        g.term(i)
                else:
                    assert g.term(i) == want
            if mem.last_index() >= mem.first_index():
                lo, hi = mem.first_index(), mem.last_index() + 1
                assert g.entries(lo, hi) == mem.entries(lo, hi)
                assert g.entries(lo, hi, 5) == mem.entries(lo, hi, 5)
    finally:
        env.close()
