"""Leases on a store: the authority for the leases its led regions hold, and the sweeper of
keys whose lease is gone (DESIGN 5; nokvpy.protocol.leases).

Owns, as a lease's authority (the leader of the region holding its record):
- keep-alives: after a linearizable read barrier (this store leads the region at a point after
  the request arrived), the record is read and its deadline set to the request's arrival plus
  the TTL (never moved earlier);
- expiry: every `INTERVAL` the records of each region this store leads are read; a record
  first seen (a new lease, or a region this store just came to lead, in a new term) gets the
  deadline now + TTL, so a new leader extends what it cannot judge; a record past its
  deadline is deleted through raft (a deposed leader's delete never commits);
- liveness answers: `LeaseAliveRequest`, a linearizable read of the record.
And as the sweeper of every region it leads: the lease index lists the leases keys of the
region were written with; for each, the lease's authority is asked whether it is alive, and
only a lease whose record is gone (expired or revoked, for good: ids are not reused) gets a
`LeaseSweepCommand` (raftstore.leaseapply deletes the keys still attached to it).

A keep-alive and an expiry never cross: while a keep-alive waits for its barrier no pass
expires its lease, and once a pass proposed a lease's delete every keep-alive of it answers
"not found" (the delete may commit after the keep-alive's read).

Why no key is deleted while its lease is alive: its keys are swept only after the authority
answered, linearizably, that the record is gone; the record is deleted only by a revoke or by
an authority whose deadline passed, and every deadline is at least TTL after the last
keep-alive that arrived (or after the authority took over). Assumes monotonic clocks that run
at the same rate within a few percent across stores (durations, not instants, are compared).
Never judges expiry on a follower and never deletes a key directly (only through raft).

TEST-ONLY: `NOKV_UNSAFE_LEASE_EXTEND=1` in a store's environment makes an authority give a
record it has not seen before (a new lease, or leases of a region it just came to lead) no
time at all: it expires at the next pass unless a keep-alive reached this authority first, so
a failover expires leases that were kept alive. Never set it anywhere else.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import trio

from nokvpy.protocol import AdmissionClass, AdmissionReason, Freshness
from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest
from nokvpy.protocol.leases import (
    LEASE_PREFIX,
    LEASE_PREFIX_END,
    LeaseAliveReply,
    LeaseAliveRequest,
    LeaseKeepAliveReply,
    LeaseKeepAliveRequest,
    LeaseSweepCommand,
    decode_ttl,
    lease_id_of,
    lease_key,
)
from nokvpy.protocol.raftstore_cmds import KvOp, KvOpKind
from nokvpy.protocol.store_rpc import KvContext, ReadMode
from nokvpy.wire import encode
from raftstore.admission import rejection
from raftstore.commands import kv_command
from raftstore.reads import ReadRefusedError, read_barrier

if TYPE_CHECKING:
    from raftstore.heartbeat import CoordinatorLink
    from raftstore.peer import Peer
    from raftstore.store import Store

log = logging.getLogger("nokvpy.raftstore.leases")

INTERVAL = 0.25  # seconds between two passes of expiry and sweeping
SWEEP_EVERY = 4  # passes between two sweeps
SWEEP_KEYS = 1000  # keys one sweep entry deletes at most
PROPOSE_TIMEOUT = 5.0  # a pass gives up a proposal after this long (a deposed leader's waits)
MAX_RECORDS = 10_000  # lease records one region's pass reads
# TEST-ONLY deliberately broken failover (see the module docstring).
UNSAFE_EXTEND = os.environ.get("NOKV_UNSAFE_LEASE_EXTEND", "") not in ("", "0")


class LeaseService:
    """The lease authority and sweeper of one store."""

    def __init__(self, store: Store, link: CoordinatorLink | None = None):
        self.store = store
        self.link = link
        self.deadlines: dict[int, float] = {}  # lease id -> when it expires (monotonic)
        self.region_of: dict[int, int] = {}  # lease id -> the region holding its record
        self.terms: dict[int, int] = {}  # region id -> the term its deadlines were set in
        # keep-alives arrived and not yet answered (a pass expires none of their leases), and
        # leases whose delete this store proposed (a keep-alive answers them not found)
        self.inflight: Counter[int] = Counter()
        self.expiring: set[int] = set()
        self.counters: Counter[str] = Counter()

    # ---- requests -------------------------------------------------------------------------

    async def on_keep_alive(self, req: LeaseKeepAliveRequest, ctx: Any) -> LeaseKeepAliveReply:
        """While the barrier runs no pass may expire the lease (a keep-alive that arrived
        before the deadline must win); one whose delete is already proposed is gone."""
        arrival = trio.current_time()
        lid = req.lease_id
        self.inflight[lid] += 1
        try:
            peer, ttl_ms = await self._read_record(req.ctx, ctx, lid)
        finally:
            self.inflight[lid] -= 1
            if self.inflight[lid] <= 0:
                del self.inflight[lid]
        self.counters["keep_alives"] += 1
        if ttl_ms is None or lid in self.expiring:
            return LeaseKeepAliveReply(False)
        self._track(peer)
        deadline = arrival + ttl_ms / 1000.0
        if deadline > self.deadlines.get(req.lease_id, 0.0):
            self.deadlines[req.lease_id] = deadline
        self.region_of[req.lease_id] = peer.region_id
        return LeaseKeepAliveReply(True, ttl_ms)

    async def on_alive(self, req: LeaseAliveRequest, ctx: Any) -> LeaseAliveReply:
        _, ttl_ms = await self._read_record(req.ctx, ctx, req.lease_id)
        return LeaseAliveReply(ttl_ms is not None)

    async def _read_record(self, kvctx: KvContext, ctx: Any,
                           lease_id: Any) -> tuple[Peer, int | None]:
        """(the region's peer, the record's TTL or None: gone), read linearizably."""
        store = self.store
        if isinstance(lease_id, bool) or not isinstance(lease_id, int) or \
                not 0 < lease_id < 1 << 63:
            raise store.refuse(AdmissionClass.READ, AdmissionReason.INVALID,
                               f"bad lease id {lease_id!r}")
        deadline = getattr(ctx, "deadline", None)
        deadline = float("inf") if deadline is None else deadline
        key = lease_key(lease_id)
        adm = store.admit(AdmissionClass.READ, kvctx, deadline, keys=(key,))
        if not adm.accepted:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(adm)
        peer = store.peers[kvctx.region_id]
        try:
            await read_barrier(store.driver, peer, ReadMode.LINEARIZABLE, deadline)
        except ReadRefusedError as exc:
            raise store.refuse(AdmissionClass.READ, exc.reason, exc.detail, peer) from None
        raw = peer.sm.get(key)
        return peer, (decode_ttl(raw) if raw is not None else None)

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        passes = 0
        while True:
            await trio.sleep(INTERVAL)
            passes += 1
            for peer in list(self.store.peers.values()):
                if not peer.is_leader or peer.descriptor is None or peer.group is None:
                    continue
                try:
                    await self._expire(peer)
                    if passes % SWEEP_EVERY == 0:
                        await self._sweep(peer)
                except trio.Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - the next pass tries again
                    self.counters["pass_errors"] += 1
                    if self.counters["pass_errors"] % 50 == 1:
                        log.warning("store %d: lease pass of region %d failed: %s",
                                    self.store.store_id, peer.region_id, exc)

    def _track(self, peer: Peer) -> None:
        """Forget the deadlines of `peer`'s region set in an earlier term of this store's
        leadership: a store that leads again extends them afresh."""
        assert peer.group is not None
        term = peer.group.term
        if self.terms.get(peer.region_id) != term:
            self.terms[peer.region_id] = term
            for lid in [lid for lid, rid in self.region_of.items() if rid == peer.region_id]:
                self.deadlines.pop(lid, None)
                self.region_of.pop(lid, None)
                self.expiring.discard(lid)

    async def _expire(self, peer: Peer) -> None:
        desc = peer.descriptor
        assert desc is not None and peer.group is not None
        lo = max(desc.start_key, LEASE_PREFIX)
        hi = LEASE_PREFIX_END if not desc.end_key else min(desc.end_key, LEASE_PREFIX_END)
        if lo >= hi:
            return
        self._track(peer)
        now = trio.current_time()
        seen: set[int] = set()
        expired: list[bytes] = []
        for key, raw in peer.sm.scan(lo, hi, MAX_RECORDS)[0]:
            lid, ttl_ms = lease_id_of(key), decode_ttl(raw)
            if lid is None or ttl_ms is None:
                continue
            seen.add(lid)
            deadline = self.deadlines.get(lid)
            if deadline is None:  # new, or this store just came to lead: extend
                self.deadlines[lid] = now if UNSAFE_EXTEND else now + ttl_ms / 1000.0
                self.region_of[lid] = peer.region_id
            elif now >= deadline and not self.inflight.get(lid):
                expired.append(key)
                self.expiring.add(lid)
        for lid in [lid for lid, rid in self.region_of.items()
                    if rid == peer.region_id and lid not in seen]:
            self.deadlines.pop(lid, None)  # revoked or expired: its record is gone
            self.region_of.pop(lid, None)
            self.expiring.discard(lid)
        if expired:
            data = kv_command(desc.region_id, desc.epoch,
                              [KvOp(KvOpKind.DELETE, key) for key in expired])
            with trio.move_on_after(PROPOSE_TIMEOUT):
                await self.store.driver.propose(peer.group, data)
            self.counters["leases_expired"] += len(expired)
            log.info("store %d: %d lease(s) of region %d expired", self.store.store_id,
                     len(expired), desc.region_id)

    async def _sweep(self, peer: Peer) -> None:
        desc = peer.descriptor
        index = self.store.lease_index
        assert desc is not None and peer.group is not None
        for lid, keys in index.leases_in(desc.start_key, desc.end_key).items():
            alive = await self._alive(lid)
            if alive is not False:  # alive, or unknown: ask again next sweep
                continue
            for i in range(0, len(keys), SWEEP_KEYS):
                data = encode(LeaseSweepCommand(desc.region_id, desc.epoch, lid,
                                                keys[i:i + SWEEP_KEYS]))
                with trio.move_on_after(PROPOSE_TIMEOUT):
                    await self.store.driver.propose(peer.group, data)
            self.counters["keys_swept"] += len(keys)

    async def _alive(self, lease_id: int) -> bool | None:
        """Whether the lease's authority says it is alive (None: it could not be asked)."""
        store = self.store
        key = lease_key(lease_id)
        local = next((p for p in store.peers.values() if p.is_leader and p.descriptor
                      is not None and p.descriptor.contains(key)), None)
        try:
            if local is not None:
                assert local.descriptor is not None
                ctx = KvContext(local.region_id, local.descriptor.epoch, store.store_id)
                return (await self.on_alive(LeaseAliveRequest(ctx, lease_id), None)).alive
            if self.link is None:
                return None
            route = await self.link.call(GetRegionByKeyRequest(key, Freshness.BEST_EFFORT,
                                                               None, 0))
            d, leader = route.descriptor, route.leader_store_id
            addr = store.store_addrs.get(leader) if leader else None
            if d is None or addr is None:
                return None
            reply = await store.rpc.call(addr, LeaseAliveRequest(
                KvContext(d.region_id, d.epoch, leader), lease_id), timeout=2.0)
            return bool(reply.alive)
        except trio.Cancelled:
            raise
        except Exception:  # noqa: BLE001 - unknown: never sweep on an error
            self.counters["alive_unknown"] += 1
            return None
