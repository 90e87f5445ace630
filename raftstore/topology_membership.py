"""Peer addition and removal, executed by the region leader (part of the topology runtime).

Owns: building a PeerChange plan from the leader's descriptor and driving it: addition =
ADD_LEARNER (no epoch bump), wait until the learner caught up (a region snapshot or the log),
then ADD_NODE (conf_ver + 1, the terminal step); removal = REMOVE_NODE (conf_ver + 1). The
leader never removes itself: it hands leadership over and forwards the request. Each conf
change carries its PeerChangePayload in the entry context, so apply
(raftstore.topology_apply) derives the descriptor and the terminal event from the log alone.
A mixin of `raftstore.topology.Topology` (uses its pipeline, proposals and lifecycle); never
publishes a terminal event itself.
"""

from __future__ import annotations

from dataclasses import replace

import trio

from metaroot.state import transition_id
from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    EventKind,
    PeerChange,
    PeerMeta,
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
)
from nokvpy.protocol.raftstore_cmds import AdminCommand, PeerChangePayload
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest
from nokvpy.raft import ConfChange, ConfChangeType, ProgressState
from nokvpy.rpc import RemoteError
from nokvpy.wire import encode
from raftstore.topology_common import (
    CATCH_UP_TIMEOUT,
    ExecutionFailedError,
    ForwardToLeaderError,
)

R = AdmissionReason


class MembershipExecutor:
    """Mixin: `exec_add_peer`, `exec_remove_peer` and their helpers."""

    # ---- membership ----------------------------------------------------------------------

    def _conf_change(self, cc_type: ConfChangeType, rid: int, tid: str,
                     payload: PeerChangePayload) -> bytes:
        ctx = encode(AdminCommand("peer_change", rid, payload.base.epoch, tid, payload))
        return ConfChange(cc_type, payload.peer_id, ctx).encode()

    async def exec_add_peer(self, req: AdminRequest) -> AdminReply:
        peer = await self.settled_leader_peer(req.region_id)
        desc: RegionDescriptor = peer.descriptor
        sid = req.store_id
        if sid <= 0 or desc.peer_on(sid) is not None:
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                     f"store {sid} cannot get a new peer of region "
                                     f"{desc.region_id}", peer)
        if any(p.learner for p in desc.peers):
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                     f"region {desc.region_id} has an unfinished learner", peer)
        pid = req.peer_id or await self.alloc_ids(1)
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
            await self.propose(rid, tid, self._conf_change(ConfChangeType.ADD_LEARNER, rid,
                                                           tid, learner), conf_change=True,
                               note=f"learner {pid} on store {sid} proposed",
                               instance=t.revision)
            await self.wait_caught_up(rid, tid, pid)
            promote = replace(learner, step="promote")
            await self.propose(rid, tid, self._conf_change(ConfChangeType.ADD_NODE, rid, tid,
                                                           promote), conf_change=True,
                               note=f"promotion of learner {pid} proposed",
                               instance=t.revision)

        return await self.run_transition(tid, rid, "add_peer", planned, execute, req.wait)

    async def wait_caught_up(self, rid: int, tid: str, node: int) -> None:
        deadline = trio.current_time() + CATCH_UP_TIMEOUT
        last_note = 0.0
        while True:
            peer = self.store.peers.get(rid)
            group = peer.group if peer is not None else None
            if group is None or not group.is_leader:
                raise ExecutionFailedError(f"lost leadership of region {rid} while peer {node} "
                                           "was catching up")
            raft = group.node.raft
            pr = raft.prs.progress.get(node)
            committed = raft.raft_log.committed
            if pr is not None and pr.state == ProgressState.REPLICATE and \
                    pr.match >= committed - 8:
                self.lifecycle.note(tid, f"learner {node} caught up (match {pr.match})")
                return
            now = trio.current_time()
            if now > deadline:
                raise ExecutionFailedError(f"learner {node} did not catch up within "
                                           f"{CATCH_UP_TIMEOUT:.0f}s")
            if now - last_note > 1.0:
                last_note = now
                state = pr.state.name if pr is not None else "unknown"
                self.lifecycle.note(tid, f"learner {node} catching up: {state}, match "
                                    f"{pr.match if pr else 0} of {committed}")
            await trio.sleep(0.05)

    async def exec_remove_peer(self, req: AdminRequest) -> AdminReply:
        peer = await self.settled_leader_peer(req.region_id)
        desc: RegionDescriptor = peer.descriptor
        victim = desc.peer_on(req.store_id)
        if victim is None or (req.peer_id and victim.peer_id != req.peer_id):
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                     f"region {desc.region_id} has no peer on store "
                                     f"{req.store_id}", peer)
        if len(desc.voters()) <= 1 and not victim.learner:
            raise self.store._refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                     "cannot remove the last voter", peer)
        if victim.peer_id == peer.peer_id:
            # The leader never removes itself: hand leadership over, then forward.
            other = next((p for p in desc.voters() if p.peer_id != victim.peer_id), None)
            if other is None or not await self.transfer(desc.region_id, other.peer_id):
                raise RemoteError("rejected", R.NOT_LEADER.name,
                                  "could not move leadership off the peer being removed")
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
            await self.propose(rid, tid, self._conf_change(ConfChangeType.REMOVE_NODE, rid,
                                                           tid, payload), conf_change=True,
                               instance=t.revision)

        return await self.run_transition(tid, rid, "remove_peer", planned, execute, req.wait)

