"""RestartState derivation (DESIGN 5, reference 3.3): pure over localmeta contents, plus the
store refusing to start (and writing nothing) on corrupt localmeta."""

from __future__ import annotations

import hashlib

import pytest

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch, RestartStateKind
from nokvpy.storage import Env, LocalMeta, ReplayPointer, StoreIdentity, WriteBatch
from nokvpy.storage.localmeta import seal
from nokvpy.storage.schema import META_REGIONS
from nokvpy.wire import encode
from raftstore.main import StartupError, cluster_number, serve
from raftstore.restart import (
    DATA_FORMAT,
    NEEDS_CATCH_UP,
    NEEDS_NONE,
    NEEDS_REBUILD,
    LocalImage,
    derive,
    load_image,
)

ME = StoreIdentity(cluster_number("nokv"), 1)


def desc(rid, stores=(1, 2, 3)):
    return RegionDescriptor(rid, b"", b"", RegionEpoch(1, 1),
                            tuple(PeerMeta(s, rid * 100 + s) for s in stores))


def test_fresh_store_is_ready_and_needs_nothing():
    st = derive(LocalImage(), ME)
    assert st.kind == RestartStateKind.READY and st.needs == NEEDS_NONE and st.hosted == ()


def test_clean_store_is_ready_and_rehosts_every_region():
    image = LocalImage(ME, {1: desc(1), 2: desc(2)},
                       {1: ReplayPointer(5, 2), 2: ReplayPointer(0, 0)}, raft_groups=frozenset({1}))
    st = derive(image, ME)
    assert st.kind == RestartStateKind.READY, st
    assert st.hosted == (1, 2) and st.reasons == () and st.needs == NEEDS_CATCH_UP


def test_missing_replay_pointer_is_degraded_and_listed():
    image = LocalImage(ME, {1: desc(1), 2: desc(2), 3: desc(3)}, {1: ReplayPointer(5, 2)})
    st = derive(image, ME)
    assert st.kind == RestartStateKind.DEGRADED
    assert st.missing_replay_pointer == (2, 3)
    assert st.hosted == (1,) and st.needs == NEEDS_REBUILD
    assert "missing replay pointer" in st.reasons[0] and "2, 3" in st.reasons[0]
    d = st.as_dict()
    assert d["state"] == "DEGRADED" and d["missing_replay_pointer"] == [2, 3]


def test_pointer_past_a_lost_raft_log_counts_as_missing():
    image = LocalImage(ME, {1: desc(1)}, {1: ReplayPointer(9, 1)}, raft_groups=frozenset())
    st = derive(image, ME)
    assert st.kind == RestartStateKind.DEGRADED and st.missing_replay_pointer == (1,)


def test_outbox_backlog_and_blocked_events_degrade_without_rebuild():
    from nokvpy.storage import BlockedEvent

    image = LocalImage(ME, {1: desc(1)}, {1: ReplayPointer(3, 1)},
                       outbox=((1, b"e1"), (2, b"e2")),
                       blocked=(BlockedEvent(3, b"e3", "permission denied"),))
    st = derive(image, ME)
    assert st.kind == RestartStateKind.DEGRADED and st.needs == NEEDS_CATCH_UP
    assert st.outbox_backlog == 2 and st.blocked_events == 1 and st.hosted == (1,)


def test_tombstoned_or_foreign_regions_are_not_started():
    image = LocalImage(ME, {1: desc(1), 2: desc(2, stores=(2, 3, 4))},
                       {1: ReplayPointer(1, 1), 2: ReplayPointer(1, 1)},
                       tombstones=frozenset({1}))
    st = derive(image, ME)
    assert st.kind == RestartStateKind.DEGRADED and st.hosted == () and st.not_started == (1, 2)


def test_fatal_cases():
    assert derive(LocalImage(corruption="meta_regions[..]: checksum mismatch"), ME).kind == \
        RestartStateKind.FATAL
    other = StoreIdentity(ME.cluster_id, 2)
    st = derive(LocalImage(other), ME)
    assert st.kind == RestartStateKind.FATAL and "store 2" in st.message
    assert derive(LocalImage(ME, {1: desc(2)}, {1: ReplayPointer(1, 1)}), ME).kind == \
        RestartStateKind.FATAL
    assert derive(LocalImage(None, {1: desc(1)}, {1: ReplayPointer(1, 1)}), ME).kind == \
        RestartStateKind.FATAL


def test_load_image_reads_localmeta(tmp_path):
    with Env.open(tmp_path / "db") as env:
        meta = LocalMeta(env)
        b = WriteBatch()
        meta.stage_identity(b, ME.cluster_id, ME.store_id)
        meta.stage_region(b, 1, encode(desc(1)))
        meta.stage_replay_pointer(b, 1, 7, 2)
        env.commit_sync(b)
        image = load_image(meta)
        assert image.identity == ME and image.regions == {1: desc(1)}
        assert image.replay == {1: ReplayPointer(7, 2)} and image.corruption == ""
        assert derive(image, ME).kind == RestartStateKind.READY


def _digest(path):
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


async def test_corrupt_localmeta_is_fatal_and_writes_nothing(tmp_path):
    data = tmp_path / "store-1"
    with Env.open(data) as env:
        meta = LocalMeta(env)
        b = WriteBatch()
        meta.stage_identity(b, ME.cluster_id, ME.store_id)
        meta.stage_region(b, 1, encode(desc(1)))
        meta.stage_replay_pointer(b, 1, 7, 2)
        env.commit_sync(b)
        raw = bytearray(seal(encode(desc(1))))
        raw[-1] ^= 0xFF  # flip a bit: the crc no longer matches
        b = WriteBatch()
        b.put(META_REGIONS, (1).to_bytes(8, "big"), bytes(raw))
        env.commit_sync(b)
        image = load_image(meta)
        assert image.corruption and "checksum" in image.corruption
        st = derive(image, ME)
        assert st.kind == RestartStateKind.FATAL and "corrupt" in st.message
    before = _digest(data)
    with pytest.raises(StartupError, match="refuses to start: localmeta is corrupt"):
        await serve(1, "127.0.0.1:0", ["127.0.0.1:1"], str(data))
    assert _digest(data) == before


async def test_identity_mismatch_refuses_to_start(tmp_path):
    data = tmp_path / "store-1"
    with Env.open(data) as env:
        await LocalMeta(env).stamp_identity(ME.cluster_id, 1)
    with pytest.raises(StartupError, match="belongs to store 1"):
        await serve(2, "127.0.0.1:0", ["127.0.0.1:1"], str(data))
    with pytest.raises(StartupError, match="belongs to store 1 of cluster"):
        await serve(1, "127.0.0.1:0", ["127.0.0.1:1"], str(data), cluster_id="other")


async def test_a_store_of_another_data_format_refuses_to_start(tmp_path):
    """Values carry a header (the region and raft index that wrote them) since data format
    2; a store stamped before formats were recorded holds raw values, which this build would
    misread (a raw value of 17 bytes or more that starts with byte 1 parses as a header). It
    refuses to start, says why and what to do, and writes nothing."""
    data = tmp_path / "store-1"
    with Env.open(data) as env:
        await LocalMeta(env).stamp_identity(ME.cluster_id, 1)  # no format: a format-1 store
        assert load_image(LocalMeta(env)).data_format is None
    before = _digest(data)
    with pytest.raises(StartupError, match="data format 1 .*this build reads data format 2"):
        await serve(1, "127.0.0.1:0", ["127.0.0.1:1"], str(data))
    assert _digest(data) == before
    fresh = tmp_path / "store-2"
    with Env.open(fresh) as env:
        meta = LocalMeta(env)
        await meta.stamp_identity(ME.cluster_id, 2, DATA_FORMAT)
        image = load_image(meta)
        assert image.data_format == DATA_FORMAT
        assert derive(image, StoreIdentity(ME.cluster_id, 2), DATA_FORMAT).kind == \
            RestartStateKind.READY
        st = derive(LocalImage(ME), ME, DATA_FORMAT)
        assert st.kind == RestartStateKind.FATAL and st.reasons == ("data_format_mismatch",)
