"""The RegionDigest of a replica: a digest of its applied KV state read with its applied index
in one LMDB read transaction; equal states give equal digests, any change of a key, a value
or the key set gives another; bounded work; the RPC against in-process stores; the test-only
apply switch that damages one store's puts."""

from __future__ import annotations

import hashlib
import threading

import pytest
import trio
from store_cluster import InProcCluster

from nokvpy.protocol import PeerMeta, RegionDescriptor, RegionEpoch, roles
from nokvpy.protocol.raftstore_cmds import KvCommand, KvOp, KvOpKind
from nokvpy.protocol.store_rpc import RegionDigest, RegionDigestReply, RegionDigestRequest
from nokvpy.raft.types import Entry, EntryType
from nokvpy.rpc import Identity, RpcClient
from nokvpy.storage import Env, LocalMeta, RaftLogStore, WriteBatch
from nokvpy.wire import decode, encode
from raftstore import apply as apply_mod
from raftstore import status as status_mod
from raftstore.apply import RegionStateMachine, encode_descriptor
from raftstore.kvformat import VersionedKV, pack_stored
from raftstore.status import region_digest

EPOCH = RegionEpoch(1, 1)
DESC = RegionDescriptor(1, b"b", b"y", EPOCH, (PeerMeta(1, 101), PeerMeta(2, 102),
                                                 PeerMeta(3, 103, learner=True)))


@pytest.fixture
def env(tmp_path):
    e = Env.open(tmp_path / "db", map_size=1 << 24)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def other_env(tmp_path):
    e = Env.open(tmp_path / "db2", map_size=1 << 24)
    try:
        yield e
    finally:
        e.close()


def write(env, pairs: dict[bytes, bytes], applied: int = 7, desc=DESC, deletes=()) -> None:
    """Commit `pairs` (stored values), `deletes`, the descriptor and the replay pointer."""
    meta = LocalMeta(env)
    batch = WriteBatch()
    for k, v in pairs.items():
        batch.put("kv", k, v)
    for k in deletes:
        batch.delete("kv", k)
    meta.stage_region(batch, desc.region_id, encode_descriptor(desc))
    meta.stage_replay_pointer(batch, desc.region_id, applied, 2)
    env.commit_sync(batch)


def digest(env, **kw) -> RegionDigest:
    return region_digest(env, VersionedKV(env), LocalMeta(env), 1, 101, store_id=1, **kw)


def expected(pairs: dict[bytes, bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=32, person=b"nokv-region-kv")
    for k in sorted(pairs):
        v = pairs[k]
        h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
    return h.digest()


STATE = {b"c": pack_stored(b"1", 1, 3), b"d": pack_stored(b"22", 1, 4),
         b"x": pack_stored(b"", 1, 5)}


def test_the_digest_is_of_the_range_at_the_applied_index(env):
    write(env, {**STATE, b"a": b"outside", b"y": b"outside", b"z": b"outside"})
    d = digest(env)
    assert (d.region_id, d.peer_id, d.applied_index, d.applied_term) == (1, 101, 7, 2)
    assert d.epoch == EPOCH and (d.start_key, d.end_key) == (b"b", b"y")
    assert d.key_count == 3 and d.byte_count == sum(len(k) + len(v) for k, v in STATE.items())
    assert d.digest == expected(STATE) and len(d.digest) == 32 and d.note == ""
    assert (d.voters, d.learners) == ((1, 2), (3,))
    # the record crosses the wire unchanged
    reply = RegionDigestReply(1, (d,))
    assert decode(encode(reply)) == reply


def test_same_state_same_digest_whatever_the_history(env, other_env):
    write(env, STATE)
    # the other replica got there another way: other writes first, then overwritten / deleted
    write(other_env, {b"c": b"old", b"e": b"gone"}, applied=3)
    write(other_env, STATE, deletes=(b"e",))
    assert digest(env).digest == digest(other_env).digest
    assert digest(env).key_count == digest(other_env).key_count == 3


@pytest.mark.parametrize("change", [
    {b"c": pack_stored(b"2", 1, 3)},     # another value
    {b"c": pack_stored(b"1", 1, 9)},     # the same value written by another entry
    {b"d": pack_stored(b"23", 1, 4)},    # the last byte of a value
    {b"e": pack_stored(b"1", 1, 6)},     # an extra key
    {b"cc": pack_stored(b"1", 1, 3)},    # an extra key next to one
])
def test_any_change_changes_the_digest(env, other_env, change):
    write(env, STATE)
    write(other_env, {**STATE, **change})
    assert digest(env).digest != digest(other_env).digest


def test_a_missing_or_renamed_key_changes_the_digest(env, other_env, tmp_path):
    write(env, STATE)
    write(other_env, STATE, deletes=(b"d",))
    assert digest(other_env).key_count == 2
    assert digest(env).digest != digest(other_env).digest
    third = Env.open(tmp_path / "db3", map_size=1 << 24)
    try:
        renamed = dict(STATE)
        renamed[b"e"] = renamed.pop(b"d")
        write(third, renamed)
        assert digest(third).key_count == 3 and digest(third).digest != digest(env).digest
        # (key, value) boundaries count: b"c" + b"1..." is not b"c1" + b"..."
        write(third, {b"c": b"12"}, deletes=(b"d", b"e", b"x"))
        a = digest(third).digest
        write(third, {b"c1": b"2"}, deletes=(b"c",))
        assert digest(third).digest != a
    finally:
        third.close()


def test_the_data_and_the_applied_index_come_from_one_read_transaction(env):
    """A writer commits (key i = i, pointer = i) in one batch per step while digests are taken:
    every digest must be the one of the state its applied index names."""
    write(env, {b"k": b"1"}, applied=1)
    stop = threading.Event()
    advanced = threading.Event()  # the writer committed a step since it was last cleared

    def writer() -> None:
        meta = LocalMeta(env)
        i = 1
        while not stop.is_set() and i < 5000:
            i += 1
            batch = WriteBatch()
            batch.put("kv", b"k", str(i).encode())
            batch.put("kv", b"k%05d" % i, b"v")
            meta.stage_replay_pointer(batch, 1, i, 2)
            env.commit_sync(batch)
            advanced.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    reads = 0
    orig = env.read

    def counting(fn):
        nonlocal reads
        reads += 1
        return orig(fn)

    env.read = counting
    try:
        for n in range(300):
            if n % 50 == 0:  # the writer moves on between digests (the GIL may starve it)
                assert advanced.wait(10), "the writer committed nothing for 10 s"
                advanced.clear()
            d = digest(env)
            i = d.applied_index
            state = {b"k": str(i).encode(), **{b"k%05d" % j: b"v" for j in range(2, i + 1)}}
            assert d.key_count == len(state) and d.digest == expected(state), i
            seen.add(i)
    finally:
        stop.set()
        t.join()
        del env.read
    assert reads == 300  # one read transaction per digest
    assert len(seen) > 1  # the writer really moved on while digests were taken


def test_a_region_too_large_answers_no_digest(env):
    write(env, STATE)
    d = digest(env, max_keys=2)
    assert d.digest == b"" and d.note.startswith("too_large") and d.key_count == 2
    d = digest(env, max_bytes=30)
    assert d.digest == b"" and d.note.startswith("too_large")
    assert digest(env, max_keys=3).digest == expected(STATE)


def test_uninitialized_and_unreadable_replicas_say_so(env):
    d = region_digest(env, VersionedKV(env), LocalMeta(env), 5, 105, store_id=1)
    assert (d.note, d.digest, d.applied_index) == ("uninitialized", b"", 0)
    env.close()
    d = region_digest(env, VersionedKV(env), LocalMeta(env), 1, 101, store_id=1)
    assert d.digest == b"" and d.note.startswith("read_failed")


# ---- the test-only damaged apply ---------------------------------------------------------


def put_entries(first: int, n: int) -> list[Entry]:
    return [Entry(1, i, EntryType.NORMAL, encode(KvCommand(1, EPOCH, [
        KvOp(KvOpKind.PUT, b"k%d" % (i % 7), b"value-%d" % i)]))) for i in range(first, first + n)]


def run_puts(env, flip: bool) -> RegionStateMachine:
    meta, kv = LocalMeta(env), VersionedKV(env)
    batch = WriteBatch()
    meta.stage_region(batch, 1, encode_descriptor(DESC))
    env.commit_sync(batch)
    sm = RegionStateMachine(1, env, kv, meta, RaftLogStore(env), DESC, 0, 0)
    sm.unsafe_flip = flip
    for first in range(1, 101, 10):
        ents = put_entries(first, 10)
        batch = WriteBatch()
        results = sm.stage_apply(batch, ents)
        env.commit_sync(batch)
        sm.after_commit(ents, results)
    return sm


def test_the_unsafe_flip_damages_every_50th_put_and_the_digest_sees_it(env, other_env):
    clean, flipped = run_puts(env, False), run_puts(other_env, True)
    assert clean.applied == flipped.applied == 100
    # put 50 wrote k1, overwritten by put 99 since; put 100 (k2) stays damaged
    assert flipped.kv.get(b"k2") == b"value-10" + bytes([ord("0") ^ 1]) == b"value-101"
    assert clean.kv.get(b"k2") == b"value-100"
    assert all(flipped.kv.get(b"k%d" % i) == clean.kv.get(b"k%d" % i) for i in (0, 1, 3, 4, 5, 6))
    a, b = digest(env), digest(other_env)
    assert a.applied_index == b.applied_index == 100 and a.key_count == b.key_count == 7
    assert a.digest != b.digest


def test_the_unsafe_flip_is_for_one_store_only(monkeypatch):
    monkeypatch.setattr(apply_mod, "UNSAFE_APPLY_FLIP", False)
    assert not any(apply_mod.unsafe_apply_flip_on(s) for s in (1, 2, 3))
    monkeypatch.setattr(apply_mod, "UNSAFE_APPLY_FLIP", True)
    monkeypatch.setattr(apply_mod, "UNSAFE_APPLY_FLIP_STORE", 3)
    assert [apply_mod.unsafe_apply_flip_on(s) for s in (1, 2, 3)] == [False, False, True]


# ---- the RPC ------------------------------------------------------------------------------


async def digests_when_caught_up(rpc, stores, timeout: float = 10.0) -> dict[int, RegionDigest]:
    with trio.fail_after(timeout):
        while True:
            got = {}
            for s in stores:
                reply = await rpc.call(s.cfg.address, RegionDigestRequest(), timeout=5)
                assert isinstance(reply, RegionDigestReply) and reply.store_id == s.store_id
                got[s.store_id] = {d.region_id: d for d in reply.digests}
            if len({g[1].applied_index for g in got.values()}) == 1:
                return {sid: g[1] for sid, g in got.items()}
            await trio.sleep(0.05)


async def test_region_digest_rpc_on_real_stores(tmp_path, monkeypatch):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        rpc = RpcClient(Identity("nokv", "admin", 0))
        try:
            async with cluster.client() as client:
                for i in range(20):
                    await client.put(b"k%02d" % i, b"v%d" % i)
                await client.delete(b"k03")
            digests = await digests_when_caught_up(rpc, cluster.live())
            assert len({d.digest for d in digests.values()}) == 1
            assert {d.key_count for d in digests.values()} == {19}
            assert {d.peer_id for d in digests.values()} == {101, 102, 103}
            assert all(d.voters == (1, 2, 3) and d.note == "" for d in digests.values())

            # damage one replica's data behind raft's back: its digest differs at the same index
            victim = cluster.store(2)
            raw = victim.kv.get_stored(b"k07")
            batch = WriteBatch()
            batch.put("kv", b"k07", raw[:-1] + bytes([raw[-1] ^ 1]))
            await victim.env.commit(batch)
            after = await digests_when_caught_up(rpc, cluster.live())
            assert after[2].digest != after[1].digest == after[3].digest
            assert after[2].key_count == after[1].key_count

            # only the regions asked for; one not hosted is left out
            reply = await rpc.call(victim.cfg.address, RegionDigestRequest((1, 9)), timeout=5)
            assert [d.region_id for d in reply.digests] == [1]
            assert (await rpc.call(victim.cfg.address, RegionDigestRequest((9,)),
                                   timeout=5)).digests == ()

            # a region past the bound answers no digest, with the reason
            monkeypatch.setattr(status_mod, "DIGEST_MAX_KEYS", 5)
            reply = await rpc.call(victim.cfg.address, RegionDigestRequest(), timeout=5)
            assert reply.digests[0].digest == b"" and "too_large" in reply.digests[0].note

            # KV callers may ask (enforced where the cluster has a secret); other processes not
            assert [roles.allowed("store", r, "RegionDigestRequest")
                    for r in ("client", "admin", "store", "coordinator", "metaroot")] == [
                True, True, False, False, False]
            client_rpc = RpcClient(Identity("nokv", "client", 7))
            try:
                await client_rpc.call(victim.cfg.address, RegionDigestRequest(), timeout=5)
            finally:
                await client_rpc.aclose()
        finally:
            await rpc.aclose()
            nursery.cancel_scope.cancel()


async def test_digests_are_taken_in_a_worker_thread(tmp_path, monkeypatch):
    """The event loop keeps turning while a (slow) digest is computed."""
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path, n=1)
        await cluster.start()
        store = await cluster.wait_leader()
        release = threading.Event()
        real = status_mod.region_digest

        def slow(*args, **kw):
            release.wait(5)
            return real(*args, **kw)

        monkeypatch.setattr(status_mod, "region_digest", slow)
        rpc = RpcClient(Identity("nokv", "admin", 0))
        try:
            got = []

            async def ask():
                got.append(await rpc.call(store.cfg.address, RegionDigestRequest(), timeout=10))

            nursery.start_soon(ask)
            ticks = 0
            for _ in range(20):
                await trio.sleep(0.01)
                ticks += 1
            assert ticks == 20 and not got  # the loop ran while the digest waited
            release.set()
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.01)
            assert got[0].store_id == 1
        finally:
            release.set()
            await rpc.aclose()
            nursery.cancel_scope.cancel()

