"""The topology lifecycle of each TransitionID on this store (DESIGN 5).

Owns: the tracked record of every topology transition this store planned, executed, applied
or published (`TrackedTransition`, kept in the store's `ExecutionTracker.transitions` so
`ExecutionStatus` shows it), the legal stage moves, the summary `PublishState` of each
stage, and an append-only history of (time, stage, note) per transition. Never decides
anything and never does I/O: the executor (raftstore.topology), the apply handlers
(raftstore.topology_apply), the publisher (raftstore.outbox) and the compensator
(raftstore.compensation) report, this module remembers.

Stages: PLANNED -> PLANNED_PUBLISHED -> EXECUTING -> APPLIED -> TERMINAL_PENDING ->
TERMINAL_PUBLISHED, with TERMINAL_FAILED (retrying) <-> TERMINAL_PENDING, TERMINAL_BLOCKED
(permanent refusal, kept), COMPENSATED and COMPENSATION_FAILED. A record never leaves
TERMINAL_PUBLISHED, TERMINAL_BLOCKED or COMPENSATED (the "settled" stages); a regression
report is ignored and counted. COMPENSATION_FAILED may still move forward to a terminal
stage (reconcile forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from nokvpy.protocol import ExecutionOutcome, PublishState, TopologyStage
from raftstore.execution import ExecutionTracker, TransitionRecord

S = TopologyStage
OUT = ExecutionOutcome

SETTLED = frozenset({S.TERMINAL_PUBLISHED, S.TERMINAL_BLOCKED, S.COMPENSATED})
_ORDER = {S.PLANNED: 1, S.PLANNED_PUBLISHED: 2, S.EXECUTING: 3, S.APPLIED: 4,
          S.TERMINAL_PENDING: 5, S.TERMINAL_FAILED: 5, S.COMPENSATION_FAILED: 5,
          S.TERMINAL_PUBLISHED: 6, S.TERMINAL_BLOCKED: 6, S.COMPENSATED: 6}
_PUBLISH = {S.PLANNED: PublishState.PENDING, S.PLANNED_PUBLISHED: PublishState.PENDING,
            S.EXECUTING: PublishState.PENDING, S.APPLIED: PublishState.PENDING,
            S.TERMINAL_PENDING: PublishState.PENDING,
            S.TERMINAL_PUBLISHED: PublishState.PUBLISHED,
            S.TERMINAL_FAILED: PublishState.PUBLISH_FAILED,
            S.TERMINAL_BLOCKED: PublishState.BLOCKED,
            S.COMPENSATED: PublishState.PUBLISHED,
            S.COMPENSATION_FAILED: PublishState.PENDING}
_OUT_RANK = {OUT.QUEUED: 1, OUT.PROPOSED: 2, OUT.COMMITTED: 3, OUT.APPLIED: 4, OUT.FAILED: 4,
             OUT.REJECTED: 4}
MAX_HISTORY = 32


@dataclass(slots=True)
class TrackedTransition(TransitionRecord):
    """A TransitionRecord with the topology runtime's extra evidence."""

    kind: str = ""  # split | merge | add_peer | remove_peer | tombstone | transfer_leader
    role: str = "executor"  # executor | replica (applied it, did not plan it)
    publish_attempts: int = 0
    next_retry_in: float = 0.0
    detail: str = ""
    history: list = field(default_factory=list)  # [(time, stage name, note)]

    def as_dict(self) -> dict[str, object]:
        out = TransitionRecord.as_dict(self)
        out.update({"kind": self.kind, "role": self.role,
                    "publish_attempts": self.publish_attempts,
                    "next_retry_in": round(self.next_retry_in, 3), "detail": self.detail,
                    "history": [{"at": round(t, 3), "stage": s, "note": n}
                                for t, s, n in self.history]})
        return out


class Lifecycle:
    """Stage bookkeeping over the store's execution tracker."""

    def __init__(self, tracker: ExecutionTracker):
        self.tracker = tracker
        self.regressions_ignored = 0

    def get(self, tid: str) -> TrackedTransition | None:
        rec = self.tracker.transitions.get(tid)
        return rec if isinstance(rec, TrackedTransition) else None

    def track(self, tid: str, region_id: int, kind: str, role: str = "executor",
              stage: TopologyStage = S.PLANNED, note: str = "") -> TrackedTransition:
        """The record of `tid` (created at `stage` if new; an existing one is kept)."""
        rec = self.get(tid)
        if rec is None:
            rec = TrackedTransition(tid, region_id, kind, kind=kind, role=role)
            rec.updated_at = _now()
            self.tracker.track_transition(rec)
            self._set(rec, stage, note or "tracked")
        elif role == "executor" and rec.role != "executor":
            rec.role = "executor"
        return rec

    def move(self, tid: str, stage: TopologyStage, note: str = "", *, error: str | None = None,
             outcome: ExecutionOutcome | None = None) -> bool:
        """Move `tid` to `stage` (False and ignored when that would regress it)."""
        rec = self.get(tid)
        if rec is None:
            return False
        if outcome is not None:
            self._outcome(rec, outcome)
        if error is not None:
            rec.last_error = error
        if rec.stage == stage:
            if note and (not rec.history or rec.history[-1][2] != note):
                self._history(rec, stage, note)
            rec.updated_at = _now()
            return True
        if not _allowed(rec.stage, stage):
            self.regressions_ignored += 1
            return False
        self._set(rec, stage, note)
        return True

    def note(self, tid: str, detail: str) -> None:
        rec = self.get(tid)
        if rec is not None:
            rec.detail = detail

    def remark(self, tid: str, detail: str) -> None:
        """Add `detail` to the history of `tid` at its current stage (a settled record too:
        e.g. its executor's later proposal refused by the compensation's fence)."""
        rec = self.get(tid)
        if rec is not None:
            rec.detail = detail
            self._history(rec, rec.stage, detail)
            rec.updated_at = _now()

    def _set(self, rec: TrackedTransition, stage: TopologyStage, note: str) -> None:
        rec.stage = stage
        rec.publish_state = _PUBLISH[stage]
        if stage in (S.TERMINAL_PUBLISHED, S.COMPENSATED):
            rec.next_retry_in = 0.0
        rec.updated_at = _now()
        self._history(rec, stage, note)

    @staticmethod
    def _history(rec: TrackedTransition, stage: TopologyStage, note: str) -> None:
        rec.history.append((_now(), stage.name, note))
        if len(rec.history) > MAX_HISTORY:
            del rec.history[1:2]  # keep the first entry (how it started)

    def _outcome(self, rec: TrackedTransition, outcome: ExecutionOutcome) -> None:
        cur = rec.outcome
        if cur in (OUT.APPLIED, OUT.FAILED, OUT.REJECTED) and outcome != cur:
            # A compensated-then-reconciled transition may still learn it applied.
            if not (cur == OUT.FAILED and outcome == OUT.APPLIED):
                self.regressions_ignored += 1
                return
        elif _OUT_RANK[outcome] < _OUT_RANK.get(cur, 0):
            self.regressions_ignored += 1
            return
        rec.outcome = outcome
        self.tracker.outcomes[outcome.name] += 1


def _allowed(cur: TopologyStage, new: TopologyStage) -> bool:
    if cur in SETTLED:
        return False
    if cur == S.COMPENSATION_FAILED:
        return new in (S.TERMINAL_PENDING, S.TERMINAL_FAILED, S.TERMINAL_PUBLISHED,
                       S.TERMINAL_BLOCKED, S.COMPENSATED)
    if new in (S.COMPENSATED, S.COMPENSATION_FAILED):
        return _ORDER[cur] < _ORDER[S.APPLIED]  # only a transition that did not apply here
    if {cur, new} <= {S.TERMINAL_PENDING, S.TERMINAL_FAILED}:
        return True
    return _ORDER[new] > _ORDER[cur]


def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio (unit tests of pure callers)
        return 0.0
