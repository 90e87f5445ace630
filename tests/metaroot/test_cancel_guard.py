"""Root guards its own truth (DESIGN 7; issue 22 item 2): the rooted state cancels a pending
plan only after its region leader recorded a fence for it ("fenced" recovery record), never
one whose leader reported it applied, never one whose terminal event is recorded, whoever
appends the cancel. Table tests over split, merge, peer addition and peer removal; each
refusal changes nothing. Tests read init / act / check."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_state import cluster, run

from coordinator.assessment import assess
from metaroot.state import RootEventRejected, RootState, set_cancel_guard, transition_id
from nokvpy.protocol.enums import (
    AssessmentDecision,
    EventKind,
    RetryClass,
    TransitionPhase,
)
from nokvpy.protocol.records import (
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
    RootToken,
)

# ---- builders (desc, run, cluster: the state tests' own) ---------------------------------------


def split(s, kind=EventKind.SPLIT_PLANNED) -> RootEvent:
    base = s.descriptor(1)
    v = RegionEpoch(base.epoch.version + 1, base.epoch.conf_ver)
    left = replace(base, end_key=b"m", epoch=v, revision=0)
    right = RegionDescriptor(2, b"m", base.end_key, v,
                             tuple(PeerMeta(p.store_id, 200 + p.store_id) for p in base.peers))
    return RootEvent(kind, RangeSplit(1, b"m", left, right, base))


def merge(s, kind=EventKind.MERGE_PLANNED) -> RootEvent:
    bl, br = s.descriptor(1), s.descriptor(2)
    m = replace(bl, end_key=br.end_key, revision=0,
                epoch=RegionEpoch(max(bl.epoch.version, br.epoch.version) + 1, bl.epoch.conf_ver))
    return RootEvent(kind, RangeMerge(1, 2, m, bl, br))


def add_peer(s, kind=EventKind.PEER_ADDITION_PLANNED) -> RootEvent:
    base = s.descriptor(1)
    t = replace(base, peers=base.peers + (PeerMeta(4, 104),), revision=0,
                epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return RootEvent(kind, PeerChange(1, 4, 104, t, base))


def remove_peer(s, kind=EventKind.PEER_REMOVAL_PLANNED) -> RootEvent:
    base = s.descriptor(1)
    t = replace(base, peers=tuple(p for p in base.peers if p.store_id != 3), revision=0,
                epoch=RegionEpoch(base.epoch.version, base.epoch.conf_ver + 1))
    return RootEvent(kind, PeerChange(1, 3, 103, t, base))


def merge_cluster() -> RootState:
    s = cluster()
    return run(s, split(s, EventKind.SPLIT_COMMITTED))


# family -> (initial state, plan builder, cancel kind, terminal kind)
FAMILIES = {
    "split": (cluster, split, EventKind.SPLIT_CANCELLED, EventKind.SPLIT_COMMITTED),
    "merge": (merge_cluster, merge, EventKind.MERGE_CANCELLED, EventKind.MERGED),
    "peer_add": (cluster, add_peer, EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_ADDED),
    "peer_remove": (cluster, remove_peer, EventKind.PEER_REMOVAL_CANCELLED,
                    EventKind.PEER_REMOVED),
}


def record(state, tid, action, observed=None, request_id="") -> RootEvent:
    return RootEvent(EventKind.RECOVERY_RECORDED, RecoveryRecord(
        tid, action, "evidence", observed_root_index=state.token.index if observed is None
        else observed), request_id)


def rejected(state, event, reason) -> RootEventRejected:
    """`event` is refused by validation and by apply, and nothing changes."""
    before = state.to_checkpoint()
    with pytest.raises(RootEventRejected) as info:
        state.validate(event)
    assert info.value.reason == reason, info.value
    after, err = state.apply_committed(RootToken(1, state.token.index + 1), event)
    assert err is not None and err.reason == reason
    assert replace(after.to_checkpoint(), token=state.token) == before  # never half applied
    return info.value


def planned(family):
    init, plan, cancel, terminal = FAMILIES[family]
    s0 = init()
    p = plan(s0)
    s1 = run(s0, p)
    return s0, s1, p, replace(p, kind=cancel), replace(p, kind=terminal), transition_id(p)


# ---- the guard, per family ----------------------------------------------------------------------

# situation before the cancel -> expected refusal reason (None: the cancel applies)
GUARD_TABLE = {
    "unfenced": "cancel_not_fenced",
    "fenced": None,
    "fenced_then_reported_applied": "cancel_after_apply",
    "reported_applied_compensation_refused": "cancel_after_apply",
    "reported_applied_reconciled_forward": "cancel_after_apply",
    "fenced_previous_instance": "cancel_not_fenced",
    "terminal_recorded": "can_no_longer_be_cancelled",
    "other_record_only": "cancel_not_fenced",
}


def situation(family: str, name: str):
    s0, s1, plan, cancel, terminal, tid = planned(family)
    if name == "unfenced":
        return s1, cancel
    if name == "fenced":
        return run(s1, record(s1, tid, "fenced")), cancel
    if name == "fenced_then_reported_applied":
        s2 = run(s1, record(s1, tid, "fenced"))
        return run(s2, record(s2, tid, "compensation_refused_applied")), cancel
    if name == "reported_applied_compensation_refused":
        return run(s1, record(s1, tid, "compensation_refused_applied")), cancel
    if name == "reported_applied_reconciled_forward":
        return run(s1, record(s1, tid, "reconciled_forward")), cancel
    if name == "fenced_previous_instance":
        # planned, fenced, cancelled; planned again (same TransitionID, new source index):
        # the old fence does not cover the new plan
        s2 = run(s1, record(s1, tid, "fenced"), cancel)
        return run(s2, plan), cancel
    if name == "terminal_recorded":
        return run(s1, terminal), cancel
    if name == "other_record_only":  # a free-form record is no fence
        return run(s1, record(s1, tid, "compensation_failed")), cancel
    raise AssertionError(name)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", sorted(GUARD_TABLE))
def test_cancel_guard_row(family, name):
    state, cancel = situation(family, name)
    reason = GUARD_TABLE[name]
    if reason is None:
        after = run(state, cancel)
        init = FAMILIES[family][0]()
        bases = [d.same_truth(init.descriptor(d.region_id)) for d in after.iter_descriptors()]
        assert all(bases) and not after.pending
        assert after.cluster_epoch == state.cluster_epoch + 1
        return
    err = rejected(state, cancel, reason)
    assert err.retry_class == RetryClass.PERMANENT
    assert transition_id(cancel) in err.detail
    # the coordinator's assessment says the same (REJECT, ABORTED), so a publish through a
    # coordinator is refused with root's reason
    a = assess(state, cancel)
    assert (a.decision, a.phase) == (AssessmentDecision.REJECT, TransitionPhase.ABORTED), a
    assert a.reason.startswith(reason), a


def test_fence_witness_is_checked():
    _, s1, plan, cancel, terminal, tid = planned("split")
    source = s1.pending.get(tid).source_token.index
    rejected(s1, record(s1, "split:9:6d", "fenced"), "fence_not_pending")
    rejected(s1, record(s1, tid, "fenced", observed=source - 1), "invalid_recovery_record")
    rejected(s1, record(s1, tid, "fenced", observed=s1.token.index + 5),
             "invalid_recovery_record")
    s2 = run(s1, record(s1, tid, "reconciled_forward"))
    rejected(s2, record(s2, tid, "fenced"), "fence_after_apply")
    # other recovery records stay free-form (the compensator's own evidence)
    run(s1, record(s1, tid, "compensated", observed=0))


def test_recovery_index_survives_the_checkpoint():
    _, s1, plan, cancel, _, tid = planned("split")
    s2 = run(s1, record(s1, tid, "fenced"), cancel, record(s1, tid, "compensated"))
    again = RootState.from_checkpoint(s2.to_checkpoint())
    assert again.recovery_index == s2.recovery_index
    source = s1.pending.get(tid).source_token.index
    assert again.fence_witness(tid, source) == s1.token.index
    assert again.applied_report(tid, source) is None


def test_sequence_two_at_the_state_level():
    """Issue 22 sequence 2: a raw cancel while the terminal publish is held changes nothing;
    the held terminal then completes the plan; one outcome."""
    _, s1, _, cancel, terminal, tid = planned("split")
    rejected(s1, cancel, "cancel_not_fenced")
    s2 = run(s1, terminal)
    assert not s2.pending and s2.descriptor(2) is not None
    rejected(s2, cancel, "can_no_longer_be_cancelled")


def test_guard_off_is_caught():
    """The test-only switch: without the guard the raw cancel restores the base while the
    split applied on the stores, and the held terminal then lands as `terminal_without_plan`:
    root records the TransitionID both cancelled and completed."""
    _, s1, _, cancel, terminal, tid = planned("split")
    set_cancel_guard(False)
    try:
        s2 = run(s1, cancel)
    finally:
        set_cancel_guard(True)
    assert s2.descriptor(2) is None  # the child region, live on the stores, is gone from root
    s3 = run(s2, terminal)  # terminal_without_plan: a second outcome of the same plan
    assert s3.descriptor(2) is not None
    rejected(s1, cancel, "cancel_not_fenced")  # the switch is back on
