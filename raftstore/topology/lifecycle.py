"""The topology lifecycle of each TransitionID on this store (DESIGN 5).

Owns: the stage of every topology transition this store planned, executed, applied or
published (its `raftstore.execution.TransitionRecord`, kept in the store's
`ExecutionTracker.transitions` so `ExecutionStatus` shows it), the legal stage moves, the
summary `PublishState` of each stage, and an append-only history of (time, stage, note) per
transition. Outcomes follow the tracker's one outcome state machine
(`ExecutionTracker.advance_transition`). Never decides anything, never does I/O and never
reads a clock itself: the time comes from the injected `clock` (the runtime passes trio's).
The executors (raftstore.topology.runtime and the operations), the apply handlers
(raftstore.topology.apply), the publisher (raftstore.topology.outbox) and the compensator
(raftstore.topology.compensation) report, this module remembers.

Stages: PLANNED -> PLANNED_PUBLISHED -> EXECUTING -> APPLIED -> TERMINAL_PENDING ->
TERMINAL_PUBLISHED, with TERMINAL_FAILED (retrying) <-> TERMINAL_PENDING, TERMINAL_BLOCKED
(permanent refusal, kept), COMPENSATED and COMPENSATION_FAILED. A record never leaves
TERMINAL_PUBLISHED, TERMINAL_BLOCKED or COMPENSATED (the "settled" stages) on its own; a
regression report is ignored and counted. COMPENSATION_FAILED may still move forward to a
terminal stage (reconcile forward). An operator's retry or resolve of a blocked terminal
event is the one way out of TERMINAL_BLOCKED (`reopen`).
"""

from __future__ import annotations

from collections.abc import Callable

from nokvpy.protocol import ExecutionOutcome, PublishState, TopologyStage
from raftstore.execution import ExecutionTracker, TransitionRecord

S = TopologyStage

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
MAX_HISTORY = 32


def no_clock() -> float:
    """The clock of a lifecycle nobody gave one (unit tests of pure callers)."""
    return 0.0


class Lifecycle:
    """Stage bookkeeping over the store's execution tracker."""

    def __init__(self, tracker: ExecutionTracker, clock: Callable[[], float] = no_clock):
        self.tracker = tracker
        self.clock = clock
        self.regressions_ignored = 0

    def get(self, tid: str) -> TransitionRecord | None:
        return self.tracker.transitions.get(tid)

    def track(self, tid: str, region_id: int, kind: str, role: str = "executor",
              stage: TopologyStage = S.PLANNED, note: str = "") -> TransitionRecord:
        """The record of `tid` (created at `stage` if new; an existing one is kept)."""
        rec = self.get(tid)
        if rec is None:
            rec = TransitionRecord(tid, region_id, kind, role=role)
            rec.updated_at = self.clock()
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
        if outcome is not None and not self.tracker.advance_transition(rec, outcome):
            self.regressions_ignored += 1
        if error is not None:
            rec.last_error = error
        if rec.stage == stage:
            if note and (not rec.history or rec.history[-1][2] != note):
                self._history(rec, stage, note)
            rec.updated_at = self.clock()
            return True
        if not _allowed(rec.stage, stage):
            self.regressions_ignored += 1
            return False
        self._set(rec, stage, note)
        return True

    def reopen(self, tid: str, stage: TopologyStage, note: str) -> None:
        """Move `tid` out of TERMINAL_BLOCKED on an operator's decision (retry: back to
        TERMINAL_PENDING; resolve: TERMINAL_PUBLISHED). TERMINAL_BLOCKED is a settled stage
        `move` never leaves: this sets the stage directly (history and publish state kept
        right). A record at another stage is moved as usual."""
        rec = self.get(tid)
        if rec is None:
            return
        if rec.stage != S.TERMINAL_BLOCKED:
            self.move(tid, stage, note)
            return
        self._set(rec, stage, note)
        rec.detail = note

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
            rec.updated_at = self.clock()

    def _set(self, rec: TransitionRecord, stage: TopologyStage, note: str) -> None:
        rec.stage = stage
        rec.publish_state = _PUBLISH[stage]
        if stage in (S.TERMINAL_PUBLISHED, S.COMPENSATED):
            rec.next_retry_in = 0.0
        rec.updated_at = self.clock()
        self._history(rec, stage, note)

    def _history(self, rec: TransitionRecord, stage: TopologyStage, note: str) -> None:
        rec.history.append((self.clock(), stage.name, note))
        if len(rec.history) > MAX_HISTORY:
            del rec.history[1:2]  # keep the first entry (how it started)


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
