"""Raft log storage for many raft groups in one LMDB environment.

Owns: `RaftLogStore`, which stages the persistence of raft groups' Readys (entries, hard
state, snapshots, compaction, conf state, destruction) into a `WriteBatch` whose commit then
updates each group's in-memory view (`GroupStorage`, groupstorage.py), and the `LogBackend`
protocol: where entries and hard states go, chosen once when the store is built. The
LMDB-only backend (raftlog_lmdb.py, `RaftLogStore(env)`) keeps them as LMDB records; the WAL
backend (raftlog_wal.py, `RaftLogStore.open_wal`, the stores' default) puts them in a
write-ahead log. Record encodings are in raftlog_codec.py. Never stores snapshot data (the
raftstore builds it from the KV table), never imports msgpack, and never changes the in-memory
view before the transaction that persists the change has committed.

Write path: `stage_*` methods add operations to a `WriteBatch` and an `on_commit` callback
that updates the view; the caller commits the batch (possibly together with applied KV data
and localmeta updates of the same loop turn) with `commit`. Stage-time validation reads the
committed view: a group's next Ready must be staged after the previous one committed
(persist, then advance).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol

from nokvpy.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.errors import SnapshotOutOfDateError
from nokvpy.storage.groupstorage import DEFAULT_CACHE_ENTRIES, GroupStorage
from nokvpy.storage.raftlog_codec import (
    GID,
    KEY,
    MAX_GID,
    TAG_CONF,
    TAG_SNAP,
    TAG_TRUNC,
    TRUNC,
    decode_snapshot_meta,
    decode_wal_items,
    encode_conf,
    encode_snapshot_meta,
    group_hi,
    group_lo,
    log_key,
)
from nokvpy.storage.raftlog_lmdb import LmdbBackend
from nokvpy.storage.raftlog_wal import WalBackend
from nokvpy.storage.schema import RAFT_LOG, RAFT_STATE
from nokvpy.storage.wal import Wal

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "GroupStorage",
    "LogBackend",
    "RaftLogStore",
    "ReadyItem",
    "decode_snapshot_meta",
    "decode_wal_items",
    "encode_snapshot_meta",
    "log_key",
]

ReadyItem = tuple[int, HardState | None, list[Entry], Snapshot | None]


class LogBackend(Protocol):
    """Where a `RaftLogStore` keeps entries and hard states (the rest is LMDB's in every
    mode: boundaries, snapshot metadata, conf states)."""

    @property
    def wal(self) -> Wal | None:
        """The write-ahead log holding them, or None (LMDB records)."""

    def attach(self, store: RaftLogStore, cache_entries: int) -> int:
        """Bind to the store; returns how many entries a group's view caches (given what
        the store was asked for)."""

    def load(self, g: GroupStorage) -> None:
        """Load a group's view from disk (LMDB records, then WAL items)."""

    def list_groups(self, recorded: set[int]) -> list[int]:
        """The groups with anything persisted, given those with an LMDB record."""

    def stage_ready_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        """Stage a Ready's hard state and its view update."""

    def stage_entries(self, batch: WriteBatch, g: GroupStorage, entries: list[Entry],
                      last: int) -> None:
        """Stage appending validated `entries` (above the boundary) to a log ending at
        `last`, replacing any suffix from their first index, and the view update."""

    def stage_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        """Stage a hard state as an LMDB record and its view update."""

    def stage_log_reset(self, batch: WriteBatch, g: GroupStorage) -> None:
        """A snapshot staged in `batch` replaces the group's whole log."""

    def stage_destroy(self, batch: WriteBatch, g: GroupStorage) -> None:
        """The group's LMDB records are deleted in `batch`."""

    async def commit(self, batch: WriteBatch) -> None:
        """Make a batch staged by the store durable."""

    async def rotate(self) -> None:
        """Restate the live log in a new WAL segment, dropping the older ones."""

    def close(self) -> None: ...


class RaftLogStore:
    """The raft logs of every group hosted in one environment."""

    def __init__(self, env: Env, *, cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 backend: LogBackend | None = None):
        """`backend`: where entries and hard states go (default: LMDB records; see
        `open_wal`). A WAL caches every live entry, so `cache_entries` is ignored then."""
        self._env = env
        self._state_db = env.db(RAFT_STATE)
        self._log_db = env.db(RAFT_LOG)
        self._groups: dict[int, GroupStorage] = {}
        self._backend: LogBackend = backend if backend is not None else LmdbBackend()
        self._cache_entries = self._backend.attach(self, cache_entries)

    @classmethod
    def open_wal(cls, env: Env, wal_dir: str, **wal_options: Any) -> RaftLogStore:
        """A WAL-mode store: opens (and replays) the WAL in `wal_dir`."""
        wal, frames = Wal.open(wal_dir, **wal_options)
        try:
            return cls(env, backend=WalBackend(wal, frames))
        except BaseException:
            wal.close()
            raise

    @property
    def wal(self) -> Wal | None:
        """The write-ahead log holding entries and hard states (None: all in LMDB)."""
        return self._backend.wal

    def close(self) -> None:
        self._backend.close()

    @property
    def env(self) -> Env:
        return self._env

    @property
    def state_db(self) -> Any:
        return self._state_db

    @property
    def loaded_groups(self) -> dict[int, GroupStorage]:
        """The views loaded so far, by group id (the store's own dict: do not change it)."""
        return self._groups

    def group(self, group_id: int) -> GroupStorage:
        """The group's Storage view, loaded from disk on first use (empty if new)."""
        g = self._groups.get(group_id)
        if g is None:
            if not 0 < group_id <= MAX_GID:
                raise ValueError(f"group id must be a positive u64, got {group_id}")
            g = GroupStorage(self._env, group_id, self._cache_entries)
            self._backend.load(g)
            self._groups[group_id] = g
        return g

    def _recorded_groups(self) -> set[int]:
        """Ids of every group with an LMDB record."""

        def read(txn):
            found: set[int] = set()
            for db in (self._state_db, self._log_db):
                with txn.cursor(db=db) as cur:
                    ok = cur.first()
                    while ok:
                        gid = GID.unpack_from(cur.key())[0]
                        found.add(gid)
                        hi = group_hi(gid)
                        ok = hi is not None and cur.set_range(hi)
            return found

        return self._env.read(read)

    def list_groups(self) -> list[int]:
        """Ids of every group with anything persisted, ascending."""
        return self._backend.list_groups(self._recorded_groups())

    # ------------------------------------------------------------ staging

    def stage_ready(
        self,
        batch: WriteBatch,
        group_id: int,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Add one Ready's persistence to `batch`: snapshot (if any, first), then entries
        (overwriting any conflicting suffix), then hard state. The view changes on commit."""
        g = self.group(group_id)
        trunc, last = g.boundary_index, g.last_index()
        if snapshot is not None and snapshot.metadata.index:
            self.stage_apply_snapshot(batch, group_id, snapshot.metadata)
            trunc = last = snapshot.metadata.index
        if entries:
            self._stage_append(batch, g, entries, trunc, last)
        if hard_state is not None:
            self._backend.stage_ready_hard_state(batch, g, hard_state)

    def _stage_append(
        self, batch: WriteBatch, g: GroupStorage, entries: list[Entry], trunc: int, last: int
    ) -> None:
        gid = g.group_id
        first = entries[0].index
        new_last = entries[-1].index
        if new_last - first != len(entries) - 1:
            raise ValueError(f"group {gid}: entries {first}..{new_last} are not contiguous")
        if first > last + 1:
            raise ValueError(f"group {gid}: missing log entries {last + 1}..{first - 1}")
        if new_last <= trunc:
            return  # all already compacted (etcd ignores them too)
        if first <= trunc:
            entries = entries[trunc + 1 - first :]
        self._backend.stage_entries(batch, g, entries, last)

    def stage_hard_state(self, batch: WriteBatch, group_id: int, hs: HardState) -> None:
        self._backend.stage_hard_state(batch, self.group(group_id), hs)

    def stage_compact(self, batch: WriteBatch, group_id: int, index: int) -> None:
        """Drop entries <= index, keeping (index, term(index)) as the boundary."""
        g = self.group(group_id)
        if index <= g.boundary_index:
            raise CompactedError(
                f"group {group_id}: compact({index}) at or below first index - 1 "
                f"({g.boundary_index})"
            )
        if index > g.last_index():
            raise UnavailableError(
                f"group {group_id}: compact({index}) beyond last index {g.last_index()}"
            )
        term = g.term(index)
        batch.delete_range(RAFT_LOG, group_lo(group_id), KEY.pack(group_id, index + 1))
        batch.put(RAFT_STATE, GID.pack(group_id) + TAG_TRUNC, TRUNC.pack(index, term))
        batch.on_commit(partial(g.on_compact, index, term))

    def stage_apply_snapshot(
        self, batch: WriteBatch, group_id: int, meta: SnapshotMetadata
    ) -> None:
        """Restore the group from a snapshot: drop its whole log; first_index = index + 1."""
        g = self.group(group_id)
        if meta.index <= g.snapshot_metadata.index:
            raise SnapshotOutOfDateError(
                f"group {group_id}: snapshot at {meta.index} is not newer than {g.snapshot_metadata.index}"
            )
        prefix = GID.pack(group_id)
        batch.delete_range(RAFT_LOG, group_lo(group_id), group_hi(group_id))
        batch.put(RAFT_STATE, prefix + TAG_TRUNC, TRUNC.pack(meta.index, meta.term))
        batch.put(RAFT_STATE, prefix + TAG_SNAP, encode_snapshot_meta(meta))
        batch.delete(RAFT_STATE, prefix + TAG_CONF)
        self._backend.stage_log_reset(batch, g)
        batch.on_commit(partial(g.on_snapshot, meta))

    def stage_create_snapshot(
        self, batch: WriteBatch, group_id: int, index: int, conf_state: ConfState
    ) -> SnapshotMetadata:
        """Record snapshot metadata at an applied `index` without touching the log (etcd's
        CreateSnapshot); snapshot() answers it from then on."""
        g = self.group(group_id)
        if index <= g.snapshot_metadata.index:
            raise SnapshotOutOfDateError(
                f"group {group_id}: snapshot at {index} is not newer than {g.snapshot_metadata.index}"
            )
        meta = SnapshotMetadata(index, g.term(index), conf_state)
        batch.put(RAFT_STATE, GID.pack(group_id) + TAG_SNAP, encode_snapshot_meta(meta))
        batch.on_commit(partial(g.on_snapshot_meta, meta))
        return meta

    def stage_conf_state(
        self, batch: WriteBatch, group_id: int, index: int, conf_state: ConfState
    ) -> None:
        """Persist the conf state in force at applied `index`; initial_state() prefers it over
        the snapshot's conf state when index >= snapshot index."""
        g = self.group(group_id)
        batch.put(RAFT_STATE, GID.pack(group_id) + TAG_CONF, encode_conf(index, conf_state))
        batch.on_commit(partial(g.on_conf_state, index, conf_state))

    def stage_destroy_group(self, batch: WriteBatch, group_id: int) -> None:
        """Delete everything persisted for the group; its view becomes empty on commit."""
        g = self.group(group_id)
        batch.delete_range(RAFT_LOG, group_lo(group_id), group_hi(group_id))
        batch.delete_range(RAFT_STATE, GID.pack(group_id), group_hi(group_id))
        self._backend.stage_destroy(batch, g)
        batch.on_commit(g.reset)

    # ------------------------------------------------------------ committing helpers

    async def write_ready(
        self, items: Iterable[ReadyItem], batch: WriteBatch | None = None
    ) -> None:
        """Persist the Readys of many groups, items of (group_id, hard_state | None, entries,
        snapshot | None), in one fsynced transaction. If `batch` is given (holding e.g. applied
        KV data and localmeta updates of the same loop turn) the Readys are added to it and
        the whole batch commits atomically."""
        if batch is None:
            batch = WriteBatch()
        for group_id, hs, entries, snapshot in items:
            self.stage_ready(batch, group_id, hs, entries, snapshot)
        await self.commit(batch)

    async def commit(self, batch: WriteBatch) -> None:
        """Commit a batch staged here: one fsynced transaction (and, in WAL mode, its WAL
        records after it)."""
        await self._backend.commit(batch)

    async def rotate_wal(self) -> None:
        """Start a new WAL segment restating every group's live entries and hard state, and
        delete the older ones (WAL mode only)."""
        await self._backend.rotate()

    async def compact(self, group_id: int, index: int) -> None:
        batch = WriteBatch()
        self.stage_compact(batch, group_id, index)
        await self.commit(batch)

    async def apply_snapshot(self, group_id: int, meta: SnapshotMetadata) -> None:
        batch = WriteBatch()
        self.stage_apply_snapshot(batch, group_id, meta)
        await self.commit(batch)

    async def create_snapshot(
        self, group_id: int, index: int, conf_state: ConfState
    ) -> SnapshotMetadata:
        batch = WriteBatch()
        meta = self.stage_create_snapshot(batch, group_id, index, conf_state)
        await self._env.commit(batch)
        return meta

    async def destroy_group(self, group_id: int) -> None:
        batch = WriteBatch()
        self.stage_destroy_group(batch, group_id)
        await self.commit(batch)

