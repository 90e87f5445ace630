"""Authority grants (DESIGN 6; reference 2.8): primacy, inheritance, silence, finality."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from metaroot.grants import audit, fence_violation, live_grant, plan_grant_command
from metaroot.state import RootEventRejected, RootState
from nokvpy.protocol.enums import AllocatorKind, Duty, EventKind
from nokvpy.protocol.grants import (
    AppendFences,
    DutyGrant,
    GrantCommand,
    GrantCommandKind,
    GrantInheritance,
    GrantInherited,
    GrantIssued,
    GrantStatus,
    RetirementMode,
)
from nokvpy.protocol.records import AllocatorFence, RootEvent, RootToken

ISSUE, SEAL, RETIRE, INHERIT = (GrantCommandKind.ISSUE, GrantCommandKind.SEAL,
                                GrantCommandKind.RETIRE_EXPIRED, GrantCommandKind.INHERIT)
TTL = 1000


def run(state: RootState, events) -> RootState:
    for e in events:
        state = state.apply(RootToken(1, state.token.index + 1), e)
    return state


def command(state, kind, holder, now, **kw):
    events, result = plan_grant_command(state, GrantCommand(kind, holder, now_ms=now, **kw))
    return run(state, events), result, events


def issue(state, holder, now, duties, **kw):
    return command(state, ISSUE, holder, now, expires_at_ms=now + TTL,
                   duties=tuple(DutyGrant(d, b) for d, b in duties.items()), **kw)


def covering_bounds(state: RootState, duties) -> dict[Duty, int]:
    """What a well-behaved coordinator asks for: past the fence and every predecessor."""
    out = {}
    for d in duties:
        need = {Duty.ALLOC_ID: state.id_fence, Duty.TSO: state.tso_fence}.get(d, 0)
        for rid in state.uninherited:
            b = state.retirements[rid].bound_for(d)
            need = max(need, b or 0)
        g = state.duty_grant(d)
        if g is not None:
            need = max(need, g.bound_for(d))
        out[d] = need + 100
    return out


def test_issue_renew_and_new_era_after_expiry():
    s, r, _ = issue(RootState(), "a", 0, {Duty.TSO: 100, Duty.ALLOC_ID: 100})
    assert r.status == GrantStatus.GRANTED and r.grant.era == 1 and s.tso_fence == 100
    assert live_grant(s, Duty.TSO, 999) == r.grant and live_grant(s, Duty.TSO, 1000) is None
    s2, r2, _ = issue(s, "a", 500, {Duty.TSO: 150, Duty.ALLOC_ID: 100})
    assert r2.reason == "renewed" and r2.grant.era == 1 and r2.grant.expires_at_ms == 1500
    assert r2.grant.bound_for(Duty.TSO) == 150 and s2.tso_fence == 150
    s3, r3, ev3 = issue(s2, "a", 2000, {Duty.TSO: 300, Duty.ALLOC_ID: 300})
    assert r3.grant.era == 2 and [e.kind for e in ev3] == [EventKind.GRANT_RETIRED,
                                                          EventKind.GRANT_ISSUED]
    assert r3.grant.predecessors == (r.grant.grant_id,)
    assert s3.retirements[r.grant.grant_id].mode == RetirementMode.EXPIRED_BOUND


def test_primacy_refuses_an_overlapping_live_grant_of_another_holder():
    s, ra, _ = issue(RootState(), "a", 0, {Duty.REGION_LOOKUP: 5})
    s2, rb, events = issue(s, "b", 10, {Duty.REGION_LOOKUP: 5})
    assert rb.status == GrantStatus.HELD and rb.violation == "primacy" and not events
    assert rb.grant == ra.grant and s2 == s
    forged = RootEvent(EventKind.GRANT_ISSUED, GrantIssued(replace(
        ra.grant, grant_id="b/9", holder="b", era=9)))
    try:
        s.validate(forged)
        raise AssertionError("forged overlapping grant accepted")
    except RootEventRejected as e:
        assert e.reason == "duty_held" and e.violation == "primacy"
    # once expired, b's ISSUE retires a's grant and takes over with a higher era
    s3, rb2, _ = issue(s, "b", TTL, {Duty.REGION_LOOKUP: 5})
    assert rb2.status == GrantStatus.GRANTED and rb2.grant.era > ra.grant.era


def test_successor_that_does_not_cover_a_predecessor_bound_is_refused():
    s, ra, _ = issue(RootState(), "a", 0, {Duty.REGION_LOOKUP: 50})
    s, _, _ = command(s, RETIRE, "x", TTL, grant_id=ra.grant.grant_id)
    s2, rb, events = issue(s, "b", TTL, {Duty.REGION_LOOKUP: 40})
    assert rb.status == GrantStatus.REFUSED and rb.violation == "inheritance" and not events
    s3, rb, _ = issue(s, "b", TTL, {Duty.REGION_LOOKUP: 50})
    assert rb.status == GrantStatus.GRANTED and rb.grant.predecessors == (ra.grant.grant_id,)
    # the allocator fence raised by a's grant is a bound too
    s4, ra4, _ = issue(RootState(), "a", 0, {Duty.ALLOC_ID: 1000})
    s4, _, _ = command(s4, SEAL, "a", 10, grant_id=ra4.grant.grant_id,
                       exact_usages=(DutyGrant(Duty.ALLOC_ID, 10),))
    _, low, _ = issue(s4, "b", 20, {Duty.ALLOC_ID: 500})
    assert low.status == GrantStatus.REFUSED and low.violation == "inheritance"


def test_write_fenced_by_a_retired_era_is_rejected():
    s, ra, _ = issue(RootState(), "a", 0, {Duty.ALLOC_ID: 100})
    fence = RootEvent(EventKind.ID_ALLOCATOR_FENCED, AllocatorFence(AllocatorKind.ID, 150))
    s.validate(fence, AppendFences(grant_era=ra.grant.era, duty=Duty.ALLOC_ID))
    s, sealed, _ = command(s, SEAL, "a", 50, grant_id=ra.grant.grant_id,
                           exact_usages=(DutyGrant(Duty.ALLOC_ID, 70),))
    assert sealed.status == GrantStatus.RETIRED and s.era_floor(Duty.ALLOC_ID) == ra.grant.era
    s, rb, _ = issue(s, "b", 60, {Duty.ALLOC_ID: 300})
    for st_ in (s,):
        try:
            st_.validate(fence, AppendFences(grant_era=ra.grant.era, duty=Duty.ALLOC_ID))
            raise AssertionError("retired era wrote")
        except RootEventRejected as e:
            assert e.reason == "grant_era_retired" and e.violation == "silence"
    assert fence_violation(s, Duty.ALLOC_ID, rb.grant.era) is None
    assert fence_violation(s, Duty.ALLOC_ID, rb.grant.era, now_ms=60 + TTL)[0] == "grant_expired"


def test_finality_an_inherited_retirement_cannot_be_inherited_again():
    s, ra, _ = issue(RootState(), "a", 0, {Duty.TSO: 100})
    s, _, _ = command(s, SEAL, "a", 5, grant_id=ra.grant.grant_id)
    s, rb, _ = issue(s, "b", 10, {Duty.TSO: 200})
    s, inh, events = command(s, INHERIT, "b", 20)
    assert inh.status == GrantStatus.RETIRED and len(events) == 1
    assert s.retirements[ra.grant.grant_id].inherited_by == rb.grant.grant_id
    assert audit(s)["sealed_exact_completed"] == 1 and audit(s)["retired_not_inherited"] == 0
    _, again, ev_again = command(s, INHERIT, "b", 30, predecessor_ids=(ra.grant.grant_id,))
    assert again.status == GrantStatus.RETIRED and not ev_again  # same successor: no-op
    s, _, _ = command(s, SEAL, "b", 40, grant_id=rb.grant.grant_id)
    s, rc, _ = issue(s, "c", 50, {Duty.TSO: 300})
    assert rc.grant.predecessors == (rb.grant.grant_id,)
    _, other, _ = command(s, INHERIT, "c", 60, predecessor_ids=(ra.grant.grant_id,))
    assert other.status == GrantStatus.REFUSED and other.violation == "finality"
    forged = RootEvent(EventKind.GRANT_INHERITED, GrantInherited(
        GrantInheritance(ra.grant.grant_id, rc.grant.grant_id, 60)))
    try:
        s.validate(forged)
        raise AssertionError("re-assigned inheritance accepted")
    except RootEventRejected as e:
        assert e.reason == "already_inherited" and e.violation == "finality"
    assert audit(s)["pending_audit"] == [rb.grant.grant_id] and audit(s)["defects"] == []


def test_seal_by_another_holder_and_retire_of_a_live_grant_are_refused():
    s, ra, _ = issue(RootState(), "a", 0, {Duty.TSO: 100})
    _, r, ev = command(s, SEAL, "b", 5, grant_id=ra.grant.grant_id)
    assert r.status == GrantStatus.REFUSED and r.violation == "primacy" and not ev
    _, r, ev = command(s, RETIRE, "b", 5, grant_id=ra.grant.grant_id)
    assert r.status == GrantStatus.HELD and not ev
    _, r, ev = command(s, SEAL, "a", 5, grant_id=ra.grant.grant_id,
                       exact_usages=(DutyGrant(Duty.TSO, 101),))
    assert r.status == GrantStatus.REFUSED and not ev


HOLDERS = ["a", "b", "c"]
DUTY_SETS = [(Duty.ALLOC_ID,), (Duty.TSO,), (Duty.REGION_LOOKUP,), (Duty.ALLOC_ID, Duty.TSO),
             tuple(Duty)]


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_random_schedules_never_show_two_live_grants_for_one_duty(data):
    s = RootState()
    now = 0
    eras: dict[str, int] = {}
    floors: dict[Duty, int] = {}
    retired_eras: set[tuple[Duty, int]] = set()
    for _ in range(data.draw(st.integers(5, 40))):
        op = data.draw(st.sampled_from(["issue", "issue", "renew", "clock", "seal", "retire",
                                        "inherit", "sloppy"]))
        holder = data.draw(st.sampled_from(HOLDERS))
        duties = data.draw(st.sampled_from(DUTY_SETS))
        if op == "clock":
            now += data.draw(st.integers(0, 1500))
            continue
        if op in ("issue", "renew"):
            bounds = covering_bounds(s, duties)
            mine = [g for g in s.grants.values() if g.holder == holder]
            if op == "renew" and mine:
                duties = tuple(d.duty for d in mine[0].duties)
                bounds = covering_bounds(s, duties)
            s2, r, _ = issue(s, holder, now, bounds)
        elif op == "sloppy":  # asks for too little: must never break a guarantee
            s2, r, _ = issue(s, holder, now, {d: 1 for d in duties})
        elif op == "seal":
            s2, r, _ = command(s, SEAL, holder, now)
        elif op == "retire":
            ids = sorted(s.grants)
            gid = data.draw(st.sampled_from(ids)) if ids else "none"
            s2, r, _ = command(s, RETIRE, holder, now, grant_id=gid)
        else:
            s2, r, _ = command(s, INHERIT, holder, now)
        # -- check
        for g in s2.grants.values():
            if g.grant_id not in eras:
                assert all(g.era > e for e in eras.values()), "eras strictly increase"
            eras.setdefault(g.grant_id, g.era)
        for t in (now, now + TTL // 2):
            for duty in Duty:
                live = [g for g in s2.grants.values() if g.holds(duty) and g.active_at(t)]
                assert len(live) <= 1, (duty, live)
        for duty in Duty:
            unretired = [g for g in s2.grants.values() if g.holds(duty)]
            assert len(unretired) <= 1
            assert s2.era_floor(duty) >= floors.get(duty, 0), "floors never fall"
            floors[duty] = s2.era_floor(duty)
        for rt in s2.retirements.values():
            for b in rt.bounds:
                retired_eras.add((b.duty, rt.era))
        for duty, era in retired_eras:
            assert fence_violation(s2, duty, era) is not None, "a retired era stays silent"
        report = audit(s2, now)
        assert report["defects"] == [], report
        assert report["retired_not_inherited"] + report["sealed_exact_completed"] + \
            report["expired_bound_inherited"] == len(s2.retirements)
        if r.status in (GrantStatus.HELD, GrantStatus.REFUSED):
            assert s2 == s
        s = s2
    assert RootState.from_checkpoint(s.to_checkpoint()) == s
