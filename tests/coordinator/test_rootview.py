"""RootView: the catch-up state machine (DESIGN 4.3) and DegradedMode derivation (4.5).

Every state x input pair is checked against an explicit table; random input sequences never
move the served token backward; Advance cost follows the delta, not the catalog. Watch items
here come from a metaroot leader holding its quorum (`from_leader=True`); what follower items
may and may not do is in test_root_quorum_witness.py."""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.catalog import Catalog
from coordinator.rootview import ReadState, RootView
from nokvpy.protocol.enums import CatchUpAction, CatchUpState, DegradedMode, EventKind
from nokvpy.protocol.records import (
    CommittedEvent,
    RegionDescriptor,
    RegionUpsert,
    RootEvent,
    RootToken,
    StoreMembership,
)

S = CatchUpState
A = CatchUpAction
D = DegradedMode
WINDOW = 2.0


def tok(i: int) -> RootToken:
    return RootToken(1, i)


def upsert(i: int, rid: int | None = None) -> CommittedEvent:
    rid = i if rid is None else rid
    d = RegionDescriptor(rid, b"k%06d" % rid, b"k%06d" % (rid + 1))
    return CommittedEvent(tok(i), RootEvent(EventKind.REGION_DESCRIPTOR_PUBLISHED,
                                            RegionUpsert(d)))


def events(lo: int, hi: int) -> list[CommittedEvent]:
    """Events with indexes lo..hi inclusive."""
    return [upsert(i) for i in range(lo, hi + 1)]


def checkpoint(index: int) -> Catalog:
    return Catalog.empty().advance(events(1, index)) if index else Catalog.empty()


# ---- setups: one RootView in each state, served token 5 (except UNAVAILABLE), now = 10 ----

NOW = 10.0


def in_unavailable() -> RootView:
    rv = RootView(WINDOW)
    rv.on_keepalive(tok(5), NOW, from_leader=True)
    return rv


def in_fresh() -> RootView:
    rv = RootView(WINDOW)
    rv.on_bootstrap_required(checkpoint(5), tok(5), NOW, from_leader=True)
    return rv


def in_lagging() -> RootView:
    rv = in_fresh()
    rv.on_keepalive(tok(8), NOW, from_leader=True)
    return rv


def in_bootstrap_required() -> RootView:
    rv = in_fresh()
    rv.on_delta(events(9, 10), tok(10), NOW, from_leader=True)
    return rv


def in_recovering() -> RootView:
    rv = in_fresh()
    rv.begin_reload()
    return rv


SETUPS = {
    S.UNAVAILABLE: in_unavailable,
    S.FRESH: in_fresh,
    S.LAGGING: in_lagging,
    S.BOOTSTRAP_REQUIRED: in_bootstrap_required,
    S.RECOVERING: in_recovering,
}


def test_setups_reach_their_state():
    for state, make in SETUPS.items():
        rv = make()
        assert rv.state(NOW) == state, state
        assert rv.served_token == (tok(0) if state == S.UNAVAILABLE else tok(5))


# input name -> callable(rv) -> CatchUpStep
INPUTS = {
    "delta_contiguous": lambda rv: rv.on_delta(events(rv.served_token.index + 1,
                                                      rv.served_token.index + 2),
                                               tok(rv.served_token.index + 2), NOW + 0.1, from_leader=True),
    "delta_gap": lambda rv: rv.on_delta(events(rv.served_token.index + 3,
                                               rv.served_token.index + 4),
                                        tok(20), NOW + 0.1, from_leader=True),
    "delta_old": lambda rv: rv.on_delta(events(1, rv.served_token.index), tok(20), NOW + 0.1, from_leader=True),
    "keepalive_same": lambda rv: rv.on_keepalive(rv.served_token, NOW + 0.1, from_leader=True),
    "keepalive_ahead": lambda rv: rv.on_keepalive(tok(rv.served_token.index + 3), NOW + 0.1, from_leader=True),
    "keepalive_behind": lambda rv: rv.on_keepalive(tok(2), NOW + 0.1, from_leader=True),
    "keepalive_tail_truncated": lambda rv: rv.on_keepalive(tok(30), NOW + 0.1, tok(20), from_leader=True),
    "bootstrap_newer": lambda rv: rv.on_bootstrap_required(checkpoint(12), tok(12), NOW + 0.1, from_leader=True),
    "bootstrap_older": lambda rv: rv.on_bootstrap_required(checkpoint(3), tok(3), NOW + 0.1, from_leader=True),
    "begin_reload": lambda rv: rv.begin_reload(),
    "finish_reload_newer": lambda rv: rv.finish_reload(checkpoint(11), tok(11), NOW + 0.1),
    "finish_reload_older": lambda rv: rv.finish_reload(checkpoint(2), tok(2), NOW + 0.1),
    "abort_reload": lambda rv: rv.abort_reload(),
    "root_unreachable": lambda rv: rv.on_root_unreachable(NOW + 0.1),
    "tick_within_window": lambda rv: rv.tick(NOW + WINDOW / 2),
    "tick_past_window": lambda rv: rv.tick(NOW + WINDOW + 1),
}

# (state, input) -> (state after, action, served index after). Served index before is 5
# (0 in UNAVAILABLE); "keep" means unchanged.
U, F, L, B, R = S.UNAVAILABLE, S.FRESH, S.LAGGING, S.BOOTSTRAP_REQUIRED, S.RECOVERING
TABLE: dict[tuple[CatchUpState, str], tuple[CatchUpState, CatchUpAction, int | str]] = {
    # UNAVAILABLE: no catalog; a delta from index 1 builds one, a checkpoint installs one
    (U, "delta_contiguous"): (L, A.ADVANCE, 2),  # root said current is 5 earlier
    (U, "delta_gap"): (U, A.RELOAD, "keep"),
    (U, "delta_old"): (U, A.REJECT, "keep"),
    (U, "keepalive_same"): (U, A.NONE, "keep"),
    (U, "keepalive_ahead"): (U, A.NONE, "keep"),
    (U, "keepalive_behind"): (U, A.NONE, "keep"),
    (U, "keepalive_tail_truncated"): (U, A.NONE, "keep"),
    (U, "bootstrap_newer"): (F, A.BOOTSTRAP, 12),
    (U, "bootstrap_older"): (L, A.BOOTSTRAP, 3),
    (U, "begin_reload"): (U, A.RELOAD, "keep"),
    (U, "finish_reload_newer"): (F, A.RELOAD, 11),
    (U, "finish_reload_older"): (L, A.RELOAD, 2),
    (U, "abort_reload"): (U, A.NONE, "keep"),
    (U, "root_unreachable"): (U, A.NONE, "keep"),
    (U, "tick_within_window"): (U, A.NONE, "keep"),
    (U, "tick_past_window"): (U, A.NONE, "keep"),
    # FRESH (served 5, current 5)
    (F, "delta_contiguous"): (F, A.ADVANCE, 7),
    (F, "delta_gap"): (B, A.RELOAD, "keep"),
    (F, "delta_old"): (F, A.REJECT, "keep"),
    (F, "keepalive_same"): (F, A.NONE, "keep"),
    (F, "keepalive_ahead"): (L, A.NONE, "keep"),
    (F, "keepalive_behind"): (F, A.REJECT, "keep"),
    (F, "keepalive_tail_truncated"): (B, A.RELOAD, "keep"),
    (F, "bootstrap_newer"): (F, A.BOOTSTRAP, 12),
    (F, "bootstrap_older"): (F, A.REJECT, "keep"),
    (F, "begin_reload"): (R, A.RELOAD, "keep"),
    (F, "finish_reload_newer"): (F, A.RELOAD, 11),
    (F, "finish_reload_older"): (F, A.REJECT, "keep"),
    (F, "abort_reload"): (F, A.NONE, "keep"),
    (F, "root_unreachable"): (L, A.NONE, "keep"),
    (F, "tick_within_window"): (F, A.NONE, "keep"),
    (F, "tick_past_window"): (L, A.NONE, "keep"),
    # LAGGING (served 5, current 8)
    (L, "delta_contiguous"): (L, A.ADVANCE, 7),
    (L, "delta_gap"): (B, A.RELOAD, "keep"),
    (L, "delta_old"): (L, A.REJECT, "keep"),
    (L, "keepalive_same"): (L, A.NONE, "keep"),
    (L, "keepalive_ahead"): (L, A.NONE, "keep"),
    (L, "keepalive_behind"): (L, A.REJECT, "keep"),
    (L, "keepalive_tail_truncated"): (B, A.RELOAD, "keep"),
    (L, "bootstrap_newer"): (F, A.BOOTSTRAP, 12),
    (L, "bootstrap_older"): (L, A.REJECT, "keep"),
    (L, "begin_reload"): (R, A.RELOAD, "keep"),
    (L, "finish_reload_newer"): (F, A.RELOAD, 11),
    (L, "finish_reload_older"): (L, A.REJECT, "keep"),
    (L, "abort_reload"): (L, A.NONE, "keep"),
    (L, "root_unreachable"): (L, A.NONE, "keep"),
    (L, "tick_within_window"): (L, A.NONE, "keep"),
    (L, "tick_past_window"): (L, A.NONE, "keep"),
    # BOOTSTRAP_REQUIRED (served 5, current 10, gap seen)
    (B, "delta_contiguous"): (L, A.ADVANCE, 7),  # the gap was closed by a resent delta
    (B, "delta_gap"): (B, A.RELOAD, "keep"),
    (B, "delta_old"): (B, A.REJECT, "keep"),
    (B, "keepalive_same"): (B, A.NONE, "keep"),
    (B, "keepalive_ahead"): (B, A.NONE, "keep"),
    (B, "keepalive_behind"): (B, A.REJECT, "keep"),
    (B, "keepalive_tail_truncated"): (B, A.RELOAD, "keep"),
    (B, "bootstrap_newer"): (F, A.BOOTSTRAP, 12),
    (B, "bootstrap_older"): (B, A.REJECT, "keep"),
    (B, "begin_reload"): (R, A.RELOAD, "keep"),
    (B, "finish_reload_newer"): (F, A.RELOAD, 11),
    (B, "finish_reload_older"): (B, A.REJECT, "keep"),
    (B, "abort_reload"): (B, A.NONE, "keep"),
    (B, "root_unreachable"): (B, A.NONE, "keep"),
    (B, "tick_within_window"): (B, A.NONE, "keep"),
    (B, "tick_past_window"): (B, A.NONE, "keep"),
    # RECOVERING (served 5, current 5): deltas wait for the reload
    (R, "delta_contiguous"): (R, A.REJECT, "keep"),
    (R, "delta_gap"): (R, A.REJECT, "keep"),
    (R, "delta_old"): (R, A.REJECT, "keep"),
    (R, "keepalive_same"): (R, A.NONE, "keep"),
    (R, "keepalive_ahead"): (R, A.NONE, "keep"),
    (R, "keepalive_behind"): (R, A.REJECT, "keep"),
    (R, "keepalive_tail_truncated"): (R, A.RELOAD, "keep"),
    (R, "bootstrap_newer"): (F, A.BOOTSTRAP, 12),
    (R, "bootstrap_older"): (R, A.REJECT, "keep"),
    (R, "begin_reload"): (R, A.RELOAD, "keep"),
    (R, "finish_reload_newer"): (F, A.RELOAD, 11),
    (R, "finish_reload_older"): (R, A.REJECT, "keep"),
    (R, "abort_reload"): (F, A.NONE, "keep"),
    (R, "root_unreachable"): (R, A.NONE, "keep"),
    (R, "tick_within_window"): (R, A.NONE, "keep"),
    (R, "tick_past_window"): (R, A.NONE, "keep"),
}


def test_table_covers_every_state_and_input():
    assert set(TABLE) == {(s, i) for s in SETUPS for i in INPUTS}


@pytest.mark.parametrize("state, name", sorted(TABLE, key=lambda k: (k[0], k[1])))
def test_transition(state, name):
    rv = SETUPS[state]()
    before = rv.served_token
    catalog_before = rv.catalog
    step = INPUTS[name](rv)
    want_state, want_action, want_served = TABLE[(state, name)]
    served = before.index if want_served == "keep" else want_served
    assert (step.catch_up_state, step.catch_up_action, step.root_token_after.index) == (
        want_state, want_action, served)
    assert step.root_token_before == before
    assert rv.served_token.index == served
    assert rv.current_token.index >= rv.served_token.index
    if want_action == A.REJECT:
        assert rv.catalog is catalog_before
    if rv.catalog is not None:
        assert rv.catalog.token == rv.served_token


# ---- degraded mode --------------------------------------------------------------------------


def mode(rv: RootView, now: float, flags=()) -> DegradedMode:
    return rv.read_state(now, flags).degraded_mode


def test_degraded_mode_precedence():
    assert mode(RootView(WINDOW), NOW) == D.ROOT_UNAVAILABLE  # no catalog, never heard
    assert mode(in_unavailable(), NOW) == D.COORDINATOR_DEGRADED  # heard, no catalog yet
    assert mode(in_fresh(), NOW) == D.HEALTHY
    assert mode(in_fresh(), NOW, {"scheduler_paused"}) == D.COORDINATOR_DEGRADED
    assert mode(in_lagging(), NOW) == D.ROOT_LAGGING
    assert mode(in_lagging(), NOW, {"no_grant:tso"}) == D.COORDINATOR_DEGRADED
    assert mode(in_recovering(), NOW) == D.COORDINATOR_DEGRADED
    assert "catalog_recovering" in in_recovering().read_state(NOW).degraded_reasons
    assert mode(in_bootstrap_required(), NOW) == D.VIEW_ONLY
    # root unavailable past the staleness window, with a catalog: view only
    for make in (in_fresh, in_lagging, in_recovering, in_bootstrap_required):
        assert mode(make(), NOW + WINDOW + 0.5) == D.VIEW_ONLY
    assert mode(in_unavailable(), NOW + WINDOW + 0.5) == D.ROOT_UNAVAILABLE
    # a failed call inside the window is not yet "root unavailable"
    rv = in_fresh()
    rv.on_root_unreachable(NOW + 0.5)
    rs = rv.read_state(NOW + 0.5)
    assert (rs.degraded_mode, rs.catch_up_state, rs.root_reachable) == (D.HEALTHY, L, False)
    assert rv.read_state(NOW + WINDOW + 0.1).degraded_mode == D.VIEW_ONLY
    rv.on_keepalive(tok(5), NOW + WINDOW + 0.2, from_leader=True)
    assert rv.read_state(NOW + WINDOW + 0.2).catch_up_state == F


def test_read_state_fields():
    rv = in_lagging()
    rs = rv.read_state(NOW + 1)
    assert rs == ReadState(tok(5), tok(8), 3, L, D.ROOT_LAGGING, True, True, True, frozenset())
    catalog, snap = rv.snapshot(NOW + 1)
    assert catalog is rv.catalog and snap == rs


def test_recovering_keeps_previous_catalog_serving():
    rv = in_fresh()
    old = rv.catalog
    rv.begin_reload()
    assert rv.catalog is old and rv.state(NOW) == R
    rv.on_delta(events(6, 7), tok(7), NOW + 0.1, from_leader=True)
    assert rv.catalog is old and rv.served_token == tok(5)  # the reload owns what comes next
    step = rv.finish_reload(checkpoint(7), tok(7), NOW + 0.2)
    assert step == rv._step(tok(5), A.RELOAD)
    assert rv.state(NOW + 0.2) == F and rv.catalog is not old


def test_mismatched_checkpoint_token_is_a_caller_bug():
    rv = RootView(WINDOW)
    with pytest.raises(ValueError):
        rv.on_bootstrap_required(checkpoint(3), tok(4), NOW, from_leader=True)


def test_time_moving_backward_does_not_rewind_state():
    rv = in_fresh()
    rv.tick(NOW + WINDOW + 1)
    assert rv.tick(NOW).catch_up_state == L  # latest time seen still counts


def test_non_region_events_advance_the_token():
    rv = RootView(WINDOW)
    step = rv.on_delta([CommittedEvent(tok(1), RootEvent(EventKind.STORE_JOINED,
                                                         StoreMembership(1, "a:1")))],
                       tok(1), NOW, from_leader=True)
    assert (step.catch_up_action, step.catch_up_state) == (A.ADVANCE, F)
    assert rv.catalog.stores()[1].address == "a:1"


# ---- random sequences -----------------------------------------------------------------------

OPS = ["delta", "delta_gap", "delta_dup", "keepalive", "keepalive_old", "tail", "bootstrap",
       "bootstrap_old", "begin", "finish", "finish_old", "abort", "unreachable", "tick"]


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 6), st.floats(0, 3)),
                    max_size=60))
def test_served_token_never_moves_backward(ops):
    rv = RootView(WINDOW)
    now = 0.0
    root = 0  # the root's latest index
    for op, n, dt in ops:
        now += dt
        served = rv.served_token.index
        root = max(root, served) + (n if op in ("delta", "keepalive", "bootstrap") else 0)
        catalog, state_before = rv.catalog, rv.state(now)
        if op == "delta":
            step = rv.on_delta(events(served + 1, served + n), tok(root), now, from_leader=True)
        elif op == "delta_gap":
            step = rv.on_delta(events(served + 2, served + 2 + n), tok(served + 2 + n), now, from_leader=True)
        elif op == "delta_dup":
            step = rv.on_delta(events(max(1, served - n), served), tok(root), now, from_leader=True)
        elif op == "keepalive":
            step = rv.on_keepalive(tok(root), now, from_leader=True)
        elif op == "keepalive_old":
            step = rv.on_keepalive(tok(max(0, served - n - 1)), now, from_leader=True)
        elif op == "tail":
            step = rv.on_keepalive(tok(root + n), now, tok(served + n), from_leader=True)
        elif op in ("bootstrap", "finish"):
            target = max(served, root - n)
            step = (rv.on_bootstrap_required(checkpoint(target), tok(target), now, from_leader=True)
                    if op == "bootstrap" else rv.finish_reload(checkpoint(target), tok(target),
                                                               now))
        elif op in ("bootstrap_old", "finish_old"):
            target = max(0, served - n - 1)
            step = (rv.on_bootstrap_required(checkpoint(target), tok(target), now, from_leader=True)
                    if op == "bootstrap_old" else rv.finish_reload(checkpoint(target),
                                                                   tok(target), now))
        elif op == "begin":
            step = rv.begin_reload()
        elif op == "abort":
            step = rv.abort_reload()
        elif op == "unreachable":
            step = rv.on_root_unreachable(now)
        else:
            step = rv.tick(now)
        # Invariant (DESIGN 4.1): the materialized token never moves backward.
        assert step.root_token_after.index >= step.root_token_before.index
        assert step.root_token_before.index == served
        assert rv.served_token == step.root_token_after
        assert rv.current_token.index >= rv.served_token.index
        assert step.catch_up_state == rv.state()  # at the latest time the view has seen
        if step.catch_up_action == A.REJECT:
            assert rv.served_token.index == served and rv.catalog is catalog
            assert rv.state(now) == state_before
        if rv.catalog is None:
            assert rv.state(now) == U and rv.served_token.index == 0
        else:
            assert rv.catalog.token == rv.served_token
        rs = rv.read_state(now)
        assert rs.root_lag == rs.current_token.index - rs.served_token.index >= 0
        if rs.catch_up_state == F:
            assert rs.root_lag == 0 and rs.heard_within_window and rs.root_reachable
            assert rs.degraded_mode == D.HEALTHY
        if rs.degraded_mode == D.HEALTHY:
            assert rs.root_lag == 0 and rs.heard_within_window


# ---- cost of Advance --------------------------------------------------------------------------


@functools.cache
def wide_catalog(n: int) -> Catalog:  # immutable, so shared between tests
    descs = [RegionDescriptor(i + 1, b"k%06d" % (i + 1), b"k%06d" % (i + 2), revision=1)
             for i in range(n)]
    return Catalog.from_descriptors(tok(1), descs)


@pytest.mark.parametrize("delta", [1, 4, 16])
def test_advance_touches_entries_in_proportion_to_the_delta(delta):
    touched = {}
    for n in (500, 50_000):
        rv = RootView(WINDOW, wide_catalog(n), now=0.0)
        rng = random.Random(delta)
        batch = []
        for i in range(delta):  # each event republishes one existing region with a new epoch
            rid = rng.randrange(1, n + 1)
            d = rv.catalog.get(rid)
            new = RegionDescriptor(rid, d.start_key, d.end_key, peers=d.peers,
                                   epoch=type(d.epoch)(1, 2 + i))
            batch.append(CommittedEvent(tok(2 + i), RootEvent(
                EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(new))))
        step = rv.on_delta(batch, tok(1 + delta), 0.1, from_leader=True)
        assert step.catch_up_action == A.ADVANCE
        stats = rv.catalog.last_advance
        assert stats.events == delta
        assert stats.entries_touched == 2 * delta  # one entry in each of the two indexes
        touched[n] = stats.nodes_copied
        assert stats.nodes_copied <= 2 * delta * (rv.catalog._by_start.height() + 1)
    # 100x the regions copies at most one extra level per touched path
    assert touched[50_000] <= touched[500] + 2 * delta
