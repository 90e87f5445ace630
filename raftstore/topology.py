"""The topology runtime of a store: transitions executed by the region leader (DESIGN 4.6, 5).

Owns: the `AdminRequest` RPC (split | merge | add_peer | remove_peer | transfer_leader |
tombstone | compensate | drive_forward), the execution pipeline every tracked transition
follows, the scheduler operations carried by heartbeat replies, the cluster-epoch fence, and
wiring the apply handlers (raftstore.topology_apply), the outbox publisher
(raftstore.outbox) and the compensator (raftstore.compensation) into the store.

Pipeline of one transition (TransitionID from `nokvpy.protocol.transitions.transition_id`):
  1. admission (class TOPOLOGY: leader, epoch, queue, SCHEDULER_DEGRADED while the outbox
     fails) on the leader; a request that reached a follower is forwarded once to the leader;
  2. PLANNED: build the planned event from the local descriptor (base) and ids from the
     coordinator's AllocID; publish it with `expected_cluster_epoch` BEFORE proposing
     (failpoint `store.publish_planned`) -> PLANNED_PUBLISHED;
  3. EXECUTING: propose the admin command or conf change (failpoint `store.before_propose`);
  4. APPLIED -> TERMINAL_PENDING on every replica at apply, with the terminal event in the
     outbox in the same batch; the publisher takes it to TERMINAL_PUBLISHED.
A failure after the planned publish and before apply (proposal dropped, leadership lost,
refused at apply, deadline) is handed to the compensator, which fences the log and cancels
the plan only if the region leader has not applied it. Every forward step carries its plan's
root index (the instance) and passes `fence_barrier` right before it is queued: the leader
first applies every entry committed before its term, then refuses a plan a compensation
fenced (raftstore.compensation), so no step of a cancelled plan reaches the log.

Executors: split, leader transfer and tombstone here; peer addition / removal in
raftstore.topology_membership; merge (freeze the source in its own log, confirm the freeze
on every source replica, commit in the target's log) in raftstore.topology_merge.

Never: publishes terminal events itself (the outbox does), decides scheduling (the
coordinator does), or trusts a failure report without checking the leader's own log.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    AssessmentDecision,
    EventKind,
    ExecutionOutcome,
    PeerMeta,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RegionState,
    RootEvent,
    TopologyStage,
)
from nokvpy.protocol.coordinator_rpc import (
    AllocIdRequest,
    ListTransitionsRequest,
    PublishRootEventRequest,
    RemoveRegionRequest,
    SchedulerOperation,
    StoreHeartbeatReply,
)
from nokvpy.protocol.raftstore_cmds import (
    KvResult,
    SplitPayload,
)
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest, KvContext
from nokvpy.protocol.transitions import tombstone_transition_id, transition_id
from nokvpy.replication.driver import ProposalError
from nokvpy.rpc import RemoteError, RpcError
from raftstore.commands import admin_command
from raftstore.compensation import Compensator, fence_refuses, unsafe_compensation
from raftstore.lifecycle import Lifecycle
from raftstore.outbox import Publisher, describe
from raftstore.topology_apply import INIT_INDEX, INIT_TERM, ApplyHandlers
from raftstore.topology_common import (
    PLAN_PUBLISH_TIMEOUT,
    PROPOSE_TIMEOUT,
    TRANSFER_TIMEOUT,
    WAIT_TERMINAL,
    ExecutionFailedError,
    ForwardToLeaderError,
)
from raftstore.topology_membership import MembershipExecutor
from raftstore.topology_merge import MergeExecutor

log = logging.getLogger("nokvpy.raftstore.topology")

S = TopologyStage
OUT = ExecutionOutcome
R = AdmissionReason

class Topology(MembershipExecutor, MergeExecutor):
    def __init__(self, store: Any, link: Any):
        self.store = store
        self.link = link
        self.lifecycle = Lifecycle(store.tracker)
        self.publisher = Publisher(store, link, self.lifecycle)
        self.handlers = ApplyHandlers(self)
        self.compensator = Compensator(self)
        self.cluster_epoch: int | None = None
        self.busy: dict[int, str] = {}  # region id -> transition executing on it here
        # TransitionID -> stamp of a compensating fence proposed here: plans rooted at or
        # before the stamp are never proposed again from this store (check_not_fenced)
        self.fenced_here: dict[str, int] = {}
        self.ops_in_flight: set[tuple[str, int, str]] = set()
        self.counters: Counter[str] = Counter()
        self.nursery: trio.Nursery | None = None
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

    def spawn(self, fn, *args) -> None:
        if self.nursery is None:
            raise RuntimeError("topology runtime is not running")
        self.nursery.start_soon(fn, *args)

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

    # ---- apply follow-ups ----------------------------------------------------------------

    def on_split_applied(self, parent_id: int, right: RegionDescriptor) -> None:
        """The split batch is durable: start the child replica (its raft state was staged)."""
        store = self.store
        rid = right.region_id
        me = right.peer_on(store.store_id)
        if me is None or rid in store.peers or rid in store.tombstones:
            return
        peer = store._start_peer(rid, me.peer_id, right, INIT_INDEX, INIT_TERM, None)
        store.heartbeat_wake.set()
        parent = store.peers.get(parent_id)
        if parent is not None and parent.is_leader and peer.group is not None:
            store.driver.campaign(peer.group)  # the parent's leader leads the child at once
        log.info("store %d: split of region %d created region %d [%r, %r) as peer %d",
                 store.store_id, parent_id, rid, right.start_key[:32], right.end_key[:32],
                 me.peer_id)

    def on_local_peer_removed(self, rid: int, tid: str, peer_id: int) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self.store.destroy_region, rid, f"removed by {tid}",
                                    peer_id)

    # ---- the RPC -------------------------------------------------------------------------

    async def on_admin(self, req: AdminRequest, ctx: Any) -> AdminReply:
        op = req.op
        handler = {
            "split": self.exec_split, "merge": self.exec_merge, "add_peer": self.exec_add_peer,
            "remove_peer": self.exec_remove_peer, "transfer_leader": self.exec_transfer,
            "tombstone": self.exec_tombstone, "compensate": self.compensator.on_compensate,
            "drive_forward": self.compensator.on_drive_forward,
        }.get(op)
        if handler is None:
            raise RemoteError("rejected", R.INVALID.name, f"unknown admin op {op!r}")
        self.counters[f"admin.{op}"] += 1
        try:
            return await handler(req)
        except ForwardToLeaderError as fwd:
            return await self._forward(req, fwd.leader_store)

    async def _forward(self, req: AdminRequest, leader_store: int) -> AdminReply:
        addr = self.store.store_addrs.get(leader_store)
        if req.forwarded or not leader_store or leader_store == self.store.store_id or not addr:
            raise RemoteError("rejected", R.NOT_LEADER.name,
                              f"store {self.store.store_id} does not lead region "
                              f"{req.region_id}", {"leader_store_id": leader_store})
        self.counters["admin_forwarded"] += 1
        try:
            return await self.store.rpc.call(addr, replace(req, forwarded=True), timeout=60.0)
        except RemoteError:
            raise
        except RpcError as exc:
            # the leader's store was not reached, or did not answer: say which, and whether
            # the request may have been executed (a forwarded request is never resent here)
            unknown = getattr(exc, "sent", False) or getattr(exc, "outcome_unknown", False)
            self.counters["admin_forward_failed"] += 1
            raise RemoteError(
                "timeout" if unknown else "unavailable", R.NOT_LEADER.name,
                f"store {self.store.store_id} does not lead region {req.region_id}; "
                f"forwarding to its leader, store {leader_store}, failed: {exc}"
                + ("; outcome UNKNOWN" if unknown else "; request not executed"),
                {"leader_store_id": leader_store}) from None

    async def settled_leader_peer(self, rid: int, *, degraded_ok: bool = False,
                                  wait: float = 3.0):
        """`leader_peer`, first waiting (briefly) for region `rid` to know its leader: a
        region just created by a split may still be electing one."""
        peer = self.store.peers.get(rid)
        with trio.move_on_after(wait):
            while peer is not None and not peer.is_leader and not peer.leader_store_id():
                await trio.sleep(0.05)
                peer = self.store.peers.get(rid)
        return self.leader_peer(rid, degraded_ok=degraded_ok)

    def leader_peer(self, rid: int, *, degraded_ok: bool = False):
        """The local peer of region `rid` if it leads and topology is admitted; raises a
        rejection (or forwards to the leader) otherwise."""
        store = self.store
        peer = store.peers.get(rid)
        if peer is None or peer.descriptor is None:
            raise store._refuse(AdmissionClass.TOPOLOGY, R.NOT_HOSTED,
                                f"region {rid} is not hosted (initialized) on store "
                                f"{store.store_id}")
        if not peer.is_leader:
            lead = peer.leader_store_id()
            if lead and lead != store.store_id:
                raise ForwardToLeaderError(lead)
        ctx = KvContext(rid, peer.descriptor.epoch, store.store_id)
        limits = store.limits
        if degraded_ok and limits.scheduler_degraded:
            # Recovery (compensate, drive forward, leader transfer) is exempt from
            # SCHEDULER_DEGRADED: it is what clears the degradation.
            store.limits = replace(limits, scheduler_degraded=False)
            try:
                adm = store.admit(AdmissionClass.TOPOLOGY, ctx, float("inf"))
            finally:
                store.limits = limits
        else:
            adm = store.admit(AdmissionClass.TOPOLOGY, ctx, float("inf"))
        if not adm.accepted:
            raise store.rejection(adm)
        return peer

    def _claim(self, rid: int, tid: str) -> None:
        cur = self.busy.get(rid)
        if cur is not None and cur != tid:
            raise RemoteError("rejected", R.QUEUE_SATURATED.name,
                              f"region {rid} is already executing {cur} on this store",
                              {"transition_id": cur, "retry_class": "CONFLICT"})
        self.busy[rid] = tid

    # ---- root calls ----------------------------------------------------------------------

    async def alloc_ids(self, count: int) -> int:
        reply = await self.link.call(AllocIdRequest(count))
        return reply.first

    async def publish(self, event: RootEvent, fenced: bool) -> Any:
        """PublishRootEvent; `fenced` carries expected_cluster_epoch (refreshed and retried
        when root's epoch moved: the base was re-checked by the caller's assessment)."""
        for attempt in range(5):
            expected = self.cluster_epoch if fenced else None
            try:
                return await self.link.call(PublishRootEventRequest(event, expected))
            except RemoteError as exc:
                fresh = exc.details.get("cluster_epoch")
                if not isinstance(fresh, int):  # refused by metaroot itself: "root has N"
                    m = re.search(r"root has (\d+)", exc.message)
                    fresh = int(m.group(1)) if m else None
                if exc.reason == "cluster_epoch_mismatch" and fresh is not None \
                        and attempt < 4:
                    # root moved on (another transition); the assessment of the retry
                    # re-checks that our base is still root's current truth
                    self.cluster_epoch = fresh
                    self.counters["cluster_epoch_refreshed"] += 1
                    continue
                raise
        raise RuntimeError("unreachable")

    async def publish_planned(self, tid: str, event: RootEvent) -> Any:
        """Publish the plan; returns its root token (the plan's instance: a fence stamps
        against it). A publish root skipped (the same plan is already pending) answers with
        the pending entry's own source token, never the coordinator's current one."""
        await failpoints.acheck("store.publish_planned")
        if self.cluster_epoch is None:
            self.counters["planned_without_epoch"] += 1
        deadline = trio.current_time() + PLAN_PUBLISH_TIMEOUT
        while True:
            try:
                reply = await self.publish(event, fenced=self.cluster_epoch is not None)
                break
            except RemoteError:
                raise  # refused: root did not take the plan
            except RpcError:
                # no answer: root may have taken the plan (the catalog then shows its
                # target). Ask again: a plan already pending is found, not planned twice.
                if trio.current_time() >= deadline:
                    raise
                self.counters["planned_publish_retried"] += 1
                await trio.sleep(0.2)
        a = reply.assessment
        if getattr(a, "decision", None) != AssessmentDecision.SKIP:
            return reply.token
        listed = await self.link.call(ListTransitionsRequest(False))
        for e in listed.entries:
            if getattr(e, "transition_id", None) == tid:
                self.counters["planned_already_pending"] += 1
                return e.source_token
        raise RuntimeError(f"{tid} is not pending in root after its planned publish was "
                           f"skipped ({getattr(a, 'reason', '')}): nothing to execute")

    # ---- the pipeline --------------------------------------------------------------------

    async def run_transition(self, tid: str, rid: int, kind: str, planned: RootEvent,
                             execute, wait: bool) -> AdminReply:
        lc = self.lifecycle
        self._claim(rid, tid)
        rec = lc.track(tid, rid, kind, "executor", S.PLANNED, "planned by this store")
        if rec.stage in (S.TERMINAL_PUBLISHED, S.COMPENSATED, S.TERMINAL_BLOCKED):
            # the same TransitionID again (a re-plan after a cancel): start a fresh record
            self.store.tracker.transitions.pop(tid, None)
            rec = lc.track(tid, rid, kind, "executor", S.PLANNED, "planned again")
        lc.move(tid, S.PLANNED, outcome=OUT.QUEUED)
        proposed = trio.Event()
        done = trio.Event()
        failed_plan: list[str] = []

        async def body() -> None:
            # The whole transition runs in the store's nursery, not in the request: a caller
            # that gives up (deadline, closed connection) after root accepted the plan must
            # not leave it pending with no executor (the catalog already shows its target).
            try:
                try:
                    token = await self.publish_planned(tid, planned)
                except trio.Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - nothing was proposed: plan failed
                    err = describe(exc)
                    if isinstance(exc, RpcError) and not isinstance(exc, RemoteError):
                        err += ("; unanswered, so root may hold the plan: if so the scheduler "
                                "finds it stuck and has it compensated")
                    lc.move(tid, S.PLANNED, "planned publish failed; nothing proposed",
                            error=err, outcome=OUT.FAILED)
                    failed_plan.append(f"planned publish failed: {err}")
                    return
                lc.move(tid, S.PLANNED_PUBLISHED, f"planned event in root (token {token})")
                await failpoints.acheck("store.before_propose")
                await execute(token, proposed)
            except ExecutionFailedError as exc:
                await self._on_failure(tid, rid, exc)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must still leave a visible state
                log.exception("store %d: executing %s", self.store.store_id, tid)
                await self._on_failure(tid, rid, ExecutionFailedError(
                    f"internal error: {describe(exc)}", known_not_applied=False))
            finally:
                if self.busy.get(rid) == tid:
                    del self.busy[rid]
                proposed.set()
                done.set()

        self.spawn(body)
        if wait:
            await done.wait()
            with trio.move_on_after(WAIT_TERMINAL):
                while (r := lc.get(tid)) is not None and r.stage in (
                        S.APPLIED, S.TERMINAL_PENDING):
                    await trio.sleep(0.05)
        else:
            await proposed.wait()
        return self.reply(tid, failed_plan[0] if failed_plan else "")

    def reply(self, tid: str, detail: str = "") -> AdminReply:
        rec = self.lifecycle.get(tid)
        if rec is None:
            return AdminReply(tid, "", "", detail)
        return AdminReply(tid, rec.outcome.name, rec.stage.name,
                          detail or rec.last_error or rec.detail)

    async def _on_failure(self, tid: str, rid: int, exc: ExecutionFailedError) -> None:
        lc = self.lifecycle
        lc.move(tid, S.EXECUTING, f"execution failed: {exc.evidence}", error=exc.evidence,
                outcome=OUT.FAILED)
        log.warning("store %d: %s failed before apply (%s); compensating", self.store.store_id,
                    tid, exc.evidence)
        try:
            await self.compensator.compensate(tid, rid, exc.evidence, origin="executor")
        except trio.Cancelled:
            raise
        except Exception as cexc:  # noqa: BLE001 - the scheduler retries level-triggered
            lc.note(tid, f"compensation deferred to the scheduler: {describe(cexc)}")

    async def propose(self, rid: int, tid: str, data: bytes, *, conf_change: bool = False,
                      timeout: float = PROPOSE_TIMEOUT, note: str = "proposed",
                      instance: int = 0) -> Any:
        """Propose on the local leader, wait until applied and durable; raise
        ExecutionFailedError (known not applied unless the deadline passed). A forward step
        of a plan passes its plan's root index as `instance`: it is refused, never proposed,
        once a compensation fenced the plan (`fence_barrier`)."""
        peer = self.store.peers.get(rid)
        group = peer.group if peer is not None else None
        if group is None or not group.is_leader:
            raise ExecutionFailedError(f"not the leader of region {rid} any more")
        if instance:
            await self.fence_barrier(rid, tid, instance, timeout)
        self.lifecycle.move(tid, S.EXECUTING, note, outcome=OUT.PROPOSED)
        driver = self.store.driver
        for attempt in range(20):
            try:
                with trio.fail_after(timeout):
                    if instance and attempt:
                        await self.fence_barrier(rid, tid, instance, timeout)
                    # no checkpoint between the barrier's last check and the queueing
                    index, result = await driver.propose_at(group, data, conf_change)
                    await driver.wait_applied(group, index)
                break
            except trio.TooSlowError:
                raise ExecutionFailedError(f"deadline of {timeout:.0f}s passed after proposing "
                                           "(outcome unknown)", known_not_applied=False) from None
            except ProposalError as exc:
                if conf_change and exc.reason == "dropped" and "not appended" in str(exc) \
                        and attempt < 19 and group.is_leader:
                    await trio.sleep(0.2)  # another membership change is still pending
                    continue
                raise ExecutionFailedError(f"proposal {exc.reason}: {exc}") from None
        if isinstance(result, KvResult) and not result.ok:
            raise ExecutionFailedError(f"refused at apply: {result.error}")
        return result

    async def fence_barrier(self, rid: int, tid: str, instance: int, timeout: float) -> None:
        """Return (without a checkpoint after the last check) when this store leads region
        `rid`, has applied every entry committed before its term began, and no compensation
        fenced the plan rooted at `instance`; raise ExecutionFailedError otherwise.

        Why it suffices: a fence committed in an earlier term is in this leader's log below
        its first own-term entry, so it is applied (the descriptor stamped) before the check;
        a fence of this term was proposed by this store, which marked `fenced_here` first."""
        if unsafe_compensation():
            return
        driver = self.store.driver
        with trio.move_on_after(timeout) as scope:
            while True:
                peer = self.store.peers.get(rid)
                group = peer.group if peer is not None else None
                if group is None or not group.is_leader:
                    raise ExecutionFailedError(f"not the leader of region {rid} any more")
                raft = group.node.raft
                if raft.committed_entry_in_current_term():
                    term = raft.term
                    await driver.wait_applied(group, raft.raft_log.committed)
                    if group.is_leader and raft.term == term:
                        break
                    continue
                await trio.sleep(0.02)
        if scope.cancelled_caught:
            raise ExecutionFailedError(f"region {rid}'s leader did not commit an entry of its "
                                       f"term within {timeout:.0f}s; not proposed")
        self.check_not_fenced(rid, tid, instance)

    def check_not_fenced(self, rid: int, tid: str, instance: int) -> None:
        peer = self.store.peers.get(rid)
        desc = peer.descriptor if peer is not None else None
        mark = self.fenced_here.get(tid, 0)
        if mark >= instance or (desc is not None and fence_refuses(desc, instance)):
            self.counters["fenced_proposals_refused"] += 1
            why = (f"refused: {tid} (planned at root index {instance}) was fenced by a "
                   f"compensation (stamp {max(mark, desc.revision if desc else 0)} on region "
                   f"{rid}); not proposed")
            self.lifecycle.remark(tid, why)
            raise ExecutionFailedError(why)

    # ---- split ---------------------------------------------------------------------------

    async def exec_split(self, req: AdminRequest) -> AdminReply:
        peer = await self.settled_leader_peer(req.region_id)
        desc: RegionDescriptor = peer.descriptor
        key = req.split_key or await self.median_key(desc)
        if not key or not desc.contains(key) or key == desc.start_key:
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                     f"split key {key!r} is not strictly inside region "
                                     f"{desc.region_id}", peer)
        if desc.state != RegionState.RUNNING:
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.EPOCH_MISMATCH,
                                     f"region {desc.region_id} is frozen by a merge", peer)
        first = await self.alloc_ids(1 + len(desc.peers))
        epoch = RegionEpoch(desc.epoch.version + 1, desc.epoch.conf_ver)
        left = replace(desc, end_key=key, epoch=epoch, revision=0)
        right = RegionDescriptor(first, key, desc.end_key, epoch, tuple(
            PeerMeta(p.store_id, first + 1 + i, p.learner) for i, p in enumerate(desc.peers)))
        base = replace(desc, revision=desc.revision)
        planned = RootEvent(EventKind.SPLIT_PLANNED, RangeSplit(desc.region_id, key, left,
                                                                 right, base))
        tid = transition_id(planned)
        me = self.store.store_id

        async def execute(token, proposed: trio.Event) -> None:
            rev = token.index if token is not None else 0
            payload = SplitPayload(key, replace(left, revision=rev),
                                   replace(right, revision=rev), base, me)
            data = admin_command("split", desc.region_id, desc.epoch, tid, payload)
            proposed.set()
            await self.propose(desc.region_id, tid, data, instance=rev)

        return await self.run_transition(tid, desc.region_id, "split", planned, execute,
                                         req.wait)

    async def median_key(self, desc: RegionDescriptor) -> bytes:
        kv = self.store.kv

        def work() -> bytes:
            n, _ = kv.range_stats(desc.start_key, desc.end_key or None)
            if n < 2:
                return b""
            target, seen = n // 2, 0
            for chunk in kv.iter_range(desc.start_key, desc.end_key or None):
                if seen + len(chunk) > target:
                    return chunk[target - seen][0]
                seen += len(chunk)
            return b""

        return await trio.to_thread.run_sync(work)

    # ---- leader transfer (no root event) -------------------------------------------------

    async def transfer(self, rid: int, to_peer: int, timeout: float = TRANSFER_TIMEOUT) -> bool:
        peer = self.store.peers.get(rid)
        if peer is None or peer.group is None:
            return False
        group = peer.group
        if group.leader_id == to_peer:
            return True
        with trio.move_on_after(timeout):
            while True:
                if group.is_leader:
                    self.store.driver.transfer_leader(group, to_peer)
                if group.leader_id == to_peer:
                    return True
                await trio.sleep(0.25)
        return group.leader_id == to_peer

    async def exec_transfer(self, req: AdminRequest) -> AdminReply:
        peer = await self.settled_leader_peer(req.region_id, degraded_ok=True)
        desc: RegionDescriptor = peer.descriptor
        to = desc.peer_on(req.store_id)
        tid = f"transfer:{desc.region_id}:{req.store_id}"
        if to is None or to.learner:
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
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
