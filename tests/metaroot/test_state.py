"""Rooted state (DESIGN 4.1, 4.2, 4.6, 7): event effects, refusals, checkpoint + tail replay,
idempotency. Tests read init / act / check."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaroot.state import (
    PMap,
    RangeIndex,
    RootEventRejected,
    RootState,
    transition_id,
)
from nokvpy.protocol.enums import AllocatorKind, Duty, EventKind, RetryClass
from nokvpy.protocol.grants import AppendFences, RootCheckpoint
from nokvpy.protocol.records import (
    AllocatorFence,
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RegionRemoval,
    RegionUpsert,
    RootEvent,
    RootToken,
    StoreMembership,
)

# ---- builders ---------------------------------------------------------------------------------


def desc(rid, start=b"", end=b"", version=1, conf=1, stores=(1, 2, 3)) -> RegionDescriptor:
    return RegionDescriptor(rid, start, end, RegionEpoch(version, conf),
                            tuple(PeerMeta(s, rid * 100 + s) for s in stores))


def ev(kind, payload, rid="") -> RootEvent:
    return RootEvent(kind, payload, rid)


def join(store_id, addr="") -> RootEvent:
    return ev(EventKind.STORE_JOINED, StoreMembership(store_id, addr or f"s{store_id}"))


def bootstrap(d) -> RootEvent:
    return ev(EventKind.REGION_BOOTSTRAP, RegionUpsert(d))


def split(state, parent, key, new_id, kind=EventKind.SPLIT_PLANNED) -> RootEvent:
    base = state.descriptor(parent)
    v = RegionEpoch(base.epoch.version + 1, base.epoch.conf_ver)
    left = replace(base, end_key=key, epoch=v, revision=0)
    right = RegionDescriptor(new_id, key, base.end_key, v,
                             tuple(PeerMeta(p.store_id, new_id * 100 + p.store_id)
                                   for p in base.peers))
    return ev(kind, RangeSplit(parent, key, left, right, base))


def merge(state, left_id, right_id, kind=EventKind.MERGE_PLANNED) -> RootEvent:
    bl, br = state.descriptor(left_id), state.descriptor(right_id)
    merged = replace(bl, end_key=br.end_key, revision=0,
                     epoch=RegionEpoch(max(bl.epoch.version, br.epoch.version) + 1,
                                       bl.epoch.conf_ver))
    return ev(kind, RangeMerge(left_id, right_id, merged, bl, br))


def add_peer(state, rid, store, peer, kind=EventKind.PEER_ADDITION_PLANNED) -> RootEvent:
    base = state.descriptor(rid)
    target = replace(base, peers=base.peers + (PeerMeta(store, peer),), revision=0,
                     epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return ev(kind, PeerChange(rid, store, peer, target, base))


def remove_peer(state, rid, store, kind=EventKind.PEER_REMOVAL_PLANNED) -> RootEvent:
    base = state.descriptor(rid)
    peer = base.peer_on(store)
    target = replace(base, peers=tuple(p for p in base.peers if p.store_id != store),
                     revision=0, epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return ev(kind, PeerChange(rid, store, peer.peer_id, target, base))


def with_kind(event, kind) -> RootEvent:
    return replace(event, kind=kind)


def fence_witness(state, tid) -> RootEvent:
    """The record a region leader appends once its log fenced pending plan `tid` (the cancel
    guard of DESIGN 7 lets a cancel through only after it)."""
    return ev(EventKind.RECOVERY_RECORDED,
              RecoveryRecord(tid, "fenced", "test", observed_root_index=state.token.index))


def run(state: RootState, *events, term=1) -> RootState:
    for e in events:
        state = state.apply(RootToken(term, state.token.index + 1), e)
    return state


def cluster(stores=(1, 2, 3, 4)) -> RootState:
    return run(RootState(), *[join(s) for s in stores], bootstrap(desc(1)))


def invariants(s: RootState) -> None:
    live = list(s.iter_descriptors())
    assert len(live) == len(s.descriptors)
    for a, b in zip(live, live[1:], strict=False):
        assert a.end_key and a.end_key <= b.start_key, (a, b)
    for p in s.pending.values():
        for r in p.region_ids:
            assert s.pending_by_region.get(r) == p.transition_id
    assert all(s.pending.get(t) is not None for _, t in s.pending_by_region.items())
    assert s.to_checkpoint() == RootState.from_checkpoint(s.to_checkpoint()).to_checkpoint()


def rejected(state, event, reason, fences=None) -> RootEventRejected:
    before = state.to_checkpoint()
    with pytest.raises(RootEventRejected) as info:
        state.validate(event, fences)
    with pytest.raises(RootEventRejected):
        state.apply(RootToken(1, state.token.index + 1), event, fences)
    assert info.value.reason == reason, info.value
    assert state.to_checkpoint() == before  # never half applied
    return info.value


# ---- persistent structures --------------------------------------------------------------------


def test_pmap_is_persistent_and_compares_as_a_mapping():
    a = PMap.from_items((i, str(i)) for i in range(3000))
    b = a.set(5, "x").delete(7)
    assert a.get(5) == "5" and 7 in a and len(a) == 3000
    assert b.get(5) == "x" and 7 not in b and len(b) == 2999
    assert PMap.from_items(reversed(list(a.items()))) == a
    assert a != b


def test_range_index_orders_and_finds_floor():
    idx = RangeIndex()
    for k in range(500, 0, -1):
        idx = idx.insert(b"%05d" % k, k)
    assert [rid for _, rid in idx] == list(range(1, 501))
    assert idx.floor(b"00250x") == 250
    idx2 = idx.remove(b"00250", 250)
    assert idx2.floor(b"00250x") == 249 and idx.floor(b"00250x") == 250


# ---- membership, fences, upserts -------------------------------------------------------------


def test_store_join_retire_bump_membership_epoch_only():
    s = run(RootState(), join(1), join(2))
    assert s.membership_epoch == 2 and s.cluster_epoch == 0 and s.live_store_ids() == [1, 2]
    s = run(s, join(1))  # same address: no-op
    assert s.membership_epoch == 2 and s.token.index == 3
    s = run(s, join(1, "elsewhere"), ev(EventKind.STORE_RETIRED, StoreMembership(2)))
    assert s.membership_epoch == 4 and s.store(1).address == "elsewhere"
    assert s.store(2).retired and s.live_store_ids() == [1]
    rejected(s, join(2), "store_retired")
    rejected(s, ev(EventKind.STORE_RETIRED, StoreMembership(9)), "unknown_store")


def test_allocator_fences_rise_and_a_lower_fence_is_rejected():
    s = run(RootState(), ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 100)),
            ev(EventKind.TSO_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.TSO, 7)))
    assert (s.id_fence, s.tso_fence) == (100, 7)
    e = rejected(s, ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 99)),
                 "fence_regression")
    assert "100" in str(e) and e.retry_class == RetryClass.REFRESH
    s2 = run(s, ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 100)))
    assert s2.id_fence == 100 and s2.token.index == s.token.index + 1  # equal: no-op
    rejected(s, ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.TSO, 500)),
             "payload_mismatch")


def test_bootstrap_publish_tombstone():
    s = cluster()
    d = s.descriptor(1)
    assert d.revision == 5 and s.cluster_epoch == 1 and s.region_for_key(b"zz") == d
    newer = replace(desc(1), epoch=RegionEpoch(1, 2), peers=desc(1, stores=(1, 2, 4)).peers)
    s = run(s, ev(EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(newer)))
    assert s.descriptor(1).same_truth(newer) and s.descriptor(1).revision == 6
    assert s.cluster_epoch == 2
    same = run(s, ev(EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(newer)))
    assert same.cluster_epoch == 2 and same.descriptor(1).revision == 6  # no-op publish
    rejected(s, ev(EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(desc(1))), "stale_epoch")
    rejected(s, bootstrap(desc(2, b"a", b"b")), "range_overlap")
    rejected(s, bootstrap(desc(1, stores=(1,))), "region_exists")
    s = run(s, ev(EventKind.REGION_TOMBSTONED, RegionRemoval(1)))
    assert s.descriptor(1) is None and s.cluster_epoch == 3 and s.region_for_key(b"a") is None
    s = run(s, bootstrap(desc(2, b"a", b"b")), bootstrap(desc(3, b"b", b"")))
    assert [d.region_id for d in s.iter_descriptors()] == [2, 3]
    rejected(s, bootstrap(desc(4, b"", b"a\x00")), "range_overlap")
    rejected(s, bootstrap(desc(5, b"0", b"1", stores=(9,))), "store_not_live")


@pytest.mark.parametrize("event, reason", [
    (RootEvent(99, StoreMembership(1)), "unknown_kind"),
    (RootEvent(EventKind.STORE_JOINED, AllocatorFence(AllocatorKind.ID, 1)), "payload_type"),
    (RootEvent(EventKind.REGION_BOOTSTRAP, RegionUpsert(None)), "invalid_descriptor"),
    (RootEvent(EventKind.REGION_BOOTSTRAP, RegionUpsert(desc(2, b"b", b"a"))),
     "invalid_descriptor"),
    (RootEvent(EventKind.REGION_BOOTSTRAP, RegionUpsert(RegionDescriptor(2, b"x", b"y"))),
     "invalid_descriptor"),
    (RootEvent(EventKind.STORE_JOINED, StoreMembership(None)), "invalid_store"),
    (RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, None)),
     "invalid_fence"),
    (RootEvent(EventKind.RECOVERY_RECORDED, RecoveryRecord("t", "", "x")),
     "invalid_recovery_record"),
    ("not an event", "invalid_event"),
])
def test_malformed_events_are_refused_with_a_reason(event, reason):
    s = cluster()
    rejected(s, event, reason)
    if reason not in ("invalid_recovery_record",):
        with pytest.raises(RootEventRejected):
            s.precheck(event)


def test_apply_committed_turns_an_invalid_entry_into_a_noop():
    s = cluster()
    bad = ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 5))
    s = run(s, ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 10)))
    s2, err = s.apply_committed(RootToken(1, s.token.index + 1), bad)
    assert err.reason == "fence_regression" and s2.token.index == s.token.index + 1
    assert s2.id_fence == 10
    with pytest.raises(ValueError):
        s.apply(RootToken(1, s.token.index + 5), bad)  # tokens are dense


# ---- transitions ---------------------------------------------------------------------------


def test_split_planned_installs_targets_and_pending_then_commit_clears():
    s = cluster()
    plan = split(s, 1, b"m", 2)
    s1 = run(s, plan)
    assert s1.cluster_epoch == s.cluster_epoch + 1
    assert [d.region_id for d in s1.iter_descriptors()] == [1, 2]
    assert s1.descriptor(2).revision == s1.token.index
    tid = transition_id(plan)
    assert tid == "split:1:6d"
    entry = s1.pending.get(tid)
    assert entry.source_token == s1.token and entry.bases[0].same_truth(s.descriptor(1))
    assert s1.pending_for_region(2).transition_id == tid
    s2 = run(s1, with_kind(plan, EventKind.SPLIT_COMMITTED))
    assert not s2.pending and s2.cluster_epoch == s1.cluster_epoch  # epoch bumped at plan time
    assert s2.descriptor(2) == s1.descriptor(2)


def test_split_cancel_restores_base_and_bumps_epoch():
    s = cluster()
    plan = split(s, 1, b"m", 2)
    s1 = run(s, plan)
    s1 = run(s1, fence_witness(s1, transition_id(plan)))
    s2 = run(s1, with_kind(plan, EventKind.SPLIT_CANCELLED))
    assert s2.descriptor(2) is None and s2.descriptor(1).same_truth(s.descriptor(1))
    assert s2.descriptor(1).revision == s2.token.index and not s2.pending
    assert s2.cluster_epoch == s1.cluster_epoch + 1
    s3 = run(s2, with_kind(plan, EventKind.SPLIT_CANCELLED))  # no-op cancel
    assert s3.cluster_epoch == s2.cluster_epoch and s3.descriptor(1) == s2.descriptor(1)


def test_terminal_without_plan_applies_directly_and_bumps_epoch():
    s = cluster()
    s1 = run(s, split(s, 1, b"m", 2, EventKind.SPLIT_COMMITTED))
    assert s1.cluster_epoch == s.cluster_epoch + 1 and not s1.pending
    assert s1.descriptor(2) is not None
    done = with_kind(split(s, 1, b"m", 2), EventKind.SPLIT_CANCELLED)
    rejected(s1, done, "can_no_longer_be_cancelled")


def test_merge_and_peer_changes():
    s = cluster()
    s = run(s, split(s, 1, b"m", 2, EventKind.SPLIT_COMMITTED))
    m = merge(s, 1, 2)
    s1 = run(s, m)
    assert [d.region_id for d in s1.iter_descriptors()] == [1] and s1.descriptor(1).end_key == b""
    assert transition_id(m) == "merge:1:2"
    s1 = run(s1, with_kind(m, EventKind.MERGED))
    a = add_peer(s1, 1, 4, 104)
    assert transition_id(a) == "peer:1:add:4:104"
    s2 = run(s1, a)
    assert s2.descriptor(1).peer_on(4) and s2.pending_for_region(1)
    rejected(s2, remove_peer(s2, 1, 2), "pending_conflict")
    s3 = run(s2, with_kind(a, EventKind.PEER_ADDED))
    r = remove_peer(s3, 1, 1)
    assert transition_id(r) == "peer:1:remove:1:101"
    s3 = run(s3, r)
    s4 = run(s3, fence_witness(s3, transition_id(r)),
             with_kind(r, EventKind.PEER_REMOVAL_CANCELLED))
    assert s4.descriptor(1).peer_on(1) and not s4.pending
    rejected(s4, add_peer(s4, 1, 9, 109), "store_not_live")
    rejected(s4, ev(EventKind.REGION_TOMBSTONED, RegionRemoval(1, desc(1, stores=(7,)))),
             "stale_base")


def test_publish_and_tombstone_blocked_while_a_transition_is_pending():
    s = cluster()
    s = run(s, split(s, 1, b"m", 2))
    cur = s.descriptor(2)
    bumped = replace(cur, epoch=RegionEpoch(cur.epoch.version, cur.epoch.conf_ver + 1))
    e = rejected(s, ev(EventKind.REGION_DESCRIPTOR_PUBLISHED, RegionUpsert(bumped)),
                 "range_change_pending")
    assert e.retry_class == RetryClass.CONFLICT
    rejected(s, ev(EventKind.REGION_TOMBSTONED, RegionRemoval(2)), "pending_conflict")


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: replace(p, right=replace(p.right, start_key=b"h")), "invalid_split"),
    (lambda p: replace(p, right=replace(p.right, region_id=1)), "invalid_split"),
    (lambda p: replace(p, left=replace(p.left, epoch=RegionEpoch(1, 1))), "invalid_split"),
    (lambda p: replace(p, base_parent=replace(p.base_parent, region_id=7)), "payload_mismatch"),
])
def test_invalid_splits_are_refused(mutate, reason):
    s = cluster()
    s = run(s, split(s, 1, b"m", 2, EventKind.SPLIT_COMMITTED))  # region 1 = ["", "m")
    plan = split(s, 1, b"g", 3)
    rejected(s, replace(plan, payload=mutate(plan.payload)), reason)


def test_a_plan_built_on_an_old_base_is_superseded():
    s0 = cluster()
    s = run(s0, split(s0, 1, b"m", 2, EventKind.SPLIT_COMMITTED))
    e = rejected(s, split(s0, 1, b"g", 3), "superseded")
    assert e.retry_class == RetryClass.REFRESH


def test_split_into_an_existing_region_id_is_refused():
    s = cluster()
    s = run(s, split(s, 1, b"m", 2, EventKind.SPLIT_COMMITTED))
    rejected(s, split(s, 1, b"g", 2), "region_id_in_use")


def test_recovery_records_are_append_only():
    s = cluster()
    r1 = RecoveryRecord("split:1:6d", "compensated", "store 2 apply failed")
    r2 = RecoveryRecord("split:1:6d", "reconciled_forward", "late apply observed")
    s = run(s, ev(EventKind.RECOVERY_RECORDED, r1), ev(EventKind.RECOVERY_RECORDED, r2))
    assert s.recovery_list() == [r1, r2]
    assert RootState.from_checkpoint(s.to_checkpoint()).recovery_list() == [r1, r2]


def test_cluster_epoch_fence():
    s = cluster()
    e = rejected(s, bootstrap(desc(2, b"", b"a")), "cluster_epoch_mismatch",
                 AppendFences(expected_cluster_epoch=s.cluster_epoch + 1))
    assert e.retry_class == RetryClass.REFRESH
    with pytest.raises(RootEventRejected):
        s.check_fences(AppendFences(expected_cluster_epoch=0))
    s.check_fences(AppendFences(expected_cluster_epoch=s.cluster_epoch))


def test_duty_gated_fence_write_needs_the_live_era_once_granted():
    from metaroot.grants import plan_grant_command
    from nokvpy.protocol.grants import DutyGrant, GrantCommand, GrantCommandKind

    s = cluster()
    fence = ev(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 5000))
    s.validate(fence, AppendFences())  # no grant yet: ungoverned
    events, res = plan_grant_command(s, GrantCommand(
        GrantCommandKind.ISSUE, "c1", now_ms=0, expires_at_ms=1000,
        duties=(DutyGrant(Duty.ALLOC_ID, 1000),)))
    s = run(s, *events)
    with pytest.raises(RootEventRejected) as info:  # pre-append only: apply replays the log
        s.validate(fence, AppendFences())
    assert info.value.reason == "grant_era_required" and info.value.violation == "silence"
    s.validate(fence, AppendFences(grant_era=res.grant.era, duty=Duty.ALLOC_ID))
    rejected(s, fence, "grant_era_not_live", AppendFences(grant_era=res.grant.era + 1,
                                                          duty=Duty.ALLOC_ID))


# ---- idempotency ---------------------------------------------------------------------------


def test_request_ids_make_appends_idempotent():
    s = cluster()
    plan = replace(split(s, 1, b"m", 2), request_id="req-1")
    s1 = run(s, plan)
    assert s1.lookup_request("req-1", plan) == s1.token
    s2 = run(s1, plan)  # identical re-application: token advances, nothing else
    assert s2.token.index == s1.token.index + 1
    assert replace(s2.to_checkpoint(), token=s1.token) == s1.to_checkpoint()
    other = replace(split(s, 1, b"n", 3), request_id="req-1")
    with pytest.raises(RootEventRejected) as info:
        s1.lookup_request("req-1", other)
    assert info.value.reason == "request_id_mismatch"
    rejected(s1, other, "request_id_mismatch")


def test_request_window_is_bounded_and_survives_checkpoint():
    s = RootState(request_window=3)
    events = [replace(join(i), request_id=f"r{i}") for i in range(1, 7)]
    s = run(s, *events)
    assert sorted(s.requests) == ["r4", "r5", "r6"]
    again = RootState.from_checkpoint(s.to_checkpoint())
    assert again == s
    t1 = run(s, replace(join(9), request_id="r9"))
    t2 = run(again, replace(join(9), request_id="r9"))
    assert t1 == t2 and sorted(t1.requests) == ["r5", "r6", "r9"]


def test_checkpoint_survives_the_wire_codec():
    wire = pytest.importorskip("nokvpy.wire")
    s = cluster()
    s = run(s, split(s, 1, b"m", 2), ev(EventKind.RECOVERY_RECORDED, RecoveryRecord("t", "a", "e")))
    cp = s.to_checkpoint()
    back = wire.decode(wire.encode(cp))
    assert isinstance(back, RootCheckpoint) and RootState.from_checkpoint(back) == s


# ---- property: checkpoint(k) + tail == live state ---------------------------------------------

KEYS = [bytes([c]) for c in b"bdfhjlnprtvx"]


def candidate(state: RootState, data, next_id: int) -> RootEvent:
    """A mostly valid event drawn from the current state."""
    live = list(state.iter_descriptors())
    choice = data.draw(st.sampled_from(
        ["split", "split", "merge", "add", "remove", "finish", "finish", "cancel", "fence",
         "join", "tombstone", "bootstrap", "bootstrap", "stale"]))
    if choice == "split" and live:
        d = data.draw(st.sampled_from(live))
        keys = [k for k in KEYS if d.start_key < k and (not d.end_key or k < d.end_key)]
        if keys:
            kind = data.draw(st.sampled_from([EventKind.SPLIT_PLANNED, EventKind.SPLIT_COMMITTED]))
            return split(state, d.region_id, data.draw(st.sampled_from(keys)), next_id, kind)
    if choice == "merge" and len(live) > 1:
        i = data.draw(st.integers(0, len(live) - 2))
        return merge(state, live[i].region_id, live[i + 1].region_id)
    if choice == "add" and live:
        d = data.draw(st.sampled_from(live))
        free = [s for s in state.live_store_ids() if d.peer_on(s) is None]
        if free:
            return add_peer(state, d.region_id, free[0], next_id)
    if choice == "remove" and live:
        d = data.draw(st.sampled_from(live))
        if len(d.peers) > 1:
            return remove_peer(state, d.region_id, d.peers[-1].store_id)
    pending = state.pending_transitions()
    if choice in ("finish", "cancel") and pending:
        p = data.draw(st.sampled_from(pending))
        if choice == "cancel" and state.fence_witness(p.transition_id,
                                                      p.source_token.index) is None:
            return fence_witness(state, p.transition_id)  # the leader fences, then cancels
        ev_kind = {"finish": {EventKind.SPLIT_PLANNED: EventKind.SPLIT_COMMITTED,
                              EventKind.MERGE_PLANNED: EventKind.MERGED,
                              EventKind.PEER_ADDITION_PLANNED: EventKind.PEER_ADDED,
                              EventKind.PEER_REMOVAL_PLANNED: EventKind.PEER_REMOVED},
                   "cancel": {EventKind.SPLIT_PLANNED: EventKind.SPLIT_CANCELLED,
                              EventKind.MERGE_PLANNED: EventKind.MERGE_CANCELLED,
                              EventKind.PEER_ADDITION_PLANNED: EventKind.PEER_ADDITION_CANCELLED,
                              EventKind.PEER_REMOVAL_PLANNED: EventKind.PEER_REMOVAL_CANCELLED},
                   }[choice][p.planned_kind]
        return rebuild_event(p, ev_kind)
    if choice == "fence":
        return ev(EventKind.ID_ALLOCATOR_FENCED,
                  AllocatorFence(AllocatorKind.ID, data.draw(st.integers(0, 50))))
    if choice == "tombstone" and live:
        return ev(EventKind.REGION_TOMBSTONED,
                  RegionRemoval(data.draw(st.sampled_from(live)).region_id))
    if choice == "stale" and live:  # a publish with an old epoch: refused
        d = data.draw(st.sampled_from(live))
        return ev(EventKind.REGION_DESCRIPTOR_PUBLISHED,
                  RegionUpsert(replace(d, epoch=RegionEpoch(1, 1), revision=0)))
    gap = first_gap(live)
    if gap is not None and (choice == "bootstrap" or not live):
        return bootstrap(desc(next_id, *gap))
    return join(data.draw(st.integers(1, 6)), data.draw(st.sampled_from(["a", "b"])))


def first_gap(live) -> tuple[bytes, bytes] | None:
    prev = b""
    for d in live:
        if d.start_key > prev:
            return prev, d.start_key
        prev = d.end_key
        if not prev:
            return None
    return prev, b""


def rebuild_event(p, kind) -> RootEvent:
    """The terminal or cancel event matching a pending entry."""
    t, b = p.targets, p.bases
    if p.kind.name == "SPLIT":
        return ev(kind, RangeSplit(b[0].region_id, t[1].start_key, t[0], t[1], b[0]))
    if p.kind.name == "MERGE":
        return ev(kind, RangeMerge(b[0].region_id, b[1].region_id, t[0], b[0], b[1]))
    old = {(q.store_id, q.peer_id) for q in b[0].peers}
    new = {(q.store_id, q.peer_id) for q in t[0].peers}
    (store, peer), = (new - old) or (old - new)
    return ev(kind, PeerChange(b[0].region_id, store, peer, t[0], b[0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_checkpoint_plus_tail_equals_live_state(data):
    state = run(RootState(request_window=8), join(1), join(2), join(3), bootstrap(desc(1)))
    log: list[tuple[RootToken, RootEvent]] = []
    checkpoints: dict[int, RootCheckpoint] = {state.token.index: state.to_checkpoint()}
    n = data.draw(st.integers(5, 40))
    for step in range(n):
        e = replace(candidate(state, data, 10 + step), request_id=f"q{step}")
        if log and data.draw(st.integers(0, 9)) == 0:
            e = log[data.draw(st.integers(0, len(log) - 1))][1]  # re-deliver an old event
        term = state.token.term + data.draw(st.integers(0, 1))
        token = RootToken(term, state.token.index + 1)
        before = state
        state, err = state.apply_committed(token, e)
        log.append((token, e))
        assert state.token == token and state.cluster_epoch >= before.cluster_epoch
        assert state.membership_epoch >= before.membership_epoch
        if err is not None or e.request_id in before.requests:
            assert replace(state.to_checkpoint(), token=before.token,
                           applied_requests=()) == replace(before.to_checkpoint(),
                                                           applied_requests=())
        invariants(state)
        checkpoints[state.token.index] = state.to_checkpoint()
    k = data.draw(st.sampled_from(sorted(checkpoints)))
    base = RootState.from_checkpoint(checkpoints[k])
    tail = [(t, e) for t, e in log if t.index > k]
    assert base.apply_all(tail) == state
    assert RootState.from_checkpoint(state.to_checkpoint()) == state
