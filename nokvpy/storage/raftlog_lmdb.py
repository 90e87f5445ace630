"""The LMDB-only raft log backend: entries and hard states as LMDB records.

Owns: `LmdbBackend`, the `raftlog.LogBackend` of `RaftLogStore(env)`: a group's entries are
`raft_log` records keyed (group id, index) and its hard state one `raft_state` record, staged
into the caller's batch and durable with its one fsynced transaction. Never touches a
write-ahead log, and never changes a group's view before the transaction committed.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from nokvpy.raft.types import Entry, HardState
from nokvpy.storage.env import WriteBatch
from nokvpy.storage.groupstorage import GroupStorage
from nokvpy.storage.raftlog_codec import ENT, GID, HS, KEY, TAG_HS, group_hi
from nokvpy.storage.schema import RAFT_LOG, RAFT_STATE

if TYPE_CHECKING:
    from nokvpy.storage.raftlog import RaftLogStore


class LmdbBackend:
    wal = None

    def attach(self, store: RaftLogStore, cache_entries: int) -> int:
        self._env = store.env
        return cache_entries

    def load(self, g: GroupStorage) -> None:
        g.load()

    def list_groups(self, recorded: set[int]) -> list[int]:
        return sorted(recorded)

    def stage_ready_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        self.stage_hard_state(batch, g, hs)

    def stage_entries(self, batch: WriteBatch, g: GroupStorage, entries: list[Entry],
                      last: int) -> None:
        gid = g.group_id
        new_last = entries[-1].index
        pack_key, pack_ent = KEY.pack, ENT.pack
        batch.put_many(
            RAFT_LOG, [(pack_key(gid, e.index), pack_ent(e.term, e.type) + e.data) for e in entries]
        )
        if new_last < last:
            batch.delete_range(RAFT_LOG, KEY.pack(gid, new_last + 1), group_hi(gid))
        batch.on_commit(partial(g.on_append, entries))

    def stage_hard_state(self, batch: WriteBatch, g: GroupStorage, hs: HardState) -> None:
        batch.put(RAFT_STATE, GID.pack(g.group_id) + TAG_HS, HS.pack(hs.term, hs.vote, hs.commit))
        batch.on_commit(partial(g.on_hard_state, HardState(hs.term, hs.vote, hs.commit)))

    def stage_log_reset(self, batch: WriteBatch, g: GroupStorage) -> None:
        pass  # the store deleted the log records

    def stage_destroy(self, batch: WriteBatch, g: GroupStorage) -> None:
        pass  # the store deleted every record

    async def commit(self, batch: WriteBatch) -> None:
        await self._env.commit(batch)

    async def rotate(self) -> None:
        raise AssertionError("no write-ahead log to rotate: the raft log is in LMDB")

    def close(self) -> None:
        pass
