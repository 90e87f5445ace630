"""The watch path of a store: `KvWatchRequest` answered from a region's change log (DESIGN 5).

Owns: admission of a watch (a READ of the region's leader: the request's start key must lie
in the region, at the epoch the client routed by), the answer read at one point of the
region's applied state (the changes of the served range after the client's revision, up to
the head, or `compacted` when the region's floor is above that revision), and the long poll
(with nothing to answer, wait for the region's next durable apply, up to the request's wait).

Why the head is safe to hand out as a cursor: the head is (version, applied index) of the
state machine's in-memory view, which moves only after the batch holding those applies (and
their changes) is durable; changes above the head that LMDB may already hold are left out.
Everything a reply holds was applied, so it was committed: a deposed leader answers a prefix
of the truth at worst, and the client moves to the new leader on its next refused poll.

Never writes, never refuses without an admission reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from nokvpy.protocol import AdmissionClass, AdmissionReason
from nokvpy.protocol.watch import MAX_WATCH_EVENTS, MAX_WATCH_WAIT_MS, KvWatchReply, KvWatchRequest
from nokvpy.storage.changes import MAX_INDEX, MAX_VERSION
from raftstore.admission import rejection

if TYPE_CHECKING:
    from raftstore.peer import Peer
    from raftstore.store import Store

R = AdmissionReason
REPLY_MARGIN = 0.2  # seconds a long poll leaves before the caller's deadline


class WatchPath:
    """The watch handler of one store."""

    def __init__(self, store: Store):
        self.store = store

    async def on_watch(self, req: KvWatchRequest, ctx: Any) -> KvWatchReply:
        store = self.store
        bad = _invalid(req)
        if bad:
            raise store.refuse(AdmissionClass.READ, R.INVALID, bad)
        deadline = getattr(ctx, "deadline", None)
        deadline = float("inf") if deadline is None else deadline
        adm = store.admit(AdmissionClass.READ, req.ctx, deadline, scan_start=req.start_key,
                          scan_limit=req.limit)
        if not adm.accepted:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(adm)
        rid = req.ctx.region_id
        peer = store.peers[rid]
        if peer.sm.changes is None:
            raise store.refuse(AdmissionClass.READ, R.INVALID, f"store {store.store_id} keeps "
                               "no change log (started with --watch-keep 0)", peer)
        store.counters["watch_polls"] += 1
        now = trio.current_time()
        until = min(now + min(req.wait_ms, MAX_WATCH_WAIT_MS) / 1000.0, deadline - REPLY_MARGIN)
        while True:
            desc = peer.descriptor
            if desc is None or desc.epoch.version != req.ctx.epoch.version:
                # the range moved while the poll waited (a split or merge): the client routes
                # its start key again; answering from the new range could serve a range that
                # no longer holds the start
                raise store.refuse(AdmissionClass.READ, R.EPOCH_MISMATCH,
                                   f"region {rid} moved to epoch {desc.epoch if desc else None} "
                                   "while the watch waited", peer)
            reply = _read(peer, req)
            if (reply.events or reply.compacted or req.after_version < 0
                    or trio.current_time() >= until):
                break
            if store.peers.get(rid) is not peer or not peer.is_leader:
                break  # the next poll is refused and the client finds the leader
            assert peer.sm.changes is not None
            await peer.sm.changes.wait_applied(until - trio.current_time())
        store.counters["watch_events_sent"] += len(reply.events)
        if reply.compacted:
            store.counters["watch_compacted"] += 1
        return reply


def _invalid(req: KvWatchRequest) -> str:
    if not isinstance(req.start_key, bytes) or not isinstance(req.end_key, bytes):
        return "watch keys must be bytes"
    if req.end_key and req.end_key <= req.start_key:
        return "watch range is empty or inverted"
    for name in ("after_version", "after_index", "limit", "wait_ms"):
        v = getattr(req, name)
        if isinstance(v, bool) or not isinstance(v, int):
            return f"watch {name} must be an int"
    if req.after_version < -1 or req.after_index < 0 or req.wait_ms < 0:
        return "watch revision and wait must not be negative"
    if req.after_version > MAX_VERSION or req.after_index > MAX_INDEX:
        return "watch revision out of range"
    if not 1 <= req.limit <= MAX_WATCH_EVENTS:
        return f"watch limit must be 1..{MAX_WATCH_EVENTS}"
    return ""


def _read(peer: Peer, req: KvWatchRequest) -> KvWatchReply:
    """The reply at the state machine's current applied state (no await: one view)."""
    sm = peer.sm
    changes = sm.changes
    desc = sm.descriptor
    assert changes is not None and desc is not None
    head = (desc.epoch.version, sm.applied)
    lo = max(req.start_key, desc.start_key)
    hi = desc.end_key
    if req.end_key and (not hi or req.end_key < hi):
        hi = req.end_key
    served = dict(head_version=head[0], head_index=head[1], served_start=lo, served_end=hi,
                  region_id=desc.region_id)
    if req.after_version < 0:
        # a watch starting now: after every write already acknowledged, durable in LMDB
        # or not (a held-back apply's changes are above this head, never sent)
        served["head_index"] = sm.staged_index()
        return KvWatchReply([], **served)
    after = (req.after_version, req.after_index)
    floor = changes.floor if changes.floor is not None else head
    if after < floor:
        return KvWatchReply([], **served, compacted=True, floor_version=floor[0],
                            floor_index=floor[1])
    if after >= head:
        return KvWatchReply([], **served)
    events, more = sm.env.read(
        lambda txn: changes.table.read(txn, sm.region_id, after, lo, hi, req.limit))
    kept = [c for c in events if (c[0], c[1]) <= head]
    if more and len(kept) == len(events) and kept:
        # cut by the limit below the head: the cursor moves to the last revision sent
        served["head_version"], served["head_index"] = kept[-1][0], kept[-1][1]
    return KvWatchReply(kept, **served)
