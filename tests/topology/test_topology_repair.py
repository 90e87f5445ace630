"""Replica repair by the coordinator's scheduler: with 4 stores and replication 3, a store
killed for good loses its replicas; every region gets a new peer on the live store that has
none (learner, snapshot or log catch-up, promotion), then the dead replica is removed, until
each region has 3 voters again, all on live stores. Level-triggered: decided from the
catalog and heartbeats, one operation per region at a time."""

from __future__ import annotations

import pytest
from topo_harness import wait_until

from nokvpy.protocol.coordinator_rpc import DiagnosticsRequest

pytestmark = pytest.mark.cluster


async def test_replicas_move_off_a_dead_store(topo):
    c = await topo(stores=4, replication=3, scheduler="repair_after=2,stuck_after=30")
    async with c.client() as client:
        for i in range(60):
            await client.put(b"r/%02d" % i, b"v%d" % i)
        for key in (b"r/20", b"r/40"):
            reply = await c.split(client, key)
            assert reply.outcome == "APPLIED", reply
        before = await c.regions(client)
        assert len(before) == 3
        hosting = sorted({p.store_id for d in before for p in d.peers})
        assert len(hosting) == 3  # the fourth store holds nothing yet
        spare = next(s for s in range(1, 5) if s not in hosting)
        victim = hosting[0]
        c.kill(f"store-{victim}")

        async def repaired():
            regions = await c.regions(client)
            reply = await c.transitions(client)
            pending = [e for e in reply.entries if e.phase.name == "ADMITTED"]
            ok = len(regions) == 3 and not pending and all(
                len(d.voters()) == 3 and d.peer_on(victim) is None
                and not any(p.learner for p in d.peers) for d in regions)
            return regions if ok else None

        regions = await wait_until(repaired, 60, 0.5, "every region back to 3 live voters")
        for d in regions:
            assert d.peer_on(spare) is not None, d
            assert d.epoch.conf_ver >= 3, d  # one addition and one removal each
        # the new replicas serve: every key is readable, writes work
        for i in range(60):
            assert await client.get(b"r/%02d" % i) == b"v%d" % i
        await client.put(b"r/99", b"after")
        assert await client.get(b"r/99") == b"after"
        body = (await client.call_coordinator(DiagnosticsRequest())).body
        counters = body["scheduler"]["counters"]
        assert counters.get("issued.add_peer", 0) >= 3, counters
        assert counters.get("issued.remove_peer", 0) >= 3, counters
        status = await c.status(client, f"store-{spare}")
        hosted = {int(r) for r, v in status["regions"].items() if v["initialized"]}
        assert hosted == {d.region_id for d in regions}
        kinds = {}
        reply = await c.transitions(client)
        for e in reply.entries:
            kinds.setdefault(e.kind.name, []).append(e.phase.name)
        assert kinds.get("PEER_ADDITION", []).count("COMPLETED") >= 3, kinds
        assert kinds.get("PEER_REMOVAL", []).count("COMPLETED") >= 3, kinds


@pytest.mark.slow
async def test_rereplicate_a_region_of_10000_keys(topo):
    """A new replica of a 10,000-key region (the log is compacted: it gets a snapshot) serves
    every key once it leads."""
    import time

    import trio

    from nokvpy.protocol import Freshness
    from nokvpy.protocol.store_rpc import AdminRequest

    c = await topo(stores=4, replication=3)
    n = 10_000

    async def worker(w: int) -> None:
        async with c.client() as client:
            for i in range(w, n, 16):
                await client.put(b"t/%06d" % i, b"%d" % i)

    async with trio.open_nursery() as nursery:
        for w in range(16):
            nursery.start_soon(worker, w)
    async with c.client() as client:
        d = (await client.route(b"t/", Freshness.STRONG)).descriptor
        spare = next(s for s in range(1, 5) if d.peer_on(s) is None)
        leader = await c.leader_store(client, b"t/")
        t0 = time.monotonic()
        reply = await c.admin(client, AdminRequest("add_peer", d.region_id, store_id=spare),
                              leader, timeout=180)
        elapsed = time.monotonic() - t0
        assert reply.stage == "TERMINAL_PUBLISHED", reply
        assert elapsed < 60, elapsed
        moved = await c.admin(client, AdminRequest("transfer_leader", d.region_id,
                                                   store_id=spare), leader)
        assert moved.outcome == "APPLIED", moved
        for i in range(0, n, 97):
            assert await client.get(b"t/%06d" % i) == b"%d" % i
        body = await c.status(client, f"store-{spare}")
        assert body["regions"][str(d.region_id)]["leader"]


@pytest.mark.slow
async def test_scheduler_splits_a_region_over_the_size_threshold(topo):
    """With `split_keys`, the scheduler splits a region whose leader reports more keys (the
    count is refreshed every 30 s by default) at its median key."""
    c = await topo(stores=3, scheduler="split_keys=100")
    async with c.client() as client:
        for i in range(250):
            await client.put(b"s/%04d" % i, b"x")

        async def split_done():
            regions = await c.regions(client)
            reply = await c.transitions(client)
            done = [e for e in reply.entries if e.kind.name == "SPLIT"
                    and e.phase.name == "COMPLETED"]
            return regions if len(regions) >= 2 and done else None

        regions = await wait_until(split_done, 90, 0.5, "a size split")
        assert all(d.epoch.version >= 2 for d in regions)
        for i in range(0, 250, 7):
            assert await client.get(b"s/%04d" % i) == b"x"
