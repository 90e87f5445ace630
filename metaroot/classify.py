"""Transition classification: where a topology event stands against the rooted truth (DESIGN
4.6), and what root does about it.

Owns: `Situation` (OPEN, MATCHING, COMPLETED, CONFLICTING, SUPERSEDED) and `classify`, the
one function that computes it (the coordinator's assessment calls the same function on its
mirror), the event classes (`EventClass`, `event_class`) and the decision table
`TRANSITION_EFFECTS` (event class, situation) -> (effect, retry class, reason) that the rooted
state applies and the coordinator's assessment table must agree with.
Never: changes state, validates payload fields (metaroot.validate does), or does I/O.
"""

from __future__ import annotations

from enum import IntEnum

from metaroot.facts import RootFacts
from nokvpy.protocol.enums import (
    CANCEL_KINDS,
    PLANNED_KINDS,
    TERMINAL_KINDS,
    EventKind,
    RetryClass,
)
from nokvpy.protocol.records import RegionDescriptor, RegionRemoval, RootEvent
from nokvpy.protocol.transitions import shape, transition_id


class Situation(IntEnum):
    """Where a transition event stands against the rooted state (DESIGN 4.6)."""

    OPEN = 1  # bases are current, nothing pending touches the regions
    MATCHING = 2  # a pending entry with this transition id matches the event exactly
    COMPLETED = 3  # the target is already the current truth (and nothing pending for it)
    CONFLICTING = 4  # another pending transition touches the regions
    SUPERSEDED = 5  # the current truth is neither the base nor the target


class EventClass(IntEnum):
    PLANNED = 1
    CANCEL = 2
    TERMINAL = 3
    TOMBSTONE = 4
    OTHER = 5


def event_class(kind: EventKind) -> EventClass:
    if kind in PLANNED_KINDS:
        return EventClass.PLANNED
    if kind in CANCEL_KINDS:
        return EventClass.CANCEL
    if kind in TERMINAL_KINDS:
        return EventClass.TERMINAL
    if kind == EventKind.REGION_TOMBSTONED:
        return EventClass.TOMBSTONE
    return EventClass.OTHER


class Effect(IntEnum):
    APPLY = 1
    NOOP = 2  # accepted; already reflected in root (advances the token only)
    REJECT = 3


# (event class, situation) -> (effect, retry class, reason). The coordinator's assessment table
# (coordinator/assessment.py) adds phases on top and must agree with this column.
TRANSITION_EFFECTS: dict[tuple[EventClass, Situation], tuple[Effect, RetryClass, str]] = {
    (EventClass.PLANNED, Situation.OPEN): (Effect.APPLY, RetryClass.NONE, "open_apply"),
    (EventClass.PLANNED, Situation.MATCHING): (Effect.NOOP, RetryClass.NONE, "matching_pending"),
    (EventClass.PLANNED, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE, "already_completed"),
    (EventClass.PLANNED, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                  "pending_conflict"),
    (EventClass.PLANNED, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.REFRESH, "superseded"),
    (EventClass.CANCEL, Situation.MATCHING): (Effect.APPLY, RetryClass.NONE, "cancel_pending"),
    (EventClass.CANCEL, Situation.OPEN): (Effect.NOOP, RetryClass.NONE, "nothing_to_cancel"),
    (EventClass.CANCEL, Situation.COMPLETED): (Effect.REJECT, RetryClass.PERMANENT,
                                               "can_no_longer_be_cancelled"),
    (EventClass.CANCEL, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                 "pending_conflict"),
    (EventClass.CANCEL, Situation.SUPERSEDED): (Effect.NOOP, RetryClass.NONE, "superseded"),
    (EventClass.TERMINAL, Situation.MATCHING): (Effect.APPLY, RetryClass.NONE,
                                                "finalize_pending"),
    (EventClass.TERMINAL, Situation.OPEN): (Effect.APPLY, RetryClass.NONE,
                                            "terminal_without_plan"),
    (EventClass.TERMINAL, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE,
                                                 "already_completed"),
    (EventClass.TERMINAL, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                   "pending_conflict"),
    (EventClass.TERMINAL, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.PERMANENT,
                                                  "superseded_before_apply"),
    (EventClass.TOMBSTONE, Situation.OPEN): (Effect.APPLY, RetryClass.NONE, "open_apply"),
    (EventClass.TOMBSTONE, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE,
                                                  "already_tombstoned"),
    (EventClass.TOMBSTONE, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                    "pending_conflict"),
    (EventClass.TOMBSTONE, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.REFRESH,
                                                   "stale_base"),
}

def _same_all(a: tuple[RegionDescriptor, ...], b: tuple[RegionDescriptor, ...]) -> bool:
    return len(a) == len(b) and all(x.same_truth(y) for x, y in zip(a, b, strict=True))


def touched_ids(bases, targets) -> tuple[int, ...]:
    return tuple(sorted({d.region_id for d in bases} | {d.region_id for d in targets}))


def classify(state: RootFacts, event: RootEvent) -> Situation:
    """The transition situation of a well-formed topology event (see `Situation`).

    Order: matching pending, completed, conflicting pending, open, superseded."""
    tid = transition_id(event)
    if isinstance(event.payload, RegionRemoval):
        p = event.payload
        cur = state.descriptors.get(p.region_id)
        if cur is None:
            return Situation.COMPLETED
        if state.pending_by_region.get(p.region_id) is not None:
            return Situation.CONFLICTING
        if p.base is None or p.base.same_truth(cur):
            return Situation.OPEN
        return Situation.SUPERSEDED
    bases, targets = shape(event)
    entry = state.pending.get(tid)
    if entry is not None and _same_all(entry.targets, targets) and _same_all(entry.bases, bases):
        return Situation.MATCHING
    target_ids = {t.region_id for t in targets}
    current = state.descriptors
    if all((c := current.get(t.region_id)) is not None and c.same_truth(t) for t in targets) and \
            all(b.region_id in target_ids or b.region_id not in current for b in bases):
        if entry is None and not any(state.pending_by_region.get(t.region_id) for t in targets):
            return Situation.COMPLETED
    if any(state.pending_by_region.get(r) for r in touched_ids(bases, targets)):
        return Situation.CONFLICTING
    if all((c := current.get(b.region_id)) is not None and c.same_truth(b) for b in bases):
        return Situation.OPEN
    return Situation.SUPERSEDED


__all__ = [
    "TRANSITION_EFFECTS",
    "Effect",
    "EventClass",
    "Situation",
    "classify",
    "event_class",
]
