"""Compensation and forward reconciliation of planned transitions (DESIGN 7; part of the
topology runtime).

Owns: deciding, on the region leader and from its own log only, whether a transition that is
still pending in root has applied; then either compensating it (undo the local partial
state, publish the matching cancel event: COMPENSATED, or COMPENSATION_FAILED when root
refuses the cancel, then reconcile forward) or driving it forward (make sure its terminal
event is in the outbox). Every decision appends a rooted RECOVERY_RECORDED event (through the
durable outbox) with the TransitionID, the original failure evidence, what was undone and
what remained.

The rule that makes a failure report harmless when it is false: before deciding, the leader
proposes a `fence` entry in the region's log and waits until it applies. Every entry that
could still apply (an old leader's proposal in the log, this leader's own in-flight one) is
then applied or gone for good, so "the local descriptor is still the base" really means "the
transition did not apply and never will from an earlier proposal". A transition found
applied is never cancelled, whoever reported the failure; the report is recorded and the
terminal event published instead.

Fence, then compensate (what makes the cancel safe against a LATER proposal): a compensating
fence carries a stamp, the root index at which the compensator saw the plan pending (at or
after the plan's source index, before any re-plan of the same TransitionID). Applying it
raises the region descriptor's `revision` to the stamp on every replica. A forward step of
the plan (split, prepare / commit merge, peer change) carries the plan's source index as its
instance and is refused when the descriptor's revision has reached it (`fence_refuses`):
at apply for split and merge (deterministic: the descriptor is in every replica's log,
snapshot and localmeta), before proposing for every step (the leader first applies every
entry committed before its term, and the compensator marks the fence on its own store before
proposing it, so no forward step of a fenced plan is ever appended after the fence). Only
then does the compensator record the fence in root (a RECOVERY_RECORDED "fenced" witness:
root refuses a cancel without one, metaroot.state) and publish the cancel. For a merge both
the target's and the source's logs are fenced. The recovery records say exactly what was
undone: the fence, each local rollback step, the root withdrawal.

NOKV_UNSAFE_COMPENSATION=1 (tests only) restores the old fence that records nothing: no
stamp, no refusal of a later proposal.

A component over the shared runtime (raftstore.topology.runtime: its leader checks,
proposals, publishes and lifecycle). Never: cancels from a follower, from a failure report
alone, or without the fence; never refuses without an admission reason.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from nokvpy.protocol import (
    AdmissionReason,
    EventKind,
    ExecutionOutcome,
    PeerChange,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionState,
    RootEvent,
    TopologyStage,
    TransitionKind,
)
from nokvpy.protocol.coordinator_rpc import ListTransitionsRequest
from nokvpy.protocol.raftstore_cmds import (
    MergePayload,
    OutboxEntry,
    PeerChangePayload,
)
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest
from nokvpy.raft import ConfChangeType
from nokvpy.rpc import RemoteError
from nokvpy.wire import DecodeError, decode
from raftstore.admission import refused
from raftstore.commands import admin_command
from raftstore.topology.context import Operation
from raftstore.topology.membership import conf_change
from raftstore.topology.outbox import describe

log = logging.getLogger("nokvpy.raftstore.compensation")

UNSAFE_ENV = "NOKV_UNSAFE_COMPENSATION"
FENCE_ACTION = "fenced"  # the root witness (metaroot.state.FENCE_ACTION)


def unsafe_compensation() -> bool:
    """The test-only switch: fences stamp nothing and nothing is refused for them."""
    return os.environ.get(UNSAFE_ENV) == "1"


def fence_refuses(desc: RegionDescriptor, instance: int) -> bool:
    """Is a forward step of the plan rooted at `instance` fenced on this descriptor? (pure)

    Before the plan applies, a descriptor's revision is the root index of an older event
    (< instance); a compensating fence raises it to a stamp >= instance."""
    return instance > 0 and desc.revision >= instance and not unsafe_compensation()

S = TopologyStage
OUT = ExecutionOutcome
R = AdmissionReason
FENCE_TIMEOUT = 10.0

_KIND_NAMES = {TransitionKind.SPLIT: "split", TransitionKind.MERGE: "merge",
               TransitionKind.PEER_ADDITION: "add_peer",
               TransitionKind.PEER_REMOVAL: "remove_peer"}
_EVENTS = {  # kind -> (planned, cancel, terminal)
    TransitionKind.SPLIT: (EventKind.SPLIT_PLANNED, EventKind.SPLIT_CANCELLED,
                           EventKind.SPLIT_COMMITTED),
    TransitionKind.MERGE: (EventKind.MERGE_PLANNED, EventKind.MERGE_CANCELLED,
                           EventKind.MERGED),
    TransitionKind.PEER_ADDITION: (EventKind.PEER_ADDITION_PLANNED,
                                   EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_ADDED),
    TransitionKind.PEER_REMOVAL: (EventKind.PEER_REMOVAL_PLANNED,
                                  EventKind.PEER_REMOVAL_CANCELLED, EventKind.PEER_REMOVED),
}


class Pending:
    """A transition pending in root, rebuilt from its ListTransitions entry."""

    def __init__(self, entry: Any, root_index: int):
        self.entry = entry
        self.tid: str = entry.transition_id
        self.kind = TransitionKind(entry.kind)
        self.root_index = root_index  # the ListTransitions token it was read at
        self.source_index: int = entry.source_token.index  # the plan's own root index
        self.payload = _payload(entry)
        self.name = _KIND_NAMES[self.kind]

    @property
    def region_id(self) -> int:
        """The region whose leader decides (split: parent; merge: the surviving target;
        peer change: the region)."""
        p = self.payload
        if isinstance(p, RangeSplit):
            return p.parent_region_id
        if isinstance(p, RangeMerge):
            return p.merged.region_id
        return p.region_id

    def event(self, which: int) -> RootEvent:
        return RootEvent(_EVENTS[self.kind][which], self.payload)


def _payload(entry: Any) -> Any:
    kind = TransitionKind(entry.kind)
    if kind == TransitionKind.SPLIT:
        base = entry.bases[0]
        left, right = sorted(entry.targets, key=lambda d: d.start_key)
        return RangeSplit(base.region_id, right.start_key, left, right, base)
    if kind == TransitionKind.MERGE:
        bl, br = entry.bases
        return RangeMerge(bl.region_id, br.region_id, entry.targets[0], bl, br)
    _, rid, _, store, peer = entry.transition_id.split(":")
    return PeerChange(int(rid), int(store), int(peer), entry.targets[0], entry.bases[0])


def applied_locally(p: Pending, desc: RegionDescriptor) -> bool:
    """Does the leader's descriptor say the transition applied? (pure)"""
    x = p.payload
    if isinstance(x, RangeSplit):
        return desc.epoch.version >= x.left.epoch.version and desc.end_key == x.left.end_key
    if isinstance(x, RangeMerge):
        return desc.epoch.version >= x.merged.epoch.version and \
            (desc.start_key, desc.end_key) == (x.merged.start_key, x.merged.end_key)
    peer = desc.peer_on(x.store_id)
    if p.kind == TransitionKind.PEER_ADDITION:
        return peer is not None and peer.peer_id == x.peer_id and not peer.learner
    return peer is None and desc.epoch.conf_ver >= x.target.epoch.conf_ver


class Compensator(Operation):
    """`compensate` and `drive_forward` (and their RPC entry points) over the runtime `rt`."""

    # ---- RPC entry points ------------------------------------------------------------------

    async def on_compensate(self, req: AdminRequest) -> AdminReply:
        return await self.compensate(req.transition_id, req.region_id,
                                     req.reason or "failure reported to the region leader "
                                     "(compensate request)", origin="report",
                                     forwarded=req.forwarded)

    async def on_drive_forward(self, req: AdminRequest) -> AdminReply:
        return await self.drive_forward(req.transition_id, req.region_id,
                                        req.reason or "stuck pending in root; drive forward "
                                        "requested", forwarded=req.forwarded)

    # ---- root lookups ----------------------------------------------------------------------

    async def pending(self, tid: str) -> Pending | None:
        reply = await self.rt.link.call(ListTransitionsRequest(False))
        for e in reply.entries:
            if getattr(e, "transition_id", None) == tid:
                return Pending(e, reply.token.index)
        return None

    # ---- fence -----------------------------------------------------------------------------

    async def fence(self, rid: int, tid: str, stamp: int = 0) -> tuple[RegionDescriptor, int]:
        """Propose a fence in region `rid`'s log and wait until it applies; returns the
        descriptor after it and the fence's log index. With `stamp` (compensation) the fence
        makes every forward step of plans rooted at or before `stamp` impossible (see the
        module docstring); without it (drive forward) it is a barrier only. Raises
        RemoteError(NOT_LEADER) when not the leader."""
        peer = self.store.peers.get(rid)
        group = peer.group if peer is not None else None
        if group is None or not group.is_leader or peer.descriptor is None:
            raise refused(R.NOT_LEADER, f"store {self.store.store_id} cannot fence region {rid}: "
                          "not its leader",
                          leader_store_id=peer.leader_store_id() if peer else 0)
        self.mark_fenced(tid, stamp)  # synchronously before the proposal is queued
        data = admin_command("fence", rid, peer.descriptor.epoch, tid, stamp or None)
        with trio.fail_after(FENCE_TIMEOUT):
            index, _ = await self.store.driver.propose_at(group, data)
            await self.store.driver.wait_applied(group, index)
        self.rt.counters["fences_stamped" if stamp else "fences"] += 1
        return peer.descriptor, index

    def mark_fenced(self, tid: str, stamp: int) -> None:
        """Stop a local executor of `tid` at once (before the fence is even proposed): its
        next proposal checks this mark (raftstore.topology.runtime.Runtime.check_not_fenced)."""
        if stamp:
            fenced = self.rt.fenced_here
            fenced[tid] = max(fenced.get(tid, 0), stamp)

    def executor_state(self, p: Pending) -> str:
        """What the executor of `p` on this store was doing when the fence was decided."""
        rec = self.rt.lifecycle.get(p.tid)
        if rec is None or rec.role != "executor" or rec.stage in (S.COMPENSATED,
                                                                  S.COMPENSATION_FAILED):
            return (f"no executor of it was running on store {self.store.store_id}; an "
                    "executor elsewhere can no longer propose it (a leader applies the fence "
                    "before proposing)")
        if rec.stage in (S.PLANNED, S.PLANNED_PUBLISHED):
            return (f"its executor on store {self.store.store_id} had not proposed yet "
                    f"({rec.stage.name}): stopped, its proposal will be refused")
        return (f"its executor on store {self.store.store_id} was at {rec.stage.name} "
                f"({rec.outcome.name}): any later step will be refused")

    # ---- compensate ------------------------------------------------------------------------

    async def compensate(self, tid: str, rid: int, evidence: str, *, origin: str,
                         forwarded: bool = False) -> AdminReply:
        rt = self.rt
        lc = rt.lifecycle
        p = await self.pending(tid)
        if p is None:
            rec = lc.get(tid)
            if rec is not None:
                lc.note(tid, "compensation requested but the transition is not pending in root")
            return AdminReply(tid, rec.outcome.name if rec else "", rec.stage.name if rec else "",
                              "not pending in root: nothing to compensate")
        rid = p.region_id
        if origin != "executor":
            try:
                await rt.settled_leader_peer(rid, degraded_ok=True)
            except Exception as exc:  # noqa: BLE001 - forward (once) or refuse
                lead = getattr(exc, "leader_store", 0)
                if lead and not forwarded:
                    return await rt.forward(AdminRequest("compensate", rid, transition_id=tid,
                                                         reason=evidence), lead)
                raise
        executor = self.executor_state(p)
        lc.track(tid, rid, p.name, "compensator" if lc.get(tid) is None else "executor",
                 S.PLANNED, "compensation requested")
        # 1. fence: make the plan impossible to execute, here and on every replica
        stamp = 0 if unsafe_compensation() else max(p.root_index, p.source_index)
        desc, index = await self.fence(rid, tid, stamp)
        if applied_locally(p, desc):
            return await self._refuse_applied(p, desc, evidence)
        undone = [f"{tid} fenced at index {index} of region {rid}'s log (revision stamp "
                  f"{stamp}): {executor}" if stamp else
                  f"barrier fence at index {index} of region {rid}'s log (nothing stamped)"]
        try:
            if isinstance(p.payload, RangeMerge):
                undone.append(await self._fence_merge_source(p, stamp))
            # 2. tell root, which cancels only a fenced plan (metaroot.state's cancel guard)
            await self._witness(p, desc, evidence, index, stamp, executor)
            # 3. undo what applied locally short of the transition, then withdraw it in root
            await self._undo_local(p, desc, undone)
            try:
                await rt.publish(p.event(1), fenced=False)
            except RemoteError as exc:
                return await self._cancel_refused(p, desc, evidence, exc, undone)
        except trio.Cancelled:
            raise
        except Exception as exc:
            # stopped half way: say exactly what was undone so far, then let the caller fail
            await self.record(p, "compensation_interrupted",
                              f"{evidence}; interrupted: {describe(exc)}",
                              undone="; ".join(undone), remained="the plan stays pending in "
                              "root and fenced; a later compensation resumes it",
                              epoch=desc.epoch, key=f"{rid}.{index}")
            rt.counters["compensation_interrupted"] += 1
            raise
        undone.append(f"root: planned targets {[t.region_id for t in p.entry.targets]} "
                      f"withdrawn, bases {[b.region_id for b in p.entry.bases]} restored")
        lc.move(tid, S.COMPENSATED, "cancel event published: root restored the base",
                outcome=OUT.FAILED)
        await self.record(p, "compensated", evidence, undone="; ".join(undone),
                          remained=self._remained(p), epoch=desc.epoch)
        rt.counters["compensated"] += 1
        log.info("store %d: %s compensated (%s)", self.store.store_id, tid, evidence)
        return rt.reply(tid, "compensated: base descriptors restored in root")

    async def _fence_merge_source(self, p: Pending, stamp: int) -> str:
        """A merge freezes its source in the source's own log: fence that log too."""
        x = p.payload
        src_id = x.right_region_id if x.left_region_id == p.region_id else x.left_region_id
        if not await self.rt.ensure_leader(src_id):
            raise refused(R.NOT_LEADER, f"cannot lead source region {src_id} to fence it; the "
                          f"target {p.region_id} is fenced, the plan stays pending in root")
        _, index = await self.fence(src_id, p.tid, stamp)
        return f"source region {src_id} fenced at index {index} of its log"

    async def _witness(self, p: Pending, desc: RegionDescriptor, evidence: str, index: int,
                       stamp: int, executor: str) -> None:
        """Record the fence in root before the cancel (synchronously: the cancel is refused
        without it). A failure leaves the plan pending and fenced: the scheduler retries."""
        rec = RecoveryRecord(p.tid, FENCE_ACTION, evidence[:500],
                             "nothing yet: fenced, the cancel follows",
                             (f"fence at index {index} of region {p.region_id}'s log, stamp "
                              f"{stamp}: the plan from root index {p.source_index} can no "
                              f"longer apply; {executor}")[:500], p.root_index, desc.epoch)
        request_id = f"fenced:{p.tid}:{p.source_index}:{self.store.store_id}:{index}"
        await self.rt.publish(RootEvent(EventKind.RECOVERY_RECORDED, rec, request_id),
                              fenced=False)
        self.rt.counters["fence_witnesses"] += 1

    def _remained(self, p: Pending) -> str:
        bases = p.entry.bases
        return "; ".join(f"region {b.region_id} [{b.start_key!r}, {b.end_key!r}) {b.epoch} on "
                         f"stores {sorted(q.store_id for q in b.peers)} keeps serving"
                         for b in bases)

    async def _undo_local(self, p: Pending, desc: RegionDescriptor, undone: list[str]) -> None:
        """Undo what applied locally short of the transition (a learner, a frozen source);
        appends one line to `undone` per step once it is done."""
        x = p.payload
        rid = p.region_id
        if p.kind == TransitionKind.PEER_ADDITION:
            learner = desc.peer_on(x.store_id)
            if learner is not None and learner.peer_id == x.peer_id and learner.learner:
                payload = PeerChangePayload("remove_learner", x.store_id, x.peer_id, x.base,
                                            x.target, self.store.store_id)
                await self.rt.propose(rid, p.tid, conf_change(
                    ConfChangeType.REMOVE_NODE, rid, p.tid, payload), conf_change=True,
                    note=f"compensation: removal of learner {x.peer_id} proposed")
                undone.append(f"learner peer {x.peer_id} on store {x.store_id} removed")
        elif isinstance(x, RangeMerge):
            src_id = x.right_region_id if x.left_region_id == rid else x.left_region_id
            src = self.store.peers.get(src_id)
            if src is not None and src.descriptor is not None and \
                    src.descriptor.state == RegionState.MERGING:
                if not await self.rt.ensure_leader(src_id):
                    raise refused(R.NOT_LEADER,
                                  f"cannot lead frozen source {src_id} to roll it back")
                base_src = x.base_right if src_id == x.right_region_id else x.base_left
                payload = MergePayload(desc, base_src, x.merged, x.left_region_id,
                                       x.right_region_id, self.store.store_id)
                await self.rt.propose(src_id, p.tid, admin_command(
                    "rollback_merge", src_id, src.descriptor.epoch, p.tid, payload),
                    note=f"compensation: rollback_merge of source {src_id} proposed")
                undone.append(f"source region {src_id} unfrozen (rollback_merge)")

    async def _refuse_applied(self, p: Pending, desc: RegionDescriptor,
                              evidence: str) -> AdminReply:
        rt = self.rt
        lc = rt.lifecycle
        tid = p.tid
        rec = lc.get(tid)
        if rec is not None and rec.stage in (S.PLANNED, S.PLANNED_PUBLISHED, S.EXECUTING):
            lc.move(tid, S.COMPENSATION_FAILED, "refused: the region leader applied it",
                    error=f"failure report rejected: {evidence}")
        else:
            lc.note(tid, f"failure report rejected (applied on the leader): {evidence}")
        queued = await self.ensure_terminal(p)
        await self.record(p, "compensation_refused_applied", evidence,
                          undone="nothing: the transition applied on the region leader "
                          f"(descriptor {desc.epoch}); a false failure report cannot cancel it",
                          remained=f"terminal event {'queued' if queued else 'already queued'} "
                          "for publishing", epoch=desc.epoch)
        rt.counters["compensation_refused_applied"] += 1
        return rt.reply(tid, "not compensated: applied on the region leader; reconciling "
                             "forward")

    async def _cancel_refused(self, p: Pending, desc: RegionDescriptor, evidence: str,
                              exc: RemoteError, undone: list[str]) -> AdminReply:
        rt = self.rt
        tid = p.tid
        err = describe(exc)
        rt.lifecycle.move(tid, S.COMPENSATION_FAILED, "root refused the cancel", error=err)
        remained = ("root keeps its own truth (the transition completed or was superseded "
                    "there); the store adopts it through heartbeats")
        await self.record(p, "compensation_failed", f"{evidence}; cancel refused: {err}",
                          undone="; ".join([*undone, "nothing in root"]), remained=remained,
                          epoch=desc.epoch)
        rt.counters["compensation_failed"] += 1
        return rt.reply(tid, f"compensation failed: {err}")

    # ---- drive forward ---------------------------------------------------------------------

    async def drive_forward(self, tid: str, rid: int, evidence: str, *,
                            forwarded: bool = False) -> AdminReply:
        rt = self.rt
        p = await self.pending(tid)
        if p is None:
            return AdminReply(tid, "", "", "not pending in root: nothing to drive forward")
        rid = p.region_id
        try:
            await rt.settled_leader_peer(rid, degraded_ok=True)
        except Exception as exc:  # noqa: BLE001
            lead = getattr(exc, "leader_store", 0)
            if lead and not forwarded:
                return await rt.forward(AdminRequest("drive_forward", rid, transition_id=tid,
                                                     reason=evidence), lead)
            raise
        desc, _ = await self.fence(rid, tid)
        if not applied_locally(p, desc):
            raise refused(R.EPOCH_MISMATCH, f"{tid} has not applied on the leader of region "
                          f"{rid} (descriptor {desc.epoch}): it cannot be driven forward",
                          transition_id=tid)
        queued = await self.ensure_terminal(p)
        rt.lifecycle.track(tid, rid, p.name, "replica", S.APPLIED, "applied (found by fence)")
        await self.record(p, "reconciled_forward", evidence,
                          undone="nothing", remained=f"terminal event "
                          f"{'queued' if queued else 'already queued'}; root completes on "
                          "publish", epoch=desc.epoch)
        rt.counters["driven_forward"] += 1
        return rt.reply(tid, "driven forward: terminal event queued")

    async def ensure_terminal(self, p: Pending) -> bool:
        """Queue the terminal event unless the outbox already holds one for `p`; the event
        is built from root's own pending targets, so it matches them exactly."""
        for _seq, raw in self.store.meta.outbox():
            try:
                entry = decode(raw)
            except DecodeError:
                continue
            if isinstance(entry, OutboxEntry) and entry.transition_id == p.tid and \
                    entry.purpose == "terminal":
                entry_role = entry.role
                if entry_role == "backup":
                    self.rt.publisher.kick()
                return False
        await self.rt.publisher.enqueue(OutboxEntry(p.tid, p.event(2), "primary", "terminal",
                                                    p.region_id))
        lc = self.rt.lifecycle
        lc.track(p.tid, p.region_id, p.name, "executor", S.APPLIED, "terminal queued")
        lc.move(p.tid, S.TERMINAL_PENDING, "terminal event queued by reconciliation")
        return True

    # ---- recovery records ------------------------------------------------------------------

    async def record(self, p: Pending, action: str, evidence: str, *, undone: str,
                     remained: str, epoch: Any, key: str = "") -> None:
        rec = RecoveryRecord(p.tid, action, evidence[:500], undone[:500], remained[:500],
                             p.root_index, epoch)
        request_id = f"recovery:{p.tid}:{action}:{self.store.store_id}:{p.root_index}"
        if key:  # an action that may repeat at the same root index (one per fence)
            request_id += f":{key}"
        await self.rt.publisher.enqueue(OutboxEntry(
            p.tid, RootEvent(EventKind.RECOVERY_RECORDED, rec, request_id), "primary",
            "recovery", p.region_id))

