"""Watch on a real cluster: every committed change of a range, once, in order per key, across
splits, merges, leader changes and a kill -9 of a store; resumable from its token; a cursor
below a region's floor answers `compacted`, never a silent gap."""

from __future__ import annotations

import pytest
import trio
from topo_harness import Topo, wait_until

from nokvpy.client import Compare, Op, OutcomeUnknownError, WatchCompactedError
from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError

pytestmark = pytest.mark.cluster

TOPO_OPTIONS = {"stores": 3}


async def _collect(w, n: int, timeout: float = 20.0) -> list:
    got = []
    with trio.fail_after(timeout):
        async for ev in w:
            got.append(ev)
            if len(got) >= n:
                return got
    return got


async def test_watch_delivers_puts_deletes_txns_and_range_deletes_in_order(module_topo):
    c = module_topo
    async with c.client() as client:
        await client.put(b"w0/before", b"old")
        async with client.watch(b"w0/", prefix=True) as w:
            await client.put(b"w0/a", b"1")
            await client.put(b"w0/b", b"2")
            await client.put(b"w1/outside", b"x")  # not in the range
            await client.delete(b"w0/a")
            await client.txn([Compare.value(b"w0/b", "==", b"2")],
                             [Op.put(b"w0/c", b"3"), Op.put(b"w0/d", b"4")])
            await client.delete_range(b"w0/c", b"w0/e")
            got = await _collect(w, 7)
        assert [(e.kind, e.key, e.value) for e in got] == [
            ("put", b"w0/a", b"1"), ("put", b"w0/b", b"2"), ("delete", b"w0/a", None),
            ("put", b"w0/c", b"3"), ("put", b"w0/d", b"4"),
            ("delete", b"w0/c", None), ("delete", b"w0/d", None)]
        revs = [e.revision for e in got]
        assert revs == sorted(revs) and len(set(revs)) == len(revs)
        txn_events = got[3:5]
        assert txn_events[0].index == txn_events[1].index  # one entry, two changes
        assert [e.seq for e in txn_events] == [0, 1]


async def test_watch_resumes_from_its_token_with_nothing_lost_or_repeated(module_topo):
    c = module_topo
    async with c.client() as client:
        async with client.watch(b"w2/", prefix=True) as w:
            for i in range(5):
                await client.put(b"w2/%d" % i, b"v%d" % i)
            first = await _collect(w, 3)
            token = w.segments()
        for i in range(5, 8):
            await client.put(b"w2/%d" % i, b"v%d" % i)
        async with client.watch(b"", resume=token) as w2:
            rest = await _collect(w2, 5)
        assert [e.key for e in first + rest] == [b"w2/%d" % i for i in range(8)]


async def test_a_cursor_below_the_floor_is_compacted_not_skipped(module_topo):
    c = module_topo
    async with c.client() as client:
        await client.put(b"w3/a", b"1")
        async with client.watch(b"w3/", prefix=True, since=(0, 0)) as w:
            with pytest.raises(WatchCompactedError) as err:
                await _collect(w, 1)
        assert err.value.floor > (0, 0)
        assert err.value.reason == "compacted"


async def test_watch_across_split_merge_leader_kill_loses_and_repeats_nothing(module_topo):
    """One writer per key writes increasing values; the watch must see, per key, exactly the
    acknowledged values in order (a write of unknown outcome at most once, in place). The
    consumer is slow around the split and the merge, so the watch's cursor is behind them
    (the changes of the moving range before it must come from the new region)."""
    await watch_through_topology_changes(module_topo)


async def watch_through_topology_changes(c, env: dict[str, str] | None = None) -> None:
    keys = [b"w4/%02d" % i for i in range(12)]
    written: dict[bytes, list[tuple[bytes, bool]]] = {k: [] for k in keys}
    stop = trio.Event()

    async def writer(client, key: bytes) -> None:
        i = 0
        while not stop.is_set():
            value = b"%d" % i
            try:
                await client.put(key, value, timeout=30)
                written[key].append((value, True))
            except OutcomeUnknownError:
                written[key].append((value, False))
            i += 1
            await trio.sleep(0.02)

    async with c.client() as client:
        for name in c.store_names():
            await c.wait_store(client, name)
        async with client.watch(b"w4/", prefix=True, buffer=4) as w:
            seen: list = []
            slow = [False]

            async def consume() -> None:
                async for ev in w:
                    seen.append(ev)
                    if slow[0]:
                        await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for k in keys:
                    nursery.start_soon(writer, client, k)
                await trio.sleep(1.0)
                slow[0] = True
                split = await c.split(client, b"w4/06")
                assert split.outcome == "APPLIED", split
                await trio.sleep(1.0)
                slow[0] = False
                leader = await c.leader_store(client, b"w4/00")
                name = f"store-{leader}"
                c.kill(name)
                await trio.sleep(2.0)
                c.start_process(name, env)
                await c.wait_store(client, name)
                await trio.sleep(1.0)
                left = (await client.route(b"w4/00", Freshness.STRONG)).descriptor
                right = (await client.route(b"w4/06", Freshness.STRONG)).descriptor
                lead = await c.leader_store(client, b"w4/00")
                slow[0] = True
                merged = await _merge(c, client, left.region_id, right.region_id, lead)
                assert merged.outcome == "APPLIED", merged
                await trio.sleep(1.0)
                slow[0] = False
                stop.set()
                await trio.sleep(0.5)  # the writers' last puts
                marker = await client.put(b"w4/~end", b"")
                assert marker
                await wait_until(lambda: _seen_key(seen, b"w4/~end"), 30,
                                 what="the end marker")
                nursery.cancel_scope.cancel()
    _check(written, seen)


async def _merge(c, client, left: int, right: int, lead: int):
    """Merge `right` into `left` through `lead`, again while a replica is still unreachable
    from the leader (a store just restarted: its connection is in reconnect backoff; the
    merge refuses before planning anything)."""
    deadline = trio.current_time() + 30
    while True:
        try:
            return await c.admin(client, AdminRequest("merge", left, other_region_id=right),
                                 lead)
        except RemoteError as exc:
            if "did not answer" not in str(exc) or trio.current_time() > deadline:
                raise
            await trio.sleep(0.5)


async def _seen_key(seen, key):
    return any(e.key == key for e in seen)


class WatchGapError(AssertionError):
    """The watch lost, repeated or reordered a change of a key."""


def _check(written, seen) -> None:
    per_key: dict[bytes, list[bytes]] = {}
    for e in seen:
        assert e.kind == "put", e
        per_key.setdefault(e.key, []).append(e.value)
    for key, values in written.items():
        got = per_key.get(key, [])
        # `got` must be `values` with the unacknowledged ones each kept or dropped
        j = 0
        for value, acked in values:
            if j < len(got) and got[j] == value:
                j += 1
            elif acked:
                raise WatchGapError(f"{key!r}: acknowledged {value!r} missing or out of "
                                     f"order; watched {got[max(0, j - 3):j + 3]!r}")
        if j != len(got):
            raise WatchGapError(f"{key!r}: watched {got[j:j + 5]!r} beyond what was written")
        assert sum(a for _, a in values) > 10, (key, len(values))


@pytest.mark.slow  # python -m pytest -m slow tests/topology/test_watch.py
@pytest.mark.parametrize("seed", range(3))
async def test_unsafe_handoff_is_caught(tmp_path, seed):
    """NOKV_UNSAFE_WATCH_HANDOFF=1: split children and merge targets do not take the changes
    their range had before; the slow consumer's watch then misses some."""
    env = {"NOKV_UNSAFE_WATCH_HANDOFF": "1"}
    t = Topo(tmp_path / "cluster", stores=3)
    try:
        for proc in t.spec.processes:
            t.start_process(proc.name, env if proc.kind == "store" else None)
        await t.wait_ready()
        with pytest.raises(WatchGapError):
            await watch_through_topology_changes(t, env)
    finally:
        t.stop_all()


async def test_a_split_left_of_the_range_during_a_poll_keeps_the_watch_whole(module_topo):
    """The region splits at or left of the watched start while a poll waits at the store:
    the poll is refused (the range moved) and the watch routes again, instead of taking the
    left part's reply for its own (it then watched keys outside its range, and failed)."""
    c = module_topo
    async with c.client() as client:
        await client.put(b"w5a/1", b"x")
        await client.put(b"w5b/1", b"x")
        async with client.watch(b"w5b/", prefix=True) as w:
            await trio.sleep(0.2)  # the poll is waiting at the store
            split = await c.split(client, b"w5a/5")
            assert split.outcome == "APPLIED", split
            await client.put(b"w5a/6", b"outside")
            await client.put(b"w5b/2", b"inside")
            ev = await w.next(20)
            assert ev is not None and (ev.key, ev.value) == (b"w5b/2", b"inside"), ev
            await client.put(b"w5b/3", b"inside")
            ev = await w.next(20)
            assert ev is not None and ev.key == b"w5b/3", ev
            segments = w.segments()
        assert all(b"w5b/" <= s.start and (not s.end or s.start < s.end) for s in segments), \
            segments
