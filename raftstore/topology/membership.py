"""Peer addition and removal, executed by the region leader (part of the topology runtime).

Owns: building a PeerChange plan from the leader's descriptor and driving it: addition =
ADD_LEARNER (no epoch bump), wait until the learner caught up (a region snapshot or the log),
then ADD_NODE (conf_ver + 1, the terminal step); removal = REMOVE_NODE (conf_ver + 1).
Caught up is level-triggered and judged on the learner's own store: its status reports the
learner's peer id, initialized, with an applied index at least the leader's commit index
when the learner joined (so it holds the region's data and its own addition), and the
leader's progress agrees (match at least that index: never 0). A guess from the leader's
progress alone would promote a learner its store never created (dropped traffic), leaving a
region of three voters of which two exist. The leader never removes itself: it hands
leadership over and forwards the request. Each conf change carries its PeerChangePayload in
the entry context, so apply (raftstore.topology.apply) derives the descriptor and the
terminal event from the log alone. A component over the shared runtime
(raftstore.topology.runtime: its pipeline, proposals, lifecycle and leader transfer); never
publishes a terminal event itself, never refuses without an admission reason.
"""

from __future__ import annotations

from dataclasses import replace

import trio

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    EventKind,
    PeerChange,
    PeerMeta,
    RegionEpoch,
    RootEvent,
)
from nokvpy.protocol.raftstore_cmds import AdminCommand, PeerChangePayload
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest, ExecutionStatusRequest
from nokvpy.protocol.transitions import transition_id
from nokvpy.raft import ConfChange, ConfChangeType
from nokvpy.rpc import RemoteError, RpcError
from nokvpy.wire import encode
from raftstore.admission import refused
from raftstore.topology.context import (
    CATCH_UP_TIMEOUT,
    ExecutionFailedError,
    ForwardToLeaderError,
    Operation,
)

R = AdmissionReason


def conf_change(cc_type: ConfChangeType, rid: int, tid: str,
                payload: PeerChangePayload) -> bytes:
    """The conf change entry of one membership step, its PeerChangePayload in the context."""
    ctx = encode(AdminCommand("peer_change", rid, payload.base.epoch, tid, payload))
    return ConfChange(cc_type, payload.peer_id, ctx).encode()


class MembershipOp(Operation):
    """`exec_add_peer`, `exec_remove_peer` and their helpers over the shared runtime `rt`."""

    async def exec_add_peer(self, req: AdminRequest) -> AdminReply:
        rt = self.rt
        peer, desc = await rt.settled_leader(req.region_id)
        sid = req.store_id
        if sid <= 0 or desc.peer_on(sid) is not None:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    f"store {sid} cannot get a new peer of region "
                                    f"{desc.region_id}", peer)
        if any(p.learner for p in desc.peers):
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    f"region {desc.region_id} has an unfinished learner", peer)
        pid = req.peer_id or await rt.alloc_ids(1)
        target = replace(desc, peers=desc.peers + (PeerMeta(sid, pid),), revision=0,
                         epoch=RegionEpoch(desc.epoch.version, desc.epoch.conf_ver + 1))
        planned = RootEvent(EventKind.PEER_ADDITION_PLANNED,
                            PeerChange(desc.region_id, sid, pid, target, desc))
        tid = transition_id(planned)
        rid = desc.region_id
        me = self.store.store_id

        async def execute(token, proposed: trio.Event) -> None:
            t = replace(target, revision=token.index if token is not None else 0)
            learner = PeerChangePayload("add_learner", sid, pid, desc, t, me)
            proposed.set()
            await rt.propose(rid, tid, conf_change(ConfChangeType.ADD_LEARNER, rid, tid,
                                                   learner), conf_change=True,
                             note=f"learner {pid} on store {sid} proposed",
                             instance=t.revision)
            await self.wait_caught_up(rid, tid, pid, sid)
            promote = replace(learner, step="promote")
            await rt.propose(rid, tid, conf_change(ConfChangeType.ADD_NODE, rid, tid,
                                                   promote), conf_change=True,
                             note=f"promotion of learner {pid} proposed",
                             instance=t.revision)

        return await rt.run_transition(tid, rid, "add_peer", planned, execute, req.wait)

    async def wait_caught_up(self, rid: int, tid: str, node: int, store_id: int) -> None:
        """Return once learner `node` of region `rid` has caught up on store `store_id` (see
        the module docstring); raise ExecutionFailedError when leadership is lost or the
        catch-up budget passes."""
        deadline = trio.current_time() + CATCH_UP_TIMEOUT
        target = 0  # the commit index when the learner joined (its own addition included)
        last_note = last_ask = -CATCH_UP_TIMEOUT
        report: dict | None = None
        while True:
            peer = self.store.peers.get(rid)
            group = peer.group if peer is not None else None
            if group is None or not group.is_leader:
                raise ExecutionFailedError(f"lost leadership of region {rid} while peer {node} "
                                           "was catching up")
            st = group.node.status()  # per-peer progress: the core leads (checked above)
            target = target or st.commit
            pr = st.progress.get(node)
            match = pr.match if pr is not None else 0
            now = trio.current_time()
            if match >= target > 0 and now - last_ask >= 0.2:
                last_ask = now
                report = await self.replica_report(store_id, rid)
                if learner_applied(report, node, target):
                    self.rt.lifecycle.note(tid, f"learner {node} caught up: store {store_id} "
                                           f"applied {report['applied_index']} (needed "
                                           f"{target}), leader's match {match}")
                    return
            if now > deadline:
                raise ExecutionFailedError(f"learner {node} did not catch up within "
                                           f"{CATCH_UP_TIMEOUT:.0f}s (match {match} of "
                                           f"{target}; store {store_id} reports {report})")
            if now - last_note > 1.0:
                last_note = now
                state = pr.state.name if pr is not None else "unknown"
                self.rt.lifecycle.note(tid, f"learner {node} catching up: {state}, match "
                                       f"{match} of {target}; store {store_id} reports {report}")
            await trio.sleep(0.05)

    async def replica_report(self, store_id: int, rid: int) -> dict | None:
        """What store `store_id` itself says of its replica of region `rid` (its execution
        status: peer id, initialized, applied index); None if it did not answer or hosts
        none."""
        addr = self.store.store_addrs.get(store_id)
        if not addr:
            return None
        try:
            reply = await self.store.rpc.call(addr, ExecutionStatusRequest(rid), timeout=2.0)
        except (RemoteError, RpcError):
            return None
        regions = reply.body.get("regions") if isinstance(reply.body, dict) else None
        r = regions.get(str(rid)) if isinstance(regions, dict) else None
        return r if isinstance(r, dict) else None

    async def exec_remove_peer(self, req: AdminRequest) -> AdminReply:
        rt = self.rt
        peer, desc = await rt.settled_leader(req.region_id)
        victim = desc.peer_on(req.store_id)
        if victim is None or (req.peer_id and victim.peer_id != req.peer_id):
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    f"region {desc.region_id} has no peer on store "
                                    f"{req.store_id}", peer)
        if len(desc.voters()) <= 1 and not victim.learner:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    "cannot remove the last voter", peer)
        if victim.peer_id == peer.peer_id:
            # The leader never removes itself: hand leadership over, then forward.
            other = next((p for p in desc.voters() if p.peer_id != victim.peer_id), None)
            if other is None or not await rt.transfer(desc.region_id, other.peer_id):
                raise refused(R.NOT_LEADER, "could not move leadership off the peer being "
                              "removed")
            raise ForwardToLeaderError(other.store_id)
        target = replace(desc, peers=tuple(p for p in desc.peers if p != victim), revision=0,
                         epoch=RegionEpoch(desc.epoch.version, desc.epoch.conf_ver + 1))
        planned = RootEvent(EventKind.PEER_REMOVAL_PLANNED,
                            PeerChange(desc.region_id, victim.store_id, victim.peer_id, target,
                                       desc))
        tid = transition_id(planned)
        rid = desc.region_id
        me = self.store.store_id

        async def execute(token, proposed: trio.Event) -> None:
            t = replace(target, revision=token.index if token is not None else 0)
            payload = PeerChangePayload("remove", victim.store_id, victim.peer_id, desc, t, me)
            proposed.set()
            await rt.propose(rid, tid, conf_change(ConfChangeType.REMOVE_NODE, rid, tid,
                                                   payload), conf_change=True,
                             instance=t.revision)

        return await rt.run_transition(tid, rid, "remove_peer", planned, execute, req.wait)


def learner_applied(report: dict | None, node: int, target: int) -> bool:
    """A store's report of its replica shows learner `node` initialized and applied up to
    `target` (> 0)."""
    return (report is not None and report.get("peer_id") == node
            and bool(report.get("initialized")) and target > 0
            and int(report.get("applied_index") or 0) >= target)
