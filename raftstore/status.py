"""What a store reports about itself: `ExecutionStatus`, its current restart state, and the
operator path of its publish outbox.

Owns: the `ExecutionStatus` body (identity, hosted regions, admissions and outcomes from the
execution tracker, queue depths and waiters, raft traffic drops, driver / transport /
storage counters, transitions, outbox, tombstones, heartbeats, topology), the current
restart state re-derived from localmeta (what a restart would find now: cached at most a
second, derived again at once when the outbox or blocked table changed size), and the
`OutboxRequest` RPC (list, retry or resolve a blocked entry; carried out by the publisher of
raftstore.topology.outbox, a refusal built by raftstore.admission through the store's
`refuse`). Never changes what the store hosts, and never fails to answer on a sick store (a
read error becomes part of the answer).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from nokvpy import metrics as m
from nokvpy.protocol import AdmissionClass, AdmissionReason, RestartStateKind
from nokvpy.protocol.store_rpc import (
    ExecutionStatusReply,
    ExecutionStatusRequest,
    OutboxReply,
    OutboxRequest,
)
from nokvpy.wire import DecodeError, decode
from raftstore.restart import RestartState, derive, load_image
from raftstore.topology.outbox import OutboxRefusal

if TYPE_CHECKING:
    from raftstore.store import Store

log = logging.getLogger("nokvpy.raftstore")

R = AdmissionReason


class StoreStatus:
    """The status answers of one store."""

    def __init__(self, store: Store):
        self.store = store
        self._current_state: tuple[float, RestartState] | None = None

    def current_state(self) -> RestartState:
        """The restart state derived again from localmeta now: what a restart would find.
        `restart` keeps the state found at start; this one clears once the causes are gone
        (outbox drained, blocked events resolved, a region rebuilt). Re-read at most once a
        second, and at once when the outbox or blocked table changed size (level-triggered:
        a drained outbox or a resolved blocked entry shows in the next answer)."""
        store = self.store
        now = trio.current_time()
        cached = self._current_state
        if cached is not None and now - cached[0] < 1.0:
            try:
                same = (len(store.meta.outbox()), len(store.meta.blocked())) == (
                    cached[1].outbox_backlog, cached[1].blocked_events)
            except Exception:  # noqa: BLE001 - a sick store re-derives (and reports why)
                same = False
            if same:
                return cached[1]
        try:
            state = derive(load_image(store.meta, store.raftlog))
        except Exception as exc:  # status must answer even on a sick store
            log.exception("store %d: re-deriving the restart state failed", store.store_id)
            state = RestartState(RestartStateKind.FATAL, ("read_failed",),
                                 message=f"reading localmeta failed: {exc}")
        self._current_state = (now, state)
        return state

    def body(self) -> dict[str, Any]:
        store = self.store
        leaders = sum(1 for p in store.peers.values() if p.is_leader)
        restart = store.restart.as_dict() if store.restart is not None else {}
        if restart:
            restart["outbox_backlog"] = store.outbox_backlog
            restart["blocked_events"] = store.blocked_events
        regions = {}
        for rid in sorted(store.peers):
            p = store.peers[rid]
            d = p.descriptor
            regions[str(rid)] = {
                "peer_id": p.peer_id,
                "initialized": d is not None,
                "epoch": [d.epoch.version, d.epoch.conf_ver] if d else [],
                "leader": p.is_leader,
                "leader_peer_id": p.leader_peer_id,
                "applied_index": p.sm.applied,
                "commit_index": p.commit_index(),
                "in_flight": p.in_flight,
                "state": d.state.name if d else "",
            }
        tracker = store.tracker.status()
        outbox = []
        try:
            outbox = [_outbox_entry(seq, ev) for seq, ev in store.meta.outbox()[:100]]
        except Exception as exc:  # status must answer even on a sick store
            outbox = [{"error": str(exc)}]
        return {
            "store_id": store.store_id,
            "address": store.cfg.address,
            "joined": store.joined,
            "region_count": len(store.peers),
            "leader_count": leaders,
            "restart_state": restart,
            "current_state": self.current_state().as_dict() if store.restart is not None else {},
            "last_admission": tracker["last_admission"],
            "admissions": tracker["admissions"],
            "outcomes": tracker["outcomes"],
            "recent_targets": tracker["recent_targets"],
            "queue_depths": {str(rid): p.in_flight for rid, p in sorted(store.peers.items())
                             if p.in_flight},
            "queue_limit": store.limits.queue_limit,
            "queue_waiters": {str(rid): len(line)
                              for rid, line in sorted(store.kvpath.waiting.items()) if line},
            "proposal_queue": len(store.driver._proposals),
            "drops": dict(sorted(store.drops.items())),
            "counters": dict(sorted(store.counters.items())),
            "driver": dict(sorted(store.driver.counters.items())),
            "transport": dict(sorted(store.transport.counters.items())),
            "storage": m.storage_stats(store.env, store.raftlog),
            "transitions": tracker["transitions"],
            "outbox": outbox,
            "tombstones": sorted(store.tombstones),
            "tombstoned_peers": {str(rid): t.peer_id
                                 for rid, t in sorted(store.tombstones.items())},
            "heartbeats_sent": store.heartbeats_sent,
            "last_heartbeat_error": store.last_heartbeat_error,
            "regions": regions,
            "topology": store.topology.status() if store.topology is not None else {},
        }

    async def on_execution_status(self, req: ExecutionStatusRequest, ctx: Any
                                  ) -> ExecutionStatusReply:
        body = self.body()
        if req.region_id:
            body["regions"] = {k: v for k, v in body["regions"].items()
                               if k == str(req.region_id)}
        if req.transition_id:
            body["transitions"] = {k: v for k, v in body["transitions"].items()
                                   if k == req.transition_id}
        return ExecutionStatusReply(body)

    async def on_outbox(self, req: OutboxRequest, ctx: Any) -> OutboxReply:
        """The operator path of the publish outbox (raftstore.topology.outbox): list, retry or
        resolve a blocked entry. A request that cannot be carried out is refused INVALID and
        changes nothing."""
        store = self.store
        publisher = getattr(store.topology, "publisher", None)
        if publisher is None:
            raise store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                               f"store {store.store_id} runs no outbox publisher")
        detail = ""
        try:
            if req.action == "retry":
                detail = await publisher.retry_blocked(req.seq)
            elif req.action == "resolve":
                detail = await publisher.resolve_blocked(req.seq, req.resolution, req.reason)
            elif req.action != "list":
                raise OutboxRefusal(f"unknown outbox action {req.action!r}: expected list, "
                                    "retry or resolve")
        except OutboxRefusal as exc:
            raise store.refuse(AdmissionClass.TOPOLOGY, R.INVALID, str(exc)) from None
        if req.action != "list":
            self._current_state = None  # the tables changed: derive the state again now
        body: dict[str, Any] = dict(publisher.status())
        body["store_id"] = store.store_id
        body["current_state"] = (self.current_state().as_dict() if store.restart is not None
                                 else {})
        return OutboxReply(req.action, detail, body)


def _outbox_entry(seq: int, event: bytes) -> dict[str, Any]:
    try:
        kind = type(decode(event)).__name__
    except DecodeError:
        kind = "undecodable"
    return {"seq": seq, "bytes": len(event), "record": kind}
