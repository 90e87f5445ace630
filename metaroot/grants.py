"""Authority grants over the rooted state (DESIGN 6; reference 2.8, "Eunomia").

Owns: how grant events change the rooted state (`grant_event_changes`, called by
`metaroot.handlers`), the planning of grant commands into rooted events
(`plan_grant_command`), the era fence of duty-gated writes (`fence_violation`, checked by
`metaroot.state`), `live_grant` and the finality `audit`. Every function reads a
`metaroot.facts.RootFacts` (at run time a `RootState`; planning folds its events with
`apply` over a scratch copy). Never: I/O or clocks (time arrives as `now_ms`), and never
imports `metaroot.state` or `metaroot.handlers` (both import this module).

The four guarantees and where they are enforced (both when planning a command and again when
the resulting event is applied, so a hand-built event cannot bypass them):
- Primacy: at most one unretired grant holds a duty. ISSUE while another holder's grant is
  live -> HELD; an expired one is first retired EXPIRED_BOUND inside the successor's ISSUE.
- Inheritance: a new grant must list every un-inherited retirement sharing one of its duties
  as a predecessor and cover its bound on each shared duty; alloc_id / tso bounds must also
  be >= the rooted allocator fence. INHERIT requires the successor to cover every bound.
- Silence: retiring a grant raises the per-duty retired-era floor to its era (at retirement,
  not at inheritance as in the Go reference, so a retired era is silenced at once); floors
  never fall; a duty-gated write must carry the era of the grant currently holding the duty,
  and that era must be above the floor. New eras are max(era ever, floors) + 1.
- Finality: every retirement is either inherited (once, by exactly one successor: a second
  successor is refused) or listed in `uninherited` and reported by `audit`.

Renewal keeps the era (a deliberate difference from the Go reference, which bumps the era on
every renew): an ISSUE by the holder of a *live* grant over exactly the same duties extends
its expiry and raises its bounds in place. This is safe because the grant never stopped being
live, so primacy excluded every other holder for the whole interval: no other era can have
written in between, and nothing exists that a new era would need to fence off. Bumping the
era would only silence the holder's own in-flight writes. A grant that has expired, or an
ISSUE that changes the duty set, always retires the old grant and takes a new era.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from metaroot.errors import RootEventRejected
from metaroot.facts import RootFacts
from nokvpy.protocol.enums import Duty, EventKind
from nokvpy.protocol.grants import (
    AuthorityGrant,
    DutyGrant,
    GrantCommand,
    GrantCommandKind,
    GrantCommandResult,
    GrantInheritance,
    GrantInherited,
    GrantIssued,
    GrantRetired,
    GrantRetirement,
    GrantSealed,
    GrantStatus,
    RetirementMode,
    Violation,
    bounds_map,
)
from nokvpy.protocol.records import RootEvent, RootToken

_FENCED_DUTIES = {Duty.ALLOC_ID: "id_fence", Duty.TSO: "tso_fence"}


class GrantEventError(Exception):
    """A grant event the rooted state must refuse (translated to RootEventRejected)."""

    def __init__(self, reason: str, detail: str = "", violation: str = Violation.NONE):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.violation = reason, detail, violation


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def need(cond: bool, reason: str, detail: str = "", violation: str = Violation.NONE) -> None:
    if not cond:
        raise GrantEventError(reason, detail, violation)


def check_duties(duties: object, what: str = "duties") -> dict[Duty, int]:
    """Non-empty, no duplicates, known duties, integer bounds >= 0."""
    need(isinstance(duties, tuple | list) and len(duties) > 0, "invalid_duties",
          f"{what} must be a non-empty tuple")
    out: dict[Duty, int] = {}
    for d in duties:  # type: ignore[union-attr]
        need(isinstance(d, DutyGrant), "invalid_duties", f"{what}: {d!r}")
        try:
            duty = Duty(d.duty)
        except ValueError:
            raise GrantEventError("unknown_duty", f"{d.duty!r}") from None
        need(is_int(d.bound) and d.bound >= 0, "invalid_duties", f"{what}: bound {d.bound!r}")
        need(duty not in out, "invalid_duties", f"{what}: duplicate {duty}")
        out[duty] = d.bound
    return out


def canonical(bounds: dict[Duty, int]) -> tuple[DutyGrant, ...]:
    return tuple(DutyGrant(d, bounds[d]) for d in sorted(bounds))


# ---- applying grant events --------------------------------------------------------------------


def grant_event_changes(state: RootFacts, event: RootEvent) -> dict[str, Any]:
    """The rooted-state fields a grant event changes ({} = accepted no-op); raises
    GrantEventError when a guarantee or a field check fails."""
    p = event.payload
    if isinstance(p, GrantIssued):
        return _issued(state, p.grant)
    if isinstance(p, GrantSealed):
        return _retired(state, p.retirement, RetirementMode.SEALED_EXACT)
    if isinstance(p, GrantRetired):
        return _retired(state, p.retirement, RetirementMode.EXPIRED_BOUND)
    if isinstance(p, GrantInherited):
        return _inherited(state, p.inheritance)
    raise GrantEventError("payload_type", type(p).__name__)


def _check_grant(g: object) -> AuthorityGrant:
    need(isinstance(g, AuthorityGrant), "invalid_grant", "not an AuthorityGrant")
    assert isinstance(g, AuthorityGrant)
    need(isinstance(g.grant_id, str) and bool(g.grant_id), "invalid_grant", "grant_id")
    need(isinstance(g.holder, str) and bool(g.holder), "invalid_grant", "holder")
    need(is_int(g.era) and g.era > 0, "invalid_grant", f"era {g.era!r}")
    need(is_int(g.issued_at_ms) and is_int(g.expires_at_ms)
          and g.expires_at_ms > g.issued_at_ms, "invalid_grant", "expiry must follow issue")
    check_duties(g.duties)
    need(isinstance(g.predecessors, tuple | list)
          and all(isinstance(x, str) and x for x in g.predecessors)
          and len(set(g.predecessors)) == len(g.predecessors), "invalid_grant", "predecessors")
    return g


def _issued(state: RootFacts, g: AuthorityGrant) -> dict[str, Any]:
    g = _check_grant(g)
    bounds = bounds_map(g.duties)
    old = state.grants.get(g.grant_id)
    changes: dict[str, Any] = {}
    if old is not None:  # renewal in place (see module docstring)
        if g == old:
            return {}
        old_bounds = bounds_map(old.duties)
        need(g.holder == old.holder and g.era == old.era and g.issued_at_ms == old.issued_at_ms
              and tuple(g.predecessors) == tuple(old.predecessors)
              and set(bounds) == set(old_bounds), "renewal_mismatch",
              f"grant {g.grant_id} may only extend expiry and bounds", Violation.PRIMACY)
        need(g.expires_at_ms >= old.expires_at_ms
              and all(bounds[d] >= old_bounds[d] for d in bounds), "renewal_shrinks",
              f"grant {g.grant_id}: a renewal never lowers expiry or bounds", Violation.SILENCE)
    else:
        need(g.grant_id not in state.retirements, "grant_id_reused",
              f"{g.grant_id} names a retired grant", Violation.FINALITY)
        floor = max(state.era_floors.values(), default=0)
        need(g.era > state.max_era and g.era > floor, "era_not_increasing",
              f"era {g.era} <= max era {max(state.max_era, floor)}", Violation.SILENCE)
        for duty in sorted(bounds):
            holder = state.duty_grants.get(duty)
            need(holder is None, "duty_held", f"{duty} is held by grant {holder}",
                  Violation.PRIMACY)
        for pid in g.predecessors:
            r = state.retirements.get(pid)
            need(r is not None, "unknown_predecessor", pid, Violation.INHERITANCE)
            need(not r.inherited_by or r.inherited_by == g.grant_id, "predecessor_inherited",
                  f"{pid} was inherited by {r.inherited_by}", Violation.FINALITY)
            for b in r.bounds:
                if b.duty in bounds:
                    need(bounds[b.duty] >= b.bound, "uncovered_predecessor",
                          f"{b.duty} bound {bounds[b.duty]} < predecessor {pid} bound {b.bound}",
                          Violation.INHERITANCE)
        listed = set(g.predecessors)
        for rid in state.uninherited:
            r = state.retirements[rid]
            if any(b.duty in bounds for b in r.bounds):
                need(rid in listed, "missing_predecessor",
                      f"un-inherited retirement {rid} shares a duty", Violation.INHERITANCE)
        for duty, field in _FENCED_DUTIES.items():
            if duty in bounds:
                need(bounds[duty] >= getattr(state, field), "bound_below_fence",
                      f"{duty} bound {bounds[duty]} < rooted {field} {getattr(state, field)}",
                      Violation.INHERITANCE)
        duty_grants = dict(state.duty_grants)
        duty_grants.update({d: g.grant_id for d in bounds})
        changes["duty_grants"] = dict(sorted(duty_grants.items()))
        changes["max_era"] = g.era
    changes["grants"] = state.grants.set(g.grant_id, g)
    for duty, field in _FENCED_DUTIES.items():
        if duty in bounds and bounds[duty] > getattr(state, field):
            changes[field] = bounds[duty]  # a grant's monotone upper fences the allocator
    return changes


def _retired(state: RootFacts, r: GrantRetirement, mode: RetirementMode) -> dict[str, Any]:
    need(isinstance(r, GrantRetirement), "invalid_retirement", "not a GrantRetirement")
    need(r.mode == mode, "payload_mismatch", f"mode {r.mode!r} for a {mode.name} event")
    need(isinstance(r.grant_id, str) and bool(r.grant_id) and is_int(r.retired_at_ms)
          and r.inherited_by == "", "invalid_retirement", "grant_id / retired_at / inherited_by")
    bounds = check_duties(r.bounds, "bounds")
    prior = state.retirements.get(r.grant_id)
    if prior is not None:
        need(replace(prior, inherited_by="") == r, "already_retired",
              f"{r.grant_id} was retired differently", Violation.FINALITY)
        return {}
    g = state.grants.get(r.grant_id)
    need(g is not None, "unknown_grant", r.grant_id)
    need(r.holder == g.holder and r.era == g.era, "retirement_mismatch",
          f"{r.grant_id} is held by {g.holder} at era {g.era}", Violation.PRIMACY)
    full = bounds_map(g.duties)
    need(set(bounds) == set(full) and all(bounds[d] <= full[d] for d in bounds),
          "retirement_bounds", "bounds must name every duty of the grant, within its bounds")
    if mode == RetirementMode.EXPIRED_BOUND:
        need(bounds == full, "retirement_bounds", "an expired grant retires its full bounds")
        need(r.retired_at_ms >= g.expires_at_ms, "grant_not_expired",
              f"{r.grant_id} is live until {g.expires_at_ms}", Violation.PRIMACY)
    floors = dict(state.era_floors)
    for d in bounds:
        floors[d] = max(floors.get(d, 0), r.era)
    return {
        "grants": state.grants.delete(r.grant_id),
        "duty_grants": {d: gid for d, gid in state.duty_grants.items() if gid != r.grant_id},
        "retirements": state.retirements.set(r.grant_id, r),
        "uninherited": tuple(sorted((*state.uninherited, r.grant_id))),
        "era_floors": dict(sorted(floors.items())),
    }


def _inherited(state: RootFacts, inh: GrantInheritance) -> dict[str, Any]:
    need(isinstance(inh, GrantInheritance) and isinstance(inh.predecessor, str)
          and isinstance(inh.successor, str) and is_int(inh.at_ms), "invalid_inheritance",
          repr(inh))
    r = state.retirements.get(inh.predecessor)
    need(r is not None, "unknown_retirement", inh.predecessor, Violation.INHERITANCE)
    if r.inherited_by == inh.successor:
        return {}
    need(not r.inherited_by, "already_inherited",
          f"{inh.predecessor} was inherited by {r.inherited_by}", Violation.FINALITY)
    s = state.grants.get(inh.successor)
    need(s is not None, "unknown_successor", f"{inh.successor} is not an unretired grant",
          Violation.INHERITANCE)
    need(inh.predecessor in s.predecessors, "not_a_predecessor",
          f"{inh.successor} does not list {inh.predecessor}", Violation.INHERITANCE)
    for b in r.bounds:
        sb = s.bound_for(b.duty)
        need(sb is not None and sb >= b.bound, "uncovered_predecessor",
              f"{inh.successor} does not cover {b.duty} bound {b.bound}", Violation.INHERITANCE)
    return {
        "retirements": state.retirements.set(r.grant_id, replace(r, inherited_by=s.grant_id)),
        "inheritances": state.inheritances.set(r.grant_id, inh),
        "uninherited": tuple(x for x in state.uninherited if x != r.grant_id),
    }


# ---- fences and queries -------------------------------------------------------------------------


def fence_violation(state: RootFacts, duty: object, era: object,
                    now_ms: int | None = None) -> tuple[str, str, str] | None:
    """Why a write fenced by (`duty`, `era`) must be refused, as (reason, detail, violation),
    or None if the era is the live grant's era for the duty and above its retired floor."""
    try:
        duty = Duty(duty)
    except ValueError:
        return ("invalid_fences", f"unknown duty {duty!r}", Violation.NONE)
    if not is_int(era):
        return ("grant_era_required", f"a {duty} write needs the grant era", Violation.SILENCE)
    floor = state.era_floors.get(duty, 0)
    if era <= floor:
        return ("grant_era_retired", f"era {era} <= retired floor {floor} of {duty}",
                Violation.SILENCE)
    g = state.duty_grant(duty)
    if g is None:
        return ("no_live_grant", f"no grant holds {duty}", Violation.PRIMACY)
    if g.era != era:
        return ("grant_era_not_live", f"{duty} is held at era {g.era}, not {era}",
                Violation.SILENCE if era < g.era else Violation.PRIMACY)
    if now_ms is not None and not g.active_at(now_ms):
        return ("grant_expired", f"grant {g.grant_id} expired at {g.expires_at_ms}",
                Violation.PRIMACY)
    return None


def live_grant(state: RootFacts, duty: Duty, now_ms: int) -> AuthorityGrant | None:
    """The grant that may serve `duty` at `now_ms`, if any."""
    g = state.duty_grant(duty)
    if g is None or not g.active_at(now_ms) or g.era <= state.era_floors.get(duty, 0):
        return None
    return g


def next_era(state: RootFacts) -> int:
    return max(state.max_era, max(state.era_floors.values(), default=0)) + 1


# ---- planning grant commands ------------------------------------------------------------------


def _request_id(kind: EventKind, payload: object) -> str:
    digest = hashlib.sha256(repr(payload).encode()).hexdigest()[:20]
    return f"grant:{kind.name.lower()}:{digest}"


def _event(kind: EventKind, payload: object) -> RootEvent:
    return RootEvent(kind, payload, _request_id(kind, payload))


def _refused(reason: str, violation: str = Violation.NONE,
             status: GrantStatus = GrantStatus.REFUSED,
             grant: AuthorityGrant | None = None) -> tuple[list[RootEvent], GrantCommandResult]:
    return [], GrantCommandResult(status, grant, reason, violation)


def _verify(state: RootFacts, events: list[RootEvent], result: GrantCommandResult,
            ) -> tuple[list[RootEvent], GrantCommandResult]:
    """Fold the planned events over a scratch copy so a plan is never half valid."""
    scratch = state
    for i, e in enumerate(events):
        try:
            scratch = scratch.apply(RootToken(state.token.term, state.token.index + i + 1), e)
        except RootEventRejected as err:
            return _refused(f"{err.reason}: {err.detail}", err.violation)
    return events, result


def plan_grant_command(state: RootFacts, cmd: GrantCommand,
                       ) -> tuple[list[RootEvent], GrantCommandResult]:
    """Turn a grant command into the rooted events to append (in order) and the result the
    caller gets once they are applied; a refusal returns no events."""
    if not isinstance(cmd, GrantCommand):
        return _refused(f"not a GrantCommand: {type(cmd).__name__}")
    if not isinstance(cmd.holder, str) or not cmd.holder or not is_int(cmd.now_ms):
        return _refused("invalid_command: holder and now_ms are required")
    try:
        kind = GrantCommandKind(cmd.kind)
    except ValueError:
        return _refused(f"invalid_command: unknown kind {cmd.kind!r}")
    if kind == GrantCommandKind.ISSUE:
        return _plan_issue(state, cmd)
    if kind == GrantCommandKind.SEAL:
        return _plan_seal(state, cmd)
    if kind == GrantCommandKind.RETIRE_EXPIRED:
        return _plan_retire_expired(state, cmd)
    return _plan_inherit(state, cmd)


def _sealed_bounds(g: AuthorityGrant, usages: dict[Duty, int]) -> tuple[DutyGrant, ...] | str:
    full = bounds_map(g.duties)
    out = {}
    for d, bound in full.items():
        used = usages.get(d, bound)
        if used > bound:
            return f"exact usage {used} of {d} exceeds grant bound {bound}"
        out[d] = used
    return canonical(out)


def _plan_issue(state: RootFacts, cmd: GrantCommand) -> tuple[list[RootEvent], GrantCommandResult]:
    now = cmd.now_ms
    if not is_int(cmd.expires_at_ms) or cmd.expires_at_ms <= now:
        return _refused("invalid_command: expires_at_ms must be after now_ms")
    try:
        req = check_duties(cmd.duties)
        usages = check_duties(cmd.exact_usages, "exact_usages") if cmd.exact_usages else {}
    except GrantEventError as e:
        return _refused(f"{e.reason}: {e.detail}")
    owners = sorted({g.grant_id: g for d in req if (g := state.duty_grant(d))}.values(),
                    key=lambda g: g.grant_id)
    # renewal in place: one live grant of this holder with exactly these duties
    if len(owners) == 1:
        g = owners[0]
        old = bounds_map(g.duties)
        if g.holder == cmd.holder and g.active_at(now) and set(old) == set(req) and \
                cmd.grant_id in ("", g.grant_id):
            renewed = replace(g, expires_at_ms=max(g.expires_at_ms, cmd.expires_at_ms),
                              duties=canonical({d: max(old[d], req[d]) for d in old}))
            if renewed == g:
                return [], GrantCommandResult(GrantStatus.GRANTED, g, "already_covered")
            return _verify(state, [_event(EventKind.GRANT_ISSUED, GrantIssued(renewed))],
                           GrantCommandResult(GrantStatus.GRANTED, renewed, "renewed"))
    for g in owners:
        if g.holder != cmd.holder and g.active_at(now):
            duties = ",".join(sorted(d for d in bounds_map(g.duties) if d in req))
            return _refused(f"duty_held: {duties} held by {g.holder} (era {g.era}, grant "
                            f"{g.grant_id}) until {g.expires_at_ms}", Violation.PRIMACY,
                            GrantStatus.HELD, g)
    events: list[RootEvent] = []
    new_retirements: list[GrantRetirement] = []
    for g in owners:
        if g.holder == cmd.holder and g.active_at(now):
            sealed = _sealed_bounds(g, usages)
            if isinstance(sealed, str):
                return _refused(f"invalid_command: {sealed}")
            r = GrantRetirement(g.grant_id, g.holder, g.era, RetirementMode.SEALED_EXACT,
                                sealed, now)
            events.append(_event(EventKind.GRANT_SEALED, GrantSealed(r)))
        else:
            r = GrantRetirement(g.grant_id, g.holder, g.era, RetirementMode.EXPIRED_BOUND,
                                canonical(bounds_map(g.duties)), now)
            events.append(_event(EventKind.GRANT_RETIRED, GrantRetired(r)))
        new_retirements.append(r)
    preds = [state.retirements[rid] for rid in state.uninherited] + new_retirements
    preds = [r for r in preds if any(b.duty in req for b in r.bounds)]
    for r in preds:
        for b in r.bounds:
            if b.duty in req and req[b.duty] < b.bound:
                return _refused(f"uncovered_predecessor: requested {b.duty} bound {req[b.duty]} "
                                f"< bound {b.bound} of retired grant {r.grant_id}",
                                Violation.INHERITANCE)
    for duty, field in _FENCED_DUTIES.items():
        if duty in req and req[duty] < getattr(state, field):
            return _refused(f"bound_below_fence: requested {duty} bound {req[duty]} < rooted "
                            f"{field} {getattr(state, field)}", Violation.INHERITANCE)
    era = next_era(state)
    taken = set(state.grants) | set(state.retirements)
    grant_id = cmd.grant_id if cmd.grant_id and cmd.grant_id not in taken else f"{cmd.holder}/{era}"
    while grant_id in taken:
        grant_id += "+"
    grant = AuthorityGrant(grant_id, cmd.holder, era, now, cmd.expires_at_ms, canonical(req),
                           tuple(sorted(r.grant_id for r in preds)))
    events.append(_event(EventKind.GRANT_ISSUED, GrantIssued(grant)))
    return _verify(state, events, GrantCommandResult(GrantStatus.GRANTED, grant, "issued"))


def _plan_seal(state: RootFacts, cmd: GrantCommand) -> tuple[list[RootEvent], GrantCommandResult]:
    try:
        usages = check_duties(cmd.exact_usages, "exact_usages") if cmd.exact_usages else {}
    except GrantEventError as e:
        return _refused(f"{e.reason}: {e.detail}")
    if cmd.grant_id:
        targets = [state.grants.get(cmd.grant_id)]
        if targets[0] is None:
            r = state.retirements.get(cmd.grant_id)
            if r is not None and r.holder == cmd.holder:
                return [], GrantCommandResult(GrantStatus.RETIRED, None, "already_retired")
            return _refused(f"unknown_grant: {cmd.grant_id}")
    else:  # seal every grant of the holder (graceful shutdown)
        targets = sorted((g for g in state.grants.values() if g.holder == cmd.holder),
                         key=lambda g: g.grant_id)
        if not targets:
            return [], GrantCommandResult(GrantStatus.RETIRED, None, "nothing_to_seal")
    events = []
    for g in targets:
        if g.holder != cmd.holder:
            return _refused(f"not_holder: grant {g.grant_id} is held by {g.holder}",
                            Violation.PRIMACY, grant=g)
        sealed = _sealed_bounds(g, usages)
        if isinstance(sealed, str):
            return _refused(f"invalid_command: {sealed}")
        r = GrantRetirement(g.grant_id, g.holder, g.era, RetirementMode.SEALED_EXACT, sealed,
                            cmd.now_ms)
        events.append(_event(EventKind.GRANT_SEALED, GrantSealed(r)))
    return _verify(state, events, GrantCommandResult(GrantStatus.RETIRED, targets[0], "sealed"))


def _plan_retire_expired(state: RootFacts, cmd: GrantCommand,
                         ) -> tuple[list[RootEvent], GrantCommandResult]:
    g = state.grants.get(cmd.grant_id)
    if g is None:
        if cmd.grant_id in state.retirements:
            return [], GrantCommandResult(GrantStatus.RETIRED, None, "already_retired")
        return _refused(f"unknown_grant: {cmd.grant_id}")
    if g.active_at(cmd.now_ms):
        return _refused(f"grant_live: {g.grant_id} is live until {g.expires_at_ms}",
                        Violation.PRIMACY, GrantStatus.HELD, g)
    r = GrantRetirement(g.grant_id, g.holder, g.era, RetirementMode.EXPIRED_BOUND,
                        canonical(bounds_map(g.duties)), cmd.now_ms)
    return _verify(state, [_event(EventKind.GRANT_RETIRED, GrantRetired(r))],
                   GrantCommandResult(GrantStatus.RETIRED, g, "retired_expired"))


def _plan_inherit(state: RootFacts, cmd: GrantCommand) -> tuple[list[RootEvent], GrantCommandResult]:
    mine = sorted((g for g in state.grants.values()
                   if g.holder == cmd.holder and g.active_at(cmd.now_ms)),
                  key=lambda g: g.grant_id)
    if not mine:
        return _refused(f"no_live_grant: {cmd.holder} holds no live grant", Violation.PRIMACY)
    mine_ids = {g.grant_id for g in mine}
    wanted = list(dict.fromkeys(cmd.predecessor_ids)) or sorted(
        {p for g in mine for p in g.predecessors if p in state.uninherited})
    events = []
    for pid in wanted:
        r = state.retirements.get(pid)
        if r is None:
            return _refused(f"unknown_retirement: {pid}", Violation.INHERITANCE)
        if r.inherited_by:
            if r.inherited_by in mine_ids:
                continue
            return _refused(f"already_inherited: {pid} was inherited by {r.inherited_by}",
                            Violation.FINALITY)
        succ = next((g for g in mine if pid in g.predecessors), None)
        if succ is None:
            return _refused(f"not_a_predecessor: no live grant of {cmd.holder} lists {pid}",
                            Violation.INHERITANCE)
        for b in r.bounds:
            sb = succ.bound_for(b.duty)
            if sb is None or sb < b.bound:
                return _refused(f"uncovered_predecessor: {succ.grant_id} does not cover "
                                f"{b.duty} bound {b.bound} of {pid}", Violation.INHERITANCE)
        events.append(_event(EventKind.GRANT_INHERITED,
                             GrantInherited(GrantInheritance(pid, succ.grant_id, cmd.now_ms))))
    reason = "inherited" if events else "nothing_to_inherit"
    return _verify(state, events, GrantCommandResult(GrantStatus.RETIRED, mine[0], reason))


# ---- audit ----------------------------------------------------------------------------------------


def audit(state: RootFacts, now_ms: int | None = None) -> dict[str, Any]:
    """Finality report (reference 2.8 "Audit"): completion counters and defects.

    Completion: sealed_exact_completed / expired_bound_inherited (retirements inherited by a
    successor), retired_not_inherited (pending audit). Defects: orphan_inheritance (an
    inheritance without its retirement or pointing elsewhere), invalid_successor_bound (an
    unretired successor not covering what it inherited), primacy_overlap (two unretired
    grants on one duty), floor_above_max_era. With `now_ms`, live/expired grant counts too."""
    sealed_done = expired_done = 0
    for r in state.retirements.values():
        if r.inherited_by:
            if r.mode == RetirementMode.SEALED_EXACT:
                sealed_done += 1
            else:
                expired_done += 1
    defects: list[str] = []
    for inh in sorted(state.inheritances.values(), key=lambda i: i.predecessor):
        r = state.retirements.get(inh.predecessor)
        if r is None or r.inherited_by != inh.successor:
            defects.append(f"orphan_inheritance:{inh.predecessor}")
            continue
        s = state.grants.get(inh.successor)
        if s is not None and any((s.bound_for(b.duty) or -1) < b.bound for b in r.bounds):
            defects.append(f"invalid_successor_bound:{inh.predecessor}->{inh.successor}")
    for r in state.retirements.values():
        if r.inherited_by and r.grant_id not in state.inheritances:
            defects.append(f"orphan_inheritance:{r.grant_id}")
    holders: dict[Duty, list[str]] = {}
    for g in state.grants.values():
        for d in g.duties:
            holders.setdefault(d.duty, []).append(g.grant_id)
    for duty, ids in sorted(holders.items()):
        if len(ids) > 1:
            defects.append(f"primacy_overlap:{duty}:{','.join(sorted(ids))}")
    if any(e > state.max_era for e in state.era_floors.values()):
        defects.append("floor_above_max_era")
    report: dict[str, Any] = {
        "grants": len(state.grants),
        "retirements": len(state.retirements),
        "inheritances": len(state.inheritances),
        "sealed_exact_completed": sealed_done,
        "expired_bound_inherited": expired_done,
        "retired_not_inherited": len(state.uninherited),
        "pending_audit": list(state.uninherited),
        "orphan_inheritance": sum(d.startswith("orphan_inheritance") for d in defects),
        "invalid_successor_bound": sum(d.startswith("invalid_successor") for d in defects),
        "primacy_overlap": sum(d.startswith("primacy_overlap") for d in defects),
        "max_era": state.max_era,
        "era_floors": {str(d): e for d, e in sorted(state.era_floors.items())},
        "duty_holders": {str(d): gid for d, gid in sorted(state.duty_grants.items())},
        "defects": defects,
    }
    if now_ms is not None:
        live = [g for g in state.grants.values() if g.active_at(now_ms)]
        report["live_grants"] = len(live)
        report["expired_unretired_grants"] = len(state.grants) - len(live)
    return report


__all__ = [
    "GrantEventError",
    "audit",
    "canonical",
    "check_duties",
    "fence_violation",
    "grant_event_changes",
    "live_grant",
    "next_era",
    "plan_grant_command",
]
