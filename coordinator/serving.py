"""Freshness serving rules for route reads (DESIGN 4.4), pure.

Owns: the decision to serve or reject one `GetRegionByKey` / `ScanRegions` request given the
rooted view (ReadState + the Catalog it describes), whether this coordinator holds the
`region_lookup` grant, and whether the caller confirmed with the metaroot leader that no newer
rooted event exists; the witness attached to every answer; the stable rejection reasons.

Never: does I/O, reads a clock, serves a STRONG or BOUNDED request at a weaker class (no
silent downgrade), or labels stale service AUTHORITATIVE.

Rules, checked in this order (the first failing one is the reason):
  0. malformed request (negative bounds, non-bytes key, bad freshness) -> invalid_request
  1. no catalog -> unavailable (every class: there is nothing to serve)
  STRONG
  2. not the region_lookup grant holder -> not_grant_holder
  3. BOOTSTRAP_REQUIRED -> bootstrap_required; RECOVERING -> recovering
  4. metaroot not heard within the staleness window, or degraded_mode VIEW_ONLY /
     ROOT_UNAVAILABLE -> root_unavailable
  5. root_lag > 0 -> root_lag_exceeded
  6. strong_confirmed_token != served token -> strong_not_confirmed
  BOUNDED
  2. BOOTSTRAP_REQUIRED -> bootstrap_required; RECOVERING -> recovering
  3. metaroot not heard within the staleness window, or degraded_mode VIEW_ONLY /
     ROOT_UNAVAILABLE -> root_unavailable
  4. root_lag > (max_root_lag if given else DEFAULT_MAX_ROOT_LAG) -> root_lag_exceeded
  BEST_EFFORT: no state gate (served from whatever catalog exists, labelled); an explicit
  max_root_lag is still honoured (root_lag > max_root_lag -> root_lag_exceeded).
  Every class, then:
  7. served token < required_root_token -> required_root_token
  8. lookup; absent -> served with not_found
  9. region (any region, for a scan) is a target of a still-planned split/merge ->
     STRONG/BOUNDED: range_change_pending; BEST_EFFORT: served, `range_change_pending=True`
     and serving_class DEGRADED (never labelled settled truth)
 10. descriptor revision < required_descriptor_revision -> required_descriptor
Explicit request bounds (required_root_token, max_root_lag, required_descriptor_revision) are
hard for every class; the freshness class adds the state gates and the default lag bound.

Witness derivation (explicit; reference 2.3 made stricter):
  serving_class  DEGRADED       no catalog, state BOOTSTRAP_REQUIRED / RECOVERING /
                                UNAVAILABLE, metaroot not heard within the window, or
                                degraded_mode VIEW_ONLY / ROOT_UNAVAILABLE
                 AUTHORITATIVE  state FRESH (lag 0, a metaroot *leader* holding its quorum
                                confirmed within the window, no call failed since:
                                `root_reachable`); follower keepalives never qualify
                 BOUNDED_STALE  otherwise (lag > 0, or lag 0 not currently confirmed by a
                                leader: a view kept alive by followers only, issue 22)
                 A served STRONG answer is AUTHORITATIVE (lag 0, confirmed with the leader);
                 a BEST_EFFORT answer on a pending range change is DEGRADED.
  sync_health    ROOT_UNAVAILABLE (not heard within window, or no catalog) >
                 BOOTSTRAP_REQUIRED > LAGGING (lag > 0, LAGGING or RECOVERING) > HEALTHY
  served_freshness = the requested class (served answers are never downgraded)
  served_by_leader = holds the region_lookup grant
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.catalog import Catalog
from coordinator.rootview import ReadState
from nokvpy.protocol.enums import (
    CatchUpState,
    DegradedMode,
    Freshness,
    RetryClass,
    ServingClass,
    SyncHealth,
)
from nokvpy.protocol.records import RegionDescriptor, RootToken, RouteWitness

__all__ = [
    "DEFAULT_MAX_ROOT_LAG",
    "REASONS",
    "RETRY_HINTS",
    "RetryHint",
    "RouteDecision",
    "RouteRequest",
    "ScanDecision",
    "ScanRequest",
    "decide_route_read",
    "decide_scan_regions",
    "serving_class_of",
    "sync_health_of",
]

DEFAULT_MAX_ROOT_LAG = 16  # BOUNDED bound when the request gives none (rooted events)

NOT_GRANT_HOLDER = "not_grant_holder"
STRONG_NOT_CONFIRMED = "strong_not_confirmed"
ROOT_LAG_EXCEEDED = "root_lag_exceeded"
REQUIRED_ROOT_TOKEN = "required_root_token"
REQUIRED_DESCRIPTOR = "required_descriptor"
RANGE_CHANGE_PENDING = "range_change_pending"
BOOTSTRAP_REQUIRED = "bootstrap_required"
ROOT_UNAVAILABLE = "root_unavailable"
RECOVERING = "recovering"
UNAVAILABLE = "unavailable"
INVALID_REQUEST = "invalid_request"


@dataclass(slots=True, frozen=True)
class RetryHint:
    """What a client should do with a rejection: the retry class, and whether another
    coordinator (the grant holder, a fresher follower) may answer where this one cannot."""

    retry_class: RetryClass
    try_another_coordinator: bool = False


RETRY_HINTS: dict[str, RetryHint] = {
    NOT_GRANT_HOLDER: RetryHint(RetryClass.RETRY, True),
    STRONG_NOT_CONFIRMED: RetryHint(RetryClass.RETRY, False),
    ROOT_LAG_EXCEEDED: RetryHint(RetryClass.RETRY, True),
    REQUIRED_ROOT_TOKEN: RetryHint(RetryClass.RETRY, True),
    REQUIRED_DESCRIPTOR: RetryHint(RetryClass.RETRY, True),
    RANGE_CHANGE_PENDING: RetryHint(RetryClass.CONFLICT, False),
    BOOTSTRAP_REQUIRED: RetryHint(RetryClass.RETRY, True),
    ROOT_UNAVAILABLE: RetryHint(RetryClass.RETRY, True),
    RECOVERING: RetryHint(RetryClass.RETRY, True),
    UNAVAILABLE: RetryHint(RetryClass.RETRY, True),
    INVALID_REQUEST: RetryHint(RetryClass.PERMANENT, False),
}
REASONS = frozenset(RETRY_HINTS)
_SERVED_HINT = RetryHint(RetryClass.NONE, False)


@dataclass(slots=True, frozen=True)
class RouteRequest:
    key: bytes
    freshness: Freshness = Freshness.STRONG
    required_root_token: RootToken | None = None
    max_root_lag: int | None = None
    required_descriptor_revision: int | None = None


@dataclass(slots=True, frozen=True)
class ScanRequest:
    start_key: bytes = b""
    end_key: bytes = b""  # empty = +infinity
    limit: int = 0  # 0 = unlimited
    freshness: Freshness = Freshness.STRONG
    required_root_token: RootToken | None = None
    max_root_lag: int | None = None
    required_descriptor_revision: int | None = None  # lower bound for every returned region


@dataclass(slots=True, frozen=True)
class RouteDecision:
    """Served (`reason == ""`: descriptor, or not_found) or rejected (`reason` in REASONS).
    The witness is present either way so the caller can see why."""

    witness: RouteWitness
    descriptor: RegionDescriptor | None = None
    not_found: bool = False
    reason: str = ""
    detail: str = ""
    retry: RetryHint = _SERVED_HINT
    range_change_pending: bool = False  # BEST_EFFORT answer on a planned split/merge target

    @property
    def served(self) -> bool:
        return not self.reason


@dataclass(slots=True, frozen=True)
class ScanDecision:
    witness: RouteWitness
    regions: tuple[RegionDescriptor, ...] = ()
    reason: str = ""
    detail: str = ""
    retry: RetryHint = _SERVED_HINT
    pending_region_ids: tuple[int, ...] = ()  # BEST_EFFORT: returned regions still planned

    @property
    def served(self) -> bool:
        return not self.reason


# ---- witness derivation --------------------------------------------------------------------

_DEGRADED_STATES = frozenset(
    {CatchUpState.BOOTSTRAP_REQUIRED, CatchUpState.RECOVERING, CatchUpState.UNAVAILABLE})


_ROOT_DOWN_MODES = frozenset({DegradedMode.VIEW_ONLY, DegradedMode.ROOT_UNAVAILABLE})


def serving_class_of(rs: ReadState) -> ServingClass:
    if (not rs.has_catalog or rs.catch_up_state in _DEGRADED_STATES
            or not rs.heard_within_window or rs.degraded_mode in _ROOT_DOWN_MODES):
        return ServingClass.DEGRADED
    if (rs.catch_up_state == CatchUpState.FRESH and rs.root_lag == 0 and rs.root_reachable):
        return ServingClass.AUTHORITATIVE
    return ServingClass.BOUNDED_STALE


def sync_health_of(rs: ReadState) -> SyncHealth:
    if not rs.heard_within_window or not rs.has_catalog or (
            rs.catch_up_state == CatchUpState.UNAVAILABLE):
        return SyncHealth.ROOT_UNAVAILABLE
    if rs.catch_up_state == CatchUpState.BOOTSTRAP_REQUIRED:
        return SyncHealth.BOOTSTRAP_REQUIRED
    if rs.root_lag > 0 or rs.catch_up_state in (CatchUpState.LAGGING, CatchUpState.RECOVERING):
        return SyncHealth.LAGGING
    return SyncHealth.HEALTHY


def _witness(rs: ReadState, freshness: Freshness, holds_grant: bool, revision: int,
             coordinator_id: int, pending: bool = False, served: bool = False) -> RouteWitness:
    if pending:
        cls = ServingClass.DEGRADED
    elif served and freshness == Freshness.STRONG:
        cls = ServingClass.AUTHORITATIVE  # lag 0 and confirmed with the metaroot leader
    else:
        cls = serving_class_of(rs)
    return RouteWitness(
        served_root_token=rs.served_token,
        current_root_token=rs.current_token,
        root_lag=rs.root_lag,
        served_freshness=freshness,
        served_by_leader=holds_grant,
        catch_up_state=rs.catch_up_state,
        degraded_mode=rs.degraded_mode,
        serving_class=cls,
        sync_health=sync_health_of(rs),
        descriptor_revision=revision,
        coordinator_id=coordinator_id,
    )


# ---- gates ---------------------------------------------------------------------------------


def _invalid(freshness: object, max_root_lag: int | None, required_revision: int | None,
             required_token: RootToken | None) -> str:
    if not isinstance(freshness, Freshness):
        return "unknown freshness"
    if max_root_lag is not None and max_root_lag < 0:
        return "negative max_root_lag"
    if required_revision is not None and required_revision < 0:
        return "negative required_descriptor_revision"
    if required_token is not None and not isinstance(required_token, RootToken):
        return "required_root_token is not a RootToken"
    return ""


def _gate(freshness: Freshness, required_token: RootToken | None, max_root_lag: int | None,
          rs: ReadState, holds_grant: bool, confirmed: RootToken | None,
          catalog: Catalog | None) -> tuple[str, str]:
    """(reason, detail) of the first failing view-level rule, or ("", "")."""
    if catalog is None or not rs.has_catalog or rs.catch_up_state == CatchUpState.UNAVAILABLE:
        return UNAVAILABLE, "no catalog"
    if freshness == Freshness.STRONG and not holds_grant:
        return NOT_GRANT_HOLDER, "STRONG is served only by the region_lookup grant holder"
    if freshness != Freshness.BEST_EFFORT:
        if rs.catch_up_state == CatchUpState.BOOTSTRAP_REQUIRED:
            return BOOTSTRAP_REQUIRED, "catalog is behind the retained tail"
        if rs.catch_up_state == CatchUpState.RECOVERING:
            return RECOVERING, "catalog is being rebuilt"
        if not rs.heard_within_window or rs.degraded_mode in _ROOT_DOWN_MODES:
            return ROOT_UNAVAILABLE, "metaroot not heard within the staleness window"
    if freshness == Freshness.STRONG:
        bound: int | None = 0
    elif freshness == Freshness.BOUNDED:
        bound = DEFAULT_MAX_ROOT_LAG if max_root_lag is None else max_root_lag
    else:
        bound = max_root_lag
    if bound is not None and rs.root_lag > bound:
        return ROOT_LAG_EXCEEDED, f"root_lag {rs.root_lag} > {bound}"
    if freshness == Freshness.STRONG and (confirmed is None or confirmed != rs.served_token):
        return STRONG_NOT_CONFIRMED, (
            f"served {rs.served_token}, confirmed {confirmed if confirmed else 'none'}")
    if required_token is not None and rs.served_token.index < required_token.index:
        return REQUIRED_ROOT_TOKEN, f"served {rs.served_token} < required {required_token}"
    return "", ""


# ---- decisions -----------------------------------------------------------------------------


def decide_route_read(request: RouteRequest, read_state: ReadState, holds_lookup_grant: bool,
                      strong_confirmed_token: RootToken | None, catalog: Catalog | None,
                      coordinator_id: int = 0) -> RouteDecision:
    """Serve or reject one GetRegionByKey. `catalog` must be the one `read_state` describes
    (take both from RootView.snapshot)."""
    rs, fr = read_state, request.freshness
    bad = _invalid(fr, request.max_root_lag, request.required_descriptor_revision,
                   request.required_root_token)
    if not bad and not isinstance(request.key, bytes):
        bad = "key must be bytes"
    if bad:
        fr = fr if isinstance(fr, Freshness) else Freshness.STRONG
        return _reject(rs, fr, holds_lookup_grant, coordinator_id, INVALID_REQUEST, bad)
    reason, detail = _gate(fr, request.required_root_token, request.max_root_lag, rs,
                           holds_lookup_grant, strong_confirmed_token, catalog)
    if reason:
        return _reject(rs, fr, holds_lookup_grant, coordinator_id, reason, detail)
    assert catalog is not None
    d = catalog.lookup(request.key)
    if d is None:
        return RouteDecision(_witness(rs, fr, holds_lookup_grant, 0, coordinator_id,
                                      served=True), not_found=True)
    pending = catalog.is_range_change_pending(d.region_id)
    if pending and fr != Freshness.BEST_EFFORT:
        return _reject(rs, fr, holds_lookup_grant, coordinator_id, RANGE_CHANGE_PENDING,
                       f"region {d.region_id} is the target of a planned split/merge",
                       d.revision)
    need = request.required_descriptor_revision
    if need is not None and d.revision < need:
        return _reject(rs, fr, holds_lookup_grant, coordinator_id, REQUIRED_DESCRIPTOR,
                       f"region {d.region_id} revision {d.revision} < {need}", d.revision)
    return RouteDecision(_witness(rs, fr, holds_lookup_grant, d.revision, coordinator_id,
                                  pending, served=True),
                         descriptor=d, range_change_pending=pending)


def decide_scan_regions(request: ScanRequest, read_state: ReadState, holds_lookup_grant: bool,
                        strong_confirmed_token: RootToken | None, catalog: Catalog | None,
                        coordinator_id: int = 0) -> ScanDecision:
    """Serve or reject one ScanRegions over [start_key, end_key) with the same contract."""
    rs, fr = read_state, request.freshness
    bad = _invalid(fr, request.max_root_lag, request.required_descriptor_revision,
                   request.required_root_token)
    if not bad and (not isinstance(request.start_key, bytes)
                    or not isinstance(request.end_key, bytes)):
        bad = "keys must be bytes"
    if not bad and request.limit < 0:
        bad = "negative limit"
    if not bad and request.end_key and request.end_key <= request.start_key:
        bad = "end_key <= start_key"
    if bad:
        fr = fr if isinstance(fr, Freshness) else Freshness.STRONG
        return _reject_scan(rs, fr, holds_lookup_grant, coordinator_id, INVALID_REQUEST, bad)
    reason, detail = _gate(fr, request.required_root_token, request.max_root_lag, rs,
                           holds_lookup_grant, strong_confirmed_token, catalog)
    if reason:
        return _reject_scan(rs, fr, holds_lookup_grant, coordinator_id, reason, detail)
    assert catalog is not None
    regions = tuple(catalog.scan(request.start_key, request.end_key, request.limit))
    top = max((d.revision for d in regions), default=0)
    pending = tuple(d.region_id for d in regions if catalog.is_range_change_pending(d.region_id))
    if pending and fr != Freshness.BEST_EFFORT:
        return _reject_scan(rs, fr, holds_lookup_grant, coordinator_id, RANGE_CHANGE_PENDING,
                            f"regions {list(pending)} are targets of planned splits/merges", top)
    need = request.required_descriptor_revision
    if need is not None:
        old = [d.region_id for d in regions if d.revision < need]
        if old:
            return _reject_scan(rs, fr, holds_lookup_grant, coordinator_id,
                                REQUIRED_DESCRIPTOR, f"regions {old} have revision < {need}",
                                top)
    return ScanDecision(_witness(rs, fr, holds_lookup_grant, top, coordinator_id,
                                 bool(pending), served=True),
                        regions=regions, pending_region_ids=pending)


def _reject(rs: ReadState, fr: Freshness, grant: bool, cid: int, reason: str, detail: str,
            revision: int = 0) -> RouteDecision:
    return RouteDecision(_witness(rs, fr, grant, revision, cid), reason=reason, detail=detail,
                         retry=RETRY_HINTS[reason])


def _reject_scan(rs: ReadState, fr: Freshness, grant: bool, cid: int, reason: str,
                 detail: str, revision: int = 0) -> ScanDecision:
    return ScanDecision(_witness(rs, fr, grant, revision, cid), reason=reason, detail=detail,
                        retry=RETRY_HINTS[reason])
