"""Freshness serving rules (DESIGN 4.4): a table over every freshness x catch-up state x
degraded mode x request-bound x grant combination, checked against a separately written
oracle, plus hypothesis properties for the invariants (no silent downgrade, stale service
labelled, planned range changes never served as settled truth)."""

from __future__ import annotations

import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.catalog import Catalog
from coordinator.rootview import ReadState, RootView
from coordinator.serving import (
    DEFAULT_MAX_ROOT_LAG,
    REASONS,
    RETRY_HINTS,
    RouteRequest,
    ScanRequest,
    decide_route_read,
    decide_scan_regions,
)
from nokvpy.protocol.enums import (
    CatchUpState,
    DegradedMode,
    EventKind,
    Freshness,
    RetryClass,
    ServingClass,
    SyncHealth,
)
from nokvpy.protocol.records import (
    CommittedEvent,
    RangeSplit,
    RegionDescriptor,
    RootEvent,
    RootToken,
)

S, D, F, SC = CatchUpState, DegradedMode, Freshness, ServingClass
SERVED = 10


def tok(i: int) -> RootToken:
    return RootToken(2, i)


@functools.cache
def catalog_at(index: int, pending: tuple[int, ...] = ()) -> Catalog:
    """r1 [, g) rev 3 | hole [g, k) | r2 [k, t) rev 7 | r3 [t, ) rev 9."""
    return Catalog.from_descriptors(tok(index), [
        RegionDescriptor(1, b"", b"g", revision=3),
        RegionDescriptor(2, b"k", b"t", revision=7),
        RegionDescriptor(3, b"t", b"", revision=9),
    ], pending)


CATALOG = catalog_at(SERVED)
PENDING_CATALOG = catalog_at(SERVED, pending=(2,))


def read_state(state: CatchUpState, mode: DegradedMode, lag: int, heard: bool,
               served: int = SERVED, reachable: bool | None = None) -> ReadState:
    return ReadState(tok(served), tok(served + lag), lag, state, mode,
                     heard if reachable is None else reachable, heard,
                     state != S.UNAVAILABLE)


# ---- the oracle: DESIGN 4.4 transcribed independently of coordinator/serving.py ----


def oracle(fr, state, mode, required, lag, max_lag, grant, heard, confirmed) -> str:
    """The expected reason ("" = served) for a request on key b"a" (region 1, settled)."""
    if state == S.UNAVAILABLE:
        return "unavailable"  # nothing to serve, whatever the class
    root_down = not heard or mode in (D.VIEW_ONLY, D.ROOT_UNAVAILABLE)
    token_short = required is not None and required > SERVED
    if fr == F.STRONG:
        checks = [
            (not grant, "not_grant_holder"),
            (state == S.BOOTSTRAP_REQUIRED, "bootstrap_required"),
            (state == S.RECOVERING, "recovering"),
            (root_down, "root_unavailable"),
            (lag > 0, "root_lag_exceeded"),
            (confirmed != SERVED, "strong_not_confirmed"),
            (token_short, "required_root_token"),
        ]
    elif fr == F.BOUNDED:
        bound = DEFAULT_MAX_ROOT_LAG if max_lag is None else max_lag
        checks = [
            (state == S.BOOTSTRAP_REQUIRED, "bootstrap_required"),
            (state == S.RECOVERING, "recovering"),
            (root_down, "root_unavailable"),
            (lag > bound, "root_lag_exceeded"),
            (token_short, "required_root_token"),
        ]
    else:  # BEST_EFFORT: only the request's own explicit bounds can refuse it
        checks = [
            (max_lag is not None and lag > max_lag, "root_lag_exceeded"),
            (token_short, "required_root_token"),
        ]
    return next((reason for failed, reason in checks if failed), "")


def expected_class(fr, state, mode, lag, heard) -> ServingClass:
    if fr == F.STRONG:
        return SC.AUTHORITATIVE  # served STRONG = lag 0 and confirmed with the leader
    if (state in (S.BOOTSTRAP_REQUIRED, S.RECOVERING) or not heard
            or mode in (D.VIEW_ONLY, D.ROOT_UNAVAILABLE)):
        return SC.DEGRADED
    if state == S.FRESH and lag == 0:
        return SC.AUTHORITATIVE
    return SC.BOUNDED_STALE


REQUIRED = [None, SERVED, SERVED + 1]  # absent, satisfied, not satisfied
LAGS = [0, 3, DEFAULT_MAX_ROOT_LAG + 4]
MAX_LAGS = [None, 2]  # default bound, explicit bound (0 satisfies it, 3 does not)
CONFIRMED = [None, SERVED, SERVED + 2]


@pytest.mark.parametrize("fr, state, mode", list(itertools.product(F, S, D)))
def test_decision_table(fr, state, mode):
    cases = 0
    for required, lag, max_lag, grant, heard, confirmed in itertools.product(
            REQUIRED, LAGS, MAX_LAGS, [True, False], [True, False], CONFIRMED):
        rs = read_state(state, mode, lag, heard)
        req = RouteRequest(b"a", fr, None if required is None else tok(required), max_lag)
        got = decide_route_read(req, rs, grant, None if confirmed is None else tok(confirmed),
                                CATALOG if state != S.UNAVAILABLE else None, coordinator_id=4)
        want = oracle(fr, state, mode, required, lag, max_lag, grant, heard, confirmed)
        ctx = (required, lag, max_lag, grant, heard, confirmed)
        assert got.reason == want, ctx
        w = got.witness
        assert (w.served_freshness, w.root_lag, w.served_root_token, w.current_root_token,
                w.served_by_leader, w.catch_up_state, w.degraded_mode, w.coordinator_id) == (
            fr, lag, tok(SERVED), tok(SERVED + lag), grant, state, mode, 4), ctx
        if want:
            assert not got.served and got.descriptor is None
            assert got.retry == RETRY_HINTS[want]
        else:
            assert got.served and got.descriptor.region_id == 1 and not got.not_found
            assert w.descriptor_revision == 3
            assert w.serving_class == expected_class(fr, state, mode, lag, heard), ctx
            assert got.retry.retry_class == RetryClass.NONE
        cases += 1
    assert cases == 3 * 3 * 2 * 2 * 2 * 3


# ---- specific rules ----------------------------------------------------------------------------

GOOD = read_state(S.FRESH, D.HEALTHY, 0, True)


def strong(key: bytes, **kw) -> RouteRequest:
    return RouteRequest(key, F.STRONG, **kw)


def test_not_found_is_served_with_witness():
    got = decide_route_read(strong(b"h"), GOOD, True, tok(SERVED), CATALOG)
    assert got.served and got.not_found and got.descriptor is None
    assert got.witness.serving_class == SC.AUTHORITATIVE
    assert got.witness.descriptor_revision == 0


@pytest.mark.parametrize("fr", [F.STRONG, F.BOUNDED])
def test_pending_range_change_is_rejected_for_strong_and_bounded(fr):
    got = decide_route_read(RouteRequest(b"m", fr), GOOD, True, tok(SERVED), PENDING_CATALOG)
    assert got.reason == "range_change_pending"
    assert got.retry.retry_class == RetryClass.CONFLICT
    assert got.witness.descriptor_revision == 7
    # the neighbour is settled
    assert decide_route_read(RouteRequest(b"u", fr), GOOD, True, tok(SERVED),
                             PENDING_CATALOG).served


def test_pending_range_change_best_effort_is_labelled_not_settled():
    got = decide_route_read(RouteRequest(b"m", F.BEST_EFFORT), GOOD, True, None,
                            PENDING_CATALOG)
    assert got.served and got.range_change_pending and got.descriptor.region_id == 2
    assert got.witness.serving_class == SC.DEGRADED


def test_required_descriptor_revision():
    ok = decide_route_read(strong(b"m", required_descriptor_revision=7), GOOD, True,
                           tok(SERVED), CATALOG)
    assert ok.served
    low = decide_route_read(strong(b"m", required_descriptor_revision=8), GOOD, True,
                            tok(SERVED), CATALOG)
    assert low.reason == "required_descriptor" and low.witness.descriptor_revision == 7
    be = decide_route_read(RouteRequest(b"m", F.BEST_EFFORT, required_descriptor_revision=8),
                           GOOD, False, None, CATALOG)
    assert be.reason == "required_descriptor"


@pytest.mark.parametrize("req", [
    RouteRequest(b"a", F.BOUNDED, max_root_lag=-1),
    RouteRequest(b"a", F.BOUNDED, required_descriptor_revision=-1),
    RouteRequest("a", F.BOUNDED),  # type: ignore[arg-type]
    RouteRequest(b"a", 7),  # type: ignore[arg-type]
    RouteRequest(b"a", F.BOUNDED, required_root_token=5),  # type: ignore[arg-type]
])
def test_invalid_request(req):
    got = decide_route_read(req, GOOD, True, tok(SERVED), CATALOG)
    assert got.reason == "invalid_request"
    assert got.retry.retry_class == RetryClass.PERMANENT


def test_sync_health_derivation():
    def health(rs):
        return decide_route_read(RouteRequest(b"a", F.BEST_EFFORT), rs, False, None,
                                 CATALOG).witness.sync_health

    assert health(GOOD) == SyncHealth.HEALTHY
    assert health(read_state(S.LAGGING, D.ROOT_LAGGING, 2, True)) == SyncHealth.LAGGING
    assert health(read_state(S.RECOVERING, D.COORDINATOR_DEGRADED, 0, True)) == (
        SyncHealth.LAGGING)
    assert health(read_state(S.BOOTSTRAP_REQUIRED, D.VIEW_ONLY, 9, True)) == (
        SyncHealth.BOOTSTRAP_REQUIRED)
    assert health(read_state(S.LAGGING, D.VIEW_ONLY, 0, False)) == SyncHealth.ROOT_UNAVAILABLE


def test_unconfirmed_reachability_is_bounded_stale_not_authoritative():
    rs = read_state(S.LAGGING, D.HEALTHY, 0, True, reachable=False)
    got = decide_route_read(RouteRequest(b"a", F.BOUNDED), rs, False, None, CATALOG)
    assert got.served and got.witness.serving_class == SC.BOUNDED_STALE


def test_served_by_root_view_end_to_end():
    rv = RootView(2.0)
    rv.on_bootstrap_required(CATALOG, tok(SERVED), 0.0)
    cat, rs = rv.snapshot(0.5)
    assert decide_route_read(strong(b"a"), rs, True, tok(SERVED), cat).served
    rv.on_keepalive(tok(SERVED + 1), 1.0)
    cat, rs = rv.snapshot(1.0)
    assert decide_route_read(strong(b"a"), rs, True, tok(SERVED + 1), cat).reason == (
        "root_lag_exceeded")
    bounded = decide_route_read(RouteRequest(b"a", F.BOUNDED), rs, False, None, cat)
    assert bounded.served and bounded.witness.serving_class == SC.BOUNDED_STALE
    cat, rs = rv.snapshot(5.0)  # nothing heard for longer than the window
    assert decide_route_read(RouteRequest(b"a", F.BOUNDED), rs, False, None, cat).reason == (
        "root_unavailable")
    be = decide_route_read(RouteRequest(b"a", F.BEST_EFFORT), rs, False, None, cat)
    assert be.served and be.witness.degraded_mode == D.VIEW_ONLY
    assert be.witness.serving_class == SC.DEGRADED


def test_split_planned_through_root_view_is_pending_until_committed():
    rv = RootView(2.0)
    rv.on_bootstrap_required(CATALOG, tok(SERVED), 0.0)
    r3 = CATALOG.get(3)
    split = RangeSplit(3, b"w", RegionDescriptor(3, b"t", b"w"), RegionDescriptor(4, b"w", b""),
                       r3)
    rv.on_delta([CommittedEvent(tok(SERVED + 1), RootEvent(EventKind.SPLIT_PLANNED, split))],
                tok(SERVED + 1), 0.1)
    cat, rs = rv.snapshot(0.1)
    assert decide_route_read(strong(b"x"), rs, True, tok(SERVED + 1), cat).reason == (
        "range_change_pending")
    rv.on_delta([CommittedEvent(tok(SERVED + 2), RootEvent(EventKind.SPLIT_COMMITTED, split))],
                tok(SERVED + 2), 0.2)
    cat, rs = rv.snapshot(0.2)
    got = decide_route_read(strong(b"x"), rs, True, tok(SERVED + 2), cat)
    assert got.served and got.descriptor.region_id == 4


# ---- scans ---------------------------------------------------------------------------------


def test_scan_regions_contract():
    whole = decide_scan_regions(ScanRequest(freshness=F.BOUNDED), GOOD, False, None, CATALOG)
    assert [d.region_id for d in whole.regions] == [1, 2, 3]
    assert whole.witness.descriptor_revision == 9
    part = decide_scan_regions(ScanRequest(b"h", b"u", 0, F.BOUNDED), GOOD, False, None, CATALOG)
    assert [d.region_id for d in part.regions] == [2, 3]
    limited = decide_scan_regions(ScanRequest(b"", b"", 1, F.BOUNDED), GOOD, False, None,
                                  CATALOG)
    assert [d.region_id for d in limited.regions] == [1]
    pend = decide_scan_regions(ScanRequest(freshness=F.BOUNDED), GOOD, False, None,
                               PENDING_CATALOG)
    assert pend.reason == "range_change_pending"
    be = decide_scan_regions(ScanRequest(freshness=F.BEST_EFFORT), GOOD, False, None,
                             PENDING_CATALOG)
    assert be.served and be.pending_region_ids == (2,)
    assert be.witness.serving_class == SC.DEGRADED
    assert decide_scan_regions(ScanRequest(freshness=F.STRONG), GOOD, False, tok(SERVED),
                               CATALOG).reason == "not_grant_holder"
    assert decide_scan_regions(ScanRequest(b"z", b"a"), GOOD, True, tok(SERVED),
                               CATALOG).reason == "invalid_request"
    assert decide_scan_regions(ScanRequest(required_descriptor_revision=5), GOOD, True,
                               tok(SERVED), CATALOG).reason == "required_descriptor"


# ---- properties ----------------------------------------------------------------------------

KEYS = [b"", b"a", b"g", b"h", b"k", b"m", b"t", b"zz"]


@st.composite
def scenarios(draw):
    served = draw(st.integers(0, 30))
    lag = draw(st.integers(0, 30))
    state = draw(st.sampled_from(S))
    rs = ReadState(tok(served), tok(served + lag), lag, state, draw(st.sampled_from(D)),
                   draw(st.booleans()), draw(st.booleans()), state != S.UNAVAILABLE)
    pending = tuple(sorted(draw(st.sets(st.sampled_from([1, 2, 3])))))
    cat = catalog_at(served, pending) if state != S.UNAVAILABLE else None
    fr = draw(st.sampled_from(F))
    required = draw(st.none() | st.integers(0, 40).map(tok))
    max_lag = draw(st.none() | st.integers(0, 30))
    need_rev = draw(st.none() | st.integers(0, 12))
    grant = draw(st.booleans())
    confirmed = draw(st.none() | st.integers(0, 40).map(tok))
    return rs, cat, fr, required, max_lag, need_rev, grant, confirmed


def check_invariants(rs: ReadState, fr: Freshness, grant: bool, confirmed, max_lag,
                     served: bool, reason: str, retry, w, pending_served: bool) -> None:
    # No silent downgrade: the served class is always the requested class.
    assert w.served_freshness == fr
    assert w.root_lag == rs.root_lag and w.served_root_token == rs.served_token
    if not served:
        assert reason in REASONS and retry == RETRY_HINTS[reason]
        return
    # Stale service is always labelled.
    if rs.root_lag > 0:
        assert w.serving_class != SC.AUTHORITATIVE
    if (not rs.heard_within_window or rs.catch_up_state != S.FRESH) and fr != F.STRONG:
        assert w.serving_class != SC.AUTHORITATIVE
    if fr == F.STRONG:
        assert grant and rs.root_lag == 0 and confirmed == rs.served_token
        assert rs.heard_within_window and rs.catch_up_state in (S.FRESH, S.LAGGING)
    if fr == F.BOUNDED:
        bound = DEFAULT_MAX_ROOT_LAG if max_lag is None else max_lag
        assert rs.root_lag <= bound and rs.heard_within_window
        assert rs.catch_up_state in (S.FRESH, S.LAGGING)
    # A planned split/merge target is never settled truth.
    if pending_served:
        assert fr == F.BEST_EFFORT and w.serving_class == SC.DEGRADED


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from(KEYS))
def test_route_read_invariants(scenario, key):
    rs, cat, fr, required, max_lag, need_rev, grant, confirmed = scenario
    got = decide_route_read(RouteRequest(key, fr, required, max_lag, need_rev), rs, grant,
                            confirmed, cat)
    pending_served = bool(got.served and got.descriptor
                          and cat.is_range_change_pending(got.descriptor.region_id))
    assert pending_served == got.range_change_pending
    check_invariants(rs, fr, grant, confirmed, max_lag, got.served, got.reason, got.retry,
                     got.witness, pending_served)
    if got.served:
        assert got.descriptor is None or got.descriptor.contains(key)
        assert got.not_found == (got.descriptor is None)
        if required is not None:
            assert rs.served_token >= required
        if need_rev is not None and got.descriptor is not None:
            assert got.descriptor.revision >= need_rev


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.sampled_from(KEYS), st.sampled_from(KEYS))
def test_scan_invariants(scenario, a, b):
    rs, cat, fr, required, max_lag, need_rev, grant, confirmed = scenario
    start, end = min(a, b), max(a, b)
    if start == end:
        end = b""
    got = decide_scan_regions(ScanRequest(start, end, 0, fr, required, max_lag, need_rev), rs,
                              grant, confirmed, cat)
    pending_served = bool(got.served and got.pending_region_ids)
    check_invariants(rs, fr, grant, confirmed, max_lag, got.served, got.reason, got.retry,
                     got.witness, pending_served)
    if got.served:
        assert list(got.regions) == cat.scan(start, end)
        assert set(got.pending_region_ids) == {d.region_id for d in got.regions
                                               if cat.is_range_change_pending(d.region_id)}
