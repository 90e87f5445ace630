"""Joining the cluster and heartbeating the coordinators.

Owns: the coordinator address list and failover across it, `StoreJoin` retried with
jittered exponential backoff until some coordinator answers, and the heartbeat loop (about
once a second, to every coordinator: one `RegionHeartbeat` per hosted region) whose replies tell the store which
regions to host and which are tombstoned, and carry every store's address. Never decides
what to host itself: it hands each reply to `Store.on_heartbeat_reply` (level-triggered: a
missed reply is repaired by the next one). A retired store (refusal `store_retired`) is
refused the join for good (`JoinRefusedError`: the process exits) and, when retired while
running, stays idle (`Store.retired`; heartbeats are refused, so it is given nothing).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any

import trio

from nokvpy.protocol.coordinator_rpc import StoreJoinReply, StoreJoinRequest
from nokvpy.rpc import RemoteError, RpcClient, RpcError
from raftstore.store import Store

log = logging.getLogger("nokvpy.raftstore")


class JoinRefusedError(Exception):
    """The coordinator answered the join with an identity that is not ours."""


class CoordinatorLink:
    """Calls whichever coordinator answers, remembering the last one that did."""

    def __init__(self, rpc: RpcClient, addrs: list[str], timeout: float = 2.0):
        if not addrs:
            raise ValueError("at least one coordinator address is needed")
        self.rpc = rpc
        self.addrs = list(addrs)
        self.timeout = timeout
        self._index = 0

    async def call(self, request: Any) -> Any:
        last: Exception | None = None
        n = len(self.addrs)
        for i in range(n):
            addr = self.addrs[(self._index + i) % n]
            try:
                reply = await self.rpc.call(addr, request, timeout=self.timeout)
            except RemoteError as exc:
                if exc.kind in ("not_leader", "unavailable", "timeout"):
                    last = exc
                    continue
                raise
            except RpcError as exc:
                last = exc
                continue
            self._index = (self._index + i) % n
            return reply
        raise RpcError(f"no coordinator answered ({', '.join(self.addrs)}): {last}")

    async def broadcast(self, request: Any) -> Any:
        """Send `request` to every coordinator at once (each keeps its own live view of the
        stores); return the reply of the preferred one that answered. Raises the preferred
        coordinator's error when none answered."""
        if len(self.addrs) == 1:
            return await self.call(request)
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            try:
                results[i] = await self.rpc.call(self.addrs[i], request, timeout=self.timeout)
            except (RpcError, RemoteError) as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(self.addrs)):
                nursery.start_soon(one, i)
        n = len(self.addrs)
        order = [(self._index + k) % n for k in range(n)]
        for i in order:
            if not isinstance(results[i], Exception):
                self._index = i
                return _merge_operations(results[i], [r for r in results.values()
                                                      if not isinstance(r, Exception)])
        raise results[order[0]]


def _merge_operations(reply: Any, replies: list[Any]) -> Any:
    """Scheduler operations come from whichever coordinator schedules (the region_lookup
    grant holder), not necessarily the preferred one: keep every reply's operations."""
    ops = list(getattr(reply, "operations", None) or ())
    for other in replies:
        if other is reply:
            continue
        for op in getattr(other, "operations", None) or ():
            if op not in ops:
                ops.append(op)
    epoch = max((getattr(r, "cluster_epoch", 0) or 0) for r in replies)
    try:
        return replace(reply, operations=ops, cluster_epoch=epoch)
    except TypeError:  # a reply type without these fields
        return reply


async def join(store: Store, link: CoordinatorLink, rng: random.Random | None = None) -> None:
    """Register with a coordinator, retrying with backoff until one accepts."""
    rng = rng or random.Random(store.store_id)
    backoff = 0.05
    attempt = 0
    while True:
        attempt += 1
        try:
            reply = await link.call(StoreJoinRequest(store.store_id, store.cfg.address))
        except (RpcError, RemoteError) as exc:
            if isinstance(exc, RemoteError) and exc.reason == "store_retired":
                # retired in root for good: this store must never host a replica again
                raise JoinRefusedError(f"store {store.store_id} is retired: {exc.message}; "
                                       "it cannot rejoin (start a new store with a new id "
                                       "and data directory)") from None
            if attempt == 1 or attempt % 20 == 0:
                log.warning("store %d: join attempt %d failed: %s", store.store_id, attempt, exc)
            await trio.sleep(backoff * (0.8 + 0.4 * rng.random()))
            backoff = min(backoff * 2, 2.0)
            continue
        if not isinstance(reply, StoreJoinReply) or reply.store_id != store.store_id:
            raise JoinRefusedError(f"coordinator answered the join of store {store.store_id} "
                                   f"with {reply!r}")
        if reply.cluster_id and reply.cluster_id != store.cfg.cluster_id:
            raise JoinRefusedError(f"coordinator belongs to cluster {reply.cluster_id!r}, this "
                                   f"store to {store.cfg.cluster_id!r}")
        store.joined = True
        log.info("store %d joined the cluster (attempt %d)", store.store_id, attempt)
        return


async def heartbeat_loop(store: Store, link: CoordinatorLink, interval: float = 1.0,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Join, then heartbeat every `interval` seconds until cancelled."""
    task_status.started()
    await join(store, link)
    failures = 0
    while True:
        await store.refresh_region_stats()
        try:
            reply = await link.broadcast(store.heartbeat_request())
        except RemoteError as exc:
            failures += 1
            store.last_heartbeat_error = str(exc)
            if exc.reason == "unknown_store":
                # The coordinators do not know us (their root was rebuilt, or our join was
                # lost): register again, then carry on heartbeating.
                log.warning("store %d: coordinator does not know this store; joining again",
                            store.store_id)
                store.joined = False
                await join(store, link)
                continue
            if exc.reason == "store_retired":
                # Retired while running: no coordinator answers it any more, so it is given
                # nothing; it stays idle until it is stopped.
                if not store.retired:
                    log.error("store %d is retired: heartbeats are refused, it hosts "
                              "nothing; stop this process", store.store_id)
                store.retired = True
            if failures == 1 or failures % 30 == 0:
                log.warning("store %d: heartbeat refused (%d in a row): %s", store.store_id,
                            failures, exc)
        except RpcError as exc:
            failures += 1
            store.last_heartbeat_error = str(exc)
            if failures == 1 or failures % 30 == 0:
                log.warning("store %d: heartbeat failed (%d in a row): %s", store.store_id,
                            failures, exc)
        else:
            failures = 0
            store.heartbeats_sent += 1
            store.last_heartbeat_error = ""
            await store.on_heartbeat_reply(reply)
        # A new leader (or a topology change) wakes the loop early; never more often than
        # every fifth of the interval.
        await trio.sleep(interval / 5)
        with trio.move_on_after(interval * 4 / 5):
            await store.heartbeat_wake.wait()
        store.heartbeat_wake = trio.Event()
