"""Splits on a real cluster: the lifecycle of DESIGN 5 on every replica, no acknowledged write
lost while clients keep writing across the splits, and STRONG routes that never answer with
the parent range once a split committed (DESIGN 4.4, 4.6)."""

from __future__ import annotations

import random

import pytest
import trio
from topo_harness import wait_until

from nokvpy.client import OutcomeUnknownError
from nokvpy.client.errors import NokvError
from nokvpy.protocol import Freshness

pytestmark = pytest.mark.cluster

SPLIT_KEYS = (b"k/1", b"k/2", b"k/3")


def spans(d, key: bytes) -> bool:
    """Does descriptor `d` cover both sides of `key` (the parent range of a split there)?"""
    return d.start_key < key and (not d.end_key or d.end_key > key)


async def test_splits_under_concurrent_writes_lose_no_acknowledged_write(topo):
    c = await topo(stores=3)
    acked: dict[bytes, bytes] = {}
    unknown: set[bytes] = set()
    committed: list[bytes] = []  # split keys whose split committed (terminal published)
    bad_routes: list[str] = []
    stop = trio.Event()

    async def writer(w: int) -> None:
        async with c.client() as client:
            i = 0
            while not stop.is_set():
                key = b"k/%d/%05d" % (w, i)
                value = b"v%d-%d" % (w, i)
                try:
                    await client.put(key, value, timeout=30)
                    acked[key] = value
                except OutcomeUnknownError:
                    unknown.add(key)
                i += 1

    async def router(seed: int) -> None:
        rng = random.Random(seed)
        async with c.client() as client:
            while not stop.is_set():
                done = list(committed)  # splits committed before this read was issued
                key = b"k/%d/%05d" % (rng.randrange(4), rng.randrange(500))
                try:
                    reply = await client.route(key, Freshness.STRONG)
                except NokvError:
                    continue
                d = reply.descriptor
                for sk in done:
                    if d is not None and spans(d, sk):
                        bad_routes.append(f"{key!r} -> region {d.region_id} "
                                          f"[{d.start_key!r}, {d.end_key!r}) after split at {sk!r}")
                await trio.sleep(0.01)

    async with c.client() as client:
        tids = []
        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(writer, w)
            nursery.start_soon(router, 7)
            await trio.sleep(1.0)
            for sk in SPLIT_KEYS:
                reply = await c.split(client, sk)
                assert reply.stage == "TERMINAL_PUBLISHED", reply
                assert reply.outcome == "APPLIED", reply
                tids.append(reply.transition_id)
                committed.append(sk)
                route = await client.route(sk, Freshness.STRONG)
                assert route.descriptor.start_key == sk
                await trio.sleep(0.7)
            stop.set()

        # every acknowledged write is there (reads are linearizable)
        assert len(acked) > 50, f"only {len(acked)} writes acknowledged"
        for key, value in acked.items():
            assert await client.get(key) == value, key
        assert not bad_routes, bad_routes[:5]

        # the coordinator lists each split as completed; four regions partition the keyspace
        for tid in tids:
            assert await c.phase(client, tid) == "COMPLETED", tid
        regions = sorted(await c.regions(client), key=lambda d: d.start_key)
        assert [d.start_key for d in regions] == [b"", *SPLIT_KEYS]
        assert all(d.epoch.version >= 2 for d in regions[1:])

        # every replica tracked the lifecycle of each split: the executor through every stage
        for tid in tids:
            stages = {}
            for name in c.store_names():

                async def published(n=name, t=tid):
                    rec = await c.tracked(client, n, t)
                    return rec if rec and rec["stage"] == "TERMINAL_PUBLISHED" else None

                # replicas publish their backup copy after a grace period
                stages[name] = await wait_until(published, 15, what=f"{tid} on {name}")
            executors = [r for r in stages.values() if r["role"] == "executor"]
            assert len(executors) == 1, stages
            seen = [h["stage"] for h in executors[0]["history"]]
            assert seen == ["PLANNED", "PLANNED_PUBLISHED", "EXECUTING", "APPLIED",
                            "TERMINAL_PENDING", "TERMINAL_PUBLISHED"], seen
            for name, rec in stages.items():
                assert rec["stage"] == "TERMINAL_PUBLISHED", (name, rec)
                assert rec["publish_state"] == "PUBLISHED", (name, rec)
