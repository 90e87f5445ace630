"""Store membership at the coordinator: joins, and retirement (drain a store of every
replica, then root STORE_RETIRED).

Owns: the StoreJoin RPC (an id allocated for a new store, STORE_JOINED rooted; a retired
store refused for good, a known store at the same address answered as a rejoin) and the
RetireStore RPC (admin role) and its answers, the capacity refusal, the rooted
drain record, and the decision that a drained store may be retired. Protocol: the first
call checks that the live stores left (neither retired nor draining) can hold the
replication, else refuses (`not_enough_stores`, nothing appended), and roots the store's drain
record (a RecoveryRecord `store_draining` under `store-retire:<id>`, so a restarted
coordinator still knows); the scheduler (coordinator.scheduler) then moves every replica off
the store; once the catalog lists no replica on it, no pending transition names it and the
store itself (when UP) reports none, STORE_RETIRED is appended, fenced by the cluster epoch
the decision read: by a call, or by the region_lookup holder's drift loop
(`finish_retirements`). Every call answers the progress and changes nothing more
(idempotent). Never moves a replica itself (the scheduler does) and never talks to stores.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from coordinator.grantloop import GateRejected
from coordinator.scheduler import DRAIN_ACTION, drain_record_id, draining_store_ids
from nokvpy.protocol.coordinator_rpc import (
    RetireStoreReply,
    RetireStoreRequest,
    StoreJoinReply,
    StoreJoinRequest,
)
from nokvpy.protocol.enums import ErrorKind, EventKind, RetryClass
from nokvpy.protocol.records import RecoveryRecord, RootEvent, StoreMembership
from nokvpy.rpc.errors import RemoteError

log = logging.getLogger("nokvpy.coordinator")

SYNC_TIMEOUT = 5.0  # seconds to confirm root's token before a retirement decision


class StoreMembershipService:
    """Store joins and retirements, over the coordinator service `svc`."""

    def __init__(self, svc: Any):
        self.svc = svc
        self._lock = trio.Lock()

    async def on_store_join(self, req: StoreJoinRequest, ctx) -> StoreJoinReply:
        if not isinstance(req.address, str) or ":" not in req.address:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "invalid_address",
                              f"store address {req.address!r} is not host:port")
        if not isinstance(req.store_id, int) or req.store_id < 0:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "invalid_store_id",
                              f"store id {req.store_id!r}")
        sid = req.store_id
        if sid == 0:
            try:
                sid, _ = await self.svc.ids.allocate(1)
            except GateRejected as exc:
                raise exc.remote() from None
            self.svc.counters["store_ids_allocated"] += 1
        else:
            rec = self.svc.sub.state.store(sid)
            if rec is not None and rec.retired:
                raise RemoteError(ErrorKind.REJECTED, "store_retired",
                                  f"store {sid} was retired at root index {rec.retired_index}",
                                  {"retry_class": RetryClass.PERMANENT.name})
            if rec is not None and rec.address == req.address:
                self.svc.counters["store_rejoins"] += 1
                self.svc.kick_bootstrap()
                return StoreJoinReply(sid, self.svc.cluster_id, self.svc.sub.served_token)
        reply = await self.svc.append([RootEvent(EventKind.STORE_JOINED,
                                              StoreMembership(sid, req.address))])
        self.svc.counters["store_joins"] += 1
        log.info("store %d joined at %s (root %s)", sid, req.address, reply.last_token)
        self.svc.kick_bootstrap()
        return StoreJoinReply(sid, self.svc.cluster_id, reply.last_token)

    async def on_retire_store(self, req: RetireStoreRequest, ctx) -> RetireStoreReply:
        sid = req.store_id
        if not isinstance(sid, int) or isinstance(sid, bool) or sid <= 0:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "invalid_store_id",
                              f"store id {sid!r}")
        await self.svc.sync_with_root(SYNC_TIMEOUT)
        async with self._lock:
            state = self.svc.sub.state
            rec = state.store(sid)
            if rec is None:
                raise RemoteError(ErrorKind.NOT_FOUND, "unknown_store",
                                  f"store {sid} never joined (root {state.token})",
                                  {"retry_class": RetryClass.PERMANENT.name})
            if not rec.retired and sid not in draining_store_ids(state):
                self.refuse_retirement(state, sid)
                ev = RootEvent(EventKind.RECOVERY_RECORDED, RecoveryRecord(
                    drain_record_id(sid), DRAIN_ACTION,
                    f"an operator asked to retire store {sid}",
                    remained=f"every replica on store {sid} is to move to another store"),
                    f"retire-store:{sid}:drain")
                await self.svc.append([ev])
                self.svc.counters["stores_draining"] += 1
                log.info("store %d is draining (retirement requested)", sid)
            return await self._retire_progress(sid)

    def refuse_retirement(self, state: Any, sid: int) -> None:
        """Refuse to start draining `sid` when the live stores left (neither retired nor
        draining) could not hold the replication."""
        draining = draining_store_ids(state)
        left = [s for s in state.live_store_ids() if s != sid and s not in draining]
        if len(left) >= self.svc.replication:
            return
        others = f" (draining: {sorted(draining)})" if draining else ""
        raise RemoteError(
            ErrorKind.REJECTED, "not_enough_stores",
            f"retiring store {sid} would leave {len(left)} live store(s) {left}{others} for a "
            f"replication of {self.svc.replication}: add a store first",
            {"retry_class": RetryClass.PERMANENT.name, "live_left": len(left),
             "replication": self.svc.replication})

    def _retire_view(self, sid: int) -> tuple[list[int], list[str], list[int]]:
        """(regions the catalog lists with a replica on `sid`, pending transitions naming it,
        replicas the store itself still reports while UP: removed ones it has not dropped
        yet; its heartbeat replies tombstone them, and a retired store is answered no more)."""
        catalog = self.svc.sub.catalog
        regions = sorted(d.region_id for d in catalog.regions() if d.peer_on(sid) is not None) \
            if catalog is not None else []
        pending = sorted(p.transition_id for p in self.svc.sub.state.pending_transitions()
                         if any(q.store_id == sid for d in (*p.targets, *p.bases)
                                for q in d.peers))
        live = self.svc.stores.stores.get(sid)
        reported = sorted(live.observed) if live is not None and \
            self.svc.stores.is_up(sid, trio.current_time()) else []
        return regions, pending, reported

    async def _retire_progress(self, sid: int) -> RetireStoreReply:
        """Report the retirement of `sid`; root STORE_RETIRED once it holds nothing."""
        state = self.svc.sub.state
        rec = state.store(sid)
        if rec is not None and rec.retired:
            return RetireStoreReply(sid, "retired", 0, (), (), rec.retired_index,
                                    f"store {sid} retired at root index {rec.retired_index}")
        regions, pending, reported = self._retire_view(sid)
        if not regions and not pending and not reported:
            try:
                await self.svc.append([RootEvent(EventKind.STORE_RETIRED,
                                             StoreMembership(sid, ""))],
                                  expected_cluster_epoch=state.cluster_epoch)
            except RemoteError as exc:
                # the topology moved since the decision (cluster epoch): judged again later
                log.info("store %d: STORE_RETIRED not appended yet: %s", sid, exc)
            else:
                rec = self.svc.sub.state.store(sid)
                self.svc.counters["stores_retired"] += 1
                log.info("store %d retired (no replica left)", sid)
                if rec is not None and rec.retired:
                    return RetireStoreReply(sid, "retired", 0, (), (), rec.retired_index,
                                            f"store {sid} retired at root index "
                                            f"{rec.retired_index}")
        return RetireStoreReply(
            sid, "draining", len(regions), tuple(regions[:64]), tuple(pending[:64]), 0,
            f"store {sid} is draining: {len(regions)} replica(s) left to move"
            + (f", {len(pending)} pending transition(s) name it" if pending else "")
            + (f"; the store still reports {len(reported)} replica(s) (being dropped)"
               if reported and not regions else ""))

    async def finish_retirements(self) -> list[int]:
        """Root STORE_RETIRED for every draining store that holds nothing (the region_lookup
        holder, with a fresh catalog: the drift loop). Returns the stores retired."""
        done = []
        async with self._lock:
            for sid in sorted(draining_store_ids(self.svc.sub.state)):
                reply = await self._retire_progress(sid)
                if reply.state == "retired":
                    done.append(sid)
        return done
