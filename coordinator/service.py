"""The coordinator service: RPC handlers over the rooted view, grants and heartbeats.

Owns: the handlers of every coordinator RPC (nokvpy.protocol.coordinator_rpc) and the wiring
of the subsystems they use: the root subscription (catalog + RootState mirror), strong-read
confirmation batching, the grant loop, the ID / TSO allocators, the store tracker, the
first-region bootstrap and the periodic drift scan. Route reads are decided by the pure
`coordinator.serving`; transition RPCs live in `coordinator.transitions` (assessed by the
pure `coordinator.assessment`).

Never: holds durable state (everything is rebuilt from metaroot and heartbeats), writes
rooted truth except through metaroot appends / grant commands, serves a STRONG or BOUNDED
read at a weaker class, or serves a duty without a live grant (a STRONG read checks its
region_lookup grant when it is admitted and again when its answer is decided). Time:
trio.current_time() except grant expiry (coordinator.grantloop).

Store joins and retirements (StoreJoin, RetireStore): coordinator.membership.

Route refusals: RemoteError(kind "rejected", reason, detail, {"witness": RouteWitness,
"retry_class", "try_another_coordinator"}). Duty refusals: kind "not_leader" with reason
grant_not_held / grant_expiring / grant_draining / ... and the holder hint.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import trio

from coordinator import diagnostics
from coordinator.allocators import Allocator
from coordinator.confirm import ConfirmBatcher
from coordinator.grantloop import ALL_DUTIES, DEFAULT_WINDOWS, GateRejected, GrantLoop, wall_ms
from coordinator.membership import StoreMembershipService
from coordinator.scheduler import Scheduler, SchedulerConfig
from coordinator.serving import (
    RouteRequest,
    ScanRequest,
    decide_route_read,
    decide_scan_regions,
)
from coordinator.stores import DEFAULT_STORE_TTL, StoreTracker
from coordinator.subscription import Subscription
from coordinator.transitions import Transitions
from nokvpy import failpoints
from nokvpy.protocol.coordinator_rpc import (
    AllocIdReply,
    AllocIdRequest,
    AssessRootEventReply,
    AssessRootEventRequest,
    DiagnosticsReply,
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    ListStoresReply,
    ListStoresRequest,
    ListTransitionsReply,
    ListTransitionsRequest,
    PauseCatchUpRequest,
    PublishRootEventReply,
    PublishRootEventRequest,
    RemoveRegionReply,
    RemoveRegionRequest,
    RetireStoreRequest,
    RouteReply,
    ScanRegionsReply,
    ScanRegionsRequest,
    StoreHeartbeatReply,
    StoreHeartbeatRequest,
    StoreJoinRequest,
    TsoReply,
    TsoRequest,
)
from nokvpy.protocol.enums import (
    AllocatorKind,
    CatchUpState,
    Duty,
    ErrorKind,
    EventKind,
    Freshness,
    RetryClass,
    StoreState,
)
from nokvpy.protocol.metaroot_rpc import AppendRequest
from nokvpy.protocol.records import (
    PeerMeta,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RegionUpsert,
    RootEvent,
    RootToken,
)
from nokvpy.rpc.errors import RemoteError

log = logging.getLogger("nokvpy.coordinator")

BOOTSTRAP_REQUEST_ID = "bootstrap:first-region"
# Test-only: `NOKV_UNSAFE_HOLDER_PAUSE=1` in a coordinator's environment restores the rules
# that a paused grant holder could fool (no grant check when a STRONG answer is decided, grant
# expiry on the wall clock only, no stall detection, confirmations timed by their answer), so
# fault runs can show they catch it ("Grant-holder pauses" in docs/protocols.md).
UNSAFE_HOLDER_PAUSE_ENV = "NOKV_UNSAFE_HOLDER_PAUSE"
WRITE_TIMEOUT = 5.0
DRIFT_INTERVAL = 2.0
BOOTSTRAP_INTERVAL = 0.5
_UNTRUSTED = (CatchUpState.BOOTSTRAP_REQUIRED, CatchUpState.RECOVERING,
              CatchUpState.UNAVAILABLE)


class CoordinatorService:
    def __init__(self, coordinator_id: int, cluster_id: str, meta: Any, *,
                 replication: int = 3, grant_ttl: float = 6.0, staleness_window: float = 3.0,
                 store_ttl: float = DEFAULT_STORE_TTL, windows: dict[Duty, int] | None = None,
                 duties: tuple[Duty, ...] = ALL_DUTIES, keepalive_ms: int = 300,
                 clock=wall_ms, rng: random.Random | None = None,
                 scheduler: SchedulerConfig | None = None,
                 unsafe_holder_pause: bool | None = None) -> None:
        self.coordinator_id = coordinator_id
        self.cluster_id = cluster_id
        self.meta = meta
        self.replication = replication
        rng = rng or random.Random()
        # The grant holder is one process incarnation, not a coordinator id: a restarted (or
        # paused-and-resumed, or misconfigured duplicate) process never renews, raises or
        # serves another incarnation's grant; a restart waits for the old grant to expire.
        self.holder = f"coordinator-{coordinator_id}#{rng.getrandbits(32):08x}"
        windows = dict(DEFAULT_WINDOWS, **(windows or {}))
        if unsafe_holder_pause is None:
            unsafe_holder_pause = os.environ.get(UNSAFE_HOLDER_PAUSE_ENV, "") not in ("", "0")
        self.unsafe_holder_pause = unsafe_holder_pause
        if unsafe_holder_pause:
            log.warning("%s is set: grant-holder pause protections are OFF (test only)",
                        UNSAFE_HOLDER_PAUSE_ENV)
        self.sub = Subscription(meta, staleness_window, keepalive_ms=keepalive_ms,
                                rng=random.Random(rng.random()))
        self.sub.unsafe = unsafe_holder_pause
        self.confirmer = ConfirmBatcher(meta)
        self.grants = GrantLoop(meta, self.sub, self.holder, grant_ttl, duties, windows,
                                usage_of=self._usage_of, rng=random.Random(rng.random()),
                                clock=clock, monotonic=not unsafe_holder_pause)
        self.ids = Allocator(AllocatorKind.ID, self.grants, self.sub, windows[Duty.ALLOC_ID])
        self.tso = Allocator(AllocatorKind.TSO, self.grants, self.sub, windows[Duty.TSO])
        self.stores = StoreTracker(store_ttl)
        # a stale replica root no longer lists is tombstoned only when nothing is pending on
        # its region (a planned removal that has not applied yet keeps it)
        self.stores.is_pending = lambda rid: self.sub.state.pending_for_region(rid) is not None
        self.stores.record_orphan = self._record_orphan
        self._orphans_in_flight: set[tuple[int, int]] = set()
        self.transitions = Transitions(self)
        self.scheduler = Scheduler(self, scheduler,
                                   unsafe_drain=os.environ.get("NOKV_UNSAFE_DRAIN") == "1")
        self.counters: Counter[str] = Counter()
        self.started_at = 0.0
        self.bootstrap_state = "waiting"
        self._bootstrap_lock = trio.Lock()
        self._bootstrap_kick = trio.Event()
        self.membership = StoreMembershipService(self)
        self.stopped = trio.Event()

    # ---- lifecycle ---------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.confirmer.run)
            await nursery.start(self.sub.run, self.confirmer.confirm)
            await nursery.start(self.grants.run)
            nursery.start_soon(self._drift_loop)
            nursery.start_soon(self._bootstrap_loop)
            self._nursery = nursery
            task_status.started(self)

    def _record_orphan(self, sid: int, rid: int, seconds: float, reports: int) -> None:
        """Record in root that store `sid`'s replica of region `rid`, in no rooted entry for
        `seconds` over `reports` heartbeats, is to be removed; the store is told to tombstone
        it only once this is rooted (coordinator.stores: `_orphan_gate`)."""
        key = (sid, rid)
        nursery = getattr(self, "_nursery", None)
        if key in self._orphans_in_flight or nursery is None:
            return
        self._orphans_in_flight.add(key)

        async def record() -> None:
            try:
                ev = RootEvent(EventKind.RECOVERY_RECORDED, RecoveryRecord(
                    f"orphan:{rid}:store-{sid}", "orphan_region_removed",
                    f"store {sid} reported region {rid}, which no rooted entry names, for "
                    f"{seconds:.1f}s over {reports} heartbeats with a fresh catalog",
                    undone=f"store {sid}'s replica of region {rid} (tombstoned)"))
                await self.append([ev])
                self.stores.orphans_recorded.add(key)
                self.counters["orphan_removals_recorded"] += 1
            except Exception as exc:  # noqa: BLE001 - retried on a later heartbeat
                self.counters["orphan_record_errors"] += 1
                log.warning("recording the removal of store %d's orphan region %d failed: "
                            "%s", sid, rid, exc)
            finally:
                self._orphans_in_flight.discard(key)

        nursery.start_soon(record)

    async def shutdown(self, timeout: float = 5.0) -> dict[str, str]:
        """Graceful stop: drain and seal every held grant (exact usages)."""
        out = await self.grants.seal_all(timeout)
        log.info("%s sealed grants: %s", self.holder, out)
        await failpoints.acheck("coordinator.after_seal")
        self.stopped.set()
        return out

    def register(self, server) -> None:
        server.register(GetRegionByKeyRequest, self.on_get_region_by_key)
        server.register(ScanRegionsRequest, self.on_scan_regions)
        server.register(PublishRootEventRequest, self.on_publish_root_event)
        server.register(AssessRootEventRequest, self.on_assess_root_event)
        server.register(ListTransitionsRequest, self.on_list_transitions)
        server.register(RemoveRegionRequest, self.on_remove_region)
        server.register(AllocIdRequest, self.on_alloc_id)
        server.register(TsoRequest, self.on_tso)
        server.register(StoreJoinRequest, self.membership.on_store_join)
        server.register(StoreHeartbeatRequest, self.on_store_heartbeat)
        server.register(ListStoresRequest, self.on_list_stores)
        server.register(DiagnosticsRequest, self.on_diagnostics)
        server.register(PauseCatchUpRequest, self.on_pause_catch_up)
        server.register(RetireStoreRequest, self.membership.on_retire_store)

    # ---- shared helpers ----------------------------------------------------------------

    def degraded_flags(self) -> list[str]:
        """Why this coordinator serves degraded: a duty neither held here nor by another
        coordinator under an active grant. A standby (another holds it) is not degraded: its
        witnesses say `served_by_leader=False` and the mode its view really is in."""
        return [f"no_grant:{d}" for d in self.grants.duties
                if not self.grants.holds(d) and not self.grants.standby_for(d)]

    def snapshot_view(self):
        return self.sub.snapshot(self.degraded_flags())

    async def sync_with_root(self, timeout: float) -> RootToken:
        """Confirm root's current token with the metaroot leader and wait until the served
        catalog (and mirror) incorporate it."""
        asked = trio.current_time()
        try:
            token = await self.confirmer.confirm()
        except Exception as exc:  # noqa: BLE001 - mapped to a stable refusal
            raise RemoteError(ErrorKind.UNAVAILABLE, "root_unavailable",
                              f"cannot confirm the root token with the metaroot leader: {exc}",
                              {"retry_class": RetryClass.RETRY.name}) from None
        self.sub.note_confirmed(token, asked)
        if not await self.sub.wait_served(token.index, timeout):
            raise RemoteError(ErrorKind.UNAVAILABLE, "catalog_behind",
                              f"catalog at {self.sub.served_token} has not reached {token}",
                              {"retry_class": RetryClass.RETRY.name})
        return token

    async def append(self, events: list[RootEvent], expected_cluster_epoch: int | None = None,
                      wait: float = WRITE_TIMEOUT):
        await failpoints.acheck("coordinator.before_root_append")
        reply = await self.meta.call(AppendRequest(events, expected_cluster_epoch),
                                     timeout=WRITE_TIMEOUT, leader=True)
        self.counters["root_appends"] += 1
        await failpoints.acheck("coordinator.after_root_append")  # appended, not yet answered
        if not await self.sub.wait_served(reply.last_token.index, wait):
            raise RemoteError(ErrorKind.UNAVAILABLE, "catalog_behind",
                              f"appended at {reply.last_token} but the served catalog is at "
                              f"{self.sub.served_token}; retry (the write is idempotent)",
                              {"retry_class": RetryClass.RETRY.name,
                               "token": reply.last_token})
        return reply

    def _store_addr(self, catalog, store_id: int) -> str:
        sv = catalog.store(store_id) if catalog is not None else None
        return self.stores.address_of(store_id, sv.address if sv is not None else "")

    # ---- route reads -------------------------------------------------------------------

    async def _strong_confirmation(self, ctx) -> RootToken | None:
        """One batched confirmation round (it starts after this call), then wait for the
        catalog to reach it."""
        asked = trio.current_time()
        try:
            token = await self.confirmer.confirm()
        except Exception:  # noqa: BLE001 - the read is refused (strong_not_confirmed)
            self.counters["strong_confirm_failures"] += 1
            return None
        self.sub.note_confirmed(token, asked)
        budget = 1.0
        if ctx is not None:
            budget = max(0.05, min(budget, ctx.remaining() - 0.05))
        deadline = trio.current_time() + budget
        await self.sub.wait_served(token.index, budget)
        # STRONG also needs lag 0: events that arrived after the round are waited for too
        while (self.sub.served_token.index < self.sub.current_token.index
               and trio.current_time() < deadline):
            await self.sub.wait_served(self.sub.current_token.index,
                                       deadline - trio.current_time())
        return token

    async def _route_gate(self, freshness: Freshness, ctx):
        """(holds_lookup_grant, confirmed token, admission to release) for a route read;
        STRONG takes a region_lookup duty admission and a confirmation round. The
        admission only opens the read: `_holds_at_answer` decides whether it is answered."""
        if freshness != Freshness.STRONG:
            return self.grants.holds(Duty.REGION_LOOKUP), None, None
        cm = self.grants.serving(Duty.REGION_LOOKUP)
        try:
            await cm.__aenter__()
        except GateRejected:
            return False, None, None
        try:
            return True, await self._strong_confirmation(ctx), cm
        except BaseException:
            await cm.__aexit__(None, None, None)
            raise

    def _holds_at_answer(self, freshness: Freshness, admitted: bool) -> bool:
        """Whether this coordinator holds region_lookup now, as the answer is decided. A
        STRONG read was admitted before its confirmation round; the round, the catalog wait or
        a stall of the whole process (SIGSTOP) may have outlived the grant meanwhile, and
        another coordinator may hold the duty by now: the grant is checked again here (wall
        and monotonic expiry, with the clock-skew margin: GrantLoop.admit)."""
        if freshness != Freshness.STRONG or not admitted or self.unsafe_holder_pause:
            return admitted
        try:
            self.grants.admit(Duty.REGION_LOOKUP)
        except GateRejected:
            self.counters["strong_grant_lost_before_answer"] += 1
            return False
        return True

    def _confirmed_for(self, rs, token: RootToken | None) -> RootToken | None:
        if token is None:
            return None
        # the view now reflects at least everything committed before the round started
        return rs.served_token if rs.served_token.index >= token.index else token

    def _reject(self, decision, what: str) -> RemoteError:
        self.counters[f"{what}_rejected.{decision.reason}"] += 1
        return RemoteError(ErrorKind.REJECTED, decision.reason, decision.detail, {
            "witness": decision.witness,
            "retry_class": decision.retry.retry_class.name,
            "try_another_coordinator": decision.retry.try_another_coordinator,
        })

    async def on_get_region_by_key(self, req: GetRegionByKeyRequest, ctx) -> RouteReply:
        self.counters[f"route_reads.{Freshness(req.freshness).name.lower()}"
                      if isinstance(req.freshness, Freshness) else "route_reads.invalid"] += 1
        holds, token, cm = await self._route_gate(req.freshness, ctx)
        try:
            holds = self._holds_at_answer(req.freshness, holds)
            catalog, rs, _ = self.snapshot_view()
            decision = decide_route_read(
                RouteRequest(req.key, req.freshness, req.required_root_token, req.max_root_lag,
                             req.required_descriptor_revision),
                rs, holds, self._confirmed_for(rs, token), catalog, self.coordinator_id)
        finally:
            if cm is not None:
                await cm.__aexit__(None, None, None)
        if not decision.served:
            raise self._reject(decision, "route")
        witness = self._with_evidence(req.freshness, decision.witness)
        d = decision.descriptor
        if d is None:
            return RouteReply(None, witness, 0, {})
        now = trio.current_time()
        addrs = {p.store_id: self._store_addr(catalog, p.store_id) for p in d.peers}
        return RouteReply(d, witness, self.stores.leader_of(d.region_id, now),
                          {k: v for k, v in addrs.items() if v})

    def _with_evidence(self, freshness: Any, witness: Any) -> Any:
        """A STRONG answer carries this holder's region_lookup grant as metaroot signed it
        (clients check it: nokvpy.grantsig.verify)."""
        if freshness != Freshness.STRONG:
            return witness
        ev = self.grants.evidence(Duty.REGION_LOOKUP)
        return witness if ev is None else replace(witness, grant_evidence=ev)

    async def on_scan_regions(self, req: ScanRegionsRequest, ctx) -> ScanRegionsReply:
        self.counters["scan_reads"] += 1
        holds, token, cm = await self._route_gate(req.freshness, ctx)
        try:
            holds = self._holds_at_answer(req.freshness, holds)
            catalog, rs, _ = self.snapshot_view()
            decision = decide_scan_regions(
                ScanRequest(req.start_key, req.end_key, req.limit, req.freshness,
                            req.required_root_token, req.max_root_lag),
                rs, holds, self._confirmed_for(rs, token), catalog, self.coordinator_id)
        finally:
            if cm is not None:
                await cm.__aexit__(None, None, None)
        if not decision.served:
            raise self._reject(decision, "scan")
        now = trio.current_time()
        leaders = {d.region_id: lead for d in decision.regions
                   if (lead := self.stores.leader_of(d.region_id, now))}
        return ScanRegionsReply(list(decision.regions),
                                self._with_evidence(req.freshness, decision.witness), leaders)

    # ---- transitions (coordinator.transitions) ----------------------------------------

    async def on_assess_root_event(self, req: AssessRootEventRequest, ctx) -> AssessRootEventReply:
        return self.transitions.on_assess(req)

    async def on_publish_root_event(self, req: PublishRootEventRequest,
                                    ctx) -> PublishRootEventReply:
        return await self.transitions.on_publish(req)

    async def on_list_transitions(self, req: ListTransitionsRequest,
                                  ctx) -> ListTransitionsReply:
        return self.transitions.on_list(req)

    async def on_remove_region(self, req: RemoveRegionRequest, ctx) -> RemoveRegionReply:
        return await self.transitions.on_remove(req)

    # ---- duties ------------------------------------------------------------------------

    async def on_alloc_id(self, req: AllocIdRequest, ctx) -> AllocIdReply:
        count = req.count or 1
        try:
            first, era = await self.ids.allocate(count)
        except GateRejected as exc:
            raise exc.remote() from None
        self.counters["alloc_id"] += 1
        return AllocIdReply(first, count, era)

    async def on_tso(self, req: TsoRequest, ctx) -> TsoReply:
        count = req.count or 1
        try:
            first, era = await self.tso.allocate(count)
        except GateRejected as exc:
            raise exc.remote() from None
        self.counters["tso"] += 1
        return TsoReply(first, count, era)

    def _usage_of(self, duty: Duty, grant) -> int | None:
        """Exact usage of `grant` for its seal (None = unknown: seal the full bound)."""
        if duty == Duty.REGION_LOOKUP:
            catalog = self.sub.catalog
            return catalog.max_revision if catalog is not None else None
        alloc = self.ids if duty == Duty.ALLOC_ID else self.tso
        if alloc.era == grant.era:
            return alloc.consumed_frontier()
        st = self.grants.states[duty]
        before = self.sub.fence_before_grant.get(grant.grant_id)
        if st.acquired_issued and st.acquired_era == grant.era and before is not None:
            return before[0] if duty == Duty.ALLOC_ID else before[1]  # nothing served
        return None

    # ---- stores (joins and retirements: coordinator.membership) ------------------------

    def kick_bootstrap(self) -> None:
        """Wake the bootstrap loop (a store joined: the first region may now be placed)."""
        self._bootstrap_kick.set()


    async def on_store_heartbeat(self, req: StoreHeartbeatRequest, ctx) -> StoreHeartbeatReply:
        catalog, rs, _ = self.snapshot_view()
        if catalog is None:
            raise RemoteError(ErrorKind.UNAVAILABLE, "no_catalog",
                              "the coordinator has no rooted view yet",
                              {"retry_class": RetryClass.RETRY.name})
        sv = catalog.store(req.store_id)
        if sv is None:
            self.counters["heartbeats_refused.unknown_store"] += 1
            raise RemoteError(ErrorKind.REJECTED, "unknown_store",
                              f"store {req.store_id} has not joined (root {rs.served_token})",
                              {"retry_class": RetryClass.REFRESH.name})
        if sv.state == StoreState.RETIRED:
            self.counters["heartbeats_refused.store_retired"] += 1
            raise RemoteError(ErrorKind.REJECTED, "store_retired",
                              f"store {req.store_id} is retired",
                              {"retry_class": RetryClass.PERMANENT.name})
        trust = rs.catch_up_state not in _UNTRUSTED
        fresh = rs.root_lag == 0 and rs.catch_up_state == CatchUpState.FRESH
        now = trio.current_time()
        out = self.stores.on_heartbeat(req, catalog, trust, fresh, now)
        addrs = {s.store_id: self.stores.address_of(s.store_id, s.address)
                 for s in catalog.stores().values() if s.state != StoreState.RETIRED}
        ops = self.scheduler.operations_for(req.store_id, catalog, now) if fresh else []
        return StoreHeartbeatReply(True, out.should_host, out.tombstoned, ops, addrs,
                                   rs.served_token, tuple(out.stale_region_ids),
                                   self.sub.state.cluster_epoch)

    async def on_list_stores(self, req: ListStoresRequest, ctx) -> ListStoresReply:
        catalog = self.sub.catalog
        now = trio.current_time()
        stores = []
        if catalog is not None:
            for sid, sv in sorted(catalog.stores().items()):
                stores.append(self.stores.store_info(sid, sv.address,
                                                     sv.state == StoreState.RETIRED, now))
        return ListStoresReply(stores)

    # ---- bootstrap ---------------------------------------------------------------------

    async def _bootstrap_loop(self) -> None:
        while True:
            with trio.move_on_after(BOOTSTRAP_INTERVAL):
                await self._bootstrap_kick.wait()
            self._bootstrap_kick = trio.Event()
            try:
                await self.maybe_bootstrap()
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - retried on the next kick / interval
                self.bootstrap_state = f"error: {type(exc).__name__}: {exc}"[:200]
                self.counters["bootstrap_errors"] += 1

    def _needs_bootstrap(self) -> bool:
        state = self.sub.state
        return (self.sub.catalog is not None and state.cluster_epoch == 0
                and len(state.descriptors) == 0)

    async def maybe_bootstrap(self) -> bool:
        """Create the first region [b"", b"") on the first `replication` live stores, once:
        only the alloc_id holder does it, only while root has never seen a region, with the
        request id "bootstrap:first-region"."""
        if not self._needs_bootstrap():
            if self.sub.catalog is not None and self.sub.state.cluster_epoch > 0:
                self.bootstrap_state = "done"
            return False
        live = self.sub.state.live_store_ids()
        if len(live) < self.replication:
            self.bootstrap_state = f"waiting: {len(live)}/{self.replication} stores joined"
            return False
        if not self.grants.holds(Duty.ALLOC_ID):
            self.bootstrap_state = "waiting: alloc_id grant"
            return False
        async with self._bootstrap_lock:
            await self.sync_with_root(WRITE_TIMEOUT)
            if not self._needs_bootstrap():
                return False
            live = self.sub.state.live_store_ids()[: self.replication]
            first, _ = await self.ids.allocate(1 + len(live))
            peers = tuple(PeerMeta(sid, first + 1 + i) for i, sid in enumerate(live))
            d = RegionDescriptor(first, b"", b"", RegionEpoch(1, 1), peers)
            event = RootEvent(EventKind.REGION_BOOTSTRAP, RegionUpsert(d), BOOTSTRAP_REQUEST_ID)
            try:
                reply = await self.append([event])
            except RemoteError as exc:
                if exc.reason in ("request_id_mismatch", "range_overlap", "region_exists"):
                    self.bootstrap_state = f"done elsewhere ({exc.reason})"
                    return False
                raise
            self.bootstrap_state = "done" if not reply.duplicate else "done (duplicate)"
            self.counters["bootstraps"] += 0 if reply.duplicate else 1
            log.info("bootstrapped region %d on stores %s at %s", first, live, reply.last_token)
            return not reply.duplicate

    # ---- background --------------------------------------------------------------------

    async def _drift_loop(self) -> None:
        while True:
            await trio.sleep(DRIFT_INTERVAL)
            catalog, rs, _ = self.snapshot_view()
            if catalog is None:
                continue
            fresh = rs.root_lag == 0 and rs.catch_up_state == CatchUpState.FRESH
            self.stores.recompute(catalog, rs.catch_up_state not in _UNTRUSTED, fresh,
                                  trio.current_time())
            if fresh and self.grants.holds(Duty.REGION_LOOKUP):
                try:
                    await self.membership.finish_retirements()
                except Exception as exc:  # noqa: BLE001 - tried again on the next scan
                    self.counters["retire_errors"] += 1
                    log.warning("finishing store retirements failed: %s", exc)

    # ---- diagnostics -------------------------------------------------------------------

    async def on_diagnostics(self, req: DiagnosticsRequest, ctx) -> DiagnosticsReply:
        body = diagnostics.build(self)
        body["scheduler"] = self.scheduler.status(trio.current_time())
        return DiagnosticsReply(body)

    async def on_pause_catch_up(self, req: PauseCatchUpRequest, ctx) -> DiagnosticsReply:
        self.sub.set_paused(bool(req.paused))
        self.counters["pause_requests"] += 1
        return DiagnosticsReply(diagnostics.build(self))
