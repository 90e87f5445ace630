"""Execution tracking: what happened to each execution target, and the last admissions.

Owns: the one outcome state machine (`advances` over the one ordering `_RANK`) for every
execution target (one read, one write proposal, one leader transfer) and every topology
transition (`TransitionRecord`, keyed by its TransitionID: its outcome, stage, publish state
and history, filled by raftstore.topology.lifecycle), outcome counters, the last admission per
class, the bounded history of recent targets and the transition table. Never decides
anything and never reads a clock: the store reports, this module remembers and summarizes
for `ExecutionStatus`.

Forward-only: QUEUED -> PROPOSED -> COMMITTED -> APPLIED, with REJECTED and FAILED as terminal
side exits. A report that would move an outcome backwards (or out of a terminal outcome) is
ignored: counted as `regressions_ignored` for targets, by the lifecycle for transitions. The
one way out of a terminal outcome: a transition compensated (FAILED) that reconciles forward
learns it APPLIED. A target reports each outcome once (a repeat is a regression); a
transition's outcome is reported again by each stage, replica and retry (a repeat is
recorded again).
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    ExecutionOutcome,
    PublishState,
    TopologyStage,
)

OUT = ExecutionOutcome

# The one ordering of outcomes (targets and transitions).
_RANK = {OUT.QUEUED: 1, OUT.PROPOSED: 2, OUT.COMMITTED: 3, OUT.APPLIED: 4, OUT.FAILED: 4,
         OUT.REJECTED: 4}
TERMINAL = frozenset({OUT.APPLIED, OUT.FAILED, OUT.REJECTED})
RECONCILED = frozenset({(OUT.FAILED, OUT.APPLIED)})  # the moves out of a terminal outcome


def advances(current: ExecutionOutcome | None, new: ExecutionOutcome, *,
             repeat: bool = False) -> bool:
    """May an outcome move from `current` (None: nothing reported yet) to `new`? Forward in
    `_RANK` only; out of a terminal outcome only along RECONCILED. `repeat`: a report of the
    current outcome again is accepted (transitions) instead of ignored (targets)."""
    if current is None:
        return True
    if new == current:
        return repeat
    if current in TERMINAL:
        return (current, new) in RECONCILED
    return _RANK[new] > _RANK[current]

RECENT_TARGETS = 64
MAX_TRANSITIONS = 256


class ExecutionTarget:
    """One unit of execution: a read, a write proposal, or a topology transition."""

    __slots__ = ("id", "kind", "region_id", "outcome", "detail", "transition_id")

    def __init__(self, target_id: str, kind: str, region_id: int, transition_id: str = ""):
        self.id = target_id
        self.kind = kind  # "read" | "write" | "split" | "merge" | "peer_change" | ...
        self.region_id = region_id
        self.outcome: ExecutionOutcome | None = None
        self.detail = ""
        self.transition_id = transition_id

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "region_id": self.region_id,
                "outcome": self.outcome.name if self.outcome else "", "detail": self.detail,
                "transition_id": self.transition_id}


@dataclass(slots=True)
class TransitionRecord:
    """One topology transition as this store sees it (executor, replica or compensator): its
    outcome, its lifecycle stage and publish state, and the evidence of how it got there."""

    transition_id: str
    region_id: int
    kind: str  # split | merge | add_peer | remove_peer | tombstone
    stage: TopologyStage = TopologyStage.PLANNED
    publish_state: PublishState = PublishState.PENDING
    outcome: ExecutionOutcome = ExecutionOutcome.QUEUED
    last_error: str = ""
    updated_at: float = 0.0
    role: str = "executor"  # executor | replica (applied it, did not plan it) | compensator
    publish_attempts: int = 0
    next_retry_in: float = 0.0
    detail: str = ""
    history: list = field(default_factory=list)  # [(time, stage name, note)]

    def as_dict(self) -> dict[str, object]:
        return {"transition_id": self.transition_id, "region_id": self.region_id,
                "action": self.kind, "stage": self.stage.name,
                "publish_state": self.publish_state.name, "outcome": self.outcome.name,
                "last_error": self.last_error, "updated_at": round(self.updated_at, 3),
                "kind": self.kind, "role": self.role,
                "publish_attempts": self.publish_attempts,
                "next_retry_in": round(self.next_retry_in, 3), "detail": self.detail,
                "history": [{"at": round(t, 3), "stage": s, "note": n}
                            for t, s, n in self.history]}


@dataclass(slots=True)
class ExecutionTracker:
    outcomes: Counter = field(default_factory=Counter)  # outcome name -> count
    admissions: Counter = field(default_factory=Counter)  # "CLASS/REASON" -> count
    last_admission: dict[AdmissionClass, Admission] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_TARGETS))
    transitions: OrderedDict = field(default_factory=OrderedDict)
    regressions_ignored: int = 0
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    # ---- admissions ------------------------------------------------------------------

    def admitted(self, adm: Admission) -> Admission:
        """Record an admission decision (kept as the last one of its class)."""
        self.last_admission[adm.cls] = adm
        self.admissions[f"{adm.cls.name}/{adm.reason.name}"] += 1
        return adm

    # ---- targets ---------------------------------------------------------------------

    def new_target(self, kind: str, region_id: int, transition_id: str = "") -> ExecutionTarget:
        tid = transition_id or f"{kind}:{region_id}:{next(self._seq)}"
        return ExecutionTarget(tid, kind, region_id, transition_id)

    def advance(self, target: ExecutionTarget, outcome: ExecutionOutcome, detail: str = "") -> bool:
        """Move `target` forward to `outcome`; False (and ignored) if that would regress."""
        if not advances(target.outcome, outcome):
            self.regressions_ignored += 1
            return False
        target.outcome = outcome
        if detail:
            target.detail = detail
        self.outcomes[outcome.name] += 1
        if outcome in TERMINAL:
            self.recent.append(target)
        return True

    # ---- transitions -----------------------------------------------------------------

    def advance_transition(self, rec: TransitionRecord, outcome: ExecutionOutcome) -> bool:
        """Move transition `rec` to `outcome`; False (and ignored) if that would regress it.
        The caller (the lifecycle) counts the ignored reports."""
        if not advances(rec.outcome, outcome, repeat=True):
            return False
        rec.outcome = outcome
        self.outcomes[outcome.name] += 1
        return True

    def track_transition(self, rec: TransitionRecord) -> TransitionRecord:
        self.transitions[rec.transition_id] = rec
        self.transitions.move_to_end(rec.transition_id)
        while len(self.transitions) > MAX_TRANSITIONS:
            self.transitions.popitem(last=False)
        return rec

    # ---- status ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return {
            "last_admission": {
                cls.name: admission_dict(adm) for cls, adm in sorted(self.last_admission.items())
            },
            "admissions": dict(sorted(self.admissions.items())),
            "outcomes": {o.name: self.outcomes.get(o.name, 0) for o in ExecutionOutcome},
            "regressions_ignored": self.regressions_ignored,
            "recent_targets": [t.as_dict() for t in self.recent],
            "transitions": {tid: rec.as_dict() for tid, rec in self.transitions.items()},
        }


def admission_dict(adm: Admission) -> dict[str, object]:
    out: dict[str, object] = {"class": adm.cls.name, "reason": adm.reason.name,
                              "detail": adm.detail}
    if adm.leader_peer_id:
        out["leader_peer_id"] = adm.leader_peer_id
        out["leader_store_id"] = adm.leader_store_id
    if adm.current_epoch is not None:
        out["current_epoch"] = [adm.current_epoch.version, adm.current_epoch.conf_ver]
    return out
