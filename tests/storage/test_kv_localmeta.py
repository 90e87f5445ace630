"""KV table and localmeta tables on real LMDB: reads, staged writes, checksums."""

from __future__ import annotations

import pytest

from nokvpy.storage import (
    KV,
    CorruptMetadataError,
    Env,
    IdentityMismatchError,
    InvalidKeyError,
    LocalMeta,
    RaftLogStore,
    ReplayPointer,
    StoreIdentity,
    WriteBatch,
)
from nokvpy.storage.localmeta import BlockedEvent, seal
from nokvpy.storage.schema import META_OUTBOX, META_REGIONS, META_REPLAY, META_STORE


def commit(env: Env, stage) -> None:
    batch = WriteBatch()
    stage(batch)
    env.commit_sync(batch)


# ---------------------------------------------------------------- KV


@pytest.fixture
def kv(env):
    k = KV(env)
    commit(env, lambda b: [k.stage_put(b, bytes([c]), b"v" + bytes([c])) for c in b"abcdefgh"])
    return k


def test_get_put_delete(kv, env):
    assert kv.get(b"c") == b"vc"
    assert kv.get(b"zz") is None
    commit(env, lambda b: (kv.stage_put(b, b"c", b"new"), kv.stage_delete(b, b"d")))
    assert kv.get(b"c") == b"new" and kv.get(b"d") is None


def test_scan_bounds_limit_and_reverse(kv):
    keys = lambda pairs: b"".join(k for k, _ in pairs)  # noqa: E731
    assert keys(kv.scan(b"b", b"e")) == b"bcd"
    assert keys(kv.scan(b"", None)) == b"abcdefgh"
    assert keys(kv.scan(b"f", b"")) == b"fgh"  # empty end = +infinity
    assert keys(kv.scan(b"a", None, limit=3)) == b"abc"
    assert keys(kv.scan(b"b", b"e", reverse=True)) == b"dcb"
    assert keys(kv.scan(b"c", None, limit=2, reverse=True)) == b"hg"
    assert keys(kv.scan(b"a", b"zz", reverse=True)) == b"hgfedcba"
    assert keys(kv.scan(b"x", b"z")) == b""
    assert kv.scan(b"a", None, limit=0) == []


def test_delete_range_and_stats(kv, env):
    commit(env, lambda b: kv.stage_delete_range(b, b"c", b"f"))
    assert b"".join(k for k, _ in kv.scan(b"", None)) == b"abfgh"
    assert kv.range_stats(b"a", b"c") == (2, 6)  # 1-byte keys, 2-byte values


def test_export_import_range_replaces_the_range(kv, env):
    snap = kv.export_range(b"b", b"e")
    assert snap == [(b"b", b"vb"), (b"c", b"vc"), (b"d", b"vd")]
    commit(env, lambda b: kv.stage_put(b, b"cc", b"stale"))
    commit(env, lambda b: kv.stage_import_range(b, b"b", b"e", snap))
    assert kv.export_range(b"b", b"e") == snap
    assert kv.get(b"a") == b"va" and kv.get(b"e") == b"ve"  # outside the range untouched
    with pytest.raises(InvalidKeyError):
        kv.stage_import_range(WriteBatch(), b"b", b"e", [(b"z", b"1")])


def test_iter_range_chunks(kv):
    chunks = list(kv.iter_range(b"a", None, chunk=3))
    assert [len(c) for c in chunks] == [3, 3, 2]
    assert b"".join(k for c in chunks for k, _ in c) == b"abcdefgh"


def test_invalid_keys(kv):
    with pytest.raises(InvalidKeyError):
        kv.stage_put(WriteBatch(), b"", b"v")
    with pytest.raises(InvalidKeyError):
        kv.stage_put(WriteBatch(), b"k" * 512, b"v")


def test_consistent_read_of_kv_and_meta_in_one_txn(kv, env):
    meta = LocalMeta(env)
    commit(env, lambda b: meta.stage_replay_pointer(b, 1, 10, 2))
    ptr, data = env.read(lambda t: (meta.replay_pointer(1, txn=t), kv.export_range(b"a", b"c",
                                                                                   txn=t)))
    assert ptr == ReplayPointer(10, 2) and len(data) == 2


async def test_raft_kv_and_meta_in_one_transaction(env):
    """The ready loop's shape: raft persistence + applied KV + localmeta, one fsync."""
    from nokvpy.raft.types import Entry, HardState

    store, kv, meta = RaftLogStore(env), KV(env), LocalMeta(env)
    before = env.stats.transactions
    batch = WriteBatch()
    kv.stage_put(batch, b"k", b"v")
    meta.stage_replay_pointer(batch, 5, 1, 1)
    seq = meta.stage_outbox_append(batch, b"event")
    await store.write_ready([(5, HardState(1, 1, 1), [Entry(1, 1, 0, b"put k")], None)], batch)
    assert env.stats.transactions == before + 1
    assert kv.get(b"k") == b"v" and meta.outbox() == [(seq, b"event")]
    assert store.group(5).last_index() == 1


# ---------------------------------------------------------------- localmeta


@pytest.fixture
def meta(env):
    return LocalMeta(env)


async def test_identity_is_stamped_once(meta, env):
    assert meta.identity() is None
    assert await meta.stamp_identity(9, 3) == StoreIdentity(9, 3)
    assert await meta.stamp_identity(9, 3) == StoreIdentity(9, 3)
    with pytest.raises(IdentityMismatchError):
        await meta.stamp_identity(9, 4)
    env.close()
    with Env.open(env.path) as env2:
        assert LocalMeta(env2).identity() == StoreIdentity(9, 3)


def test_regions_replay_pointers_tombstones(meta, env):
    commit(env, lambda b: (meta.stage_region(b, 1, b"desc1"), meta.stage_region(b, 2, b"desc2"),
                           meta.stage_replay_pointer(b, 1, 100, 7),
                           meta.stage_tombstone(b, 3, b"gone")))
    assert meta.regions() == {1: b"desc1", 2: b"desc2"}
    assert meta.region(2) == b"desc2" and meta.region(9) is None
    assert meta.replay_pointer(1) == ReplayPointer(100, 7)
    assert meta.replay_pointers() == {1: ReplayPointer(100, 7)}
    assert meta.tombstones() == {3: b"gone"} and meta.tombstone(3) == b"gone"
    commit(env, lambda b: (meta.stage_delete_region(b, 2), meta.stage_delete_replay_pointer(b, 1),
                           meta.stage_delete_tombstone(b, 3)))
    assert meta.regions() == {1: b"desc1"} and meta.replay_pointers() == {}
    assert meta.tombstones() == {}
    with pytest.raises(ValueError):
        meta.stage_region(WriteBatch(), 0, b"x")


def test_outbox_append_list_remove_block(meta, env):
    seqs = []
    commit(env, lambda b: seqs.extend(meta.stage_outbox_append(b, e) for e in (b"e1", b"e2",
                                                                              b"e3")))
    assert seqs == [1, 2, 3]
    assert meta.outbox() == [(1, b"e1"), (2, b"e2"), (3, b"e3")]
    commit(env, lambda b: (meta.stage_outbox_remove(b, 1),
                           meta.stage_outbox_block(b, 2, b"e2", "epoch is stale ✗")))
    assert meta.outbox() == [(3, b"e3")]
    assert meta.blocked() == [BlockedEvent(2, b"e2", "epoch is stale ✗")]
    env.close()
    with Env.open(env.path) as env2:  # seq allocation resumes after the highest seq
        m2 = LocalMeta(env2)
        b = WriteBatch()
        assert m2.stage_outbox_append(b, b"e4") == 4
        env2.commit_sync(b)
        commit(env2, lambda b: m2.stage_blocked_remove(b, 2))
        assert m2.blocked() == [] and [s for s, _ in m2.outbox()] == [3, 4]
        assert m2.verify()[META_OUTBOX] == 2


def test_verify_counts_a_healthy_store(meta, env):
    commit(env, lambda b: (meta.stage_identity(b, 1, 2), meta.stage_region(b, 1, b"d")))
    counts = meta.verify()
    assert counts[META_STORE] == 2 and counts[META_REGIONS] == 1


def raw_put(env: Env, table: str, key: bytes, raw: bytes) -> None:
    """Test hook: write a raw LMDB value, bypassing localmeta's sealing."""
    b = WriteBatch()
    b.put(table, key, raw)
    env.commit_sync(b)


def test_flipped_byte_is_detected_on_read_and_by_verify(meta, env):
    commit(env, lambda b: meta.stage_replay_pointer(b, 1, 100, 7))
    good = env.get(META_REPLAY, (1).to_bytes(8, "big"))
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    raw_put(env, META_REPLAY, (1).to_bytes(8, "big"), bad)
    with pytest.raises(CorruptMetadataError, match="checksum mismatch"):
        meta.replay_pointer(1)
    with pytest.raises(CorruptMetadataError, match="meta_replay"):
        meta.verify()


@pytest.mark.parametrize(
    "table, key, raw, match",
    [
        (META_REGIONS, b"\x01", seal(b"d"), "undecodable key"),
        (META_REPLAY, (1).to_bytes(8, "big"), seal(b"short"), "replay pointer of 5 bytes"),
        (META_OUTBOX, (1).to_bytes(8, "big"), b"\x00", "too short"),
        (META_STORE, b"what", seal(b"x"), "unknown key"),
        (META_STORE, b"store_id", seal((1).to_bytes(8, "big")), "incomplete"),
    ],
)
def test_verify_reports_inconsistent_metadata(meta, env, table, key, raw, match):
    raw_put(env, table, key, raw)
    with pytest.raises(CorruptMetadataError, match=match):
        meta.verify()
