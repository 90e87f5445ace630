"""What a store reports about itself: `ExecutionStatus`, its current restart state, and the
operator path of its publish outbox.

Owns: the `ExecutionStatus` body (identity, hosted regions, admissions and outcomes from the
execution tracker, queue depths and waiters, raft traffic drops, driver / transport /
storage counters, transitions, outbox, tombstones, heartbeats, topology), the current
restart state re-derived from localmeta (what a restart would find now: cached at most a
second, derived again at once when the outbox or blocked table changed size), and the
`OutboxRequest` RPC (list, retry or resolve a blocked entry; carried out by the publisher of
raftstore.topology.outbox, a refusal built by raftstore.admission through the store's
`refuse`), and the `RegionDigest` RPC (`region_digest`: a digest of each hosted replica's
applied KV state, read with its applied index and descriptor in one LMDB read transaction,
in a worker thread, one region at a time, bounded by `DIGEST_MAX_KEYS` / `DIGEST_MAX_BYTES`).
Never changes what the store hosts, and never fails to answer on a sick store (a read error
becomes part of the answer).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import struct
from typing import TYPE_CHECKING, Any

import trio

from nokvpy import metrics as m
from nokvpy.protocol import AdmissionClass, AdmissionReason, RegionEpoch, RestartStateKind
from nokvpy.protocol.store_rpc import (
    ExecutionStatusReply,
    ExecutionStatusRequest,
    OutboxReply,
    OutboxRequest,
    RegionDigest,
    RegionDigestReply,
    RegionDigestRequest,
)
from nokvpy.storage import KV, Env, LocalMeta
from nokvpy.wire import DecodeError, decode
from raftstore.apply import decode_descriptor
from raftstore.restart import RestartState, derive, load_image
from raftstore.topology.outbox import OutboxRefusal

if TYPE_CHECKING:
    from raftstore.store import Store

log = logging.getLogger("nokvpy.raftstore")

R = AdmissionReason

# What one RegionDigest answer reads of a region at most; past it the replica answers
# digest b"" with a `too_large` note instead of holding a read transaction (and a worker
# thread) for long.
DIGEST_MAX_KEYS = 1_000_000
DIGEST_MAX_BYTES = 256 << 20
DIGEST_SIZE = 32
DIGEST_PERSON = b"nokv-region-kv"  # blake2b personalization: this digest and no other
_LEN = struct.Struct(">I")
NO_EPOCH = RegionEpoch(0, 0)  # the epoch of an uninitialized replica's answer


def region_digest(env: Env, kv: KV, meta: LocalMeta, region_id: int, peer_id: int, *,
                  store_id: int = 0, max_keys: int | None = None,
                  max_bytes: int | None = None) -> RegionDigest:
    """The digest of region `region_id`'s applied state on this store: its replay pointer
    (applied index, term), its descriptor and every pair of its range, read in ONE LMDB read
    transaction (so the data is exactly what the pointer says was applied). Blocking: call it
    in a worker thread. `peer_id` is answered when the descriptor names no peer on
    `store_id`. Pairs are hashed as LMDB holds them (`KV.walk_range`). Never raises: a read
    error is the answer's note."""
    max_keys = DIGEST_MAX_KEYS if max_keys is None else max_keys
    max_bytes = DIGEST_MAX_BYTES if max_bytes is None else max_bytes

    def read(txn: Any) -> RegionDigest:
        ptr = meta.replay_pointer(region_id, txn=txn)
        applied, term = (ptr.applied_index, ptr.applied_term) if ptr is not None else (0, 0)
        raw = meta.region(region_id, txn=txn)
        if raw is None:
            return RegionDigest(region_id, peer_id, applied, term, NO_EPOCH, 0, b"",
                                note="uninitialized")
        desc = decode_descriptor(raw)
        me = desc.peer_on(store_id) if store_id else None
        h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=DIGEST_PERSON)
        keys = size = 0
        note = ""
        for k, v in kv.walk_range(txn, desc.start_key, desc.end_key or None):
            keys += 1
            size += len(k) + len(v)
            if keys > max_keys or size > max_bytes:
                keys -= 1
                note = (f"too_large: more than {max_keys} keys or {max_bytes} bytes "
                        f"(stopped after {keys} keys)")
                break
            h.update(_LEN.pack(len(k)))
            h.update(k)
            h.update(_LEN.pack(len(v)))
            h.update(v)
        return RegionDigest(
            region_id, me.peer_id if me is not None else peer_id, applied, term, desc.epoch,
            keys, b"" if note else h.digest(), note=note, byte_count=size,
            start_key=desc.start_key, end_key=desc.end_key,
            voters=tuple(sorted(p.store_id for p in desc.voters())),
            learners=tuple(sorted(p.store_id for p in desc.peers if p.learner)))

    try:
        return env.read(read)
    except Exception as exc:  # noqa: BLE001 - a sick store still answers, with the reason
        return RegionDigest(region_id, peer_id, 0, 0, NO_EPOCH, 0, b"",
                            note=f"read_failed: {type(exc).__name__}: {exc}"[:300])


class StoreStatus:
    """The status answers of one store."""

    def __init__(self, store: Store):
        self.store = store
        self._current_state: tuple[float, RestartState] | None = None
        self._digest_limiter: trio.CapacityLimiter | None = None  # one digest at a time

    def current_state(self) -> RestartState:
        """The restart state derived again from localmeta now: what a restart would find.
        `restart` keeps the state found at start; this one clears once the causes are gone
        (outbox drained, blocked events resolved, a region rebuilt). Re-read at most once a
        second, and at once when the outbox or blocked table changed size (level-triggered:
        a drained outbox or a resolved blocked entry shows in the next answer)."""
        store = self.store
        now = trio.current_time()
        cached = self._current_state
        if cached is not None and now - cached[0] < 1.0:
            try:
                same = (len(store.meta.outbox()), len(store.meta.blocked())) == (
                    cached[1].outbox_backlog, cached[1].blocked_events)
            except Exception:  # noqa: BLE001 - a sick store re-derives (and reports why)
                same = False
            if same:
                return cached[1]
        try:
            state = derive(load_image(store.meta, store.raftlog))
        except Exception as exc:  # status must answer even on a sick store
            log.exception("store %d: re-deriving the restart state failed", store.store_id)
            state = RestartState(RestartStateKind.FATAL, ("read_failed",),
                                 message=f"reading localmeta failed: {exc}")
        self._current_state = (now, state)
        return state

    def body(self) -> dict[str, Any]:
        store = self.store
        leaders = sum(1 for p in store.peers.values() if p.is_leader)
        restart = store.restart.as_dict() if store.restart is not None else {}
        if restart:
            restart["outbox_backlog"] = store.outbox_backlog
            restart["blocked_events"] = store.blocked_events
        regions = {}
        for rid in sorted(store.peers):
            p = store.peers[rid]
            d = p.descriptor
            regions[str(rid)] = {
                "peer_id": p.peer_id,
                "initialized": d is not None,
                "epoch": [d.epoch.version, d.epoch.conf_ver] if d else [],
                "leader": p.is_leader,
                "leader_peer_id": p.leader_peer_id,
                "applied_index": p.sm.applied,
                "commit_index": p.commit_index(),
                "in_flight": p.in_flight,
                "state": d.state.name if d else "",
                "hibernating": bool(p.group is not None and p.group.node.hibernating),
            }
        tracker = store.tracker.status()
        outbox = []
        try:
            outbox = [_outbox_entry(seq, ev) for seq, ev in store.meta.outbox()[:100]]
        except Exception as exc:  # status must answer even on a sick store
            outbox = [{"error": str(exc)}]
        return {
            "store_id": store.store_id,
            "address": store.cfg.address,
            "joined": store.joined,
            "region_count": len(store.peers),
            "leader_count": leaders,
            "hibernating_count": store.driver.hibernating(),
            "restart_state": restart,
            "current_state": self.current_state().as_dict() if store.restart is not None else {},
            "last_admission": tracker["last_admission"],
            "admissions": tracker["admissions"],
            "outcomes": tracker["outcomes"],
            "recent_targets": tracker["recent_targets"],
            "queue_depths": {str(rid): p.in_flight for rid, p in sorted(store.peers.items())
                             if p.in_flight},
            "queue_limit": store.limits.queue_limit,
            "queue_waiters": {str(rid): len(line)
                              for rid, line in sorted(store.kvpath.waiting.items()) if line},
            "proposal_queue": len(store.driver._proposals),
            "drops": dict(sorted(store.drops.items())),
            "counters": dict(sorted(store.counters.items())),
            "driver": dict(sorted(store.driver.counters.items())),
            "transport": dict(sorted(store.transport.counters.items())),
            "storage": m.storage_stats(store.env, store.raftlog),
            "transitions": tracker["transitions"],
            "outbox": outbox,
            "tombstones": sorted(store.tombstones),
            "tombstoned_peers": {str(rid): t.peer_id
                                 for rid, t in sorted(store.tombstones.items())},
            "heartbeats_sent": store.heartbeats_sent,
            "last_heartbeat_error": store.last_heartbeat_error,
            "regions": regions,
            "topology": store.topology.status() if store.topology is not None else {},
        }

    async def on_execution_status(self, req: ExecutionStatusRequest, ctx: Any
                                  ) -> ExecutionStatusReply:
        body = self.body()
        if req.region_id:
            body["regions"] = {k: v for k, v in body["regions"].items()
                               if k == str(req.region_id)}
        if req.transition_id:
            body["transitions"] = {k: v for k, v in body["transitions"].items()
                                   if k == req.transition_id}
        return ExecutionStatusReply(body)

    async def on_region_digest(self, req: RegionDigestRequest, ctx: Any) -> RegionDigestReply:
        """A digest of each hosted replica asked for (`region_digest`), computed in a worker
        thread, one region at a time per store (concurrent requests queue for the thread)."""
        store = self.store
        wanted = set(req.region_ids)
        hosted = [(rid, p.peer_id) for rid, p in sorted(store.peers.items())
                  if not wanted or rid in wanted]
        if self._digest_limiter is None:
            self._digest_limiter = trio.CapacityLimiter(1)
        out = []
        for rid, peer_id in hosted:
            out.append(await trio.to_thread.run_sync(
                functools.partial(region_digest, store.env, store.kv, store.meta, rid, peer_id,
                                  store_id=store.store_id),
                limiter=self._digest_limiter))
        return RegionDigestReply(store.store_id, tuple(out))

    async def on_outbox(self, req: OutboxRequest, ctx: Any) -> OutboxReply:
        """The operator path of the publish outbox (raftstore.topology.outbox): list, retry or
        resolve a blocked entry. A request that cannot be carried out is refused INVALID and
        changes nothing."""
        store = self.store
        publisher = getattr(store.topology, "publisher", None)
        if publisher is None:
            raise store.refuse(AdmissionClass.TOPOLOGY, R.INVALID,
                               f"store {store.store_id} runs no outbox publisher")
        detail = ""
        try:
            if req.action == "retry":
                detail = await publisher.retry_blocked(req.seq)
            elif req.action == "resolve":
                detail = await publisher.resolve_blocked(req.seq, req.resolution, req.reason)
            elif req.action != "list":
                raise OutboxRefusal(f"unknown outbox action {req.action!r}: expected list, "
                                    "retry or resolve")
        except OutboxRefusal as exc:
            raise store.refuse(AdmissionClass.TOPOLOGY, R.INVALID, str(exc)) from None
        if req.action != "list":
            self._current_state = None  # the tables changed: derive the state again now
        body: dict[str, Any] = dict(publisher.status())
        body["store_id"] = store.store_id
        body["current_state"] = (self.current_state().as_dict() if store.restart is not None
                                 else {})
        return OutboxReply(req.action, detail, body)


def _outbox_entry(seq: int, event: bytes) -> dict[str, Any]:
    try:
        kind = type(decode(event)).__name__
    except DecodeError:
        kind = "undecodable"
    return {"seq": seq, "bytes": len(event), "record": kind}
