"""The network nemeses beyond partition / lossy / slow-net: ``one-way``, ``bridge``, ``ring``,
``blackhole``, ``duplicate``, ``reorder``, ``corrupt``. Their schedule parameters, their
rules (checked against what the RPC layer then does with them), their bookkeeping against a
fake cluster control (virtual time), and, opt-in (``-m slow``), one real run of each that
must come out valid, plus runs of a build that skips the frame checksum, which the
``corrupt`` nemesis must catch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import trio
from jepsen_lite import run_cli
from jepsen_lite.control import to_fault_rule
from jepsen_lite.faults import ALIASES, FAULTS
from jepsen_lite.history import History, Recorder
from jepsen_lite.nemesis import (
    LEADER,
    Nemesis,
    Window,
    blackhole_rules,
    bridge_rules,
    build_schedule,
    corrupt_rules,
    duplicate_rules,
    one_way_rules,
    parse_faults,
    reorder_rules,
    ring_rules,
)
from jepsen_lite.schedule import NET_EXTRA

from nokvpy.rpc import FaultRules
from nokvpy.rpc.faults import CANCEL, REPLY
from nokvpy.wire import FaultRule, decode, encode

PROCS = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]
SEVEN = [*PROCS, "store-4", "store-5"]


def _rules(dicts: list[dict]) -> FaultRules:
    """What a process holds after the control pushed these rules."""
    rules = FaultRules(7)
    rules.set([to_fault_rule(d) for d in dicts])
    return rules


def _cut(dicts: list[dict], names: list[str]) -> set[tuple[str, str]]:
    rules = _rules(dicts)
    return {(a, b) for a in names for b in names if a != b and rules.decide(a, b, "Ping").drop}


# ---- vocabulary and schedule ----------------------------------------------------------------


def test_the_new_faults_are_named_aliased_and_listed_by_the_run_command():
    assert set(NET_EXTRA) <= set(FAULTS)
    assert parse_faults("net-extra") == list(NET_EXTRA) == ALIASES["net-extra"]
    assert parse_faults("net") == ["partition", "lossy", "slow-net"]  # unchanged
    assert set(NET_EXTRA) <= set(parse_faults("all"))
    parser = argparse.ArgumentParser(prog="nokv jepsen run")
    run_cli.configure(parser)
    text = " ".join(parser.format_help().split())
    for name in (*NET_EXTRA, "net-extra"):
        assert f"{name}:" in text or f"{name} =" in text, name


def test_schedule_params_are_seeded_and_sane():
    for seed in range(6):
        windows = build_schedule(list(NET_EXTRA), 300, seed, PROCS)
        assert windows == build_schedule(list(NET_EXTRA), 300, seed, list(reversed(PROCS)))
        assert {w.fault for w in windows} == set(NET_EXTRA)
        for w in windows:
            p = w.params
            if w.fault in ("one-way", "blackhole"):
                assert w.target in PROCS or w.target == LEADER
                assert w.fault == "blackhole" or p["direction"] in ("out", "in")
            elif w.fault in ("bridge", "ring"):
                assert sorted(p["order"]) == sorted(PROCS)
                assert w.target == (p["order"][2] if w.fault == "bridge" else "servers")
            elif w.fault in ("duplicate", "reorder"):
                assert 0 < p["probability"] <= 0.5 and 0 <= p["hold"] <= 0.1
            else:
                assert w.fault == "corrupt" and 0 < p["probability"] <= 0.2
    orders = {tuple(w.params["order"]) for seed in range(6)
              for w in build_schedule(["ring"], 60, seed, PROCS)}
    assert len(orders) > 3  # the ring is drawn, not fixed


# ---- rules ------------------------------------------------------------------------------------


def test_one_way_rules():
    out = one_way_rules("store-2", "out", PROCS, "l")
    assert out == [{"src": ["store-2"], "dst": sorted(set(PROCS) - {"store-2"}), "drop": 1.0,
                    "label": "l"}]
    rules = _rules(out)
    assert rules.decide("store-2", "store-1", "RaftBatch").drop  # its requests ...
    assert rules.decide("store-2", "store-1", "GetRequest", kind=REPLY).drop  # ... answers
    assert not rules.decide("store-1", "store-2", "RaftBatch").drop  # the rest flows
    assert not rules.decide("store-2", "client-1", "GetRequest", kind=REPLY).drop  # clients
    inbound = _cut(one_way_rules("store-2", "in", PROCS, "l"), PROCS)
    assert inbound == {(n, "store-2") for n in PROCS if n != "store-2"}
    assert one_way_rules("store-1", "out", ["store-1"], "l") == []
    with pytest.raises(ValueError):
        one_way_rules("store-1", "sideways", PROCS, "l")


def test_bridge_rules():
    order = ["store-1", "metaroot-1", "store-2", "coordinator-1", "store-3"]
    cut = _cut(bridge_rules(order, "l"), PROCS)
    a, b = {"store-1", "metaroot-1"}, {"coordinator-1", "store-3"}
    assert cut == {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
    assert not any("store-2" in pair for pair in cut)  # the bridge talks to everyone
    assert bridge_rules(["a", "b"], "l") == []


def test_ring_rules():
    order = ["store-3", "metaroot-1", "store-5", "store-1", "coordinator-1", "store-4",
             "store-2"]
    cut = _cut(ring_rules(order, "l"), SEVEN)
    for i, node in enumerate(order):
        sees = {n for n in SEVEN if n != node and (node, n) not in cut}
        assert sees == {order[(i + d) % 7] for d in (-2, -1, 1, 2)}  # a majority with itself
        assert all((n, node) not in cut for n in sees)  # symmetric
    assert ring_rules(PROCS[:3], "l") == []  # three nodes are all neighbours
    five = _cut(ring_rules(PROCS, "l"), PROCS)
    assert len(five) == 10  # each of 5 loses the 2 that are not its neighbours


def test_blackhole_rules():
    rules = _rules(blackhole_rules("store-1", "l"))
    for peer in ("store-2", "client-4", "admin-0"):
        for kind in ("request", REPLY, CANCEL):
            assert rules.decide("store-1", peer, "GetRequest", kind=kind, sending=False).drop
            assert rules.decide(peer, "store-1", "GetRequest", kind=kind).drop
    assert not rules.decide("admin-0", "store-1", "SetFaultRules").drop  # healing still works
    assert not rules.decide("store-2", "store-3", "RaftBatch").drop


def test_duplicate_reorder_corrupt_rules_round_trip_the_wire():
    for dicts, field in ((duplicate_rules(PROCS, 0.3, 0.02, "l"), "duplicate"),
                         (reorder_rules(PROCS, 0.5, 0.1, "l"), "reorder"),
                         (corrupt_rules(PROCS, 0.1, "l"), "corrupt"),
                         (blackhole_rules("store-1", "l"), "blackhole")):
        for d in dicts:
            rule = to_fault_rule(d)
            assert decode(encode(rule)) == rule and rule.label == "l"
            assert getattr(rule, field) == d[field]
            if field in ("duplicate", "reorder"):
                assert rule.message_types == frozenset({"RaftBatch"}) and rule.hold == d["hold"]
    assert to_fault_rule({"src": ["a"], "drop": 1.0}, "x") == FaultRule(
        src=frozenset({"a"}), drop=1.0, label="x")
    rules = _rules(duplicate_rules(PROCS, 1.0, 0.0, "l") + reorder_rules(PROCS, 1.0, 0.1, "l"))
    v = rules.decide("store-1", "store-2", "RaftBatch", one_way=True, sending=False)
    assert v.duplicate == 0.0 and 0 <= v.reorder <= 0.1
    assert rules.decide("store-1", "store-2", "GetRequest", sending=False).plain
    assert rules.decide("client-1", "store-2", "RaftBatch", one_way=True, sending=False).plain


# ---- bookkeeping against a fake control -----------------------------------------------------


class FakeControl:
    def __init__(self, leader: str = "store-3"):
        self.calls: list[tuple] = []
        self.rules: dict[str, list[dict]] = {}
        self.leader = leader
        self.healed = 0

    def names(self, kind=None):
        return [n for n in PROCS if kind is None or n.startswith(kind + "-")]

    def alive(self, name):
        return True

    async def add_fault_rules(self, label, rules):
        self.calls.append(("add_rules", label))
        self.rules[label] = rules
        return {"rules": sum(len(r) for r in self.rules.values())}

    async def remove_fault_rules(self, label):
        self.calls.append(("remove_rules", label))
        self.rules.pop(label, None)
        return {}

    async def leader_store(self, key):
        return self.leader

    async def heal(self):
        self.healed += 1
        self.rules.clear()
        return {"restarted": []}


async def test_every_net_window_sets_its_rules_and_removes_them(autojump_clock):
    control = FakeControl()
    recorder = Recorder()
    nemesis = Nemesis(control, recorder, keys=[b"k0"], seed=1,
                      clock=lambda: trio.current_time())
    order = ["store-1", "metaroot-1", "store-2", "coordinator-1", "store-3"]
    windows = [
        Window(1, 2, "one-way", LEADER, {"direction": "in"}),
        Window(3, 4, "bridge", "store-2", {"order": order}),
        Window(5, 6, "ring", "servers", {"order": order}),
        Window(7, 8, "blackhole", "store-1"),
        Window(9, 10, "duplicate", "servers", {"probability": 0.3, "hold": 0.02}),
        Window(11, 12, "reorder", "servers", {"probability": 0.3, "hold": 0.05}),
        Window(13, 14, "corrupt", "servers", {"probability": 0.1}),
    ]
    seen: dict[str, list[dict]] = {}
    real_add = control.add_fault_rules

    async def add(label, rules):
        seen[label] = rules
        return await real_add(label, rules)

    control.add_fault_rules = add
    await nemesis.run(windows)
    labels = ["jepsen:one-way:store-3", "jepsen:bridge:store-2", "jepsen:ring:servers",
              "jepsen:blackhole:store-1", "jepsen:duplicate:servers",
              "jepsen:reorder:servers", "jepsen:corrupt:servers"]
    assert control.calls == [(op, label) for label in labels
                             for op in ("add_rules", "remove_rules")]
    assert control.rules == {} and nemesis.active == {}
    assert seen["jepsen:one-way:store-3"] == one_way_rules(
        "store-3", "in", PROCS, "jepsen:one-way:store-3")  # the leader, resolved
    assert seen["jepsen:bridge:store-2"] == bridge_rules(order, "jepsen:bridge:store-2")
    assert seen["jepsen:ring:servers"] == ring_rules(order, "jepsen:ring:servers")
    assert seen["jepsen:corrupt:servers"][0]["corrupt"] == 0.1
    for label, rules in seen.items():
        assert rules and all(r["label"] == label for r in rules)
    events = [e for e in recorder.history.events if e["process"] == "nemesis"]
    assert [(e["f"], e["value"]["fault"]) for e in events] == [
        (f, w.fault) for w in windows for f in ("start", "stop")]
    assert all(not record.errors for record in nemesis.intervals)


async def test_a_ring_on_too_few_servers_is_skipped_and_recorded(autojump_clock):
    control = FakeControl()
    control.names = lambda kind=None: ["store-1", "store-2", "store-3"]
    nemesis = Nemesis(control, Recorder(), seed=1, clock=lambda: trio.current_time())
    await nemesis.run([Window(1, 2, "ring", "servers",
                              {"order": ["store-1", "store-2", "store-3"]})])
    assert control.calls == [("remove_rules", "jepsen:ring:servers")]
    assert nemesis.intervals[0].details["skipped"] == "no rules for this cluster"


async def test_heal_all_removes_an_open_net_window(autojump_clock):
    control = FakeControl()
    recorder = Recorder()
    nemesis = Nemesis(control, recorder, seed=1, clock=lambda: trio.current_time())
    with trio.move_on_after(5):
        await nemesis.run([Window(1, 50, "blackhole", "store-2")])
    assert control.rules and ("blackhole", "store-2") in nemesis.active
    await nemesis.heal_all()
    assert control.rules == {} and nemesis.active == {} and control.healed == 1
    intervals = History(recorder.history.events).nemesis_intervals()
    assert {iv.fault for iv in intervals} == {"blackhole", "heal"}


# ---- real runs (opt in: -m slow) ---------------------------------------------------------------

UNSAFE_SWITCH = "NOKV_UNSAFE_SKIP_FRAME_CHECKSUM"


def _explain(results: dict) -> str:
    from jepsen_lite.report import summary_text

    return (f"\n{summary_text(results)}\nerror: {results.get('error')}\n"
            f"run directory: {results['dir']}\nreproduce with: {results['reproduce']}\n")


@pytest.mark.slow  # about 35 s per fault (python -m pytest -m slow)
@pytest.mark.cluster
@pytest.mark.parametrize("fault", NET_EXTRA)
def test_a_real_run_under_each_net_fault_is_valid(tmp_path, fault):
    from jepsen_lite.runner import RunConfig, run

    seed = int(os.environ.get("NOKV_JEPSEN_SEED", "1"))
    config = RunConfig(workload="register", nemesis=[fault], time_limit=25, seed=seed,
                       dir=str(tmp_path / "run"), leader_share=0.5)
    results = run(config, log=lambda msg: print(msg, flush=True))
    explain = _explain(results)
    print(explain)
    assert results["valid"] is True, explain
    windows = [iv for iv in results["nemesis_intervals"] if iv["fault"] == fault]
    assert len(windows) >= 2, explain
    for iv in windows:
        assert iv["stop_s"] is not None and not iv.get("errors"), explain
    assert results["ops"]["by_type"]["ok"] > 100, explain
    if fault == "corrupt":  # damage was seen and refused (logs are rate-limited: >= 1 line)
        logs = Path(results["dir"]) / "cluster" / "logs"
        text = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
        assert "checksum mismatch" in text, explain


@pytest.mark.slow  # 5 runs of about 30 s
@pytest.mark.cluster
def test_the_corrupt_nemesis_catches_a_build_without_frame_checksums(tmp_path, monkeypatch):
    """Every process of the cluster, and the harness's own clients (they use the same RPC
    layer), accept damaged frames: some run over the seeds must come out invalid. Prints the
    catch rate."""
    from jepsen_lite.runner import RunConfig, run

    import nokvpy.rpc.framed as framed

    monkeypatch.setattr(framed, "UNSAFE_SKIP_FRAME_CHECKSUM", True)
    seeds = [int(s) for s in os.environ.get("NOKV_JEPSEN_SEEDS", "1,2,3,4,5").split(",")]
    verdicts = {}
    for seed in seeds:
        config = RunConfig(workload="register", nemesis=["corrupt"], time_limit=25, seed=seed,
                           dir=str(tmp_path / f"seed-{seed}"), env={UNSAFE_SWITCH: "1"})
        results = run(config, log=lambda msg: None)
        verdicts[seed] = results["valid"]
        print(f"{UNSAFE_SWITCH} seed {seed}: {results['valid']} ({results['reproduce']})")
    caught = sum(1 for v in verdicts.values() if v is False)
    print(f"{UNSAFE_SWITCH} with corrupt: caught {caught}/{len(seeds)} seeds: {verdicts}")
    assert caught >= 1, f"the build without frame checksums was never caught: {verdicts}"
