"""Transitions through the coordinator (DESIGN 4.6, 7): assess, publish, list, remove.

Owns: AssessRootEvent (the pure `coordinator.assessment` against the RootState mirror, plus
drift on the touched regions), PublishRootEvent (sync with root, assess; SKIP is accepted
without a write, REJECT is refused with the assessment and a retry class, APPLY is appended
with the caller's `expected_cluster_epoch` fence and a deterministic request id, then waited
for until the served catalog incorporates it), ListTransitions (admitted = pending entries;
history = completed / cancelled transitions seen in the event stream) and RemoveRegion
(REGION_TOMBSTONED through the same path). Never writes anything but through metaroot.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coordinator.assessment import assess, list_transitions
from metaroot.state import RootState
from nokvpy.protocol.coordinator_rpc import (
    AssessRootEventReply,
    AssessRootEventRequest,
    ListTransitionsReply,
    ListTransitionsRequest,
    PublishRootEventReply,
    PublishRootEventRequest,
    RemoveRegionReply,
    RemoveRegionRequest,
)
from nokvpy.protocol.enums import (
    AssessmentDecision,
    CatchUpState,
    ErrorKind,
    EventKind,
    RetryClass,
)
from nokvpy.protocol.grants import Assessment
from nokvpy.protocol.metaroot_rpc import AppendRequest, SnapshotRequest
from nokvpy.protocol.records import RangeMerge, RangeSplit, RegionRemoval, RegionUpsert, RootEvent
from nokvpy.rpc.errors import RemoteError

WRITE_TIMEOUT = 5.0


def _code(reason: str) -> str:
    """The stable code of a "code: detail" reason."""
    return reason.split(":", 1)[0].strip()


class Transitions:
    def __init__(self, svc: Any) -> None:
        self.svc = svc  # the CoordinatorService: its mirror, stores, root sync and appends

    def _touched_regions(self, event: RootEvent) -> set[int]:
        p = event.payload
        if isinstance(p, RangeSplit):
            return {p.parent_region_id, p.left.region_id, p.right.region_id}
        if isinstance(p, RangeMerge):
            return {p.left_region_id, p.right_region_id, p.merged.region_id}
        if isinstance(p, RegionUpsert):
            return {p.descriptor.region_id}
        rid = getattr(p, "region_id", None)  # PeerChange, RegionRemoval
        return {rid} if isinstance(rid, int) else set()

    def _assess(self, event: RootEvent,
                expected_cluster_epoch: int | None) -> tuple[Assessment, list]:
        """The assessment against the RootState mirror, and the drift (DESIGN 7) on the
        regions the event touches."""
        a = assess(self.svc.sub.state, event, expected_cluster_epoch)
        self.svc.counters[f"assessments.{a.decision.name.lower()}"] += 1
        catalog, rs, _ = self.svc.snapshot_view()
        drift: list = []
        if catalog is not None and isinstance(event, RootEvent):
            touched = self._touched_regions(event)
            if touched:
                drift = self.svc.stores.drift_for_regions(
                    touched, catalog, rs.root_lag == 0 and rs.catch_up_state == CatchUpState.FRESH)
                self.svc.counters["assessment_drift"] += len(drift)
        return a, drift

    def on_assess(self, req: AssessRootEventRequest) -> AssessRootEventReply:
        a, drift = self._assess(req.event, None)
        return AssessRootEventReply(a, [d.plain() for d in drift])

    async def on_publish(self, req: PublishRootEventRequest) -> PublishRootEventReply:
        event = req.event
        if self.svc.sub.paused:
            return await self._publish_paused(req)
        await self.svc.sync_with_root(WRITE_TIMEOUT)
        a, _ = self._assess(event, req.expected_cluster_epoch)
        guard = getattr(self.svc, "scheduler", None)
        refusal = guard.cancel_refusal(event, a) if guard is not None else None
        if refusal is not None:
            # DESIGN 7: a failure signal cannot cancel what a region leader reports applied.
            self.svc.counters["publish_rejected.applied_on_store"] += 1
            raise RemoteError(ErrorKind.REJECTED, "applied_on_store", refusal,
                              {"retry_class": RetryClass.PERMANENT.name,
                               "transition_id": a.transition_id})
        if a.decision == AssessmentDecision.SKIP:
            self.svc.counters["publish_skipped"] += 1
            return PublishRootEventReply(True, a, self.svc.sub.served_token)
        if a.decision == AssessmentDecision.REJECT:
            self.svc.counters["publish_rejected"] += 1
            kind = ErrorKind.CONFLICT if a.retry_class == RetryClass.CONFLICT else ErrorKind.REJECTED
            raise RemoteError(kind, _code(a.reason), a.reason,
                              {"assessment": a, "retry_class": a.retry_class.name,
                               "transition_id": a.transition_id,
                               "root_token": self.svc.sub.served_token,
                               "cluster_epoch": self.svc.sub.state.cluster_epoch})
        if a.transition_id:
            # Deterministic: the same transition event assessed at the same cluster epoch
            # always carries the same id, so racing or retried publishes apply once; a
            # re-plan after a cancel (which bumps the epoch) is a new request.
            rid = (f"{a.transition_id}:{EventKind(event.kind).name.lower()}"
                   f"@{self.svc.sub.state.cluster_epoch}")
            event = replace(event, request_id=rid)
        try:
            reply = await self.svc.append([event], req.expected_cluster_epoch)
        except RemoteError as exc:
            self.svc.counters["publish_refused_by_root"] += 1
            raise RemoteError(exc.kind, exc.reason, exc.message,
                              {**exc.details, "assessment": a}) from None
        self.svc.counters["publish_applied"] += 1
        return PublishRootEventReply(True, a, reply.last_token)

    async def _publish_paused(self, req: PublishRootEventRequest) -> PublishRootEventReply:
        """Catch-up is paused (PauseCatchUp): the mirror is stale on purpose, so assess
        against a rooted snapshot from the metaroot leader and append without waiting for the
        catalog. Publishing is a write: it is admitted or refused, never degraded."""
        snap = await self.svc.meta.call(SnapshotRequest(), timeout=WRITE_TIMEOUT, leader=True)
        state = RootState.from_checkpoint(snap.checkpoint)
        event = req.event
        a = assess(state, event, req.expected_cluster_epoch)
        self.svc.counters["publish_while_paused"] += 1
        if a.decision == AssessmentDecision.SKIP:
            return PublishRootEventReply(True, a, state.token)
        if a.decision == AssessmentDecision.REJECT:
            kind = ErrorKind.CONFLICT if a.retry_class == RetryClass.CONFLICT else ErrorKind.REJECTED
            raise RemoteError(kind, _code(a.reason), a.reason,
                              {"assessment": a, "retry_class": a.retry_class.name,
                               "transition_id": a.transition_id,
                               "cluster_epoch": state.cluster_epoch})
        if a.transition_id:
            rid = (f"{a.transition_id}:{EventKind(event.kind).name.lower()}"
                   f"@{state.cluster_epoch}")
            event = replace(event, request_id=rid)
        reply = await self.svc.meta.call(AppendRequest([event], req.expected_cluster_epoch),
                                         timeout=WRITE_TIMEOUT, leader=True)
        self.svc.counters["publish_applied"] += 1
        return PublishRootEventReply(True, a, reply.last_token)

    def on_list(self, req: ListTransitionsRequest) -> ListTransitionsReply:
        state = self.svc.sub.state
        entries: list[object] = list(list_transitions(state))
        records = None
        if req.include_history:
            entries.extend(reversed(self.svc.sub.history))
            records = list(state.recovery_list())
        return ListTransitionsReply(entries, state.token, records)

    async def on_remove(self, req: RemoveRegionRequest) -> RemoveRegionReply:
        await self.svc.sync_with_root(WRITE_TIMEOUT)
        d = self.svc.sub.state.descriptor(req.region_id)
        if d is None:
            return RemoveRegionReply(False, self.svc.sub.served_token)
        reply = await self.on_publish(PublishRootEventRequest(
            RootEvent(EventKind.REGION_TOMBSTONED, RegionRemoval(req.region_id, d)),
            req.expected_cluster_epoch))
        return RemoveRegionReply(reply.assessment.decision == AssessmentDecision.APPLY,
                                 reply.token)
