"""The shared runtime of the topology operations: the pipeline every transition follows
(DESIGN 4.6, 5).

Owns: the state the operations share (the store context, the coordinator link, the
lifecycle, the publisher, the compensator, the cluster epoch, which region is busy with
which transition here, the fences proposed here) and the steps they share: leader and
admission checks (`leader_peer`, `settled_leader`, forward to the leader once), claiming a
region, root calls (`alloc_ids`, `publish`, `publish_planned`), `run_transition`, the fenced
`propose`, leader transfer (`transfer`, `ensure_leader`), and the apply follow-ups (start a
split child, destroy a removed replica).

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
fenced (raftstore.topology.compensation), so no step of a cancelled plan reaches the log.

Refusals are built by raftstore.admission (through the store's `refuse`, or `refused` for
the ones that are no admission decision). Never: publishes terminal events itself (the
outbox does), decides scheduling (the coordinator does), or trusts a failure report without
checking the leader's own log.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    AssessmentDecision,
    ExecutionOutcome,
    RegionDescriptor,
    RootEvent,
    TopologyStage,
)
from nokvpy.protocol.coordinator_rpc import (
    AllocIdRequest,
    ListTransitionsRequest,
    PublishRootEventRequest,
)
from nokvpy.protocol.raftstore_cmds import KvResult
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest, KvContext
from nokvpy.replication.driver import ProposalError
from nokvpy.rpc import RemoteError, RpcError
from raftstore.admission import refused, rejection
from raftstore.peer import Peer
from raftstore.topology.apply import INIT_INDEX, INIT_TERM
from raftstore.topology.compensation import Compensator, fence_refuses, unsafe_compensation
from raftstore.topology.context import (
    PLAN_PUBLISH_TIMEOUT,
    PROPOSE_TIMEOUT,
    TRANSFER_TIMEOUT,
    WAIT_TERMINAL,
    ExecutionFailedError,
    ForwardToLeaderError,
    RootLink,
    StoreContext,
)
from raftstore.topology.lifecycle import Lifecycle
from raftstore.topology.outbox import Publisher, describe

log = logging.getLogger("nokvpy.raftstore.topology")

S = TopologyStage
OUT = ExecutionOutcome
R = AdmissionReason
# An operation's execution of its plan: (the plan's root token, set once it proposed) -> done
Execute = Callable[[Any, trio.Event], Awaitable[None]]


def trio_clock() -> float:
    """The lifecycle's clock: trio's (0.0 outside a trio run)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


class Runtime:
    """The shared state and steps of the topology operations of one store."""

    def __init__(self, store: StoreContext, link: RootLink):
        self.store = store
        self.link = link
        self.lifecycle = Lifecycle(store.tracker, trio_clock)
        self.publisher = Publisher(store, link, self.lifecycle)
        self.compensator = Compensator(self)
        self.cluster_epoch: int | None = None
        self.busy: dict[int, str] = {}  # region id -> transition executing on it here
        # TransitionID -> stamp of a compensating fence proposed here: plans rooted at or
        # before the stamp are never proposed again from this store (check_not_fenced)
        self.fenced_here: dict[str, int] = {}
        self.counters: Counter[str] = Counter()
        self.nursery: trio.Nursery | None = None

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self.nursery is None:
            raise RuntimeError("topology runtime is not running")
        self.nursery.start_soon(fn, *args)

    # ---- apply follow-ups (the ApplyContext of raftstore.topology.apply) -----------------

    def on_split_applied(self, parent_id: int, right: RegionDescriptor) -> None:
        """The split batch is durable: start the child replica (its raft state was staged)."""
        store = self.store
        rid = right.region_id
        store.destroying.discard(rid)  # its traffic was dropped while the batch committed
        me = right.peer_on(store.store_id)
        if me is None or rid in store.peers or rid in store.tombstones:
            return
        peer = store.start_peer(rid, me.peer_id, right, INIT_INDEX, INIT_TERM, None)
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

    # ---- leader checks -------------------------------------------------------------------

    async def forward(self, req: AdminRequest, leader_store: int) -> AdminReply:
        """Send `req` once to the store that leads its region; refuse NOT_LEADER when it
        cannot be (a forwarded request, no address) or was not reached."""
        addr = self.store.store_addrs.get(leader_store)
        if req.forwarded or not leader_store or leader_store == self.store.store_id or not addr:
            raise refused(R.NOT_LEADER, f"store {self.store.store_id} does not lead region "
                          f"{req.region_id}", leader_store_id=leader_store)
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
            raise refused(
                R.NOT_LEADER, f"store {self.store.store_id} does not lead region "
                f"{req.region_id}; forwarding to its leader, store {leader_store}, failed: {exc}"
                + ("; outcome UNKNOWN" if unknown else "; request not executed"),
                kind="timeout" if unknown else "unavailable",
                leader_store_id=leader_store) from None

    async def settled_leader_peer(self, rid: int, *, degraded_ok: bool = False,
                                  wait: float = 3.0) -> Peer:
        """`leader_peer`, first waiting (briefly) for region `rid` to know its leader: a
        region just created by a split may still be electing one."""
        peer = self.store.peers.get(rid)
        with trio.move_on_after(wait):
            while peer is not None and not peer.is_leader and not peer.leader_store_id():
                await trio.sleep(0.05)
                peer = self.store.peers.get(rid)
        return self.leader_peer(rid, degraded_ok=degraded_ok)

    async def settled_leader(self, rid: int, *,
                             degraded_ok: bool = False) -> tuple[Peer, RegionDescriptor]:
        """`settled_leader_peer` and its descriptor, where the operations start (never None:
        `leader_peer` refuses a region that is not initialized here)."""
        peer = await self.settled_leader_peer(rid, degraded_ok=degraded_ok)
        desc: RegionDescriptor = peer.descriptor
        return peer, desc

    def leader_peer(self, rid: int, *, degraded_ok: bool = False) -> Peer:
        """The local peer of region `rid` if it leads and topology is admitted; raises a
        rejection (or forwards to the leader) otherwise."""
        store = self.store
        peer = store.peers.get(rid)
        if peer is None or peer.descriptor is None:
            raise store.refuse(AdmissionClass.TOPOLOGY, R.NOT_HOSTED,
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
            raise rejection(adm)
        return peer

    def claim(self, rid: int, tid: str) -> None:
        """Region `rid` executes `tid` here (refused while it executes another one)."""
        cur = self.busy.get(rid)
        if cur is not None and cur != tid:
            raise refused(R.QUEUE_SATURATED,
                          f"region {rid} is already executing {cur} on this store",
                          transition_id=cur, retry_class="CONFLICT")
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
                             execute: Execute, wait: bool) -> AdminReply:
        """Run one transition through the pipeline (see the module docstring) in the
        runtime's nursery; answer once it proposed (or, with `wait`, once it settled)."""
        lc = self.lifecycle
        self.claim(rid, tid)
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
                await self.on_failure(tid, rid, exc)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must still leave a visible state
                log.exception("store %d: executing %s", self.store.store_id, tid)
                await self.on_failure(tid, rid, ExecutionFailedError(
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

    async def on_failure(self, tid: str, rid: int, exc: ExecutionFailedError) -> None:
        """A transition failed before (known or possibly) applying: hand it to the
        compensator (the scheduler retries if that fails)."""
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
                st = group.node.basic_status()
                if st.committed_in_term:
                    await driver.wait_applied(group, st.commit)
                    if group.is_leader and group.node.basic_status().term == st.term:
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

    async def ensure_leader(self, rid: int) -> bool:
        """Make the local replica of `rid` its leader (ask the current leader to transfer)."""
        store = self.store
        peer = store.peers.get(rid)
        if peer is None or peer.group is None:
            return False
        deadline = trio.current_time() + 2 * TRANSFER_TIMEOUT
        while not peer.is_leader and trio.current_time() < deadline:
            lead = peer.leader_store_id()
            addr = store.store_addrs.get(lead) if lead and lead != store.store_id else None
            if addr:
                try:
                    reply = await store.rpc.call(addr, AdminRequest(
                        "transfer_leader", rid, store_id=store.store_id, forwarded=True),
                        timeout=TRANSFER_TIMEOUT + 2)
                    log.info("store %d: asked store %d to transfer region %d here: %s %s",
                             store.store_id, lead, rid, reply.outcome, reply.detail)
                except (RemoteError, RpcError) as exc:
                    log.info("store %d: transfer of region %d here refused by store %d: %s",
                             store.store_id, rid, lead, describe(exc))
            with trio.move_on_after(1.0):
                while not peer.is_leader:
                    await trio.sleep(0.05)
        return peer.is_leader
