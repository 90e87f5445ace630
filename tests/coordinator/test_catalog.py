"""Catalog: lookup/scan against a brute-force model under random topology changes, event
effects (plan / terminal / cancel), immutability, and the persistent index itself."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import catalog as catalog_mod
from coordinator.catalog import (
    Catalog,
    CatalogGapError,
    StoreView,
    _Counter,
    _PMap,
    merge_transition_id,
    split_transition_id,
)
from nokvpy.protocol.enums import EventKind, RegionState, StoreState
from nokvpy.protocol.records import (
    CommittedEvent,
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RegionRemoval,
    RegionUpsert,
    RootEvent,
    RootToken,
    StoreMembership,
)

# ---- helpers --------------------------------------------------------------------------------


def ev(index: int, kind: EventKind, payload: object) -> CommittedEvent:
    return CommittedEvent(RootToken(1, index), RootEvent(kind, payload))


def region(rid: int, start: bytes, end: bytes, version: int = 1, conf: int = 1,
           peers: tuple[PeerMeta, ...] = (PeerMeta(1, 100),)) -> RegionDescriptor:
    return RegionDescriptor(rid, start, end, RegionEpoch(version, conf), peers)


class Model:
    """Brute force: a dict of descriptors and a dict of open transitions; lookups scan all."""

    def __init__(self) -> None:
        self.regions: dict[int, RegionDescriptor] = {}
        self.pending: dict[int, str] = {}
        self.open: list[tuple[str, object]] = []  # (kind, payload) of planned transitions
        self.index = 0
        self.next_id = 1

    def lookup(self, key: bytes) -> RegionDescriptor | None:
        hits = [d for d in self.regions.values() if d.contains(key)]
        assert len(hits) <= 1
        return hits[0] if hits else None

    def scan(self, start: bytes, end: bytes, limit: int) -> list[RegionDescriptor]:
        out = sorted((d for d in self.regions.values()
                      if (not d.end_key or d.end_key > start) and (not end or d.start_key < end)),
                     key=lambda d: d.start_key)
        return out[:limit] if limit else out

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


def bootstrap_events() -> tuple[Model, list[CommittedEvent]]:
    m = Model()
    d = region(1, b"", b"")
    m.index = 1
    m.regions[1] = d.with_revision(1)
    return m, [ev(1, EventKind.REGION_BOOTSTRAP, RegionUpsert(d))]


def random_step(m: Model, rng: random.Random) -> CommittedEvent | None:
    """Mutate the model by one rooted event and return that event (or None if no op fits)."""
    choice = rng.choice(["split", "split", "merge", "finish", "finish", "cancel", "peer",
                         "tomb", "upsert"])
    live = sorted(m.regions.values(), key=lambda d: d.start_key)
    idx = m.index + 1
    if choice == "split":
        settled = [d for d in live if d.region_id not in m.pending]
        if not settled:
            return None
        p = rng.choice(settled)
        candidates = [p.start_key + bytes([rng.randrange(1, 256)])] + [
            bytes(rng.randrange(97, 123) for _ in range(rng.randrange(1, 4))) for _ in range(4)]
        inside = [k for k in candidates
                  if p.start_key < k and (not p.end_key or k < p.end_key)]
        if not inside:
            return None
        key = rng.choice(inside)
        left = region(p.region_id, p.start_key, key, p.epoch.version + 1, p.epoch.conf_ver,
                      p.peers)
        right = region(m.new_id(), key, p.end_key, p.epoch.version + 1, p.epoch.conf_ver,
                       p.peers)
        payload = RangeSplit(p.region_id, key, left, right, p)
        planned = rng.random() < 0.6
        del m.regions[p.region_id]
        m.regions[left.region_id] = left.with_revision(idx)
        m.regions[right.region_id] = right.with_revision(idx)
        if planned:
            tid = split_transition_id(p.region_id, key)
            m.pending[left.region_id] = m.pending[right.region_id] = tid
            m.open.append(("split", payload))
        m.index = idx
        return ev(idx, EventKind.SPLIT_PLANNED if planned else EventKind.SPLIT_COMMITTED,
                  payload)
    if choice == "merge":
        pairs = [(a, b) for a, b in zip(live, live[1:], strict=False)
                 if a.end_key == b.start_key and a.region_id not in m.pending
                 and b.region_id not in m.pending]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        merged = region(a.region_id, a.start_key, b.end_key,
                        max(a.epoch.version, b.epoch.version) + 1, a.epoch.conf_ver, a.peers)
        payload = RangeMerge(a.region_id, b.region_id, merged, a, b)
        planned = rng.random() < 0.6
        del m.regions[a.region_id], m.regions[b.region_id]
        m.regions[merged.region_id] = merged.with_revision(idx)
        if planned:
            m.pending[merged.region_id] = merge_transition_id(a.region_id, b.region_id)
            m.open.append(("merge", payload))
        m.index = idx
        return ev(idx, EventKind.MERGE_PLANNED if planned else EventKind.MERGED, payload)
    if choice in ("finish", "cancel"):
        if not m.open:
            return None
        kind, payload = m.open.pop(rng.randrange(len(m.open)))
        m.index = idx
        if kind == "split":
            assert isinstance(payload, RangeSplit)
            m.pending.pop(payload.left.region_id, None)
            m.pending.pop(payload.right.region_id, None)
            if choice == "finish":  # same truth: revisions stay at the plan index
                return ev(idx, EventKind.SPLIT_COMMITTED, payload)
            del m.regions[payload.left.region_id], m.regions[payload.right.region_id]
            m.regions[payload.parent_region_id] = payload.base_parent.with_revision(idx)
            return ev(idx, EventKind.SPLIT_CANCELLED, payload)
        assert isinstance(payload, RangeMerge)
        m.pending.pop(payload.merged.region_id, None)
        if choice == "finish":
            return ev(idx, EventKind.MERGED, payload)
        del m.regions[payload.merged.region_id]
        m.regions[payload.left_region_id] = payload.base_left.with_revision(idx)
        m.regions[payload.right_region_id] = payload.base_right.with_revision(idx)
        return ev(idx, EventKind.MERGE_CANCELLED, payload)
    if not live:
        return None
    d = rng.choice(live)
    if d.region_id in m.pending or (choice == "tomb" and len(live) < 4):
        return None  # keep plan bases valid; keep the keyspace mostly covered
    m.index = idx
    if choice == "peer":
        on9 = d.peer_on(9)
        peers = (tuple(p for p in d.peers if p.store_id != 9) if on9
                 else (*d.peers, PeerMeta(9, m.new_id())))
        target = replace(d, epoch=RegionEpoch(d.epoch.version, d.epoch.conf_ver + 1),
                         peers=peers, revision=0)
        m.regions[d.region_id] = target.with_revision(idx)
        change = PeerChange(d.region_id, 9, (on9 or target.peers[-1]).peer_id, target, d)
        return ev(idx, EventKind.PEER_REMOVED if on9 else EventKind.PEER_ADDED, change)
    if choice == "tomb":
        del m.regions[d.region_id]
        return ev(idx, EventKind.REGION_TOMBSTONED, RegionRemoval(d.region_id, d))
    target = replace(d, epoch=RegionEpoch(d.epoch.version, d.epoch.conf_ver + 1), revision=0)
    m.regions[d.region_id] = target.with_revision(idx)
    return ev(idx, EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(target))


def probe_keys(m: Model) -> list[bytes]:
    keys = {b"", b"a", b"zz", b"zzz", b"m", b"\xff"}
    for d in m.regions.values():
        keys |= {d.start_key, d.start_key + b"\x00"}
        if d.end_key:
            keys.add(d.end_key)
    return sorted(keys)


def assert_matches(cat: Catalog, m: Model) -> None:
    assert cat.token.index == m.index
    assert len(cat) == len(m.regions)
    assert cat.regions() == sorted(m.regions.values(), key=lambda d: d.start_key)
    assert cat.pending_range_changes() == m.pending
    for rid, d in m.regions.items():
        assert cat.get(rid) == d
        assert cat.is_range_change_pending(rid) == (rid in m.pending)
    keys = probe_keys(m)
    for k in keys:
        assert cat.lookup(k) == m.lookup(k), k
    for s in keys[::3]:
        for e in (b"", b"k", b"zz"):
            for limit in (0, 1, 3):
                assert cat.scan(s, e, limit) == m.scan(s, e, limit), (s, e, limit)


# ---- model-based ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 120),
       batch=st.integers(1, 7))
def test_lookup_and_scan_match_brute_force_model(seed, steps, batch):
    rng = random.Random(seed)
    m, events = bootstrap_events()
    cat = Catalog.empty().advance(events)
    assert_matches(cat, m)
    pending_batch: list[CommittedEvent] = []
    for _ in range(steps):
        e = random_step(m, rng)
        if e is None:
            continue
        pending_batch.append(e)
        if len(pending_batch) >= batch:
            cat = cat.advance(pending_batch)
            pending_batch = []
            assert_matches(cat, m)
    cat = cat.advance(pending_batch)
    assert_matches(cat, m)
    # a checkpoint of the same truth answers identically
    again = Catalog.from_descriptors(cat.token, cat.regions(), cat.pending_range_changes(),
                                     cat.stores())
    assert_matches(again, m)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_old_catalog_unchanged_after_advance(seed):
    rng = random.Random(seed)
    m, events = bootstrap_events()
    cat = Catalog.empty().advance(events)
    history: list[tuple[Catalog, list, dict, int, RootToken]] = []
    for _ in range(60):
        e = random_step(m, rng)
        if e is None:
            continue
        history.append((cat, cat.regions(), cat.pending_range_changes(), len(cat), cat.token))
        cat = cat.advance([e])
    for old, regions, pending, size, token in history:
        assert old.regions() == regions
        assert old.pending_range_changes() == pending
        assert len(old) == size and old.token == token


def test_catalog_refuses_attribute_assignment():
    cat = Catalog.empty()
    with pytest.raises(AttributeError):
        cat._token = RootToken(1, 5)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cat.foo = 1  # type: ignore[attr-defined]


# ---- event effects --------------------------------------------------------------------------


def test_split_plan_commit_cancel_and_pending():
    _, boot = bootstrap_events()
    cat = Catalog.empty().advance(boot)
    parent = cat.get(1)
    assert parent is not None
    left = region(1, b"", b"m", 2)
    right = region(2, b"m", b"", 2)
    split = RangeSplit(1, b"m", left, right, parent)
    planned = cat.advance([ev(2, EventKind.SPLIT_PLANNED, split)])
    assert planned.lookup(b"a").region_id == 1 and planned.lookup(b"z").region_id == 2
    assert planned.is_range_change_pending(1) and planned.is_range_change_pending(2)
    assert planned.pending_range_changes()[2] == "split:1:6d"
    assert planned.get(2).revision == 2

    done = planned.advance([ev(3, EventKind.SPLIT_COMMITTED, split)])
    assert not done.is_range_change_pending(1) and not done.is_range_change_pending(2)
    assert done.get(2).revision == 2  # same truth keeps the plan revision
    assert done.max_revision == 2

    cancelled = planned.advance([ev(3, EventKind.SPLIT_CANCELLED, split)])
    assert cancelled.get(2) is None
    assert cancelled.lookup(b"z").region_id == 1
    assert cancelled.get(1).same_truth(parent) and cancelled.get(1).revision == 3
    assert cancelled.pending_range_changes() == {}


def test_merge_plan_then_cancel_restores_bases():
    a, b = region(1, b"", b"m"), region(2, b"m", b"")
    cat = Catalog.from_descriptors(RootToken(1, 10), [a.with_revision(4), b.with_revision(5)])
    merged = region(1, b"", b"", 2)
    merge = RangeMerge(1, 2, merged, a, b)
    planned = cat.advance([ev(11, EventKind.MERGE_PLANNED, merge)])
    assert len(planned) == 1 and planned.is_range_change_pending(1)
    assert planned.lookup(b"z").region_id == 1
    back = planned.advance([ev(12, EventKind.MERGE_CANCELLED, merge)])
    assert [d.region_id for d in back.regions()] == [1, 2]
    assert not back.is_range_change_pending(1)
    # a cancel whose target is no longer installed is a no-op on descriptors
    superseded = planned.advance([
        ev(12, EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(region(1, b"", b"", 3))),
        ev(13, EventKind.MERGE_CANCELLED, merge),
    ])
    assert [d.region_id for d in superseded.regions()] == [1]
    assert superseded.get(1).epoch.version == 3


def test_peer_change_plan_and_cancel_do_not_mark_range_pending():
    base = region(1, b"", b"")
    cat = Catalog.from_descriptors(RootToken(1, 1), [base.with_revision(1)])
    target = region(1, b"", b"", 1, 2, (PeerMeta(1, 100), PeerMeta(2, 200)))
    change = PeerChange(1, 2, 200, target, base)
    planned = cat.advance([ev(2, EventKind.PEER_ADDITION_PLANNED, change)])
    assert planned.get(1).same_truth(target) and not planned.is_range_change_pending(1)
    cancelled = planned.advance([ev(3, EventKind.PEER_ADDITION_CANCELLED, change)])
    assert cancelled.get(1).same_truth(base) and cancelled.get(1).revision == 3


def test_upsert_clears_pending_and_tombstone_state_removes():
    _, boot = bootstrap_events()
    cat = Catalog.empty().advance(boot)
    left, right = region(1, b"", b"m", 2), region(2, b"m", b"", 2)
    cat = cat.advance([ev(2, EventKind.SPLIT_PLANNED, RangeSplit(1, b"m", left, right,
                                                                 cat.get(1)))])
    cat = cat.advance([ev(3, EventKind.REGION_DESCRIPTOR_PUBLISHED,
                          RegionUpsert(region(2, b"m", b"", 3)))])
    assert not cat.is_range_change_pending(2) and cat.is_range_change_pending(1)
    dead = replace(region(2, b"m", b"", 4), state=RegionState.TOMBSTONE)
    cat = cat.advance([ev(4, EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(dead))])
    assert cat.get(2) is None and cat.lookup(b"z") is None
    cat = cat.advance([ev(5, EventKind.REGION_TOMBSTONED, RegionRemoval(1))])
    assert len(cat) == 0 and cat.pending_range_changes() == {}


def test_store_membership_and_non_region_events():
    cat = Catalog.empty().advance([
        ev(1, EventKind.STORE_JOINED, StoreMembership(1, "127.0.0.1:1")),
        ev(2, EventKind.STORE_JOINED, StoreMembership(2, "127.0.0.1:2")),
        ev(3, EventKind.RECOVERY_RECORDED, object()),
        ev(4, EventKind.STORE_RETIRED, StoreMembership(2)),
    ])
    assert cat.token == RootToken(1, 4)
    assert cat.stores() == {
        1: StoreView(1, "127.0.0.1:1", StoreState.UP, 1),
        2: StoreView(2, "127.0.0.1:2", StoreState.RETIRED, 4),
    }
    assert len(cat) == 0


def test_advance_skips_incorporated_events_and_refuses_gaps():
    m, boot = bootstrap_events()
    cat = Catalog.empty().advance(boot)
    assert cat.advance(boot) is cat
    assert cat.advance([]) is cat
    with pytest.raises(CatalogGapError) as err:
        cat.advance([ev(3, EventKind.REGION_TOMBSTONED, RegionRemoval(1))])
    assert err.value.expected_index == 2 and err.value.got_index == 3


def test_from_descriptors_rejects_overlap_and_duplicates():
    with pytest.raises(ValueError):
        Catalog.from_descriptors(RootToken(1, 1), [region(1, b"", b"m"), region(2, b"k", b"")])
    with pytest.raises(ValueError):
        Catalog.from_descriptors(RootToken(1, 1), [region(1, b"", b"m"), region(1, b"m", b"")])


def test_install_over_occupied_start_key_evicts_and_counts():
    cat = Catalog.from_descriptors(RootToken(1, 1), [region(1, b"a", b"m")])
    cat = cat.advance([ev(2, EventKind.REGION_BOOTSTRAP, RegionUpsert(region(2, b"a", b"z")))])
    assert cat.get(1) is None and cat.lookup(b"q").region_id == 2
    assert cat.overlap_evictions == 1


# ---- cost and the persistent index ------------------------------------------------------------


def big_catalog(n: int) -> Catalog:
    descs = [RegionDescriptor(i + 1, b"" if i == 0 else b"k%08d" % i,
                              b"" if i == n - 1 else b"k%08d" % (i + 1), revision=1)
             for i in range(n)]
    return Catalog.from_descriptors(RootToken(1, 1), descs)


def test_advance_cost_is_proportional_to_delta_not_catalog():
    small, large = big_catalog(1_000), big_catalog(60_000)
    costs = []
    for cat in (small, large):
        d = cat.get(501)
        split = RangeSplit(501, d.start_key + b"5", region(501, d.start_key, d.start_key + b"5"),
                           region(10**9, d.start_key + b"5", d.end_key), d)
        one = cat.advance([ev(2, EventKind.SPLIT_PLANNED, split)])
        assert one.last_advance.events == 1
        assert one.last_advance.entries_touched == 6  # 2 index writes x 2 regions + 2 pending
        costs.append(one.last_advance.nodes_copied)
        height = cat._by_start.height()
        assert one.last_advance.nodes_copied <= 6 * (height + 1)
    # 60x more regions: at most one more tree level per touched path
    assert costs[1] <= costs[0] + 8


def test_pmap_matches_dict_with_small_fanout(monkeypatch):
    monkeypatch.setattr(catalog_mod, "_MAX", 4)
    monkeypatch.setattr(catalog_mod, "_MIN", 2)
    monkeypatch.setattr(catalog_mod, "_BULK", 3)
    rng = random.Random(7)
    ref = {k: k * 10 for k in range(0, 200, 3)}
    pm = _PMap.from_sorted(sorted(ref.items()))
    versions = [(pm, dict(ref))]
    c = _Counter()
    for _ in range(3000):
        k = rng.randrange(300)
        if rng.random() < 0.5:
            pm = pm.set(k, -k, c)
            ref[k] = -k
        else:
            pm = pm.delete(k, c)
            ref.pop(k, None)
        versions.append((pm, dict(ref)))
        check_tree(pm.root, 4)
    for pm, model in versions[::50]:
        assert list(pm.items()) == sorted(model.items())
        assert pm.size == len(model)
        for probe in range(-1, 302, 7):
            below = [k for k in model if k <= probe]
            expected = (max(below), model[max(below)]) if below else None
            assert pm.floor(probe) == expected
            assert pm.get(probe) == model.get(probe)
            assert list(pm.items_from(probe)) == sorted((k, v) for k, v in model.items()
                                                         if k >= probe)


def check_tree(node, fanout: int, depth: int = 0, leaf_depth: list | None = None) -> None:
    leaf_depth = [] if leaf_depth is None else leaf_depth
    assert list(node.keys) == sorted(node.keys) and len(node.keys) <= fanout
    if node.leaf:
        leaf_depth.append(depth)
        assert len(set(leaf_depth)) == 1, "leaves at different depths"
        return
    assert node.slots, "inner node without children"
    for k, child in zip(node.keys, node.slots, strict=True):
        assert child.keys and child.keys[0] == k
        check_tree(child, fanout, depth + 1, leaf_depth)


# ---- cross-check against the rooted state ----------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_catalog_matches_rooted_state_for_every_accepted_event(seed):
    """The catalog is a materialization of metaroot.state.RootState: fed the same accepted
    events it holds the same descriptors (with revisions) and the same pending range
    changes. Events RootState refuses never reach the log (metaroot validates before
    staging), so they are not fed to the catalog."""
    state_mod = pytest.importorskip("metaroot.state")
    rng = random.Random(seed)
    m = Model()
    joins = [ev(1, EventKind.STORE_JOINED, StoreMembership(1, "s1")),
             ev(2, EventKind.STORE_JOINED, StoreMembership(9, "s9"))]
    m.index = 3
    m.regions[1] = region(1, b"", b"").with_revision(3)
    boot = ev(3, EventKind.REGION_BOOTSTRAP, RegionUpsert(region(1, b"", b"")))
    generated = [*joins, boot] + [e for e in (random_step(m, rng) for _ in range(150)) if e]
    root = state_mod.RootState()
    cat = Catalog.empty()
    accepted = 0
    for e in generated:
        token = RootToken(1, root.token.index + 1)
        new, err = root.apply_committed(token, e.event)
        if err is not None:
            continue  # would have been refused before staging
        root = new
        cat = cat.advance([CommittedEvent(token, e.event)])
        accepted += 1
        assert cat.token == root.token
        assert cat.regions() == sorted(root.iter_descriptors(), key=lambda d: d.start_key)
        rooted_pending = {t.region_id: p.transition_id for p in root.pending_transitions()
                          if p.kind.name in ("SPLIT", "MERGE") for t in p.targets}
        assert cat.pending_range_changes() == rooted_pending
    assert accepted >= 3
