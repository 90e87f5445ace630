"""Store and region heartbeats: liveness, region leaders, and drift against rooted truth.

Owns: what stores last reported (address, restart state, outbox backlog, the regions they
host with epoch and leadership), store liveness (UP while heartbeats arrive within the TTL,
then DOWN; UNKNOWN if never heard; RETIRED from rooted membership), the current leader of each
region (the most recent claim wins; a store's claims it no longer makes are cleared), the
stale-heartbeat refusal (a region report whose epoch is older than the catalog's is not
recorded; only its leader claim counts, when it is the base of a peer change pending on the
region: the catalog shows the change's target before the leader applies it), drift detection (DESIGN 7), and `scheduler_ready` (most catalog regions reported
again since this coordinator started: PD's rule of not acting on an unconfirmed catalog).

Drift kinds, per (store, region):
  store_ahead_of_root  the store's epoch is newer than the catalog's in some component
  store_behind_root    the store's epoch is older (the report itself is stale_heartbeat)
  stale_heartbeat      a refused region report (older epoch than the catalog)
  orphan_peer          the store hosts a peer the catalog does not list (region gone, peer
                       removed, or a different peer id; an older peer id than the one the
                       catalog lists on that store is tombstoned: peer ids only grow, so it
                       was removed and the region added a replica there again)
  missing_peer         the catalog lists a peer on this store that the store did not report
A replica of a region in no rooted entry (`orphan_peer`, "region is not in rooted truth") is
not dropped on one observation: it is kept (data and all) until it was reported so for
`orphan_grace` seconds over ORPHAN_REPORTS heartbeats in a row and its removal is recorded in
root (a RecoveryRecord `orphan_region_removed`, appended by the service); only then is the
store told to tombstone it (`_orphan_gate`).
Drift is computed passively on every heartbeat, actively by `recompute` on a timer, and for
the regions of an assessed transition by `drift_for_regions`.

Never: writes rooted truth, decides scheduling, or reads a wall clock (trio time is passed in).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from coordinator.catalog import Catalog
from nokvpy.protocol.coordinator_rpc import RegionHeartbeat, StoreHeartbeatRequest, StoreInfo
from nokvpy.protocol.enums import StoreState
from nokvpy.protocol.records import RegionDescriptor, RegionEpoch

DEFAULT_STORE_TTL = 5.0
ORPHAN = "orphan"
ORPHAN_GRACE = 10.0  # seconds a rootless replica is kept before its removal is recorded
ORPHAN_REPORTS = 3

STORE_AHEAD = "store_ahead_of_root"
STORE_BEHIND = "store_behind_root"
STALE_HEARTBEAT = "stale_heartbeat"
ORPHAN_PEER = "orphan_peer"
MISSING_PEER = "missing_peer"


@dataclass(slots=True, frozen=True)
class Drift:
    kind: str
    store_id: int
    region_id: int
    detail: str = ""
    root_epoch: str = ""
    store_epoch: str = ""

    def plain(self) -> dict[str, Any]:
        return {"kind": self.kind, "store_id": self.store_id, "region_id": self.region_id,
                "detail": self.detail, "root_epoch": self.root_epoch,
                "store_epoch": self.store_epoch}


@dataclass
class StoreLive:
    store_id: int
    address: str = ""
    last_heartbeat: float | None = None
    restart_state: str = ""
    outbox_backlog: int = 0
    blocked_events: int = 0
    regions: dict[int, RegionHeartbeat] = field(default_factory=dict)
    # every region report of the last heartbeat, stale ones included (the scheduler judges
    # a pending transition by the epoch its leader reports, which is older than root's
    # planned target until it applies)
    observed: dict[int, RegionHeartbeat] = field(default_factory=dict)
    leader_regions: set[int] = field(default_factory=set)
    heartbeats: int = 0


@dataclass(slots=True)
class HeartbeatOutcome:
    should_host: list[RegionDescriptor]
    tombstoned: list[int]
    stale_region_ids: list[int]
    drift: list[Drift]


def _ep(e: RegionEpoch | None) -> str:
    return str(e) if e is not None else ""


class StoreTracker:
    def __init__(self, ttl: float = DEFAULT_STORE_TTL) -> None:
        self.ttl = ttl
        self.stores: dict[int, StoreLive] = {}
        self.leaders: dict[int, tuple[int, RegionEpoch, float]] = {}  # region -> claim
        self.drift: dict[int, list[Drift]] = {}  # store id -> its divergences
        self.reported_since_start: set[int] = set()
        self.scheduler_ready = False
        self.counters: Counter[str] = Counter()
        self._hosting: tuple[Catalog | None, dict[int, list[RegionDescriptor]]] = (None, {})
        self.is_pending: Any = None  # region id -> bool: a transition is pending on it
        # replicas of regions in no rooted entry: (store, region) -> [first seen, reports]
        self.orphans: dict[tuple[int, int], list] = {}
        self.orphan_grace = ORPHAN_GRACE
        self.orphans_recorded: set[tuple[int, int]] = set()
        # (store, region, seconds orphaned, reports) -> None: record the removal in root
        # (asynchronously; it adds the key to orphans_recorded once rooted)
        self.record_orphan: Any = None

    # ---- liveness ----------------------------------------------------------------------

    def state_of(self, store_id: int, now: float, retired: bool = False) -> StoreState:
        if retired:
            return StoreState.RETIRED
        live = self.stores.get(store_id)
        if live is None or live.last_heartbeat is None:
            return StoreState.UNKNOWN
        return StoreState.UP if now - live.last_heartbeat <= self.ttl else StoreState.DOWN

    def is_up(self, store_id: int, now: float) -> bool:
        return self.state_of(store_id, now) == StoreState.UP

    def leader_of(self, region_id: int, now: float) -> int:
        claim = self.leaders.get(region_id)
        if claim is None or not self.is_up(claim[0], now):
            return 0
        return claim[0]

    def address_of(self, store_id: int, rooted: str = "") -> str:
        live = self.stores.get(store_id)
        return (live.address if live is not None and live.address else "") or rooted

    # ---- heartbeats --------------------------------------------------------------------

    def on_heartbeat(self, req: StoreHeartbeatRequest, catalog: Catalog, trust_catalog: bool,
                     catalog_fresh: bool, now: float) -> HeartbeatOutcome:
        """Record one store heartbeat and compare it with the catalog.

        `trust_catalog`: the catalog may be used to tell the store what to host (not in
        BOOTSTRAP_REQUIRED / unavailable). `catalog_fresh`: lag 0, so a region the catalog
        does not know is really gone (a lagging catalog may just not know it yet)."""
        sid = req.store_id
        live = self.stores.setdefault(sid, StoreLive(sid))
        live.address = req.address or live.address
        live.last_heartbeat = now
        live.restart_state = req.restart_state
        live.outbox_backlog = req.outbox_backlog
        live.blocked_events = req.blocked_events
        live.heartbeats += 1
        live.observed = {rh.region_id: rh for rh in req.regions}
        self.counters["heartbeats"] += 1
        stale: list[int] = []
        tombstoned: list[int] = []
        drift: list[Drift] = []
        reported: dict[int, RegionHeartbeat] = {}
        claims: set[int] = set()
        for rh in req.regions:
            self.counters["region_heartbeats"] += 1
            d = catalog.get(rh.region_id)
            kind = self._compare(sid, rh, d, catalog_fresh, drift)
            if kind == STALE_HEARTBEAT:
                stale.append(rh.region_id)
                self.counters["stale_heartbeats"] += 1
                if rh.is_leader and self._executing_peer_change(rh, d):
                    # the catalog shows a planned peer change's target; the leader executing
                    # it still reports the base epoch until it applies: it is the leader
                    # (routes need it), though its report is not recorded as the region's
                    claims.add(rh.region_id)
                    self.leaders[rh.region_id] = (sid, rh.epoch, now)
                    self.counters["pending_change_leader_claims"] += 1
                continue
            if kind == ORPHAN:
                kind = self._orphan_gate(sid, rh.region_id, now)
            else:
                self.orphans.pop((sid, rh.region_id), None)
            if kind == "tombstone":
                tombstoned.append(rh.region_id)
                continue
            reported[rh.region_id] = rh
            self.reported_since_start.add(rh.region_id)
            if rh.is_leader:
                claims.add(rh.region_id)
                self.leaders[rh.region_id] = (sid, rh.epoch, now)
        reported_now = {rh.region_id for rh in req.regions}
        for key in [k for k in self.orphans if k[0] == sid and k[1] not in reported_now]:
            del self.orphans[key]  # no longer reported: a later orphan starts over
            self.orphans_recorded.discard(key)
        for rid in live.leader_regions - claims:
            claim = self.leaders.get(rid)
            if claim is not None and claim[0] == sid:
                del self.leaders[rid]
        live.leader_regions = claims
        live.regions = reported
        should_host: list[RegionDescriptor] = []
        if trust_catalog:
            reported_ids = {rh.region_id for rh in req.regions}
            for d in self._hosted_by(catalog).get(sid, ()):
                if d.region_id not in reported_ids:
                    should_host.append(d)
                    drift.append(Drift(MISSING_PEER, sid, d.region_id,
                                       "catalog lists a peer the store did not report",
                                       _ep(d.epoch)))
        self.drift[sid] = drift
        self._update_ready(catalog)
        return HeartbeatOutcome(should_host, tombstoned, stale, drift)

    def _orphan_gate(self, sid: int, rid: int, now: float) -> str:
        """A replica of a region in no rooted entry is deleted only on proof, never on one
        observation: it must be reported so for `orphan_grace` seconds and at least
        ORPHAN_REPORTS heartbeats in a row (each time with a fresh catalog and nothing
        pending on the region), and the removal must first be recorded in root
        (`record_orphan`, a RecoveryRecord appended by the service; recorded at once when no
        recorder is set). Until then it is kept: it keeps its data and is reported as drift.
        Returns "tombstone" or "" (keep)."""
        key = (sid, rid)
        seen = self.orphans.setdefault(key, [now, 0])
        seen[1] += 1
        if now - seen[0] < self.orphan_grace or seen[1] < ORPHAN_REPORTS:
            self.counters["orphans_waiting"] += 1
            return ""
        if key not in self.orphans_recorded:
            if self.record_orphan is None:
                self.orphans_recorded.add(key)
            else:
                self.counters["orphans_recording"] += 1
                self.record_orphan(sid, rid, now - seen[0], seen[1])
                return ""
        self.counters["orphans_removed"] += 1
        self.orphans.pop(key, None)
        self.orphans_recorded.discard(key)
        return "tombstone"

    def _executing_peer_change(self, rh: RegionHeartbeat, d: RegionDescriptor | None) -> bool:
        """Is `rh` (older than the catalog's `d`) the base of a peer change pending on the
        region: same range (version), older conf_ver, a transition pending?"""
        return (d is not None and rh.epoch.version == d.epoch.version
                and rh.epoch.conf_ver < d.epoch.conf_ver
                and self.is_pending is not None and bool(self.is_pending(rh.region_id)))

    def _compare(self, sid: int, rh: RegionHeartbeat, d: RegionDescriptor | None,
                 catalog_fresh: bool, drift: list[Drift]) -> str:
        """Classify one region report; appends its drift. Returns "" (recorded),
        STALE_HEARTBEAT (refused) or "tombstone" (the store should drop it)."""
        if d is None:
            if catalog_fresh and (self.is_pending is None or not self.is_pending(rh.region_id)):
                drift.append(Drift(ORPHAN_PEER, sid, rh.region_id,
                                   "region is not in rooted truth", "", _ep(rh.epoch)))
                return ORPHAN
            # (a merge source while its merge is pending is in no catalog entry: kept)
            return ""
        listed = d.peer_on(sid)
        if listed is not None and 0 < rh.peer_id < listed.peer_id:
            drift.append(Drift(ORPHAN_PEER, sid, rh.region_id,
                               f"store hosts peer {rh.peer_id}, root lists the later peer "
                               f"{listed.peer_id} there: the older one was removed",
                               _ep(d.epoch), _ep(rh.epoch)))
            return "tombstone"
        if rh.epoch.is_stale_against(d.epoch):
            drift.append(Drift(STALE_HEARTBEAT, sid, rh.region_id,
                               "region heartbeat epoch older than the catalog's",
                               _ep(d.epoch), _ep(rh.epoch)))
            drift.append(Drift(STORE_BEHIND, sid, rh.region_id, "store has not applied "
                               "the rooted epoch yet", _ep(d.epoch), _ep(rh.epoch)))
            if d.peer_on(sid) is None and catalog_fresh and self.is_pending is not None \
                    and not self.is_pending(rh.region_id):
                # a replica removed in root that missed its own removal: nothing pending can
                # bring it back, so it is tombstoned
                drift.append(Drift(ORPHAN_PEER, sid, rh.region_id, "stale replica of a region "
                                   "that no longer lists this store", _ep(d.epoch),
                                   _ep(rh.epoch)))
                return "tombstone"
            return STALE_HEARTBEAT
        ahead = d.epoch.is_stale_against(rh.epoch)
        if ahead:
            drift.append(Drift(STORE_AHEAD, sid, rh.region_id, "store applied a change root "
                               "has not published", _ep(d.epoch), _ep(rh.epoch)))
        peer = d.peer_on(sid)
        if peer is None:
            drift.append(Drift(ORPHAN_PEER, sid, rh.region_id, "catalog lists no peer of "
                               "this region on the store", _ep(d.epoch), _ep(rh.epoch)))
            if not ahead and catalog_fresh and (self.is_pending is None
                                                or not self.is_pending(rh.region_id)):
                return "tombstone"
        elif rh.peer_id and peer.peer_id != rh.peer_id:
            drift.append(Drift(ORPHAN_PEER, sid, rh.region_id,
                               f"store hosts peer {rh.peer_id}, root lists {peer.peer_id}",
                               _ep(d.epoch), _ep(rh.epoch)))
        return ""

    def _hosted_by(self, catalog: Catalog) -> dict[int, list[RegionDescriptor]]:
        cached_for, index = self._hosting
        if cached_for is catalog:
            return index
        index = {}
        for d in catalog.regions():
            for p in d.peers:
                index.setdefault(p.store_id, []).append(d)
        self._hosting = (catalog, index)
        return index

    def _update_ready(self, catalog: Catalog) -> None:
        if self.scheduler_ready:
            return
        n = len(catalog)
        seen = sum(1 for d in catalog.regions() if d.region_id in self.reported_since_start)
        if n > 0 and seen * 2 > n:
            self.scheduler_ready = True

    def readiness(self, catalog: Catalog | None) -> dict[str, Any]:
        n = len(catalog) if catalog is not None else 0
        seen = sum(1 for d in catalog.regions() if d.region_id in self.reported_since_start) \
            if catalog is not None and not self.scheduler_ready else n
        return {"scheduler_ready": self.scheduler_ready, "regions": n, "reported": seen}

    # ---- active drift ------------------------------------------------------------------

    def recompute(self, catalog: Catalog, trust_catalog: bool, catalog_fresh: bool,
                  now: float) -> list[Drift]:
        """Re-derive every store's drift from its last report against `catalog`."""
        self.counters["drift_scans"] += 1
        hosted = self._hosted_by(catalog) if trust_catalog else {}
        for sid, live in self.stores.items():
            if live.last_heartbeat is None:
                continue
            drift: list[Drift] = []
            for rh in live.regions.values():
                self._compare(sid, rh, catalog.get(rh.region_id), catalog_fresh, drift)
            for d in hosted.get(sid, ()):
                if d.region_id not in live.regions:
                    drift.append(Drift(MISSING_PEER, sid, d.region_id,
                                       "catalog lists a peer the store did not report"
                                       + ("" if self.is_up(sid, now) else " (store down)"),
                                       _ep(d.epoch)))
            self.drift[sid] = drift
        self._update_ready(catalog)
        return self.all_drift()

    def drift_for_regions(self, region_ids: set[int], catalog: Catalog,
                          catalog_fresh: bool) -> list[Drift]:
        out: list[Drift] = []
        for sid, live in sorted(self.stores.items()):
            for rid in sorted(region_ids):
                rh = live.regions.get(rid)
                d = catalog.get(rid)
                if rh is not None:
                    self._compare(sid, rh, d, catalog_fresh, out)
                elif d is not None and d.peer_on(sid) is not None and live.last_heartbeat:
                    out.append(Drift(MISSING_PEER, sid, rid, "catalog lists a peer the store "
                                     "did not report", _ep(d.epoch)))
        self.counters["drift_assessments"] += 1
        return out

    def all_drift(self) -> list[Drift]:
        return [d for sid in sorted(self.drift) for d in self.drift[sid]]

    # ---- listing -----------------------------------------------------------------------

    def store_info(self, store_id: int, rooted_address: str, retired: bool,
                   now: float) -> StoreInfo:
        live = self.stores.get(store_id)
        age = int((now - live.last_heartbeat) * 1000) if live and live.last_heartbeat else -1
        return StoreInfo(
            store_id=store_id,
            address=self.address_of(store_id, rooted_address),
            state=self.state_of(store_id, now, retired),
            last_heartbeat_age_ms=age,
            region_count=len(live.regions) if live else 0,
            leader_count=len(live.leader_regions) if live else 0,
            restart_state=live.restart_state if live else "",
        )
