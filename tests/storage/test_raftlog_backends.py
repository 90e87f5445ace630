"""The raft log store's two backends, chosen when it is built: LMDB records (`RaftLogStore`)
and the write-ahead log (`RaftLogStore.open_wal`); and the WAL item codec they share."""

from __future__ import annotations

import pytest

from nokvpy.raft.types import Entry, HardState
from nokvpy.storage import Env, RaftLogStore, WriteBatch
from nokvpy.storage.raftlog_codec import (
    ITEM_ENTRIES,
    ITEM_HS,
    decode_wal_items,
    encode_wal_entries,
    encode_wal_hard_state,
)
from nokvpy.storage.raftlog_lmdb import LmdbBackend
from nokvpy.storage.raftlog_wal import WalBackend


def ents(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(term, i, 0, b"e%d" % i) for i in range(first, last + 1)]


def test_wal_items_round_trip():
    parts = [encode_wal_hard_state(7, HardState(3, 2, 5))]
    encode_wal_entries(parts, 9, ents(4, 6, 3))
    items = decode_wal_items(1, b"".join(parts))
    assert items == [(7, ITEM_HS, HardState(3, 2, 5)), (9, ITEM_ENTRIES, ents(4, 6, 3))]


@pytest.mark.parametrize("mode", ["lmdb", "wal"])
async def test_each_backend_persists_and_reloads_a_group(tmp_path, mode):
    def open_store():
        env = Env.open(tmp_path / "db", map_size=1 << 22)
        if mode == "wal":
            return RaftLogStore.open_wal(env, str(tmp_path / "wal"))
        return RaftLogStore(env)

    store = open_store()
    assert type(store._backend) is (WalBackend if mode == "wal" else LmdbBackend)
    assert (store.wal is None) == (mode == "lmdb")
    batch = WriteBatch()
    store.stage_ready(batch, 3, HardState(2, 1, 4), ents(1, 5, 2))
    await store.commit(batch)
    batch = WriteBatch()
    store.stage_ready(batch, 3, HardState(3, 0, 4), ents(4, 4, 3))  # replaces 4..5
    await store.commit(batch)
    if mode == "lmdb":
        with pytest.raises(AssertionError):
            await store.rotate_wal()
    else:
        await store.rotate_wal()
    store.close()
    store.env.close()
    store = open_store()
    try:
        g = store.group(3)
        assert store.list_groups() == [3]
        assert g.initial_state()[0] == HardState(3, 0, 4)
        assert g.entries(1, 5) == ents(1, 3, 2) + ents(4, 4, 3)
        assert g.term_vote() == (3, 0) and g.boundary_index == 0 and g.last_index() == 4
        batch = WriteBatch()
        store.stage_destroy_group(batch, 3)
        await store.commit(batch)
        assert store.list_groups() == [] and g.is_empty()
    finally:
        store.close()
        store.env.close()
