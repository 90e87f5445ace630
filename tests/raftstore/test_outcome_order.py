"""One outcome state machine (raftstore.execution): the same ordering decides for execution
targets (reads, writes, leader transfers) and for topology transitions (the lifecycle's
records); the lifecycle keeps no ordering of its own, imports no trio and takes its time from
an injected clock. Pure: no processes, no trio run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nokvpy.protocol import ExecutionOutcome, TopologyStage
from raftstore import execution
from raftstore.execution import ExecutionTracker, TransitionRecord, advances
from raftstore.topology import lifecycle as lifecycle_mod
from raftstore.topology.lifecycle import Lifecycle

ROOT = Path(__file__).resolve().parents[2]
OUT = ExecutionOutcome
S = TopologyStage
LETTER = {"Q": OUT.QUEUED, "P": OUT.PROPOSED, "C": OUT.COMMITTED, "A": OUT.APPLIED,
          "F": OUT.FAILED, "R": OUT.REJECTED}

# current outcome -> the outcomes a report may move it to (a repeat not counted)
FORWARD = {None: "QPCAFR", "Q": "PCAFR", "P": "CAFR", "C": "AFR", "A": "", "F": "A", "R": ""}


def _cases():
    for cur, allowed in FORWARD.items():
        for new in LETTER:
            yield cur, new, new in allowed


@pytest.mark.parametrize("cur, new, allowed", list(_cases()))
def test_the_one_ordering(cur, new, allowed):
    current = LETTER[cur] if cur else None
    assert advances(current, LETTER[new]) is allowed
    # transitions also record a repeat of their current outcome
    assert advances(current, LETTER[new], repeat=True) is (allowed or cur == new)


def test_targets_follow_it_and_count_what_they_ignore():
    tracker = ExecutionTracker()
    t = tracker.new_target("write", 7)
    assert tracker.advance(t, OUT.QUEUED) and tracker.advance(t, OUT.COMMITTED)
    assert not tracker.advance(t, OUT.PROPOSED)  # backwards
    assert not tracker.advance(t, OUT.COMMITTED)  # a target reports an outcome once
    assert tracker.advance(t, OUT.REJECTED)
    assert not tracker.advance(t, OUT.APPLIED)  # REJECTED is final
    assert tracker.regressions_ignored == 3
    assert dict(tracker.outcomes) == {"QUEUED": 1, "COMMITTED": 1, "REJECTED": 1}
    assert list(tracker.recent) == [t]


def test_transitions_follow_it_through_the_lifecycle():
    tracker = ExecutionTracker()
    lc = Lifecycle(tracker)
    lc.track("split:7:1", 7, "split")
    assert lc.move("split:7:1", S.PLANNED, outcome=OUT.QUEUED)  # repeat: recorded again
    lc.move("split:7:1", S.EXECUTING, outcome=OUT.PROPOSED)
    lc.move("split:7:1", S.EXECUTING, outcome=OUT.QUEUED)  # backwards: ignored
    lc.move("split:7:1", S.EXECUTING, outcome=OUT.FAILED)
    lc.move("split:7:1", S.EXECUTING, outcome=OUT.REJECTED)  # out of FAILED: ignored
    lc.move("split:7:1", S.APPLIED, outcome=OUT.APPLIED)  # reconciled forward: allowed
    rec = lc.get("split:7:1")
    assert rec.outcome == OUT.APPLIED
    assert lc.regressions_ignored == 2 and tracker.regressions_ignored == 0
    assert dict(tracker.outcomes) == {"QUEUED": 1, "PROPOSED": 1, "FAILED": 1, "APPLIED": 1}


def test_the_lifecycle_keeps_no_ordering_of_its_own():
    tables = [name for name, value in vars(lifecycle_mod).items()
              if isinstance(value, dict)
              and any(type(k) is ExecutionOutcome for k in value)]
    assert tables == []
    assert set(execution._RANK) == set(ExecutionOutcome)


def test_a_transition_record_prints_as_before():
    lc = Lifecycle(ExecutionTracker(), clock=lambda: 12.3456)
    lc.track("peer:7:add:4:14", 7, "add_peer", "replica", S.APPLIED, "applied here")
    body = lc.tracker.status()["transitions"]["peer:7:add:4:14"]
    assert list(body) == ["transition_id", "region_id", "action", "stage", "publish_state",
                          "outcome", "last_error", "updated_at", "kind", "role",
                          "publish_attempts", "next_retry_in", "detail", "history"]
    assert (body["action"], body["kind"], body["role"], body["stage"], body["outcome"]) == (
        "add_peer", "add_peer", "replica", "APPLIED", "QUEUED")
    assert body["updated_at"] == 12.346
    assert body["history"] == [{"at": 12.346, "stage": "APPLIED", "note": "applied here"}]
    assert isinstance(lc.get("peer:7:add:4:14"), TransitionRecord)


def test_the_lifecycle_takes_its_time_from_the_injected_clock():
    now = [1.0]
    lc = Lifecycle(ExecutionTracker(), clock=lambda: now[0])
    lc.track("t", 7, "split")
    now[0] = 5.0
    lc.move("t", S.PLANNED_PUBLISHED, "published")
    assert [h[0] for h in lc.get("t").history] == [1.0, 5.0]
    assert lc.get("t").updated_at == 5.0
    assert Lifecycle(ExecutionTracker()).clock() == 0.0  # no clock given: time stands still


def test_an_operator_reopens_a_blocked_record():
    lc = Lifecycle(ExecutionTracker())
    lc.track("t", 7, "split", stage=S.TERMINAL_BLOCKED)
    assert not lc.move("t", S.TERMINAL_PENDING)  # settled: move never leaves it
    lc.reopen("t", S.TERMINAL_PENDING, "operator retry")
    rec = lc.get("t")
    assert (rec.stage, rec.publish_state.name, rec.detail) == (
        S.TERMINAL_PENDING, "PENDING", "operator retry")


def test_the_lifecycle_module_imports_no_trio():
    tree = ast.parse((ROOT / "raftstore/topology/lifecycle.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"trio", "time", "asyncio", "os", "socket", "lmdb", "msgpack"}
    # nor anything it imports
    code = ("import sys, raftstore.topology.lifecycle; "
            "print(sorted(m for m in ('trio', 'lmdb', 'msgpack') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
