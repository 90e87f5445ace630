"""RootCatalog: the coordinator's catalog as an index over its RootState mirror. Fed the same
accepted rooted events it answers exactly like the standalone Catalog, its RootState is the
one RootState.apply_committed folds, old snapshots never change, gaps and unfoldable events
are refused, and the subscription's mirror is the served catalog's state."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_catalog import Model, ev, probe_keys, random_step, region

from coordinator.catalog import Catalog, CatalogGapError, StoreView
from coordinator.rootcatalog import CatalogFoldError, RootCatalog
from coordinator.subscription import Subscription
from metaroot.state import RootState
from nokvpy.protocol.enums import EventKind, StoreState, TransitionPhase
from nokvpy.protocol.metaroot_rpc import WatchItem
from nokvpy.protocol.records import (
    CommittedEvent,
    RangeSplit,
    RegionUpsert,
    RootToken,
    StoreMembership,
)


def rooted_events(seed: int, steps: int = 150) -> list[CommittedEvent]:
    """Random topology events (stores 1 and 9 joined first) that RootState accepts, re-indexed
    densely from 1."""
    rng = random.Random(seed)
    m = Model()
    m.index = 3
    m.regions[1] = region(1, b"", b"").with_revision(3)
    generated = [ev(1, EventKind.STORE_JOINED, StoreMembership(1, "s1")),
                 ev(2, EventKind.STORE_JOINED, StoreMembership(9, "s9")),
                 ev(3, EventKind.REGION_BOOTSTRAP, RegionUpsert(region(1, b"", b"")))]
    generated += [e for e in (random_step(m, rng) for _ in range(steps)) if e]
    root, out = RootState(), []
    for e in generated:
        token = RootToken(1, root.token.index + 1)
        new, err = root.apply_committed(token, e.event)
        if err is None:
            root = new
            out.append(CommittedEvent(token, e.event))
    return out


def assert_same_answers(rc: RootCatalog, cat: Catalog) -> None:
    assert rc.token == cat.token and len(rc) == len(cat)
    assert rc.regions() == cat.regions()
    assert rc.pending_range_changes() == cat.pending_range_changes()
    assert rc.stores() == cat.stores()
    assert rc.max_revision == cat.max_revision
    for d in cat.regions():
        assert rc.get(d.region_id) == d
        assert rc.is_range_change_pending(d.region_id) == cat.is_range_change_pending(
            d.region_id)
    m = Model()
    m.regions = {d.region_id: d for d in cat.regions()}
    keys = probe_keys(m)
    for k in keys:
        assert rc.lookup(k) == cat.lookup(k), k
    for s in keys[::2]:
        for e in (b"", b"k", b"zz", s):
            for limit in (0, 1, 3):
                assert rc.scan(s, e, limit) == cat.scan(s, e, limit), (s, e, limit)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 7))
def test_root_catalog_answers_like_the_catalog_for_accepted_events(seed, batch):
    events = rooted_events(seed)
    rc, cat, root = RootCatalog.empty(), Catalog.empty(), RootState()
    for i in range(0, len(events), batch):
        delta = events[i:i + batch]
        rc, cat = rc.advance(delta), cat.advance(delta)
        root = root.apply_all((ce.token, ce.event) for ce in delta)
        assert rc.root == root  # the one fold: the catalog's state is RootState's
        assert [ce for ce, _, _ in rc.folded] == delta
        assert rc.last_advance.events == len(delta)
        assert_same_answers(rc, cat)
    # a checkpoint of the same truth answers like a Catalog built from its descriptors
    state = RootState.from_checkpoint(rc.root.to_checkpoint())
    assert_same_answers(RootCatalog.of(state), Catalog.from_descriptors(
        cat.token, cat.regions(), cat.pending_range_changes(), cat.stores()))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_old_root_catalog_unchanged_after_advance(seed):
    rc = RootCatalog.empty()
    history = []
    for ce in rooted_events(seed, 60):
        history.append((rc, rc.regions(), rc.pending_range_changes(), rc.stores(), rc.token))
        rc = rc.advance([ce])
    for old, regions, pending, stores, token in history:
        assert (old.regions(), old.pending_range_changes(), old.stores(), old.token) == (
            regions, pending, stores, token)


def test_refuses_attribute_assignment_gaps_and_unfoldable_events():
    rc = RootCatalog.empty().advance(
        [ev(1, EventKind.STORE_JOINED, StoreMembership(1, "a:1"))])
    with pytest.raises(AttributeError):
        rc._root = RootState()  # type: ignore[misc]
    assert rc.advance([]) is rc and rc.advance([ev(1, EventKind.STORE_RETIRED,
                                                   StoreMembership(1))]) is rc
    with pytest.raises(CatalogGapError) as gap:
        rc.advance([ev(3, EventKind.STORE_RETIRED, StoreMembership(1))])
    assert (gap.value.expected_index, gap.value.got_index) == (2, 3)
    # a term going backwards cannot be folded (RootState raises, not rejects)
    backwards = CommittedEvent(RootToken(0, 2), ev(2, EventKind.STORE_RETIRED,
                                                   StoreMembership(1)).event)
    with pytest.raises(CatalogFoldError):
        rc.advance([backwards])
    assert rc.token == RootToken(1, 1) and rc.store(1) == StoreView(1, "a:1", StoreState.UP, 1)


def test_a_committed_event_root_refuses_advances_the_token_only():
    boot = [ev(1, EventKind.STORE_JOINED, StoreMembership(1, "s1")),
            ev(2, EventKind.REGION_BOOTSTRAP, RegionUpsert(region(1, b"", b"")))]
    rc = RootCatalog.empty().advance(boot)
    parent = rc.get(1)
    bad = RangeSplit(1, b"m", region(1, b"", b"m", 2), region(2, b"m", b"", 2),
                     region(1, b"", b"", 1, 5))  # a base that is not the current truth
    after = rc.advance([ev(3, EventKind.SPLIT_PLANNED, bad)])
    (ce, before, err), = after.folded
    assert before is rc.root and err is not None and err.reason == "superseded"
    assert after.token.index == 3 and after.regions() == [parent]
    assert after.max_revision == 2 and after.pending_range_changes() == {}


async def test_subscription_mirror_is_the_served_catalogs_state():
    sub = Subscription(None, 3.0)
    assert sub.catalog is None and sub.state.token.index == 0
    boot = [ev(1, EventKind.STORE_JOINED, StoreMembership(1, "s1")),
            ev(2, EventKind.REGION_BOOTSTRAP, RegionUpsert(region(1, b"", b"")))]
    sub._on_item(WatchItem(RootToken(1, 2), boot))
    parent = sub.state.descriptor(1)
    split = RangeSplit(1, b"m", region(1, b"", b"m", 2), region(2, b"m", b"", 2), parent)
    sub._on_item(WatchItem(RootToken(1, 4), [ev(3, EventKind.SPLIT_PLANNED, split),
                                             ev(4, EventKind.SPLIT_COMMITTED, split)]))
    assert isinstance(sub.catalog, RootCatalog) and sub.state is sub.catalog.root
    assert sub.state.token == sub.served_token == RootToken(1, 4)
    assert [d.region_id for d in sub.catalog.regions()] == [1, 2]
    assert sub.counters["transitions_planned_seen"] == 1
    (entry,) = sub.history
    assert entry.transition_id == "split:1:6d" and entry.phase == TransitionPhase.COMPLETED
    assert entry.source_token == RootToken(1, 3)
    # an event the mirror cannot fold: counted, and the view asks for a reload
    backwards = CommittedEvent(RootToken(0, 5), ev(5, EventKind.STORE_RETIRED,
                                                   StoreMembership(1)).event)
    assert sub._on_item(WatchItem(RootToken(1, 5), [backwards])) is True
    assert sub.counters["mirror_divergence"] == 1 and sub.last_error.startswith("mirror:")
    assert sub.state.token == RootToken(1, 4)
