"""Transition assessment (DESIGN 4.6; reference 2.6): every row of the decision table, for
split, merge, peer addition and peer removal, checked against what the rooted state does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordinator.assessment import TABLE, assess, list_transitions
from metaroot.state import RootEventRejected, RootState, transition_id
from nokvpy.protocol.enums import (
    AssessmentDecision,
    EventKind,
    RetryClass,
    TransitionKind,
    TransitionPhase,
)
from nokvpy.protocol.records import (
    AllocatorFence,
    AllocatorKind,
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

Ph, D, R = TransitionPhase, AssessmentDecision, RetryClass

# ---- builders -------------------------------------------------------------------------------


def desc(rid, start=b"", end=b"", stores=(1, 2, 3)) -> RegionDescriptor:
    return RegionDescriptor(rid, start, end, RegionEpoch(1, 1),
                            tuple(PeerMeta(s, rid * 100 + s) for s in stores))


def run(state, *events):
    for e in events:
        state = state.apply(RootToken(1, state.token.index + 1), e)
    return state


def base_cluster() -> RootState:
    joins = [RootEvent(EventKind.STORE_JOINED, StoreMembership(s, f"s{s}")) for s in (1, 2, 3, 4)]
    return run(RootState(), *joins, RootEvent(EventKind.REGION_BOOTSTRAP, RegionUpsert(desc(1))))


def split(s, kind=EventKind.SPLIT_PLANNED, parent=1, key=b"m", new=2):
    base = s.descriptor(parent)
    v = RegionEpoch(base.epoch.version + 1, base.epoch.conf_ver)
    left = replace(base, end_key=key, epoch=v, revision=0)
    right = RegionDescriptor(new, key, base.end_key, v,
                             tuple(PeerMeta(p.store_id, new * 100 + p.store_id) for p in base.peers))
    return RootEvent(kind, RangeSplit(parent, key, left, right, base))


def merge(s, kind=EventKind.MERGE_PLANNED):
    bl, br = s.descriptor(1), s.descriptor(2)
    m = replace(bl, end_key=br.end_key, revision=0,
                epoch=RegionEpoch(max(bl.epoch.version, br.epoch.version) + 1, bl.epoch.conf_ver))
    return RootEvent(kind, RangeMerge(1, 2, m, bl, br))


def add_peer(s, kind=EventKind.PEER_ADDITION_PLANNED, store=4, peer=104):
    base = s.descriptor(1)
    t = replace(base, peers=base.peers + (PeerMeta(store, peer),), revision=0,
                epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return RootEvent(kind, PeerChange(1, store, peer, t, base))


def remove_peer(s, kind=EventKind.PEER_REMOVAL_PLANNED, store=3):
    base = s.descriptor(1)
    peer = base.peer_on(store).peer_id
    t = replace(base, peers=tuple(p for p in base.peers if p.store_id != store), revision=0,
                epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return RootEvent(kind, PeerChange(1, store, peer, t, base))


def merge_cluster() -> RootState:
    s = base_cluster()
    return run(s, split(s, EventKind.SPLIT_COMMITTED))


# family -> (initial state, plan builder, cancel kind, terminal kind, transition kind,
#            a conflicting pending plan on region 1, an unrelated committed change to region 1)
FAMILIES = {
    "split": (base_cluster, split, EventKind.SPLIT_CANCELLED, EventKind.SPLIT_COMMITTED,
              TransitionKind.SPLIT, lambda s: add_peer(s, peer=999),
              lambda s: add_peer(s, EventKind.PEER_ADDED, peer=888)),
    "merge": (merge_cluster, merge, EventKind.MERGE_CANCELLED, EventKind.MERGED,
              TransitionKind.MERGE, lambda s: add_peer(s, peer=999),
              lambda s: add_peer(s, EventKind.PEER_ADDED, peer=888)),
    "peer_add": (base_cluster, add_peer, EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_ADDED,
                 TransitionKind.PEER_ADDITION, lambda s: remove_peer(s, store=2),
                 lambda s: remove_peer(s, EventKind.PEER_REMOVED, store=2)),
    "peer_remove": (base_cluster, remove_peer, EventKind.PEER_REMOVAL_CANCELLED,
                    EventKind.PEER_REMOVED, TransitionKind.PEER_REMOVAL,
                    lambda s: add_peer(s, peer=999),
                    lambda s: add_peer(s, EventKind.PEER_ADDED, peer=888)),
}

# The decision table, restated independently: (event class, situation) -> expectation.
EXPECTED = {
    ("planned", "open"): (Ph.PLANNED, D.APPLY, R.NONE),
    ("planned", "matching"): (Ph.ADMITTED, D.SKIP, R.NONE),
    ("planned", "completed"): (Ph.COMPLETED, D.SKIP, R.NONE),
    ("planned", "conflicting"): (Ph.CONFLICTED, D.REJECT, R.CONFLICT),
    ("planned", "superseded"): (Ph.SUPERSEDED, D.REJECT, R.REFRESH),
    ("cancel", "open"): (Ph.CANCELLED, D.SKIP, R.NONE),
    ("cancel", "matching"): (Ph.ADMITTED, D.APPLY, R.NONE),
    ("cancel", "completed"): (Ph.ABORTED, D.REJECT, R.PERMANENT),
    ("cancel", "conflicting"): (Ph.CONFLICTED, D.REJECT, R.CONFLICT),
    ("cancel", "superseded"): (Ph.SUPERSEDED, D.SKIP, R.NONE),
    ("terminal", "open"): (Ph.PLANNED, D.APPLY, R.NONE),
    ("terminal", "matching"): (Ph.ADMITTED, D.APPLY, R.NONE),
    ("terminal", "completed"): (Ph.COMPLETED, D.SKIP, R.NONE),
    ("terminal", "conflicting"): (Ph.CONFLICTED, D.REJECT, R.CONFLICT),
    ("terminal", "superseded"): (Ph.ABORTED, D.REJECT, R.PERMANENT),
}


def _fenced(state, planned):
    return run(state, RootEvent(EventKind.RECOVERY_RECORDED, RecoveryRecord(
        transition_id(planned), "fenced", "leader fenced its log",
        observed_root_index=state.token.index)))


def situation_state(family: str, situation: str):
    init, plan, _, terminal, _, conflicting, other = FAMILIES[family]
    s0 = init()
    planned = plan(s0)
    state = {
        "open": lambda: s0,
        # the region leader recorded its fence: the root's cancel guard lets a cancel through
        # (unfenced cancels: tests/metaroot/test_cancel_guard.py)
        "matching": lambda: _fenced(run(s0, planned), planned),
        "completed": lambda: run(s0, planned, replace(planned, kind=terminal)),
        "conflicting": lambda: run(s0, conflicting(s0)),
        "superseded": lambda: run(s0, other(s0)),
    }[situation]()
    return s0, planned, state


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("cls, situation", sorted(EXPECTED))
def test_decision_table_row(family, cls, situation):
    _, _, cancel, terminal, tkind, _, _ = FAMILIES[family]
    s0, planned, state = situation_state(family, situation)
    event = replace(planned, kind={"planned": planned.kind, "cancel": cancel,
                                   "terminal": terminal}[cls])
    a = assess(state, event)
    phase, decision, retry = EXPECTED[(cls, situation)]
    assert (a.phase, a.decision, a.retry_class) == (phase, decision, retry), a
    assert a.kind == tkind and a.transition_id and a.reason
    # the rooted state does exactly what the assessment says
    token = RootToken(1, state.token.index + 1)
    if decision == D.REJECT:
        with pytest.raises(RootEventRejected):
            state.apply(token, event)
    else:
        after = state.apply(token, event)
        changed = replace(after.to_checkpoint(), token=state.token) != state.to_checkpoint()
        assert changed == (decision == D.APPLY)


def test_table_covers_every_class_and_situation():
    assert len(TABLE) == 19  # 3 x 5 transition rows + 4 tombstone rows


def test_planned_twice_second_is_skipped():
    s = base_cluster()
    plan = split(s)
    assert assess(s, plan).decision == D.APPLY
    s1 = run(s, replace(plan, request_id="r1"))
    again = assess(s1, replace(plan, request_id="r2"))
    assert (again.phase, again.decision) == (Ph.ADMITTED, D.SKIP)
    dup = assess(s1, replace(plan, request_id="r1"))
    assert dup.decision == D.SKIP and dup.reason.startswith("duplicate_request")
    reused = assess(s1, replace(split(s, key=b"n"), request_id="r1"))
    assert reused.decision == D.REJECT and reused.retry_class == R.PERMANENT


def test_expected_cluster_epoch_fences_apply_rows_only():
    s = base_cluster()
    plan = split(s)
    stale = assess(s, plan, expected_cluster_epoch=s.cluster_epoch - 1)
    assert stale.decision == D.REJECT and stale.retry_class == R.REFRESH
    assert assess(s, plan, expected_cluster_epoch=s.cluster_epoch).decision == D.APPLY
    s1 = run(s, plan)  # a retried publish after the epoch moved is still accepted
    assert assess(s1, plan, expected_cluster_epoch=s.cluster_epoch).decision == D.SKIP


@pytest.mark.parametrize("setup, expected", [
    ("open", (Ph.PLANNED, D.APPLY, R.NONE)),
    ("completed", (Ph.COMPLETED, D.SKIP, R.NONE)),
    ("conflicting", (Ph.CONFLICTED, D.REJECT, R.CONFLICT)),
    ("superseded", (Ph.SUPERSEDED, D.REJECT, R.REFRESH)),
])
def test_tombstone_rows(setup, expected):
    s = base_cluster()
    base = s.descriptor(1)
    state = {"open": s,
             "completed": run(s, RootEvent(EventKind.REGION_TOMBSTONED, RegionRemoval(1))),
             "conflicting": run(s, add_peer(s)),
             "superseded": run(s, add_peer(s, EventKind.PEER_ADDED))}[setup]
    a = assess(state, RootEvent(EventKind.REGION_TOMBSTONED, RegionRemoval(1, base)))
    assert (a.phase, a.decision, a.retry_class) == expected
    assert a.kind == TransitionKind.TOMBSTONE and a.transition_id == "tombstone:1"


def test_malformed_and_non_transition_events():
    s = base_cluster()
    bad = assess(s, RootEvent(EventKind.SPLIT_PLANNED, RegionRemoval(1)))
    assert bad.decision == D.REJECT and bad.phase == Ph.ABORTED and "payload_type" in bad.reason
    ok = assess(s, RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 9)))
    assert (ok.kind, ok.transition_id, ok.decision) == (None, "", D.APPLY)
    s = run(s, RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 50)))
    low = assess(s, RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 9)))
    assert low.decision == D.REJECT and "fence_regression" in low.reason


def test_list_transitions_reports_admitted_entries_with_source_token():
    s = merge_cluster()
    s = run(s, add_peer(s))
    token_peer = s.token
    s = run(s, split(s, parent=2, key=b"t", new=3))
    entries = list_transitions(s)
    assert [e.transition_id for e in entries] == ["peer:1:add:4:104", "split:2:74"]
    assert all(e.phase == Ph.ADMITTED for e in entries)
    assert entries[0].source_token == token_peer and entries[1].source_token == s.token
    assert entries[1].region_ids == (2, 3) and entries[1].bases[0].region_id == 2
