"""RaftLogStore in WAL mode against an etcd MemoryStorage model, across reopens and crashes.

A "crash" here closes the store without flushing the WAL: frames queued without an fsync (a
hard state that only moves the commit index) are lost, everything else must survive. The
"regressions" sections pin faults found while writing these tests, all fixed.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nokvpy import failpoints
from nokvpy.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from nokvpy.storage import Env, InvalidKeyError, RaftLogStore, StorageFailedError, WriteBatch


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear_all()
    yield
    failpoints.clear_all()


def ents(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    return [Entry(term, i, 0, f"{tag}{i}".encode()) for i in range(first, last + 1)]


def open_store(path: Path, **wal_options) -> RaftLogStore:
    env = Env.open(path / "db", map_size=1 << 22, sync=False)
    try:
        return RaftLogStore.open_wal(env, str(path / "wal"), **wal_options)
    except BaseException:
        env.close()
        raise


def close(store: RaftLogStore) -> None:
    """Close without flushing the WAL: what a crash leaves (queued frames are lost)."""
    store.close()
    store.env.close()


def reopen(store: RaftLogStore, path: Path, **wal_options) -> RaftLogStore:
    close(store)
    return open_store(path, **wal_options)


def wal_files(path: Path) -> list[Path]:
    return sorted((path / "wal").glob("*.wal"))


# ---------------------------------------------------------------- the model


class GroupModel:
    """etcd MemoryStorage (ents[0] is the boundary entry) plus what a crash keeps."""

    def __init__(self) -> None:
        self.ents = [Entry(0, 0)]
        self.hs = HardState()
        self.durable_hs = HardState()  # the hard state a crash now falls back to
        self.snap = SnapshotMetadata()

    def first(self) -> int:
        return self.ents[0].index + 1

    def last(self) -> int:
        return self.ents[0].index + len(self.ents) - 1

    def term(self, i: int) -> int:
        off = self.ents[0].index
        if i < off:
            raise CompactedError
        if i - off >= len(self.ents):
            raise UnavailableError
        return self.ents[i - off].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        off = self.ents[0].index
        if lo <= off:
            raise CompactedError
        if hi > self.last() + 1:
            raise UnavailableError
        return self.ents[lo - off:hi - off]

    def append(self, es: list[Entry]) -> bool:
        """Returns whether anything is written (entries at or below the boundary are not)."""
        first = self.first()
        if es[-1].index < first:
            return False
        if first > es[0].index:
            es = es[first - es[0].index:]
        off = es[0].index - self.ents[0].index
        assert off <= len(self.ents)
        self.ents = self.ents[:off] + es
        return True

    def compact(self, i: int) -> None:
        off = self.ents[0].index
        self.ents = [Entry(self.ents[i - off].term, i)] + self.ents[i - off + 1:]

    def apply_snapshot(self, meta: SnapshotMetadata) -> None:
        self.snap = meta
        self.ents = [Entry(meta.term, meta.index)]

    def is_empty(self) -> bool:
        return self.last() == 0 and self.snap.index == 0 and self.hs == HardState()


def assert_matches(g, m: GroupModel, where: str) -> None:
    assert (g.first_index(), g.last_index()) == (m.first(), m.last()), where
    assert g.hard_state == m.hs, where
    assert g.initial_state() == (m.hs, m.snap.conf_state), where
    assert g.snapshot().metadata == m.snap, where
    assert g.is_empty() == m.is_empty(), where
    for i in range(max(0, m.first() - 3), m.last() + 3):
        try:
            want = m.term(i)
        except (CompactedError, UnavailableError) as exc:
            with pytest.raises(type(exc)):
                g.term(i)
        else:
            assert g.term(i) == want, f"{where}: term({i})"
    assert g.entries(m.first(), m.last() + 1) == m.entries(m.first(), m.last() + 1), where
    if m.last() >= m.first():
        with pytest.raises(CompactedError):
            g.entries(m.first() - 1, m.last() + 1)
        with pytest.raises(UnavailableError):
            g.entries(m.first(), m.last() + 2)
        mid = (m.first() + m.last()) // 2
        assert g.entries(mid, m.last() + 1, max_size=0) == m.entries(mid, mid + 1), where


# ---------------------------------------------------------------- random operations


class Harness:
    """Random operations on a WAL-mode store and its model (one hypothesis example)."""

    def __init__(self, path: Path, data: st.DataObject, groups: int, segment_bytes: int):
        self.path = path
        self.data = data
        self.gids = list(range(1, groups + 1))
        self.segment_bytes = segment_bytes
        self.models = {gid: GroupModel() for gid in self.gids}
        self.term = 1
        self.seq = itertools.count()
        self.store = open_store(path, segment_bytes=segment_bytes)

    def draw(self, strategy, label: str):
        return self.data.draw(strategy, label=label)

    # -------------------------------------------------------- helpers

    def _all_durable(self) -> None:
        for m in self.models.values():
            m.durable_hs = m.hs

    async def _commit(self, fn, sync: bool) -> None:
        """Run a committing coroutine; check it fsynced the WAL exactly when it had to."""
        wal = self.store.wal
        appends, rotations = wal.stats.appends, wal.stats.rotations
        await fn()
        if wal.stats.rotations != rotations:  # automatic rotation: everything is durable
            self._all_durable()
        elif sync:
            assert wal.stats.appends == appends + 1, "a frame that needed an fsync got none"
            self._all_durable()
        else:
            assert wal.stats.appends == appends, "nothing here needed an fsync"

    def check(self, where: str) -> None:
        for gid, m in self.models.items():
            assert_matches(self.store.group(gid), m, f"{where}, group {gid}")
        live = [gid for gid, m in self.models.items() if not m.is_empty()]
        assert self.store.list_groups() == live, where

    def _data(self, gid: int, i: int) -> bytes:
        pad = self.draw(st.integers(0, 40), "pad")
        return f"g{gid}t{self.term}i{i}n{next(self.seq)}".encode() + b"p" * pad

    def _hard_state(self, m: GroupModel) -> tuple[HardState | None, bool]:
        """A hard state for a Ready: none, commit-only, or a term/vote change (needs fsync)."""
        kind = self.draw(st.sampled_from(["none", "commit", "commit", "vote"]), "hs kind")
        if kind == "none":
            return None, False
        commit = self.draw(st.integers(0, max(m.last(), 0) + 1), "commit")
        if kind == "commit":
            return HardState(m.hs.term, m.hs.vote, commit), False
        term = max(self.term, m.hs.term) + self.draw(st.integers(0, 1), "term bump")
        vote = self.draw(st.integers(0, 3), "vote")
        if (term, vote) == (m.hs.term, m.hs.vote):
            term += 1
        self.term = max(self.term, term)
        return HardState(term, vote, commit), True

    def _ready_item(self, gid: int, allow_snapshot: bool = True):
        """Plan one group's Ready: returns (item, needs an fsync) and updates the model."""
        m = self.models[gid]
        snap = None
        if allow_snapshot and self.draw(st.integers(0, 9), "snapshot?") == 0:
            self.term += self.draw(st.integers(0, 1), "snap term bump")
            top = max(m.last(), m.snap.index)
            index = self.draw(st.integers(m.snap.index + 1, top + 4), "snap index")
            meta = SnapshotMetadata(index, self.term, ConfState((1, 2, gid)))
            snap = Snapshot(meta)
            m.durable_hs = m.hs  # stage_apply_snapshot writes the view's hard state to LMDB
            m.apply_snapshot(meta)
        es: list[Entry] = []
        sync = False
        if self.draw(st.integers(0, 9), "entries?") < 7:
            start = self.draw(st.integers(max(1, m.first() - 2), m.last() + 1), "start")
            n = self.draw(st.integers(1, 6), "n")
            self.term += self.draw(st.integers(0, 1), "entries term bump")
            es = [Entry(self.term, i, 0, self._data(gid, i)) for i in range(start, start + n)]
            sync = m.append(list(es))
        hs, hs_sync = self._hard_state(m)
        if hs is not None:
            m.hs = hs
        return (gid, hs, es, snap), sync or hs_sync

    # -------------------------------------------------------- operations

    async def op_ready(self) -> None:
        gids = self.draw(st.lists(st.sampled_from(self.gids), min_size=1, unique=True), "gids")
        items, sync = [], False
        for gid in gids:
            item, s = self._ready_item(gid)
            items.append(item)
            sync |= s
        await self._commit(lambda: self.store.write_ready(items), sync)

    async def op_commit_only(self) -> None:
        """Readys holding only commit-index changes: queued, no fsync."""
        gids = self.draw(st.lists(st.sampled_from(self.gids), min_size=1, unique=True), "gids")
        items = []
        for gid in gids:
            m = self.models[gid]
            m.hs = HardState(m.hs.term, m.hs.vote, self.draw(st.integers(0, m.last() + 1), "c"))
            items.append((gid, m.hs, [], None))
        await self._commit(lambda: self.store.write_ready(items), False)

    async def op_compact(self) -> None:
        candidates = [g for g in self.gids if self.models[g].last() >= self.models[g].first()]
        if not candidates:
            return
        gid = self.draw(st.sampled_from(candidates), "gid")
        m = self.models[gid]
        i = self.draw(st.integers(m.first(), m.last()) | st.just(m.last()), "compact to")
        await self._commit(lambda: self.store.compact(gid, i), False)
        m.compact(i)

    async def op_snapshot(self) -> None:
        gid = self.draw(st.sampled_from(self.gids), "gid")
        m = self.models[gid]
        top = max(m.last(), m.snap.index)
        index = self.draw(st.integers(m.snap.index + 1, top + 4), "snap index")
        self.term += 1
        meta = SnapshotMetadata(index, self.term, ConfState((gid,), (9,)))
        await self._commit(lambda: self.store.apply_snapshot(gid, meta), False)
        m.durable_hs = m.hs
        m.apply_snapshot(meta)

    async def op_destroy(self) -> None:
        gid = self.draw(st.sampled_from(self.gids), "gid")
        await self._commit(lambda: self.store.destroy_group(gid), False)
        self.models[gid] = GroupModel()

    async def op_lmdb_hard_state(self) -> None:
        """stage_hard_state through a direct batch (optionally with Readys of other groups)."""
        gid = self.draw(st.sampled_from(self.gids), "gid")
        m = self.models[gid]
        self.term += self.draw(st.integers(0, 1), "term bump")
        hs = HardState(max(self.term, m.hs.term), self.draw(st.integers(0, 3), "vote"),
                       self.draw(st.integers(0, m.last() + 1), "commit"))
        batch = WriteBatch()
        self.store.stage_hard_state(batch, gid, hs)
        m.hs = m.durable_hs = hs
        sync = False
        others = [g for g in self.gids if g != gid]
        for other in self.draw(st.lists(st.sampled_from(others), unique=True), "others") \
                if others else []:
            (g, ohs, es, snap), s = self._ready_item(other, allow_snapshot=False)
            self.store.stage_ready(batch, g, ohs, es, snap)
            sync |= s
        await self._commit(lambda: self.store.commit(batch), sync)

    async def op_reset_batch(self) -> None:
        """Destroy / snapshot / LMDB hard state of one group staged together in one batch;
        "child" is what the raftstore stages for a split child (destroy, snapshot, hard
        state)."""
        gid = self.draw(st.sampled_from(self.gids), "gid")
        m = self.models[gid]
        kind = self.draw(st.sampled_from(["child", "destroy+snap", "hs+snap", "destroy+hs"]),
                         "kind")
        index = m.snap.index + self.draw(st.integers(1, 5), "snap index")
        self.term += 1
        meta = SnapshotMetadata(index, self.term, ConfState((1, 2, 3)))
        hs = HardState(max(m.hs.term, self.term), m.hs.vote, index)
        batch = WriteBatch()
        if kind == "hs+snap":
            self.store.stage_hard_state(batch, gid, hs)
        else:
            self.store.stage_destroy_group(batch, gid)
            m = GroupModel()
        if kind != "destroy+hs":
            self.store.stage_apply_snapshot(batch, gid, meta)
            m.apply_snapshot(meta)
        if kind in ("child", "destroy+hs"):
            self.store.stage_hard_state(batch, gid, hs)
        if kind != "destroy+snap":
            m.hs = m.durable_hs = hs
        await self._commit(lambda: self.store.commit(batch), False)
        self.models[gid] = m

    async def op_rotate(self) -> None:
        await self._commit(self.store.rotate_wal, True)
        self._all_durable()

    async def op_flush(self) -> None:
        await self.store.wal.flush()
        self._all_durable()

    async def op_reopen(self) -> None:
        crash = self.draw(st.booleans(), "crash")
        wal = self.store.wal
        if not crash:
            await wal.flush()
            self._all_durable()
        before = {gid: m.hs for gid, m in self.models.items()}
        for m in self.models.values():
            assert (m.durable_hs.term, m.durable_hs.vote) == (m.hs.term, m.hs.vote)
            m.hs = m.durable_hs
        self.store = reopen(self.store, self.path, segment_bytes=self.segment_bytes)
        for gid in self.models:
            hs = self.store.group(gid).hard_state
            # A crash may lose a commit-only hard state: commit may go back, term/vote never.
            assert (hs.term, hs.vote) == (before[gid].term, before[gid].vote), gid
            assert hs.commit == before[gid].commit or crash, gid

    async def run(self) -> None:
        ops = {
            "ready": (self.op_ready, 6),
            "commit_only": (self.op_commit_only, 4),
            "compact": (self.op_compact, 2),
            "snapshot": (self.op_snapshot, 2),
            "destroy": (self.op_destroy, 1),
            "lmdb_hs": (self.op_lmdb_hard_state, 2),
            "reset_batch": (self.op_reset_batch, 2),
            "rotate": (self.op_rotate, 1),
            "flush": (self.op_flush, 1),
            "reopen": (self.op_reopen, 4),
        }
        names = [name for name, (_, weight) in ops.items() for _ in range(weight)]
        try:
            for step in range(self.draw(st.integers(1, 40), "steps")):
                name = self.draw(st.sampled_from(names), "op")
                await ops[name][0]()
                self.check(f"after step {step} ({name})")
            await self.op_reopen()
            self.check("after the final reopen")
        finally:
            close(self.store)


_counter = itertools.count()


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_operations_match_the_model_across_reopens(tmp_path, data):
    groups = data.draw(st.integers(1, 3), label="groups")
    segment_bytes = data.draw(st.sampled_from([300, 1500, 1 << 20]), label="segment_bytes")
    path = tmp_path / f"s{next(_counter)}"
    trio.run(Harness(path, data, groups, segment_bytes).run)


def test_small_segments_rotate_automatically(tmp_path):
    """Not left to chance: a long run with tiny segments rotates many times."""

    async def main():
        store = open_store(tmp_path, segment_bytes=512)
        models = {1: GroupModel(), 2: GroupModel()}
        for n in range(1, 200):
            gid = 1 + n % 2
            m = models[gid]
            es = [Entry(n, i, 0, b"%d" % i * 8) for i in range(m.last() + 1, m.last() + 4)]
            hs = HardState(n, gid, m.last())
            await store.write_ready([(gid, hs, es, None)])
            m.append(es)
            m.hs = m.durable_hs = hs
            if n % 40 == 0:
                await store.compact(gid, m.last() - 2)
                m.compact(m.last() - 2)
        assert store.wal.stats.rotations >= 5
        assert len(wal_files(tmp_path)) == 1
        store = reopen(store, tmp_path, segment_bytes=512)
        for gid, m in models.items():
            assert_matches(store.group(gid), m, f"group {gid}")
        close(store)

    trio.run(main)


# ---------------------------------------------------------------- targeted


async def test_snapshot_voids_stale_wal_entries_beyond_its_index(tmp_path):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 8), ents(1, 20, 1), None)])
    meta = SnapshotMetadata(10, 1, ConfState((1, 2)))
    await store.apply_snapshot(1, meta)  # entries 11..20 are still in the WAL
    g = store.group(1)
    assert (g.first_index(), g.last_index()) == (11, 10)
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(10)) == (11, 10, 1)
    with pytest.raises(UnavailableError):
        g.term(11)
    assert g.snapshot().metadata == meta and g.hard_state == HardState(1, 1, 8)
    # New entries after the snapshot replace the stale ones for good.
    await store.write_ready([(1, None, ents(11, 12, 2, "new"), None)])
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert g.last_index() == 12 and g.entries(11, 13) == ents(11, 12, 2, "new")
    close(store)


async def test_snapshot_ready_with_entries_voids_older_entries(tmp_path):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 3), ents(1, 30, 1, "old"), None)])
    meta = SnapshotMetadata(12, 3, ConfState((1,)))
    await store.write_ready([(1, HardState(3, 2, 12), ents(13, 14, 3, "new"), Snapshot(meta))])
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.first_index(), g.last_index()) == (13, 14)
    assert g.entries(13, 15) == ents(13, 14, 3, "new")
    assert g.hard_state == HardState(3, 2, 12) and g.term(12) == 3
    close(store)


@pytest.mark.parametrize("rotate", [False, True])
async def test_destroyed_then_recreated_group_replays_only_its_new_entries(tmp_path, rotate):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(7, 3, 9), ents(1, 10, 7, "old"), None),
                             (2, HardState(1, 1, 1), ents(1, 2, 1), None)])
    await store.destroy_group(1)
    assert store.group(1).is_empty()
    store = reopen(store, tmp_path)
    assert store.group(1).is_empty() and store.group(2).last_index() == 2
    await store.write_ready([(1, HardState(2, 0, 0), ents(1, 3, 2, "new"), None)])
    if rotate:
        await store.rotate_wal()
        assert len(wal_files(tmp_path)) == 1
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.first_index(), g.last_index()) == (1, 3)
    assert g.entries(1, 4) == ents(1, 3, 2, "new")
    assert g.hard_state == HardState(2, 0, 0)
    assert store.group(2).entries(1, 3) == ents(1, 2, 1)
    close(store)


async def test_commit_only_hard_state_is_not_fsynced_and_a_crash_may_lose_it(tmp_path):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(2, 1, 3), ents(1, 5, 2), None),
                             (2, HardState(2, 2, 1), ents(1, 1, 2), None)])
    appends = store.wal.stats.appends
    await store.write_ready([(1, HardState(2, 1, 5), [], None)])
    assert store.wal.stats.appends == appends  # queued only
    assert store.group(1).hard_state == HardState(2, 1, 5)
    store = reopen(store, tmp_path)  # crash
    assert store.group(1).hard_state == HardState(2, 1, 3)  # commit went back, term/vote kept
    # A later synced frame (of another group) carries the queued one to disk.
    await store.write_ready([(1, HardState(2, 1, 5), [], None)])
    await store.write_ready([(2, None, ents(2, 2, 2), None)])
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == HardState(2, 1, 5)
    # A vote change is fsynced at once.
    await store.write_ready([(1, HardState(3, 0, 5), [], None)])
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == HardState(3, 0, 5)
    close(store)


async def test_lmdb_hard_state_outranks_older_wal_hard_states(tmp_path):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(4, 2, 3), ents(1, 3, 4), None)])
    batch = WriteBatch()
    store.stage_hard_state(batch, 1, HardState(5, 0, 3))
    await store.commit(batch)
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == HardState(5, 0, 3)
    await store.write_ready([(1, HardState(6, 1, 3), [], None)])  # newer WAL record wins
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == HardState(6, 1, 3)
    close(store)


@pytest.mark.parametrize("write_reached_disk", [False, True])
async def test_failed_wal_fsync_after_the_lmdb_part_leaves_a_consistent_store(
        tmp_path, write_reached_disk):
    """commit(): LMDB (snapshot, void mark) first, then the WAL frame. If the frame's fsync
    fails, reopen shows the snapshot, with or without the frame, never the voided entries."""
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 5), ents(1, 20, 1, "old"), None)])
    (seg,) = wal_files(tmp_path)
    size = seg.stat().st_size
    meta = SnapshotMetadata(10, 2, ConfState((1, 2, 3)))
    failpoints.set("storage.wal_before_sync", "1*raise")
    with pytest.raises(StorageFailedError):
        await store.write_ready([(1, HardState(2, 2, 10), ents(11, 12, 2, "new"), Snapshot(meta))])
    g = store.group(1)  # the LMDB part committed (and its view update ran); the frame did not
    assert (g.first_index(), g.last_index()) == (11, 10)
    assert g.hard_state == HardState(1, 1, 5)
    with pytest.raises(StorageFailedError):
        await store.write_ready([(1, None, ents(11, 11, 2), None)])
    if not write_reached_disk:
        close(store)
        assert seg.stat().st_size > size
        os.truncate(seg, size)  # the page cache dropped the unsynced write
    store = reopen(store, tmp_path) if write_reached_disk else open_store(tmp_path)
    g = store.group(1)
    assert g.snapshot().metadata == meta and g.first_index() == 11
    if write_reached_disk:
        assert g.last_index() == 12 and g.entries(11, 13) == ents(11, 12, 2, "new")
        assert g.hard_state == HardState(2, 2, 10)
    else:
        assert g.last_index() == 10 and g.hard_state == HardState(1, 1, 5)
    close(store)


async def test_failed_lmdb_commit_writes_nothing_to_the_wal(tmp_path):
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 5), ents(1, 20, 1), None)])
    next_lsn, (seg,) = store.wal.next_lsn, wal_files(tmp_path)
    size = seg.stat().st_size
    failpoints.set("storage.before_commit", "1*raise")
    meta = SnapshotMetadata(10, 2, ConfState((1,)))
    with pytest.raises(StorageFailedError):
        await store.write_ready([(1, HardState(2, 2, 10), ents(11, 12, 2), Snapshot(meta))])
    assert store.wal.next_lsn == next_lsn and seg.stat().st_size == size
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.first_index(), g.last_index()) == (1, 20)
    assert g.hard_state == HardState(1, 1, 5) and g.snapshot().metadata == SnapshotMetadata()
    close(store)


async def test_env_commit_refuses_a_batch_carrying_wal_records(tmp_path):
    store = open_store(tmp_path)
    batch = WriteBatch()
    store.stage_ready(batch, 1, HardState(1, 1, 0), ents(1, 2, 1))
    assert batch.journal is not None
    with pytest.raises(ValueError, match="WAL records"):
        await store.env.commit(batch)
    with pytest.raises(ValueError, match="WAL records"):
        store.env.commit_sync(batch)
    with pytest.raises(ValueError, match="WAL records"):
        WriteBatch().extend(batch)
    g = store.group(1)
    assert g.last_index() == 0 and g.hard_state == HardState()
    await store.commit(batch)  # the right way
    assert g.last_index() == 2
    close(store)


# ---------------------------------------------------------------- regressions


async def test_compacting_the_whole_log_after_a_shortening_overwrite(tmp_path):
    """Replay of an entries record wholly at or below the boundary still ends the log there."""
    store = open_store(tmp_path)
    await store.write_ready([(1, None, ents(1, 10, 1), None)])
    await store.write_ready([(1, None, ents(3, 4, 2, "new"), None)])  # log is now 1..4
    await store.compact(1, 4)
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(4)) == (5, 4, 2)
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.first_index(), g.last_index(), g.term(4)) == (5, 4, 2)  # was: last 10
    close(store)


async def test_lost_unsynced_frame_does_not_let_new_lsns_fall_below_a_void_mark(tmp_path):
    """A crash that loses queued frames must not let new LSNs fall below a void mark."""
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 2), ents(1, 5, 1), None)])  # lsn 1
    await store.write_ready([(1, HardState(1, 1, 4), [], None)])  # lsn 2, queued only
    await store.apply_snapshot(1, SnapshotMetadata(10, 2, ConfState((1,))))  # void mark 3
    store = reopen(store, tmp_path)  # crash: lsn 2 is lost
    assert store.wal.next_lsn >= 3  # was: 2 again
    await store.write_ready([(1, HardState(2, 1, 10), ents(11, 12, 2), None)])  # acked
    g = store.group(1)
    assert g.last_index() == 12
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.last_index(), g.hard_state) == (12, HardState(2, 1, 10))  # was: 10, old hs
    close(store)


async def test_lost_unsynced_frame_does_not_hide_a_newer_vote_behind_an_lmdb_hard_state(tmp_path):
    """... nor below an LMDB hard state's LSN (a newer fsynced vote would be ignored)."""
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 0), ents(1, 5, 1), None)])
    await store.write_ready([(1, HardState(1, 1, 3), [], None)])  # queued only
    batch = WriteBatch()
    store.stage_hard_state(batch, 1, HardState(1, 1, 4))
    await store.commit(batch)
    store = reopen(store, tmp_path)  # crash
    await store.write_ready([(1, HardState(2, 2, 4), [], None)])  # a vote: fsynced
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == HardState(2, 2, 4)  # was: HardState(1, 1, 4)
    close(store)


async def test_rotation_with_every_group_empty_then_recreate(tmp_path):
    """An empty restatement must not let LSNs restart at 1 after a reopen."""
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(1, 1, 0), ents(1, 5, 1), None)])
    await store.destroy_group(1)
    await store.rotate_wal()
    store = reopen(store, tmp_path)
    await store.write_ready([(1, HardState(3, 1, 0), ents(1, 2, 3, "new"), None)])
    store = reopen(store, tmp_path)
    g = store.group(1)
    assert (g.last_index(), g.hard_state) == (2, HardState(3, 1, 0))  # was: empty group
    close(store)


@pytest.mark.parametrize("first", ["destroy", "hard_state"])
async def test_snapshot_staged_after_a_hard_state_change_in_one_batch_keeps_it(tmp_path, first):
    """A snapshot staged after a hard state change in the same batch keeps that change."""
    store = open_store(tmp_path)
    await store.write_ready([(1, HardState(5, 2, 3), ents(1, 5, 5), None)])
    batch = WriteBatch()
    if first == "destroy":
        store.stage_destroy_group(batch, 1)
    else:
        store.stage_hard_state(batch, 1, HardState(6, 3, 5))
    store.stage_apply_snapshot(batch, 1, SnapshotMetadata(10, 5, ConfState((1,))))
    await store.commit(batch)
    view = store.group(1).hard_state
    assert view == (HardState() if first == "destroy" else HardState(6, 3, 5))
    store = reopen(store, tmp_path)
    assert store.group(1).hard_state == view  # was: HardState(5, 2, 3)
    close(store)


async def test_destroyed_group_is_not_listed(tmp_path):
    """Like LMDB mode, WAL mode leaves destroyed groups out of list_groups()."""
    store = open_store(tmp_path)
    await store.write_ready([(gid, HardState(1, 1, 0), ents(1, 2, 1), None) for gid in (1, 2)])
    await store.destroy_group(2)
    assert store.list_groups() == [1]
    store = reopen(store, tmp_path)
    assert store.list_groups() == [1]
    close(store)


# ---------------------------------------------------------------- more regressions


async def test_a_failed_batch_with_a_void_mark_does_not_stop_rotation(tmp_path):
    store = open_store(tmp_path, segment_bytes=512)
    await store.write_ready([(1, HardState(1, 1, 0), ents(1, 1, 1), None)])
    batch = WriteBatch()
    store.stage_destroy_group(batch, 2)
    batch.put("kv", b"", b"an empty key is refused")
    with pytest.raises(InvalidKeyError):
        await store.commit(batch)
    for i in range(2, 100):  # about 8 KiB of frames: many times segment_bytes
        await store.write_ready([(1, None, [Entry(1, i, 0, b"p" * 50)], None)])
    assert store.wal.size > 4096
    assert store.wal.stats.rotations > 0  # actual: 0
    close(store)
