"""Env: reopen durability, map growth, group commit, failure isolation, failed-fsync rule."""

from __future__ import annotations

import lmdb
import pytest
import trio

from nokvpy import failpoints
from nokvpy.storage import (
    Env,
    EnvClosedError,
    InvalidKeyError,
    StorageFailedError,
    StorageFullError,
    UnknownDatabaseError,
    WriteBatch,
)


@pytest.fixture(autouse=True)
def _no_failpoints():
    failpoints.clear_all()
    yield
    failpoints.clear_all()


async def test_data_survives_reopen(tmp_path):
    env = Env.open(tmp_path / "db")
    b = WriteBatch()
    b.put("kv", b"a", b"1")
    b.put("raft_state", b"x", b"2")
    await env.commit(b)
    env.close()
    with Env.open(tmp_path / "db") as env:
        assert env.get("kv", b"a") == b"1"
        assert env.get("raft_state", b"x") == b"2"
    with pytest.raises(EnvClosedError):
        env.get("kv", b"a")


async def test_map_grows_without_losing_data(tmp_path):
    env = Env.open(tmp_path / "db", map_size=64 << 10)
    start = env.map_size
    value = b"v" * 1000
    for chunk in range(20):
        b = WriteBatch()
        for i in range(100):
            b.put("kv", b"k%06d" % (chunk * 100 + i), value)
        await env.commit(b)
    assert env.map_size > start and env.stats.map_resizes >= 1
    assert env.read(lambda t: t.stat(env.db("kv"))["entries"]) == 2000
    env.close()
    with Env.open(tmp_path / "db", map_size=64 << 10) as env:
        assert env.get("kv", b"k001999") == value
        assert env.read(lambda t: t.stat(env.db("kv"))["entries"]) == 2000


async def test_map_growth_stops_at_max_map_size(tmp_path):
    with Env.open(tmp_path / "db", map_size=64 << 10, max_map_size=128 << 10) as env:
        b = WriteBatch()
        for i in range(400):
            b.put("kv", b"k%06d" % i, b"v" * 1000)
        with pytest.raises(StorageFullError):
            await env.commit(b)
        small = WriteBatch()
        small.put("kv", b"ok", b"1")
        await env.commit(small)  # a full map is not a failed fsync: writes continue
        assert env.get("kv", b"ok") == b"1"


async def test_same_turn_batches_share_one_transaction(env):
    before = env.stats.transactions
    order = []

    async def writer(i):
        b = WriteBatch()
        b.put("kv", b"k%d" % i, b"%d" % i)
        b.on_commit(lambda: order.append(i))
        await env.commit(b)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(writer, i)
    assert env.stats.transactions == before + 1
    assert sorted(order) == list(range(10))
    assert env.read(lambda t: t.stat(env.db("kv"))["entries"]) == 10


async def test_batches_arriving_during_a_commit_form_the_next_group(env):
    failpoints.set("storage.before_commit", "1*sleep(50)")
    before = env.stats.transactions
    done = []

    async def writer(i, delay):
        await trio.sleep(delay)
        b = WriteBatch()
        b.put("kv", b"k%d" % i, b"v")
        await env.commit(b)
        done.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, 0, 0)
        for i in range(1, 8):
            nursery.start_soon(writer, i, 0.01)  # while batch 0 is in its (slow) commit
    assert sorted(done) == list(range(8))
    assert env.stats.transactions == before + 2


async def test_a_bad_batch_fails_alone(env):
    results = {}

    async def writer(i, key):
        b = WriteBatch()
        b.put("kv", key, b"v")
        try:
            await env.commit(b)
            results[i] = "ok"
        except InvalidKeyError:
            results[i] = "bad"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, 0, b"good0")
        nursery.start_soon(writer, 1, b"x" * 600)  # beyond LMDB's key limit
        nursery.start_soon(writer, 2, b"good2")
    assert results == {0: "ok", 1: "bad", 2: "ok"}
    assert env.get("kv", b"good0") == b"v" and env.get("kv", b"good2") == b"v"


async def test_unknown_database_is_a_clear_error(env):
    with pytest.raises(UnknownDatabaseError, match="nope"):
        env.db("nope")
    b = WriteBatch()
    b.put("nope", b"k", b"v")
    with pytest.raises(UnknownDatabaseError):
        await env.commit(b)


async def test_write_fn_returns_its_result_and_sees_the_txn(env):
    db = env.db("kv")

    def fn(txn):
        txn.put(b"a", b"1", db=db)
        return txn.get(b"a", db=db)

    assert await env.write(fn) == b"1"

    def boom(txn):
        txn.put(b"b", b"2", db=db)
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await env.write(boom)
    assert env.get("kv", b"b") is None  # aborted


async def test_delete_range(env):
    b = WriteBatch()
    for c in b"abcdefg":
        b.put("kv", bytes([c]), b"v")
    await env.commit(b)
    b = WriteBatch()
    b.delete_range("kv", b"b", b"e")
    b.delete_range("kv", b"f", None)
    b.delete("kv", b"a")
    await env.commit(b)
    assert env.read(lambda t: list(t.cursor(db=env.db("kv")).iternext(values=False))) == [b"e"]


async def test_failed_commit_poisons_the_environment(env):
    """A failed fsync is never retried: later writes are refused (FAULTS.md)."""
    failpoints.set("storage.before_commit", "1*raise")
    b = WriteBatch()
    b.put("kv", b"a", b"1")
    called = []
    b.on_commit(lambda: called.append(1))
    with pytest.raises(StorageFailedError):
        await env.commit(b)
    assert not called
    b = WriteBatch()
    b.put("kv", b"b", b"1")
    with pytest.raises(StorageFailedError):
        await env.commit(b)
    with pytest.raises(StorageFailedError):
        env.commit_sync(b)
    assert env.get("kv", b"a") is None  # reads still work


async def test_commit_is_not_cancellable(env):
    failpoints.set("storage.before_commit", "1*sleep(50)")
    b = WriteBatch()
    b.put("kv", b"a", b"1")
    with trio.move_on_after(0.001):
        await env.commit(b)
    assert env.get("kv", b"a") == b"1"  # the shielded commit finished anyway


async def test_callback_error_reaches_its_caller_but_batch_is_durable(env):
    b = WriteBatch()
    b.put("kv", b"a", b"1")
    b.on_commit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        await env.commit(b)
    assert env.get("kv", b"a") == b"1"


def test_reads_and_growth_from_another_thread_do_not_race(tmp_path):
    """Map growth waits for live readers (set_mapsize needs no active txn)."""
    import threading

    env = Env.open(tmp_path / "db", map_size=64 << 10, sync=False)
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                env.read(lambda t: sum(1 for _ in t.cursor(db=env.db("kv"))))
            except lmdb.Error as exc:
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for chunk in range(30):
            b = WriteBatch()
            for i in range(100):
                b.put("kv", b"k%06d" % (chunk * 100 + i), b"v" * 500)
            env.commit_sync(b)
    finally:
        stop.set()
        t.join()
    assert not errors and env.stats.map_resizes >= 2
    env.close()


async def test_enqueued_batch_keeps_its_place_in_the_commit_order(env):
    """`enqueue` fixes a batch's place at the call; a later `commit` of the same key lands
    after it, and `wait_committed` returns once it is durable."""
    held = WriteBatch()
    held.put("kv", b"k", b"held")
    done = []
    held.on_commit(lambda: done.append("held"))
    handle = env.enqueue(held)
    later = WriteBatch()
    later.put("kv", b"k", b"later")
    later.on_commit(lambda: done.append("later"))
    await env.commit(later)  # leads the group: the held batch commits with it, first
    assert handle.done and env.get("kv", b"k") == b"later"
    assert done == ["held", "later"]
    await env.wait_committed(handle)  # already durable: returns at once


async def test_wait_committed_leads_a_commit_when_nobody_else_does(env):
    b = WriteBatch()
    b.put("kv", b"alone", b"1")
    handle = env.enqueue(b)
    with trio.fail_after(5):
        await env.wait_committed(handle)
    assert env.get("kv", b"alone") == b"1"
    b2 = WriteBatch()
    b2.put("kv", b"next", b"2")
    await env.commit(b2)  # the commit machinery is free again
    assert env.get("kv", b"next") == b"2"


async def test_before_submit_runs_before_a_batch_joins_the_queue(env):
    order = []
    held = WriteBatch()
    held.put("kv", b"k", b"first")

    def release():
        if not order:
            order.append(env.enqueue(held))

    env.before_submit = release
    b = WriteBatch()
    b.put("kv", b"k", b"second")
    await env.commit(b)
    assert order and order[0].done
    assert env.get("kv", b"k") == b"second"
