"""Waking hibernating followers whose leader may be gone.

Owns: the store's watch over the leaders of its hibernating followers (`watch_leaders`). A
region that hibernates (the raft core's "hibernation": its leader found nothing left to do
and every peer agreed) stops ticking on every store, so a follower would never notice its
leader's death by itself: its election clock is stopped. Every `interval` seconds this pings
(the RPC layer's inline `Ping`) each store that leads a region this store follows while
asleep, one ping per store whatever the number of regions; a store that does not answer
within `timeout` wakes every such region (`Driver.wake`): they tick again and elect if their
leader is gone. Never decides anything about a region's raft state (the core does) and never
wakes a region whose leader answered (a message from the leader, or a proposal, wakes it).

Assumes: a store that answers pings hosts its regions' leaders (a leader that stepped down
or was removed sends its peers messages, which wake them). A partition, a pause or a crash of
the leader's store makes its pings fail: its followers wake within `interval + timeout` and
elect after an election timeout, so a hibernating region fails over about
`interval + timeout` later than an active one.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from nokvpy.wire import Ping

log = logging.getLogger("nokvpy.raftstore")

WATCH_INTERVAL = 0.5  # seconds between the pings of the leaders' stores
PING_TIMEOUT = 0.5


def sleeping_followers(store: Any) -> dict[int, list[Any]]:
    """Leader store id -> this store's hibernating follower groups it leads."""
    by_store: dict[int, list[Any]] = {}
    for peer in list(store.peers.values()):
        group = peer.group
        if group is None or group.stopped or not group.node.hibernating or group.is_leader:
            continue
        leader_store = group.route(group.leader_id) if group.leader_id else None
        if leader_store is None or leader_store == store.store_id:
            continue
        by_store.setdefault(leader_store, []).append(group)
    return by_store


async def watch_leaders(store: Any, interval: float = WATCH_INTERVAL,
                        timeout: float = PING_TIMEOUT) -> None:
    """Ping the stores that lead this store's sleeping followers; wake the followers of
    every store that does not answer. Runs until cancelled."""
    while True:
        await trio.sleep(interval)
        by_store = sleeping_followers(store)
        if not by_store:
            continue

        async def check(store_id: int, groups: list[Any]) -> None:
            addr = store.store_addrs.get(store_id)
            ok = False
            if addr:
                with trio.move_on_after(timeout):
                    try:
                        await store.rpc.call(addr, Ping(b"hibernation"), timeout=timeout)
                        ok = True
                    except Exception:  # noqa: BLE001 - down, refused, paused: wake them
                        ok = False
            if ok:
                return
            store.counters["hibernation_leader_unreachable"] += 1
            for group in groups:
                if not group.stopped:
                    store.driver.wake(group)
            log.info("store %d: store %s does not answer; woke %d hibernating regions it "
                     "leads", store.store_id, store_id, len(groups))

        async with trio.open_nursery() as nursery:
            for store_id, groups in by_store.items():
                nursery.start_soon(check, store_id, groups)
