"""Raft log storage with entries and hard states in a write-ahead log: the WAL backend.

Owns: `WalBackend`, the `raftlog.LogBackend` of `RaftLogStore.open_wal` (the stores'
default): entries and hard states go to an append-only write-ahead log (`wal.Wal`) instead of LMDB, one frame per commit
and one fdatasync per frame, and every live entry stays in memory (the log is compacted a few
thousand entries behind the applied index). `stage_ready` puts them in the batch's `journal`;
`commit(batch)` commits the batch's LMDB part first (snapshots, boundaries), then the frame. A
hard state that only moves the commit index is queued without an fsync (it reaches the disk
with the next frame; a restart may resume with a lower commit index, never below the applied
index, which the caller raises it to). LMDB keeps the boundary, snapshot and conf records
(staged by the store in every mode), plus per group a void mark (`v`: WAL frames below this LSN no
longer belong to the group: written when a snapshot resets the log or the group is
destroyed) and, for hard states written through LMDB, the LSN they were written at. Replay at
open applies, per group, its LMDB records and then its WAL records at or above the void mark,
in LSN order. When the newest segment is full, the WAL is rotated: a new segment restates
every group's live entries and hard state, and the older segments are deleted. Never changes
a group's view before the frame (or transaction) holding the change is durable or queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from nokvpy.raft.types import Entry, HardState
from nokvpy.storage.env import WriteBatch
from nokvpy.storage.groupstorage import GroupStorage
from nokvpy.storage.raftlog_codec import (
    GID,
    HS_LSN,
    LSN,
    TAG_HS,
    TAG_VOID,
    decode_wal_items,
    encode_wal_entries,
    encode_wal_hard_state,
)
from nokvpy.storage.schema import RAFT_STATE
from nokvpy.storage.wal import Wal

if TYPE_CHECKING:
    from nokvpy.storage.raftlog import RaftLogStore


class _Journal:
    """A batch's WAL records: the frame's parts, the view updates to run once the frame is
    durable (or queued, when nothing in it needs an fsync), and whether it needs one."""

    __slots__ = ("parts", "callbacks", "sync")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.callbacks: list[Callable[[], object]] = []
        self.sync = False


def _journal(batch: WriteBatch) -> _Journal:
    j = batch.journal
    if j is None:
        j = batch.journal = _Journal()
    return j


class WalBackend:
    """Entries and hard states of every group of a store in one write-ahead log."""

    def __init__(self, wal: Wal, wal_frames: Iterable[tuple[int, bytes]] = ()):
        """`wal` opened by `Wal.open`, with the frames it returned as `wal_frames`."""
        self._wal = wal
        # WAL items per group not loaded yet: gid -> [(lsn, kind, value)], oldest first.
        self._pending: dict[int, list[tuple[int, int, Any]]] = {}
        # Void marks and LMDB hard states staged but not committed: rotation waits for them
        # (a restatement taken before they commit would outrank them).
        self._resets_pending = 0
        # Per group: (batch, hard state) staged by stage_hard_state / stage_destroy and not
        # committed yet (a snapshot staged after them in the same batch keeps it).
        self._staged_hs: dict[int, tuple[WriteBatch, HardState]] = {}
        for lsn, payload in wal_frames:
            for gid, kind, value in decode_wal_items(lsn, payload):
                self._pending.setdefault(gid, []).append((lsn, kind, value))

    def attach(self, store: RaftLogStore, cache_entries: int) -> int:
        self._store = store
        self._env = store.env
        # Void marks and LMDB hard states are stamped with the next LSN when staged; a
        # crash may lose frames queued before that (never fsynced), so new frames must
        # not reuse their LSNs.
        self._wal.ensure_next_lsn(self._max_stamp())
        return 1 << 62  # every live entry stays in memory

    def _max_stamp(self) -> int:
        """The highest LSN stamped on a void mark or an LMDB hard state."""
        state_db = self._store.state_db

        def read(txn) -> int:
            top = 0
            with txn.cursor(db=state_db) as cur:
                for key, value in cur:
                    tag = key[8:]
                    if tag == TAG_VOID and len(value) == LSN.size:
                        top = max(top, LSN.unpack(value)[0])
                    elif tag == TAG_HS and len(value) == HS_LSN.size:
                        top = max(top, HS_LSN.unpack(value)[3])
            return top

        return self._env.read(read)

    @property
    def wal(self) -> Wal:
        return self._wal

    def close(self) -> None:
        self._wal.close()

    def load(self, g: GroupStorage) -> None:
        void_lsn, hs_lsn = g.load()
        items = self._pending.pop(g.group_id, None)
        if items:
            g.replay_wal(items, void_lsn, hs_lsn)

    def list_groups(self, recorded: set[int]) -> list[int]:
        # A destroyed group keeps its void mark: load each candidate and keep the non-empty.
        store = self._store
        found = set(recorded)
        found.update(self._pending)
        found.update(store.loaded_groups)
        return sorted(gid for gid in found if not store.group(gid).is_empty())

    # ------------------------------------------------------------ staging

    def stage_ready_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        hs = HardState(hs.term, hs.vote, hs.commit)
        j = _journal(batch)
        j.parts.append(encode_wal_hard_state(g.group_id, hs))
        if (hs.term, hs.vote) != g.term_vote():
            j.sync = True
        j.callbacks.append(partial(g.on_hard_state, hs))

    def stage_entries(self, batch: WriteBatch, g: GroupStorage, entries: list[Entry],
                      last: int) -> None:
        # A suffix replaced here is replaced at replay too (entries replace what follows).
        j = _journal(batch)
        encode_wal_entries(j.parts, g.group_id, entries)
        j.sync = True
        j.callbacks.append(partial(g.on_append, entries))

    def stage_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        """A hard state through LMDB, stamped with the next LSN: WAL hard states before it
        are older."""
        group_id = g.group_id
        batch.put(RAFT_STATE, GID.pack(group_id) + TAG_HS,
                  HS_LSN.pack(hs.term, hs.vote, hs.commit, self._wal.next_lsn))
        self._stage_reset(batch, group_id, HardState(hs.term, hs.vote, hs.commit))
        batch.on_commit(partial(g.on_hard_state, HardState(hs.term, hs.vote, hs.commit)))

    def stage_log_reset(self, batch: WriteBatch, g: GroupStorage) -> None:
        # The group's earlier WAL frames no longer belong to its log; its hard state moves
        # to LMDB (a later WAL hard state replaces it).
        lsn = self._wal.next_lsn
        prefix = GID.pack(g.group_id)
        staged = self._staged_hs.get(g.group_id)
        hs = staged[1] if staged is not None and staged[0] is batch else g.hard_state
        batch.put(RAFT_STATE, prefix + TAG_VOID, LSN.pack(lsn))
        batch.put(RAFT_STATE, prefix + TAG_HS, HS_LSN.pack(hs.term, hs.vote, hs.commit, lsn))
        self._stage_reset(batch)

    def stage_destroy(self, batch: WriteBatch, g: GroupStorage) -> None:
        batch.put(RAFT_STATE, GID.pack(g.group_id) + TAG_VOID, LSN.pack(self._wal.next_lsn))
        self._stage_reset(batch, g.group_id, HardState())

    def _stage_reset(self, batch: WriteBatch, group_id: int = 0,
                     hs: HardState | None = None) -> None:
        """Count a staged void mark / LMDB hard state until it commits (rotation waits), and
        remember a hard state it sets for a snapshot staged after it in the same batch."""
        self._resets_pending += 1
        if hs is not None:
            self._staged_hs[group_id] = (batch, hs)

        def done() -> None:  # committed, or failed: either way no longer pending
            self._resets_pending -= 1
            staged = self._staged_hs.get(group_id)
            if staged is not None and staged[0] is batch:
                del self._staged_hs[group_id]

        batch.on_commit(done)
        batch.on_abort(done)

    # ------------------------------------------------------------ committing

    async def commit(self, batch: WriteBatch) -> None:
        """Commit a batch staged here: its LMDB part (one fsynced transaction, if it has one),
        then its WAL records (one frame; fsynced unless all it holds is a commit index)."""
        j = batch.journal
        if j is None:
            await self._env.commit(batch)
            return
        batch.journal = None
        if batch:
            await self._env.commit(batch)
        wal = self._wal
        lsn = wal.queue(b"".join(j.parts))
        if j.sync:
            await wal.sync_to(lsn)
        for cb in j.callbacks:
            cb()
        if wal.wants_rotation() and not self._resets_pending:
            await self.rotate()

    async def rotate(self) -> None:
        """Start a new WAL segment restating every group's live entries and hard state, and
        delete the older ones."""
        wal, store = self._wal, self._store
        for gid in list(self._pending):
            store.group(gid)
        parts: list[bytes] = []
        for gid, g in store.loaded_groups.items():
            if g.is_empty():
                continue
            parts.append(encode_wal_hard_state(gid, g.hard_state))
            ents = g.cached_entries()
            if ents:
                encode_wal_entries(parts, gid, ents)
        await wal.rotate([b"".join(parts)] if parts else [])
