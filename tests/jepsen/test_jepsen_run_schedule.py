"""jepsen-lite nemesis schedules: seeded determinism, shape, fault names, partition rules."""

from __future__ import annotations

import pytest
from jepsen_lite.nemesis import (
    FAULTS,
    LEADER,
    NemesisError,
    ScheduleOptions,
    build_schedule,
    parse_faults,
    partition_rules,
)

PROCS = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]


def test_same_seed_same_schedule():
    a = build_schedule("kill,partition,publish-fail", 60, 1, PROCS)
    b = build_schedule(["kill", "partition", "publish-fail"], 60, 1, list(reversed(PROCS)))
    assert a == b and len(a) >= 4
    assert [w.to_dict() for w in a] == [w.to_dict() for w in b]


def test_different_seeds_differ():
    schedules = {repr(build_schedule("all", 60, seed, PROCS)) for seed in range(8)}
    assert len(schedules) == 8


def test_windows_stay_inside_the_run_and_do_not_overlap_on_the_main_track():
    opts = ScheduleOptions(tail=3.0)
    for seed in range(20):
        windows = build_schedule("all", 60, seed, PROCS, opts)
        assert windows == sorted(windows, key=lambda w: (w.start, w.fault))
        for w in windows:
            assert 0 < w.start < w.stop <= 60 - opts.tail
        main = [w for w in windows if w.fault != "churn"]
        for a, b in zip(main, main[1:], strict=False):
            assert b.start >= a.stop + opts.quiet[0] - 1e-9
        churn = [w for w in windows if w.fault == "churn"]
        for a, b in zip(churn, churn[1:], strict=False):
            assert b.start >= a.stop


def test_every_enabled_fault_gets_a_turn_and_targets_are_real():
    faults = [f for f in FAULTS if f != "churn"]
    windows = build_schedule(faults, 300, 7, PROCS)
    assert {w.fault for w in windows} == set(faults)
    for w in windows:
        if w.fault in ("kill", "pause"):
            assert w.target in PROCS or w.target == LEADER
        if w.fault == "partition" and w.params["mode"] == "split-stores":
            assert set(w.params["minority"]) < {"store-1", "store-2", "store-3"}
            assert len(w.params["minority"]) == 1
        if w.fault in ("publish-fail", "slow-fsync", "crash-point"):
            assert "failpoint" in w.params and "spec" in w.params


def test_only_enabled_faults_and_churn_on_its_own_track():
    windows = build_schedule("kill,churn", 60, 3, PROCS)
    assert {w.fault for w in windows} == {"kill", "churn"}
    assert build_schedule("none", 60, 3, PROCS) == []
    assert build_schedule("churn", 60, 3, PROCS)  # churn alone still runs


def test_short_runs_get_a_short_schedule():
    assert build_schedule("kill", 2, 1, PROCS) == []
    opts = ScheduleOptions(first_fault=(0.5, 0.5), duration=(1, 1), quiet=(1, 1), tail=1)
    windows = build_schedule("kill", 6, 1, PROCS, opts)
    assert [(w.start, w.stop) for w in windows] == [(0.5, 1.5), (2.5, 3.5)]


def test_parse_faults():
    assert parse_faults("kill, partition,kill") == ["kill", "partition"]
    assert parse_faults("net") == ["partition", "lossy", "slow-net"]
    assert parse_faults("all") == list(FAULTS)
    assert parse_faults("none") == [] and parse_faults("") == []
    with pytest.raises(NemesisError, match="unknown nemesis 'bogus'"):
        parse_faults("kill,bogus")


def test_partition_rules_cut_both_directions():
    rules = partition_rules("isolate", "store-2", PROCS)
    others = sorted(set(PROCS) - {"store-2"})
    assert rules == [
        {"src": ["store-2"], "dst": others, "drop": 1.0, "label": "jepsen:partition:store-2"},
        {"src": others, "dst": ["store-2"], "drop": 1.0, "label": "jepsen:partition:store-2"},
    ]
    split = partition_rules("split-stores", "store-1", PROCS, ["store-1"])
    assert split[0]["src"] == ["store-1"] and "store-1" not in split[0]["dst"]
    assert "client-0" not in split[0]["dst"]  # clients keep reaching every node
    assert partition_rules("isolate", None, PROCS) == []
    with pytest.raises(NemesisError):
        partition_rules("bridge", "store-1", PROCS)
