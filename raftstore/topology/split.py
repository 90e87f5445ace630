"""Region split, executed by the region leader (part of the topology runtime).

Owns: the split plan (the parent keeps [start, key) at version + 1; the child [key, end) gets
a fresh region id and peer ids from the coordinator's AllocID, one peer on each store of the
parent), the split key when none is given (the median key of the parent's range, counted in
a worker thread), and proposing the `split` admin command through the runtime's pipeline
(raftstore.topology.runtime). Every replica applies it in raftstore.topology.apply. Never
publishes the terminal event itself (the outbox does) and never refuses a request without an
admission reason (the store's `refuse`).
"""

from __future__ import annotations

from dataclasses import replace

import trio

from nokvpy.protocol import (
    AdmissionClass,
    AdmissionReason,
    EventKind,
    PeerMeta,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RegionState,
    RootEvent,
)
from nokvpy.protocol.raftstore_cmds import SplitPayload
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest
from nokvpy.protocol.transitions import transition_id
from raftstore.commands import admin_command
from raftstore.topology.context import Operation

R = AdmissionReason


class SplitOp(Operation):
    """`exec_split` over the shared runtime `rt`."""

    async def exec_split(self, req: AdminRequest) -> AdminReply:
        """Split region `req.region_id`, led here, at `req.split_key` (none given: the median
        key): refuse a key not strictly inside or a frozen region, else plan, publish, propose."""
        rt = self.rt
        peer, desc = await rt.settled_leader(req.region_id)
        key = req.split_key or await self.median_key(desc)
        if not key or not desc.contains(key) or key == desc.start_key:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                                    f"split key {key!r} is not strictly inside region "
                                    f"{desc.region_id}", peer)
        if desc.state != RegionState.RUNNING:
            raise self.store.refuse(AdmissionClass.TOPOLOGY, R.EPOCH_MISMATCH,
                                    f"region {desc.region_id} is frozen by a merge", peer)
        first = await rt.alloc_ids(1 + len(desc.peers))
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
            await rt.propose(desc.region_id, tid, data, instance=rev)

        return await rt.run_transition(tid, desc.region_id, "split", planned, execute,
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
