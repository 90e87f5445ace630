"""The coordinator's scheduler: what region leaders should do next (DESIGN 4.6, 7; PD-like).

Owns: deciding scheduling operations from the rooted view plus live heartbeats, and handing
each one to the store leading its region in that store's next heartbeat reply:

- stuck transitions: a transition pending in root whose region leader does not report
  executing it, for longer than `stuck_after`, is handed to that leader as `drive_forward`
  when the leader's observed epoch already shows the target (it applied: publish the
  terminal), else as `compensate` (the leader fences its log and decides: it never cancels
  what it applied). Decided from the leader's reported epoch, never from a failure report;
- replica repair: a region with a replica on a store DOWN for longer than `repair_after`
  gets a peer added on a live store that has none (least loaded first), then the dead
  replica removed (only once enough live replicas exist: never below the replication);
- draining (store retirement): a store with a rooted drain record (`drain_record_id`, a
  RecoveryRecord `store_draining` the RetireStore RPC appends) and not yet retired is left
  like a DOWN store: each region with a replica on it gets a peer added on a live store that
  has none (least loaded first), then its replica removed (only while every other replica
  is on an UP store and enough of them are voters: never below the replication; the leader
  hands its leadership over first). A draining store never receives a replica (repair,
  replica count). Runs even when `repair_after` is 0 (an operator asked for it);
- replica count: a region with every replica on a live store but fewer (more) peers than
  the replication for longer than `replica_after` (a removal with no re-add, a move cut
  short by a fault) gets a peer added on the least loaded live store lacking one (the
  replica on the most loaded store other than the leader's removed);
- size split: a region whose leader reports more than `split_keys` keys is split at its
  median key (the leader picks it); off when 0;
- cold merge: two adjacent regions with the same stores, both under `merge_keys` keys and
  without writes for `merge_cold_heartbeats` leader heartbeats, are merged; off when 0.

Rules: nothing before `scheduler_ready` (most regions re-reported since this coordinator
started) and nothing without the `region_lookup` grant (the scheduling duty); one operation
per region at a time; completion is judged from the catalog and heartbeats (level-
triggered): an operation whose region changed is done, one unchanged after `op_timeout`
may be issued again. Also owns `cancel_refusal`: a cancel event is refused when a store
reports a region at the transition's target epoch (DESIGN 7: a false failure signal cannot
cancel what a leader applied).

Never: writes root, talks to stores (replies carry the operations), or reads a wall clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from nokvpy.protocol.coordinator_rpc import RegionHeartbeat, SchedulerOperation
from nokvpy.protocol.enums import (
    AssessmentDecision,
    Duty,
    EventKind,
    StoreState,
    TransitionKind,
)
from nokvpy.protocol.records import RegionDescriptor, RegionEpoch

DRAIN_PREFIX = "store-retire:"  # the transition id of a store's drain record
DRAIN_ACTION = "store_draining"  # the action of a store's drain record


def drain_record_id(store_id: int) -> str:
    """The id under which a store's drain record is rooted (a RecoveryRecord)."""
    return f"{DRAIN_PREFIX}{store_id}"


def draining_store_ids(state: Any) -> set[int]:
    """Stores being retired: a rooted drain record, not retired yet (pure; `state` is a
    RootState or anything with its `stores` and `recovery_index`)."""
    out = set()
    for rec in state.stores.values():
        if rec.retired:
            continue
        entries = state.recovery_index.get(drain_record_id(rec.store_id), ())
        if any(action == DRAIN_ACTION for action, _ in entries):
            out.add(rec.store_id)
    return out


CANCEL_KINDS = (EventKind.SPLIT_CANCELLED, EventKind.MERGE_CANCELLED,
                EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_REMOVAL_CANCELLED)


@dataclass(slots=True)
class SchedulerConfig:
    split_keys: int = 0  # split a region whose leader reports more keys than this (0: off)
    merge_keys: int = 0  # merge cold adjacent regions both under this many keys (0: off)
    merge_cold_heartbeats: int = 5
    repair_after: float = 30.0  # move replicas off a store DOWN this long (0: off)
    replica_after: float = 30.0  # restore the replication of a region short/over this long
    stuck_after: float = 15.0  # a pending transition without progress this long is stuck
    op_timeout: float = 10.0  # an operation not reflected by then may be issued again
    refresh: float = 0.5  # recompute the plan at most this often

    @classmethod
    def parse(cls, text: str | None) -> SchedulerConfig:
        """"split_keys=1000,repair_after=5" (unknown keys raise ValueError)."""
        cfg = cls()
        if not text:
            return cfg
        types = {f.name: f.type for f in fields(cls)}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in types:
                raise ValueError(f"unknown scheduler option {key!r} (have {sorted(types)})")
            setattr(cfg, key, float(value) if types[key] == "float" else int(value))
        return cfg


@dataclass(slots=True)
class InFlight:
    op: SchedulerOperation
    store_id: int
    issued_at: float
    epoch: RegionEpoch | None  # the catalog epoch of the region when issued
    delivered: bool = False


def target_applied(kind: TransitionKind, targets: tuple[RegionDescriptor, ...],
                   key_region: int, epoch: RegionEpoch) -> bool:
    """Does a leader reporting `epoch` for `key_region` show the transition applied? (pure)"""
    t = next((d for d in targets if d.region_id == key_region), None)
    if t is None:
        return False
    if kind in (TransitionKind.SPLIT, TransitionKind.MERGE):
        return epoch.version >= t.epoch.version
    return epoch.conf_ver >= t.epoch.conf_ver


def key_region(kind: TransitionKind, targets: tuple[RegionDescriptor, ...],
               bases: tuple[RegionDescriptor, ...], tid: str) -> int:
    if kind == TransitionKind.SPLIT:
        return bases[0].region_id
    if kind == TransitionKind.MERGE:
        return targets[0].region_id
    return int(tid.split(":")[1])


class Scheduler:
    def __init__(self, svc: Any, config: SchedulerConfig | None = None, *,
                 unsafe_drain: bool = False):
        self.svc = svc
        self.config = config or SchedulerConfig()
        # TEST-ONLY (NOKV_UNSAFE_DRAIN=1 in a coordinator's environment; never set it
        # elsewhere): a draining replica is removed without checking that the region's other
        # replicas are up (tests/coordinator/test_scheduler_drain.py catches it).
        self.unsafe_drain = unsafe_drain
        self.inflight: dict[int, InFlight] = {}  # region id -> its one operation
        self.pending_seen: dict[str, float] = {}  # transition id -> last progress seen
        self.cold: Counter[int] = Counter()  # region id -> consecutive cold leader reports
        self.off_count: dict[int, float] = {}  # region id -> since when its peer count is off
        self.counters: Counter[str] = Counter()
        self.last_plan = -1e9
        self.history: list[dict[str, Any]] = []

    # ---- observations ----------------------------------------------------------------------

    def _observations(self, now: float) -> dict[int, tuple[int, RegionHeartbeat]]:
        """region id -> (store id, report) of the store claiming leadership most recently
        among UP stores."""
        best: dict[int, tuple[int, RegionHeartbeat, float]] = {}
        tracker = self.svc.stores
        for sid, live in tracker.stores.items():
            if not tracker.is_up(sid, now) or live.last_heartbeat is None:
                continue
            for rid, rh in getattr(live, "observed", {}).items():
                if not rh.is_leader:
                    continue
                cur = best.get(rid)
                if cur is None or (rh.epoch, live.last_heartbeat) > (cur[1].epoch, cur[2]):
                    best[rid] = (sid, rh, live.last_heartbeat)
        return {rid: (sid, rh) for rid, (sid, rh, _) in best.items()}

    def active(self) -> bool:
        return (self.svc.stores.scheduler_ready
                and self.svc.grants.holds(Duty.REGION_LOOKUP))

    # ---- the heartbeat hook ----------------------------------------------------------------

    def operations_for(self, store_id: int, catalog: Any, now: float) -> list[SchedulerOperation]:
        if catalog is None or not self.active():
            return []
        if now - self.last_plan >= self.config.refresh:
            self.last_plan = now
            try:
                self.plan(catalog, now)
            except Exception as exc:  # noqa: BLE001 - a planning bug must not fail heartbeats
                self.counters["plan_errors"] += 1
                self._log(now, "plan_error", 0, f"{type(exc).__name__}: {exc}")
        out = []
        for f in self.inflight.values():
            if f.store_id == store_id and not f.delivered:
                f.delivered = True
                out.append(f.op)
                self.counters[f"issued.{f.op.kind}"] += 1
        return out

    def _issue(self, rid: int, op: SchedulerOperation, store_id: int, now: float,
               epoch: RegionEpoch | None, why: str) -> None:
        self.inflight[rid] = InFlight(op, store_id, now, epoch)
        if op.other_region_id:
            self.inflight[op.other_region_id] = self.inflight[rid]
        self._log(now, op.kind, rid, f"to store {store_id}: {why}", op.transition_id)

    def _log(self, now: float, kind: str, rid: int, detail: str, tid: str = "") -> None:
        self.history.append({"at_ms": int(now * 1000), "op": kind, "region_id": rid,
                             "transition_id": tid, "detail": detail})
        del self.history[:-64]

    # ---- planning --------------------------------------------------------------------------

    def plan(self, catalog: Any, now: float) -> None:
        state = self.svc.sub.state
        obs = self._observations(now)
        self._retire_done(catalog, state, now)
        self._stuck(state, obs, now)
        busy = set(self.inflight) | set(state.pending_by_region.keys())
        draining = draining_store_ids(state)
        if self.config.repair_after > 0 or draining:
            self._repair(catalog, obs, busy, now, draining)
        if self.config.replica_after > 0:
            self._replica_count(catalog, obs, busy, now, draining)
        if self.config.split_keys > 0:
            self._split(catalog, obs, busy, now)
        if self.config.merge_keys > 0:
            self._merge(catalog, obs, busy, now)

    def _retire_done(self, catalog: Any, state: Any, now: float) -> None:
        for rid, f in list(self.inflight.items()):
            d = catalog.get(rid)
            tid = f.op.transition_id
            done = d is None or (f.epoch is not None and d.epoch != f.epoch)
            if tid:
                done = tid not in state.pending or now - f.issued_at > self.config.op_timeout
            elif now - f.issued_at > self.config.op_timeout:
                done = True
                self.counters["operations_timed_out"] += 1
            if done and self.inflight.get(rid) is f:
                del self.inflight[rid]
        for tid in list(self.pending_seen):
            if tid not in state.pending:
                del self.pending_seen[tid]

    def _stuck(self, state: Any, obs: dict, now: float) -> None:
        for p in state.pending_transitions():
            tid = p.transition_id
            rid = key_region(p.kind, p.targets, p.bases, tid)
            seen = self.pending_seen.setdefault(tid, now)
            leader = obs.get(rid)
            if leader is not None and leader[1].pending_transition == tid:
                self.pending_seen[tid] = now  # its executor reports progress
                continue
            if now - seen < self.config.stuck_after or rid in self.inflight or leader is None:
                continue
            sid, rh = leader
            applied = target_applied(p.kind, p.targets, rid, rh.epoch)
            kind = "drive_forward" if applied else "compensate"
            self.counters[f"stuck.{kind}"] += 1
            why = (f"pending since root index {p.source_token.index} without progress for "
                   f"{now - seen:.1f}s; leader (store {sid}) reports {rh.epoch}"
                   f" ({'target: applied' if applied else 'not the target: not applied'})")
            op = SchedulerOperation(kind, rid, transition_id=tid, reason=why)
            self._issue(rid, op, sid, now, None, why)

    def _down_stores(self, now: float) -> set[int]:
        tracker = self.svc.stores
        out = set()
        for sid, live in tracker.stores.items():
            if live.last_heartbeat is None:
                continue
            if tracker.state_of(sid, now) == StoreState.DOWN and \
                    now - live.last_heartbeat > self.config.repair_after:
                out.add(sid)
        return out

    def _repair(self, catalog: Any, obs: dict, busy: set[int], now: float,
                draining: set[int] | frozenset[int] = frozenset()) -> None:
        down = self._down_stores(now) if self.config.repair_after > 0 else set()
        leaving = down | set(draining)
        if not leaving:
            return
        tracker = self.svc.stores
        up = [sid for sid, sv in catalog.stores().items()
              if sv.state != StoreState.RETIRED and sid not in leaving
              and tracker.is_up(sid, now)]
        load = Counter()
        for d in catalog.regions():
            for q in d.peers:
                load[q.store_id] += 1
        for d in catalog.regions():
            rid = d.region_id
            dead = [q for q in d.peers if q.store_id in leaving]
            if not dead or rid in busy or rid not in obs:
                continue
            sid, rh = obs[rid]
            if rh.epoch != d.epoch:
                continue  # the leader has not caught up with root yet
            alive = [q for q in d.peers if q.store_id not in leaving]
            candidates = sorted((s for s in up if d.peer_on(s) is None),
                                key=lambda s: (load[s], s))
            # a replica on a down store goes first; a draining store's only while every
            # other replica is on an UP store (its removal must not cost a live quorum)
            dead.sort(key=lambda q: (q.store_id not in down, q.store_id))
            victim = dead[0]
            what = "down" if victim.store_id in down else "draining"
            safe = victim.store_id in down or self.unsafe_drain or (
                all(tracker.is_up(q.store_id, now) for q in alive)
                and sum(1 for q in alive if not q.learner) >= self.svc.replication)
            if len(alive) < self.svc.replication and candidates:
                target = candidates[0]
                load[target] += 1
                op = SchedulerOperation("add_peer", rid, store_id=target)
                self._issue(rid, op, sid, now, d.epoch, f"replica on {what} store(s) "
                            f"{sorted(q.store_id for q in dead)}: add one on store {target}")
            elif len(alive) >= self.svc.replication and safe:
                op = SchedulerOperation("remove_peer", rid, store_id=victim.store_id,
                                        peer_id=victim.peer_id)
                self._issue(rid, op, sid, now, d.epoch,
                            f"remove the replica on {what} store {victim.store_id}")
            elif len(alive) >= self.svc.replication:
                self.counters["drain_blocked"] += 1
                continue
            else:
                # no live store can take a replacement: never shrink below the replication
                self.counters["repair_blocked_no_store"] += 1
                continue
            busy.add(rid)

    def _replica_count(self, catalog: Any, obs: dict, busy: set[int], now: float,
                       draining: set[int] | frozenset[int] = frozenset()) -> None:
        """Level-triggered: a region whose peer count differs from the replication, all of
        its peers on UP stores and its leader at the catalog epoch, for `replica_after`
        seconds in a row, gets one peer added (removed)."""
        tracker = self.svc.stores
        want = self.svc.replication
        up = [sid for sid, sv in catalog.stores().items()
              if sv.state != StoreState.RETIRED and sid not in draining
              and tracker.is_up(sid, now)]
        load = Counter(q.store_id for d in catalog.regions() for q in d.peers)
        live_ids = set()
        for d in catalog.regions():
            rid = d.region_id
            live_ids.add(rid)
            off = len(d.peers) != want and all(tracker.is_up(q.store_id, now) for q in d.peers)
            if not off:
                self.off_count.pop(rid, None)
                continue
            since = self.off_count.setdefault(rid, now)
            if now - since < self.config.replica_after or rid in busy or rid not in obs:
                continue
            sid, rh = obs[rid]
            if rh.epoch != d.epoch:
                continue  # the leader has not caught up with root yet
            if len(d.peers) < want:
                candidates = sorted((s for s in up if d.peer_on(s) is None),
                                    key=lambda s: (load[s], s))
                if not candidates:
                    self.counters["replica_blocked_no_store"] += 1
                    continue
                target = candidates[0]
                load[target] += 1
                op = SchedulerOperation("add_peer", rid, store_id=target)
                why = (f"{len(d.peers)} peers < replication {want} for "
                       f"{now - since:.1f}s: add one on store {target}")
            else:
                others = [q for q in d.peers if q.store_id != sid]
                victim = max(others, key=lambda q: (q.store_id in draining, q.learner,
                                                    load[q.store_id], q.store_id))
                op = SchedulerOperation("remove_peer", rid, store_id=victim.store_id,
                                        peer_id=victim.peer_id)
                why = (f"{len(d.peers)} peers > replication {want} for {now - since:.1f}s: "
                       f"remove the one on store {victim.store_id}")
            self.counters[f"replica_count.{op.kind}"] += 1
            self.off_count.pop(rid, None)
            self._issue(rid, op, sid, now, d.epoch, why)
            busy.add(rid)
        for rid in list(self.off_count):
            if rid not in live_ids:
                del self.off_count[rid]

    def _split(self, catalog: Any, obs: dict, busy: set[int], now: float) -> None:
        for rid, (sid, rh) in sorted(obs.items()):
            d = catalog.get(rid)
            if d is None or rid in busy or rh.epoch != d.epoch:
                continue
            if rh.approx_keys > self.config.split_keys:
                op = SchedulerOperation("split", rid)
                self._issue(rid, op, sid, now, d.epoch,
                            f"{rh.approx_keys} keys > {self.config.split_keys}")
                busy.add(rid)

    def _merge(self, catalog: Any, obs: dict, busy: set[int], now: float) -> None:
        for rid, (_, rh) in obs.items():
            if rh.writes == 0 and rh.approx_keys < self.config.merge_keys:
                self.cold[rid] += 1
            else:
                self.cold[rid] = 0
        regions = sorted(catalog.regions(), key=lambda d: d.start_key)
        for a, b in zip(regions, regions[1:], strict=False):
            if a.region_id in busy or b.region_id in busy or a.end_key != b.start_key:
                continue
            if sorted(q.store_id for q in a.peers) != sorted(q.store_id for q in b.peers):
                continue
            if any(q.learner for q in (*a.peers, *b.peers)):
                continue
            need = self.config.merge_cold_heartbeats
            if self.cold[a.region_id] < need or self.cold[b.region_id] < need:
                continue
            oa, ob = obs.get(a.region_id), obs.get(b.region_id)
            if oa is None or ob is None or oa[1].epoch != a.epoch or ob[1].epoch != b.epoch:
                continue
            split_at = self.config.split_keys
            if split_at and oa[1].approx_keys + ob[1].approx_keys >= split_at:
                continue  # the merged region would be split again at once (no flapping)
            op = SchedulerOperation("merge", a.region_id, other_region_id=b.region_id)
            self._issue(a.region_id, op, oa[0], now, a.epoch,
                        f"cold adjacent regions {a.region_id}+{b.region_id}")
            busy.update((a.region_id, b.region_id))
            self.cold[a.region_id] = self.cold[b.region_id] = 0

    # ---- the cancel guard ------------------------------------------------------------------

    def cancel_refusal(self, event: Any, assessment: Any) -> str | None:
        """Why a cancel must be refused (a store reports the target applied), else None."""
        if getattr(event, "kind", None) not in CANCEL_KINDS or \
                getattr(assessment, "decision", None) != AssessmentDecision.APPLY:
            return None
        tid = assessment.transition_id
        p = self.svc.sub.state.pending.get(tid)
        if p is None:
            return None
        for sid, live in sorted(self.svc.stores.stores.items()):
            for t in p.targets:
                rh = getattr(live, "observed", {}).get(t.region_id)
                if rh is None:
                    continue
                if target_applied(p.kind, p.targets, t.region_id, rh.epoch) and (
                        p.kind != TransitionKind.SPLIT or t.region_id != p.bases[0].region_id
                        or rh.epoch.version >= t.epoch.version):
                    self.counters["cancels_refused_applied"] += 1
                    return (f"{tid} cannot be cancelled: store {sid} reports region "
                            f"{t.region_id} at {rh.epoch}, the target epoch (it applied)")
        return None

    # ---- status ----------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return {
            "active": self.active(),
            "config": {f.name: str(getattr(self.config, f.name)) for f in fields(self.config)},
            "inflight": {str(rid): {"op": f.op.kind, "store_id": f.store_id,
                                    "transition_id": f.op.transition_id,
                                    "age_ms": int((now - f.issued_at) * 1000),
                                    "delivered": f.delivered}
                         for rid, f in sorted(self.inflight.items())},
            "down_stores": sorted(self._down_stores(now)),
            "draining_stores": sorted(draining_store_ids(self.svc.sub.state)),
            "counters": dict(sorted(self.counters.items())),
            "recent": list(self.history[-16:]),
        }
