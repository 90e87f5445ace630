"""Merges on a real cluster: split, then merge the two halves back while clients keep writing
to both. The source is frozen in its own log (prepare_merge), every source replica confirms
the freeze, then the target commits the merge; no acknowledged write is lost, the source is
gone from root and from every store, and the merged region serves the whole range."""

from __future__ import annotations

import pytest
import trio
from topo_harness import wait_until

from nokvpy.client import OutcomeUnknownError
from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest

pytestmark = pytest.mark.cluster


async def test_merge_under_concurrent_writes_loses_no_acknowledged_write(topo):
    c = await topo(stores=3)
    acked: dict[bytes, bytes] = {}
    stop = trio.Event()

    async def writer(prefix: bytes) -> None:
        async with c.client() as client:
            i = 0
            while not stop.is_set():
                key = prefix + b"%05d" % i
                try:
                    await client.put(key, b"v%d" % i, timeout=30)
                    acked[key] = b"v%d" % i
                except OutcomeUnknownError:
                    pass
                i += 1

    async with c.client() as client:
        reply = await c.split(client, b"m")
        assert reply.outcome == "APPLIED", reply
        left = (await client.route(b"a", Freshness.STRONG)).descriptor
        right = (await client.route(b"z", Freshness.STRONG)).descriptor
        assert left.end_key == b"m" and right.start_key == b"m"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, b"a/")
            nursery.start_soon(writer, b"p/")
            await trio.sleep(1.0)
            leader = await c.leader_store(client, b"a")
            merged = await c.admin(client, AdminRequest("merge", left.region_id,
                                                        other_region_id=right.region_id),
                                   leader)
            await trio.sleep(1.0)
            stop.set()
        assert merged.outcome == "APPLIED", merged
        assert merged.transition_id == f"merge:{left.region_id}:{right.region_id}"
        await wait_until(lambda: _completed(c, client, merged.transition_id), 15,
                         what="MERGED in root")
        regions = await c.regions(client)
        assert len(regions) == 1
        d = regions[0]
        assert (d.region_id, d.start_key, d.end_key) == (left.region_id, b"", b"")
        assert d.epoch.version > max(left.epoch.version, right.epoch.version)
        assert len(acked) > 20
        for key, value in acked.items():
            assert await client.get(key) == value, key
        # the source replica is gone from every store (tombstoned, its data kept by the target)
        for name in c.store_names():
            body = await c.status(client, name)
            assert str(right.region_id) not in body["regions"], (name, body["regions"])
            assert right.region_id in body["tombstones"]
        # and the merged region takes writes on both sides of the old boundary
        await client.put(b"b", b"1")
        await client.put(b"q", b"2")
        assert await client.scan(b"b", b"r", limit=1000) and await client.get(b"q") == b"2"


async def _completed(c, client, tid):
    return await c.phase(client, tid) == "COMPLETED"


@pytest.mark.slow
async def test_scheduler_merges_cold_adjacent_regions(topo):
    """With `merge_keys`, two adjacent regions with the same stores, small and without writes
    for a few leader heartbeats, are merged by the scheduler."""
    c = await topo(stores=3, scheduler="merge_keys=1000,merge_cold_heartbeats=3")
    async with c.client() as client:
        for key in (b"a", b"k", b"x"):
            await client.put(key, b"v")
        reply = await c.split(client, b"m")
        assert reply.outcome == "APPLIED"

        async def merged():
            regions = await c.regions(client)
            reply = await c.transitions(client)
            done = [e for e in reply.entries if e.kind.name == "MERGE"
                    and e.phase.name == "COMPLETED"]
            return regions if len(regions) == 1 and done else None

        await wait_until(merged, 60, 0.5, "a cold merge")
        for key in (b"a", b"k", b"x"):
            assert await client.get(key) == b"v"
