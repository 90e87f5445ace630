"""The topology runtime wired into a store: its RPC, its scheduler operations, its status
(DESIGN 4.6, 5).

Owns: `Topology` (the shared runtime of raftstore.topology.runtime plus the operations):
the `AdminRequest` RPC (split | merge | add_peer | remove_peer | transfer_leader | tombstone
| compensate | drive_forward) dispatched to the operation modules (split, merge, membership,
compensation), the scheduler operations carried by heartbeat replies, the cluster-epoch
fence, the apply handlers installed on every replica (raftstore.topology.apply), the outbox
publisher task (raftstore.topology.outbox), the heartbeat annotation and the status. Two
operations have no plan of their own and live here: leader transfer (no root event) and
region tombstone (root removes the region; replicas are destroyed from heartbeats).

Never: publishes terminal events itself (the outbox does), decides scheduling (the
coordinator does), or answers a refusal without an admission reason (raftstore.admission).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import trio

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    ExecutionOutcome,
    TopologyStage,
)
from nokvpy.protocol.coordinator_rpc import (
    RemoveRegionRequest,
    SchedulerOperation,
    StoreHeartbeatReply,
)
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest
from nokvpy.protocol.transitions import tombstone_transition_id
from nokvpy.rpc import RemoteError, RpcError
from raftstore.admission import refused
from raftstore.topology.apply import ApplyHandlers
from raftstore.topology.context import ForwardToLeaderError, RootLink, StoreContext
from raftstore.topology.membership import MembershipOp
from raftstore.topology.merge import MergeOp
from raftstore.topology.outbox import describe
from raftstore.topology.runtime import Runtime
from raftstore.topology.split import SplitOp

log = logging.getLogger("nokvpy.raftstore.topology")

S = TopologyStage
OUT = ExecutionOutcome
R = AdmissionReason


class Topology(Runtime):
    """One store's topology runtime. `await nursery.start(topology.run)`."""

    def __init__(self, store: StoreContext, link: RootLink):
        super().__init__(store, link)
        self.handlers = ApplyHandlers(self)
        self.split = SplitOp(self)
        self.merge = MergeOp(self)
        self.membership = MembershipOp(self)
        self.ops_in_flight: set[tuple[str, int, str]] = set()
        store.topology = self

    # ---- wiring --------------------------------------------------------------------------

    def attach(self, sm: Any) -> None:
        self.handlers.install(sm)

    def register(self, server: Any) -> None:
        server.register(AdminRequest, self.on_admin)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.publisher.restore()
            await nursery.start(self.publisher.run)
            task_status.started()

    # ---- heartbeats ----------------------------------------------------------------------

    def annotate(self, regions: list[Any]) -> list[Any]:
        """Heartbeats name the transition this store is executing on each region (the
        scheduler does not call a transition stuck while its executor reports it)."""
        if not self.busy:
            return regions
        return [replace(rh, pending_transition=self.busy[rh.region_id])
                if rh.region_id in self.busy and rh.is_leader else rh for rh in regions]

    async def on_heartbeat_reply(self, reply: StoreHeartbeatReply) -> None:
        epoch = getattr(reply, "cluster_epoch", 0)
        if epoch:
            self.cluster_epoch = epoch
        for op in reply.operations or ():
            key = (op.kind, op.region_id, op.transition_id)
            if key in self.ops_in_flight or self.nursery is None:
                self.counters["operations_deduplicated"] += 1
                continue
            self.ops_in_flight.add(key)
            self.counters[f"operations.{op.kind}"] += 1
            self.nursery.start_soon(self._run_operation, op, key)

    async def _run_operation(self, op: SchedulerOperation, key: tuple) -> None:
        req = AdminRequest(op.kind, op.region_id, split_key=op.split_key,
                           other_region_id=op.other_region_id, store_id=op.store_id,
                           peer_id=op.peer_id, transition_id=op.transition_id, wait=True,
                           reason=f"scheduler: {op.reason}" if op.reason else "scheduler")
        try:
            reply = await self.on_admin(req, None)
            log.info("store %d: scheduler operation %s on region %d: %s %s %s",
                     self.store.store_id, op.kind, op.region_id, reply.outcome, reply.stage,
                     reply.detail)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the scheduler re-evaluates (level-triggered)
            self.counters["operations_failed"] += 1
            log.info("store %d: scheduler operation %s on region %d refused: %s",
                     self.store.store_id, op.kind, op.region_id, describe(exc))
        finally:
            self.ops_in_flight.discard(key)

    # ---- the RPC -------------------------------------------------------------------------

    async def on_admin(self, req: AdminRequest, ctx: Any) -> AdminReply:
        op = req.op
        handler = {
            "split": self.split.exec_split, "merge": self.merge.exec_merge,
            "add_peer": self.membership.exec_add_peer,
            "remove_peer": self.membership.exec_remove_peer,
            "transfer_leader": self.exec_transfer, "tombstone": self.exec_tombstone,
            "compensate": self.compensator.on_compensate,
            "drive_forward": self.compensator.on_drive_forward,
        }.get(op)
        if handler is None:
            raise refused(R.INVALID, f"unknown admin op {op!r}")
        self.counters[f"admin.{op}"] += 1
        try:
            return await handler(req)
        except ForwardToLeaderError as fwd:
            return await self.forward(req, fwd.leader_store)

    _forward = Runtime.forward  # (its name in tests/raftstore/test_admin_forward.py)

    # ---- leader transfer (no root event) -------------------------------------------------

    async def exec_transfer(self, req: AdminRequest) -> AdminReply:
        peer, desc = await self.settled_leader(req.region_id, degraded_ok=True)
        to = desc.peer_on(req.store_id)
        tid = f"transfer:{desc.region_id}:{req.store_id}"
        if to is None or to.learner:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    f"store {req.store_id} holds no voter of region "
                                    f"{desc.region_id}", peer)
        target = self.store.tracker.new_target("transfer_leader", desc.region_id)
        self.store.tracker.advance(target, OUT.PROPOSED)
        ok = await self.transfer(desc.region_id, to.peer_id)
        self.store.tracker.advance(target, OUT.APPLIED if ok else OUT.FAILED,
                                   "" if ok else "leadership did not move in time")
        lead = peer.leader_peer_id
        detail = (f"leader of region {desc.region_id} is peer {lead}" if ok else
                  f"leadership of region {desc.region_id} did not move to peer {to.peer_id} "
                  f"(store {req.store_id}) in time; the leader is peer {lead or '?'}")
        return AdminReply(tid, "APPLIED" if ok else "FAILED", "NOT_REQUIRED", detail)

    # ---- tombstone -----------------------------------------------------------------------

    async def exec_tombstone(self, req: AdminRequest) -> AdminReply:
        rid = req.region_id
        tid = tombstone_transition_id(rid)
        lc = self.lifecycle
        lc.track(tid, rid, "tombstone", "executor", S.PLANNED, "requested")
        lc.move(tid, S.PLANNED, outcome=OUT.QUEUED)
        try:
            reply = await self.link.call(RemoveRegionRequest(rid, self.cluster_epoch))
        except (RemoteError, RpcError) as exc:
            lc.move(tid, S.PLANNED, "RemoveRegion failed", error=describe(exc),
                    outcome=OUT.FAILED)
            return self.reply(tid)
        lc.move(tid, S.TERMINAL_PUBLISHED,
                "REGION_TOMBSTONED in root; replicas are destroyed from heartbeats"
                if reply.removed else "region unknown to root (nothing to remove)",
                outcome=OUT.APPLIED)
        return self.reply(tid)

    # ---- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"busy": {str(k): v for k, v in sorted(self.busy.items())},
                "fenced_here": dict(sorted(self.fenced_here.items())),
                "cluster_epoch": self.cluster_epoch,
                "operations_in_flight": sorted(f"{k}:{r}:{t}" for k, r, t in self.ops_in_flight),
                "outbox": self.publisher.status(),
                "counters": dict(sorted(self.counters.items())),
                "lifecycle_regressions_ignored": self.lifecycle.regressions_ignored}
