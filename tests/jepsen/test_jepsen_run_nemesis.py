"""jepsen-lite nemesis bookkeeping against a fake cluster control (virtual time): every window
is injected, healed and recorded; heal_all undoes whatever is still open."""

from __future__ import annotations

import pytest
import trio
from jepsen_lite.history import History, Recorder
from jepsen_lite.nemesis import (
    LEADER,
    Nemesis,
    ScheduleOptions,
    Window,
    build_schedule,
    parse_faults,
)

PROCS = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]


class FakeControl:
    """Remembers every call and keeps the state a real cluster would have."""

    def __init__(self, leader: str = "store-3", fail_on: set[str] | None = None):
        self.calls: list[tuple] = []
        self.dead: set[str] = set()
        self.paused: set[str] = set()
        self.rules: dict[str, list[dict]] = {}
        self.failpoints: dict[str, dict[str, str]] = {}
        self.leader = leader
        self.fail_on = fail_on or set()
        self.healed = 0
        self.churn_supported = True

    def _call(self, *call):
        self.calls.append(call)
        if call[0] in self.fail_on:
            raise RuntimeError(f"{call[0]} broke")

    def names(self, kind=None):
        return [n for n in PROCS if kind is None or n.startswith(kind + "-")]

    def alive(self, name):
        return name not in self.dead

    async def kill(self, name):
        self._call("kill", name)
        self.dead.add(name)
        return {"pid": 1}

    async def start(self, name):
        self._call("start", name)
        self.dead.discard(name)
        return {"pid": 2}

    async def pause(self, name):
        self._call("pause", name)
        self.paused.add(name)
        return {}

    async def resume(self, name):
        self._call("resume", name)
        self.paused.discard(name)
        return {}

    async def add_fault_rules(self, label, rules):
        self._call("add_rules", label)
        self.rules[label] = rules
        return {"rules": sum(len(r) for r in self.rules.values())}

    async def remove_fault_rules(self, label):
        self._call("remove_rules", label)
        self.rules.pop(label, None)
        return {}

    async def set_failpoint(self, name, failpoint, spec):
        self._call("set_fp", name, failpoint, spec)
        self.failpoints.setdefault(name, {})[failpoint] = spec
        if spec == "exit":
            self.dead.add(name)  # as if the point was reached at once
        return {}

    async def clear_failpoint(self, name, failpoint):
        self._call("clear_fp", name, failpoint)
        self.failpoints.get(name, {}).pop(failpoint, None)
        return {"hits": 1}

    async def leader_store(self, key):
        self._call("leader", key)
        return self.leader

    async def churn_step(self, rng, keys, ops=None):
        self._call("churn") if ops is None else self._call("churn", tuple(ops))
        if not self.churn_supported:
            return {"op": "split", "unsupported": True, "error": "no handler"}
        return {"op": rng.choice(list(ops or ["split", "merge"])), "key": rng.choice(keys)}

    async def heal(self):
        self._call("heal")
        self.healed += 1
        self.dead.clear()
        self.paused.clear()
        self.rules.clear()
        self.failpoints.clear()
        return {"restarted": []}


def nemesis_for(control, recorder, seed=1):
    return Nemesis(control, recorder, keys=[b"k0", b"k1"], seed=seed,
                   clock=lambda: trio.current_time())


async def test_every_window_is_injected_healed_and_recorded(autojump_clock):
    control = FakeControl()
    recorder = Recorder()
    # every fault this fake models: disk and membership windows need real data directories
    # and a real cluster (tests/jepsen/test_disk_faults.py, test_membership_faults.py)
    faults = [f for f in parse_faults("all")
              if f not in parse_faults("disk,membership")]
    schedule = build_schedule(faults, 120, 5, PROCS)
    nemesis = nemesis_for(control, recorder)
    await nemesis.run(schedule)
    history = History(recorder.history.events)
    intervals = [iv for iv in history.nemesis_intervals()]
    assert len(intervals) == len(schedule)
    assert all(iv.stop is not None and iv.stop >= iv.start for iv in intervals)
    assert sorted(iv.fault for iv in intervals) == sorted(w.fault for w in schedule)
    assert nemesis.active == {}
    # every fault was undone
    assert control.dead == set() and control.paused == set()
    assert control.rules == {} and all(not fps for fps in control.failpoints.values())
    # starts happen at the planned times (virtual clock)
    for record in nemesis.intervals:
        assert record.start == pytest.approx(record.planned_start, abs=1e-6)
        assert record.stop >= record.planned_stop
    # churn steps are point events that the operation pairing ignores
    assert nemesis.events and history.operations() == []


async def test_kill_pause_partition_and_failpoints_are_paired(autojump_clock):
    control = FakeControl()
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    windows = [
        Window(1, 2, "kill", "store-1"),
        Window(3, 4, "pause", "coordinator-1"),
        Window(5, 6, "partition", "store-2", {"mode": "isolate"}),
        Window(7, 8, "publish-fail", "stores", {"failpoint": "store.publish_terminal", "spec": "raise"}),
        Window(9, 10, "crash-point", "store-3", {"failpoint": "store.before_apply", "spec": "exit"}),
        Window(11, 12, "lossy", "servers", {"drop": 0.2}),
    ]
    await nemesis.run(windows)
    calls = control.calls
    assert calls[:4] == [("kill", "store-1"), ("start", "store-1"),
                         ("pause", "coordinator-1"), ("resume", "coordinator-1")]
    assert calls[4:6] == [("add_rules", "jepsen:partition:store-2"),
                          ("remove_rules", "jepsen:partition:store-2")]
    assert ("churn", ("split", "merge")) in calls  # publish-fail makes a store publish
    calls = [c for c in calls if c[0] != "churn"]
    sets = [c for c in calls if c[0] == "set_fp"]
    assert [c[1] for c in sets[:3]] == ["store-1", "store-2", "store-3"]  # "stores": all of them
    assert ("set_fp", "store-3", "store.before_apply", "exit") in calls
    assert ("start", "store-3") in calls  # the crashed store was restarted
    assert calls[-2:] == [("add_rules", "jepsen:lossy:servers"),
                          ("remove_rules", "jepsen:lossy:servers")]
    events = [e for e in recorder.history.events
              if e["process"] == "nemesis" and e["f"] != "event"]
    assert [(e["f"], e["value"]["fault"]) for e in events] == [
        (f, w.fault) for w in windows for f in ("start", "stop")
    ]
    crash_stop = events[9]["value"]
    assert crash_stop["cleared"]["store-3"]["crashed"] is True


async def test_leader_targets_are_resolved_and_recorded(autojump_clock):
    control = FakeControl(leader="store-2")
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    await nemesis.run([Window(1, 2, "kill", LEADER)])
    start = recorder.history.events[0]
    assert start["value"]["target"] == "store-2" and start["value"]["leader_of"] is True
    assert ("kill", "store-2") in control.calls


async def test_heal_all_closes_open_windows_after_cancellation(autojump_clock):
    control = FakeControl()
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    windows = [Window(1, 50, "pause", "store-1"), Window(1, 50, "churn", "topology", {"seed": 1})]
    with trio.move_on_after(10):
        await nemesis.run(windows)
    assert set(nemesis.active) == {("pause", "store-1"), ("churn", "topology")}
    result = await nemesis.heal_all()
    assert result == {"restarted": []}
    assert nemesis.active == {} and control.healed == 1
    assert ("resume", "store-1") in control.calls
    intervals = History(recorder.history.events).nemesis_intervals()
    assert {iv.fault for iv in intervals} == {"pause", "churn", "heal"}
    assert all(iv.stop is not None for iv in intervals)


async def test_injection_errors_are_recorded_not_fatal(autojump_clock):
    control = FakeControl(fail_on={"kill"})
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    await nemesis.run([Window(1, 2, "kill", "store-1"), Window(3, 4, "pause", "store-1")])
    assert "kill broke" in nemesis.intervals[0].errors[0]
    assert nemesis.intervals[1].errors == []
    assert ("pause", "store-1") in control.calls


async def test_unsupported_churn_stops_after_one_step(autojump_clock):
    control = FakeControl()
    control.churn_supported = False
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    await nemesis.run([Window(1, 30, "churn", "topology", {"seed": 3})])
    assert [c for c in control.calls if c[0] == "churn"] == [("churn",)]
    assert nemesis.events[0]["unsupported"] is True


async def test_same_seed_same_churn_steps(autojump_clock):
    runs = []
    for _ in range(2):
        control = FakeControl()
        nemesis = nemesis_for(control, Recorder())
        await nemesis.run([Window(trio.current_time() + 1, trio.current_time() + 20, "churn",
                                  "topology", {"seed": 9, "every": [0.5, 2.0]})])
        runs.append([(e["op"], e["key"]) for e in nemesis.events])
    assert runs[0] == runs[1] and len(runs[0]) > 5


def test_schedule_for_the_smoke_run_is_stable():
    """The CI smoke run's schedule (seed 1) must not drift silently: reproducing a failure
    needs the same windows."""
    windows = build_schedule("kill,partition,publish-fail", 60, 1, PROCS, ScheduleOptions())
    again = build_schedule("kill,partition,publish-fail", 60, 1, PROCS, ScheduleOptions())
    assert windows == again
    assert {w.fault for w in windows} == {"kill", "partition", "publish-fail"}


async def test_a_window_aimed_at_a_retired_store_is_skipped(autojump_clock):
    """A store retired during the run (a `retire` window) is never started again: later
    windows the schedule aimed at it are recorded as skipped and inject nothing."""
    control = FakeControl()
    control.retired = lambda name: name == "store-1"
    recorder = Recorder()
    nemesis = nemesis_for(control, recorder)
    await nemesis.run([Window(1, 2, "kill", "store-1"), Window(3, 4, "kill", "store-2")])
    assert [c for c in control.calls if c[0] == "kill"] == [("kill", "store-2")]
    skipped = [r for r in nemesis.intervals if r.target == "store-1"]
    assert skipped and skipped[0].errors == ["target retired"]
    assert skipped[0].stop is not None
    assert control.dead == set() and nemesis.active == {}
