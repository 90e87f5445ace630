"""Merge of two adjacent regions with the same stores, executed by the target's leader (part
of the topology runtime).

Owns: the merge plan (the target keeps its id; the merged range is the union; version above
both) and its execution: lead the source here too (leader transfer), freeze the source with
`prepare_merge` in the source's own log (every later write to it is refused at apply), wait
until EVERY source replica reports the freeze applied (then each store's copy of the source
range is complete and final: data never moves, it stays in each store's shared keyspace),
then `commit_merge` in the target's log, at whose apply each replica extends the target and
tears its source replica down. Before the commit the merge can be compensated (rollback_merge
unfreezes the source, then the cancel). A component over the shared runtime
(raftstore.topology.runtime: pipeline, proposals, leader transfer); never publishes the
terminal event itself and never refuses without an admission reason.
"""

from __future__ import annotations

from dataclasses import replace

import trio

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    EventKind,
    RangeMerge,
    RegionDescriptor,
    RegionEpoch,
    RegionState,
    RootEvent,
)
from nokvpy.protocol.raftstore_cmds import MergePayload
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest, ExecutionStatusRequest
from nokvpy.protocol.transitions import transition_id
from nokvpy.rpc import RemoteError, RpcError
from raftstore.admission import refused
from raftstore.commands import admin_command
from raftstore.topology.context import FREEZE_TIMEOUT, ExecutionFailedError, Operation

R = AdmissionReason


class MergeOp(Operation):
    """`exec_merge` and the freeze wait over the shared runtime `rt`."""

    async def exec_merge(self, req: AdminRequest) -> AdminReply:
        rt = self.rt
        peer, tdesc = await rt.settled_leader(req.region_id)
        src = self.store.peers.get(req.other_region_id)
        sdesc = src.descriptor if src is not None else None
        invalid = _merge_invalid(tdesc, sdesc, req.other_region_id)
        if invalid:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID, invalid, peer)
        assert sdesc is not None
        left, right = (tdesc, sdesc) if tdesc.start_key < sdesc.start_key else (sdesc, tdesc)
        merged = RegionDescriptor(tdesc.region_id, left.start_key, right.end_key, RegionEpoch(
            max(tdesc.epoch.version, sdesc.epoch.version) + 1, tdesc.epoch.conf_ver),
            tdesc.peers)
        planned = RootEvent(EventKind.MERGE_PLANNED, RangeMerge(left.region_id, right.region_id,
                                                                 merged, left, right))
        tid = transition_id(planned)
        missing = await self.replicas_not_ready(tdesc, sdesc)
        if missing:
            raise self.store.refuse(
                AdmissionClass.TOPOLOGY, R.INVALID,
                "merge needs every replica of both regions live and caught up, and "
                + "; ".join(missing) + ": nothing was planned", peer)
        if not await rt.ensure_leader(sdesc.region_id):
            raise refused(R.NOT_LEADER, f"could not lead source region {sdesc.region_id} here")
        me = self.store.store_id
        tid_rid = tdesc.region_id

        async def execute(token, proposed: trio.Event) -> None:
            m = replace(merged, revision=token.index if token is not None else 0)
            payload = MergePayload(tdesc, sdesc, m, left.region_id, right.region_id, me)
            proposed.set()
            rt.claim(sdesc.region_id, tid)
            try:
                await rt.propose(sdesc.region_id, tid, admin_command(
                    "prepare_merge", sdesc.region_id, sdesc.epoch, tid, payload),
                    note=f"prepare_merge (freeze) of source {sdesc.region_id} proposed",
                    instance=m.revision)
                await self.wait_frozen(tid, sdesc)
                await rt.propose(tid_rid, tid, admin_command(
                    "commit_merge", tid_rid, tdesc.epoch, tid, payload),
                    note=f"commit_merge into target {tid_rid} proposed", instance=m.revision)
            finally:
                if rt.busy.get(sdesc.region_id) == tid:
                    del rt.busy[sdesc.region_id]

        return await rt.run_transition(tid, tid_rid, "merge", planned, execute, req.wait)

    async def replicas_not_ready(self, tdesc: RegionDescriptor,
                                 sdesc: RegionDescriptor) -> list[str]:
        """Before a merge is planned: every other store of the two regions answers within
        2 s and hosts both, initialized, at least at these epochs. A merge planned without
        that would wait FREEZE_TIMEOUT for a freeze a down store cannot apply, then be
        compensated; refusing first gives the operator the reason at once."""
        store = self.store
        problems: list[str] = []

        async def check(sid: int) -> None:
            addr = store.store_addrs.get(sid)
            if not addr:
                problems.append(f"store {sid} has no known address")
                return
            try:
                body = (await store.rpc.call(addr, ExecutionStatusRequest(0),
                                             timeout=2.0)).body
            except (RemoteError, RpcError) as exc:
                problems.append(f"store {sid} did not answer ({type(exc).__name__})")
                return
            regions = body.get("regions") or {}
            for d in (tdesc, sdesc):
                r = regions.get(str(d.region_id)) or {}
                epoch = r.get("epoch") or [0, 0]
                if not r.get("initialized") or epoch[0] < d.epoch.version or \
                        epoch[1] < d.epoch.conf_ver:
                    problems.append(f"store {sid} has region {d.region_id} at "
                                    f"{epoch[0]}/{epoch[1]}, not {d.epoch}")

        async with trio.open_nursery() as nursery:
            for p in tdesc.peers:
                if p.store_id != store.store_id:
                    nursery.start_soon(check, p.store_id)
        return sorted(problems)

    async def wait_frozen(self, tid: str, sdesc: RegionDescriptor) -> None:
        """Every replica of the source must have applied prepare_merge: then each store's
        copy of the source range is complete and final."""
        store = self.store
        deadline = trio.current_time() + FREEZE_TIMEOUT
        pending = {p.store_id for p in sdesc.peers}
        while pending:
            for sid in sorted(pending):
                if await self._frozen_on(sid, sdesc.region_id):
                    pending.discard(sid)
            if not pending:
                break
            self.rt.lifecycle.note(tid, "waiting for the source freeze on stores "
                                   f"{sorted(pending)}")
            if trio.current_time() > deadline:
                raise ExecutionFailedError(f"source region {sdesc.region_id} not frozen on "
                                           f"stores {sorted(pending)} within "
                                           f"{FREEZE_TIMEOUT:.0f}s")
            await trio.sleep(0.1)
        self.rt.lifecycle.note(tid, f"source region {sdesc.region_id} frozen on every "
                               "replica")
        store.counters["merge_freezes_confirmed"] += 1

    async def _frozen_on(self, sid: int, rid: int) -> bool:
        store = self.store
        if sid == store.store_id:
            p = store.peers.get(rid)
            return p is not None and p.descriptor is not None and \
                p.descriptor.state == RegionState.MERGING
        addr = store.store_addrs.get(sid)
        if not addr:
            return False
        try:
            body = (await store.rpc.call(addr, ExecutionStatusRequest(rid), timeout=2.0)).body
        except (RemoteError, RpcError):
            return False
        region = (body.get("regions") or {}).get(str(rid)) or {}
        return region.get("state") == RegionState.MERGING.name


def _merge_invalid(t: RegionDescriptor, s: RegionDescriptor | None, sid: int) -> str:
    if s is None:
        return f"source region {sid} is not hosted (initialized) here"
    if s.region_id == t.region_id:
        return "cannot merge a region with itself"
    if not ((t.end_key and t.end_key == s.start_key) or (s.end_key and s.end_key == t.start_key)):
        return f"regions {t.region_id} and {s.region_id} are not adjacent"
    if sorted(p.store_id for p in t.peers) != sorted(p.store_id for p in s.peers):
        return "regions do not have the same peer set (stores)"
    if any(p.learner for p in (*t.peers, *s.peers)):
        return "a region has a learner (peer change under way)"
    if t.state != RegionState.RUNNING or s.state != RegionState.RUNNING:
        return "a region is frozen by another merge"
    return ""

