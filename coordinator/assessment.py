"""Transition assessment: the pure pre-persist decision table of DESIGN 4.6 (reference 2.6).

Owns: `assess` (AssessRootEvent, and the first half of PublishRootEvent), `list_transitions`
(ListTransitions) and the decision `TABLE`. Never: I/O, clocks, or changing the rooted state;
the situation of an event is computed by `metaroot.classify.classify`, the same function the
rooted state uses when it applies the event, so an APPLY here is an apply there.

Situations (metaroot.classify.Situation), computed in this order:
  MATCHING     a pending entry with the event's TransitionID matches it exactly
  COMPLETED    the event's target is already the current rooted truth, nothing pending on it
  CONFLICTING  another pending transition (or the same id with another target) owns a region
  OPEN         the event's base descriptors are the current truth, nothing pending
  SUPERSEDED   the current truth is neither the base nor the target

Decision table (event class x situation -> phase, decision, retry class, reason):

  planned   OPEN         PLANNED     APPLY   NONE      open_apply: installs targets, pending
  planned   MATCHING     ADMITTED    SKIP    NONE      matching_pending: idempotent re-plan
  planned   COMPLETED    COMPLETED   SKIP    NONE      already_completed
  planned   CONFLICTING  CONFLICTED  REJECT  CONFLICT  pending_conflict: retry after it ends
  planned   SUPERSEDED   SUPERSEDED  REJECT  REFRESH   superseded: base is stale, re-plan
                                                       (the Go reference SKIPs; a plan that
                                                       was never applied must not look
                                                       accepted)
  cancel    MATCHING     ADMITTED    APPLY   NONE      cancel_pending: restores the bases
  cancel    OPEN         CANCELLED   SKIP    NONE      nothing_to_cancel (never planned, or
                                                       already cancelled)
  cancel    COMPLETED    ABORTED     REJECT  PERMANENT can_no_longer_be_cancelled: reconcile
                                                       forward (DESIGN 7)
  cancel    CONFLICTING  CONFLICTED  REJECT  CONFLICT  pending_conflict
  cancel    SUPERSEDED   SUPERSEDED  SKIP    NONE      superseded: the plan no longer stands
  terminal  MATCHING     ADMITTED    APPLY   NONE      finalize_pending: clears the pending
                                                       entry (no cluster_epoch bump)
  terminal  OPEN         PLANNED     APPLY   NONE      terminal_without_plan: applied
                                                       directly (cluster_epoch + 1)
  terminal  COMPLETED    COMPLETED   SKIP    NONE      already_completed
  terminal  CONFLICTING  CONFLICTED  REJECT  CONFLICT  pending_conflict
  terminal  SUPERSEDED   ABORTED     REJECT  PERMANENT superseded_before_apply
  tombstone OPEN         PLANNED     APPLY   NONE      open_apply
  tombstone COMPLETED    COMPLETED   SKIP    NONE      already_tombstoned
  tombstone CONFLICTING  CONFLICTED  REJECT  CONFLICT  pending_conflict
  tombstone SUPERSEDED   SUPERSEDED  REJECT  REFRESH   stale_base

The cancel guard (DESIGN 7, metaroot.handlers): a `cancel MATCHING` row is re-checked like every
APPLY row, and the rooted validation refuses it (REJECT, phase ABORTED, PERMANENT) as
`cancel_not_fenced` unless the plan's region leader recorded a "fenced" recovery record for
it, or as `cancel_after_apply` when that leader reported it applied. So a cancel is admitted
only through a compensation on the region leader, whoever publishes it.

Around the table: a malformed event is REJECTED (phase ABORTED) with the shape reason; a
request id already applied with the identical event is SKIP ("duplicate_request") and one
reused for a different event is REJECT PERMANENT; an APPLY row is re-checked against the full
rooted validation and `expected_cluster_epoch` (a failure turns it into REJECT, phase ABORTED,
with the validation's retry class). SKIP rows ignore `expected_cluster_epoch`, so a retried
publish whose first attempt bumped the epoch is still accepted. Non-transition events have
kind None and are PLANNED/APPLY when valid.
"""

from __future__ import annotations

from metaroot.classify import (
    TRANSITION_EFFECTS,
    Effect,
    EventClass,
    Situation,
    classify,
    event_class,
)
from metaroot.errors import RootEventRejected
from metaroot.state import RootState
from nokvpy.protocol.enums import (
    AssessmentDecision,
    EventKind,
    RetryClass,
    TransitionKind,
    TransitionPhase,
)
from nokvpy.protocol.grants import AppendFences, Assessment, TransitionEntry
from nokvpy.protocol.records import RootEvent
from nokvpy.protocol.transitions import transition_id, transition_kind

P, C, T, X = EventClass.PLANNED, EventClass.CANCEL, EventClass.TERMINAL, EventClass.TOMBSTONE
S = Situation
Ph = TransitionPhase
D = AssessmentDecision
R = RetryClass

# (event class, situation) -> (phase, decision, retry class, reason). See the module docstring.
TABLE: dict[tuple[EventClass, Situation],
            tuple[TransitionPhase, AssessmentDecision, RetryClass, str]] = {
    (P, S.OPEN): (Ph.PLANNED, D.APPLY, R.NONE, "open_apply"),
    (P, S.MATCHING): (Ph.ADMITTED, D.SKIP, R.NONE, "matching_pending"),
    (P, S.COMPLETED): (Ph.COMPLETED, D.SKIP, R.NONE, "already_completed"),
    (P, S.CONFLICTING): (Ph.CONFLICTED, D.REJECT, R.CONFLICT, "pending_conflict"),
    (P, S.SUPERSEDED): (Ph.SUPERSEDED, D.REJECT, R.REFRESH, "superseded"),
    (C, S.MATCHING): (Ph.ADMITTED, D.APPLY, R.NONE, "cancel_pending"),
    (C, S.OPEN): (Ph.CANCELLED, D.SKIP, R.NONE, "nothing_to_cancel"),
    (C, S.COMPLETED): (Ph.ABORTED, D.REJECT, R.PERMANENT, "can_no_longer_be_cancelled"),
    (C, S.CONFLICTING): (Ph.CONFLICTED, D.REJECT, R.CONFLICT, "pending_conflict"),
    (C, S.SUPERSEDED): (Ph.SUPERSEDED, D.SKIP, R.NONE, "superseded"),
    (T, S.MATCHING): (Ph.ADMITTED, D.APPLY, R.NONE, "finalize_pending"),
    (T, S.OPEN): (Ph.PLANNED, D.APPLY, R.NONE, "terminal_without_plan"),
    (T, S.COMPLETED): (Ph.COMPLETED, D.SKIP, R.NONE, "already_completed"),
    (T, S.CONFLICTING): (Ph.CONFLICTED, D.REJECT, R.CONFLICT, "pending_conflict"),
    (T, S.SUPERSEDED): (Ph.ABORTED, D.REJECT, R.PERMANENT, "superseded_before_apply"),
    (X, S.OPEN): (Ph.PLANNED, D.APPLY, R.NONE, "open_apply"),
    (X, S.COMPLETED): (Ph.COMPLETED, D.SKIP, R.NONE, "already_tombstoned"),
    (X, S.CONFLICTING): (Ph.CONFLICTED, D.REJECT, R.CONFLICT, "pending_conflict"),
    (X, S.SUPERSEDED): (Ph.SUPERSEDED, D.REJECT, R.REFRESH, "stale_base"),
}

_EFFECT_OF = {D.APPLY: Effect.APPLY, D.SKIP: Effect.NOOP, D.REJECT: Effect.REJECT}
# The rooted state must agree with every row (it applies exactly what we say APPLY, treats
# SKIP as a no-op and refuses REJECT); checked once at import.
assert set(TABLE) == set(TRANSITION_EFFECTS) and all(
    _EFFECT_OF[row[1]] == TRANSITION_EFFECTS[key][0] for key, row in TABLE.items())


def _rejected(tid: str, kind: TransitionKind | None, e: RootEventRejected) -> Assessment:
    return Assessment(tid, kind, TransitionPhase.ABORTED, AssessmentDecision.REJECT,
                      e.retry_class, f"{e.reason}: {e.detail}" if e.detail else e.reason)


def assess(state: RootState, event: RootEvent,
           expected_cluster_epoch: int | None = None) -> Assessment:
    """Pure pre-persist assessment of `event` against `state` (see the module docstring)."""
    tid = transition_id(event) if isinstance(event, RootEvent) else ""
    kind = transition_kind(event) if isinstance(event, RootEvent) else None
    try:
        state.precheck(event)
    except RootEventRejected as e:
        return _rejected(tid, kind, e)
    cls = event_class(EventKind(event.kind))
    row = TABLE.get((cls, classify(state, event))) if cls != EventClass.OTHER else None
    try:
        seen = state.lookup_request(event.request_id, event)
    except RootEventRejected as e:
        return _rejected(tid, kind, e)
    if seen is not None:
        phase = row[0] if row is not None else TransitionPhase.COMPLETED
        return Assessment(tid, kind, phase, AssessmentDecision.SKIP, RetryClass.NONE,
                          f"duplicate_request: applied at {seen}")
    if row is not None and row[1] != AssessmentDecision.APPLY:
        phase, decision, retry, reason = row
        return Assessment(tid, kind, phase, decision, retry, reason)
    try:
        state.validate(event, AppendFences(expected_cluster_epoch=expected_cluster_epoch))
    except RootEventRejected as e:
        return _rejected(tid, kind, e)
    if row is None:
        return Assessment(tid, None, TransitionPhase.PLANNED, AssessmentDecision.APPLY,
                          RetryClass.NONE, "open_apply")
    phase, decision, retry, reason = row
    return Assessment(tid, kind, phase, decision, retry, reason)


def list_transitions(state: RootState) -> list[TransitionEntry]:
    """Every admitted (pending) transition: peer changes by region id, then range changes."""
    peer_kinds = (TransitionKind.PEER_ADDITION, TransitionKind.PEER_REMOVAL)
    entries = sorted(state.pending.values(), key=lambda p: (
        0 if p.kind in peer_kinds else 1, min(p.region_ids, default=0), p.transition_id))
    return [TransitionEntry(p.transition_id, p.kind, TransitionPhase.ADMITTED, p.region_ids,
                            p.targets, p.bases, p.source_token) for p in entries]


__all__ = ["TABLE", "Assessment", "assess", "list_transitions"]
