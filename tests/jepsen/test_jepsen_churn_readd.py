"""jepsen-lite churn with peer removal, re-addition and moves (issue 15 item 5), and the
end-of-run topology recovery check.

* the churn choice (:func:`jepsen_lite.topology.plan_churn`) on generated catalogs: every
  command it picks is eligible, re-adds go back to the store a replica was removed from,
  no second replica goes missing while one is;
* ``ClusterControl.churn_step`` / ``churn_store_fault`` / ``restore_replication`` driven
  against an in-memory cluster (the real control with its I/O replaced), seeded;
* the recovery verdict on hand-built catalog and store views, and the polling check's
  timeout (virtual time);
* one short real-cluster run (``cluster``): ``--nemesis churn`` with a store fault re-add in
  every churn window must be valid, recovered, and re-add at least one replica.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from jepsen_lite.control import ClusterControl
from jepsen_lite.history import Recorder
from jepsen_lite.nemesis import Nemesis, ScheduleOptions, Window, build_schedule
from jepsen_lite.report import summary_text
from jepsen_lite.runner import RunConfig, run, unlisted_churn
from jepsen_lite.topology import (
    applied,
    check_topology_recovery,
    describe_verdict,
    membership_counts,
    plan_churn,
    repair_plan,
    topology_verdict,
)

STORES = [1, 2, 3]
KEYS = [b"k0", b"k1", b"k2", b"k3"]


# -- an in-memory cluster ----------------------------------------------------------------------


class Sim:
    """A catalog that applies admin requests at once, with the stores' refusals: no peer
    added to a store that has one or to a region with a learner, never the last voter
    removed, a request to a paused or dead store times out, a region whose leader is
    paused or dead elects the lowest live voter."""

    def __init__(self, stores=(1, 2, 3), replication=3):
        self.stores = list(stores)
        self.next_id = 100
        voters = self.stores[:replication]
        self.regions: dict[int, dict] = {
            1: {"start": b"", "end": b"", "epoch": [1, 1], "leader": voters[0],
                "peers": {s: (self._id(), False) for s in voters}}}
        self.down: set[int] = set()
        self.requests: list[tuple] = []

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def catalog(self) -> list[dict]:
        out = []
        for rid, r in sorted(self.regions.items(), key=lambda kv: kv[1]["start"]):
            out.append({
                "region_id": rid, "start": r["start"], "end": r["end"], "leader": r["leader"],
                "voters": sorted(s for s, (_, learner) in r["peers"].items() if not learner),
                "learners": sorted(s for s, (_, learner) in r["peers"].items() if learner),
                "peers": [{"store_id": s, "peer_id": p, "learner": learner}
                          for s, (p, learner) in sorted(r["peers"].items())],
                "epoch": list(r["epoch"]),
            })
        return out

    def elect(self) -> None:
        for r in self.regions.values():
            if r["leader"] in self.down or r["leader"] not in r["peers"]:
                live = sorted(s for s in r["peers"] if s not in self.down)
                r["leader"] = live[0] if len(live) * 2 > len(r["peers"]) else 0

    def views(self) -> dict[int, dict]:
        out = {}
        for s in self.stores:
            view = {"name": f"store-{s}", "live": s not in self.down}
            if view["live"]:
                view["regions"] = {str(rid): {"peer_id": r["peers"][s][0], "initialized": True,
                                              "epoch": list(r["epoch"]), "leader": r["leader"] == s}
                                   for rid, r in self.regions.items() if s in r["peers"]}
            out[s] = view
        return out

    def admin(self, store: int, req) -> dict:
        self.requests.append((store, req.op, req.region_id, req.store_id))
        if store in self.down:
            return {"error": "TooSlowError: deadline"}
        r = self.regions.get(req.region_id)
        if r is None or store not in r["peers"]:
            return {"error": "rejected/NOT_HOSTED"}
        tid = f"{req.op}:{req.region_id}:{len(self.requests)}"
        ok = {"transition_id": tid, "outcome": "APPLIED", "stage": "TERMINAL_PUBLISHED",
              "detail": ""}
        if req.op == "split":
            if not (r["start"] < req.split_key and (not r["end"] or req.split_key < r["end"])):
                return {"error": "rejected/INVALID: key outside"}
            new = self._id()
            self.regions[new] = {"start": req.split_key, "end": r["end"],
                                 "epoch": [r["epoch"][0] + 1, r["epoch"][1]],
                                 "leader": r["leader"],
                                 "peers": {s: (self._id(), lr) for s, (_, lr) in r["peers"].items()}}
            r["end"] = req.split_key
            r["epoch"][0] += 1
            return ok
        if req.op == "merge":
            o = self.regions.get(req.other_region_id)
            if o is None or sorted(o["peers"]) != sorted(r["peers"]) or r["end"] != o["start"]:
                return {"error": "rejected/INVALID: not mergeable"}
            r["end"] = o["end"]
            r["epoch"][0] = max(r["epoch"][0], o["epoch"][0]) + 1
            del self.regions[req.other_region_id]
            return ok
        if req.op == "transfer_leader":
            r["leader"] = req.store_id
            return {**ok, "stage": "NOT_REQUIRED"}
        if req.op == "add_peer":
            if req.store_id in r["peers"] or any(lr for _, lr in r["peers"].values()):
                return {"error": "rejected/INVALID: cannot add"}
            if req.store_id in self.down:
                return {"error": "TooSlowError: learner never caught up"}
            r["peers"][req.store_id] = (self._id(), False)
            r["epoch"][1] += 1
            return ok
        if req.op == "remove_peer":
            if req.store_id not in r["peers"] or len(r["peers"]) <= 1:
                return {"error": "rejected/INVALID: cannot remove"}
            del r["peers"][req.store_id]
            r["epoch"][1] += 1
            self.elect()
            if r["leader"] == req.store_id or not r["leader"]:
                r["leader"] = min(r["peers"])
            return ok
        return {"error": f"unknown op {req.op}"}


class SimControl(ClusterControl):
    """The real ClusterControl (churn_step, execute_churn, churn_store_fault,
    restore_replication) with every process and RPC call answered by a :class:`Sim`."""

    def __init__(self, root: Path, sim: Sim, replication: int = 3):
        super().__init__(root, stores=len(sim.stores), replication=replication)
        self.sim = sim
        self.faults: list[tuple[str, str]] = []

    def names(self, kind=None):
        names = [f"store-{s}" for s in self.sim.stores]
        return names if kind in (None, "store") else []

    def node_id(self, name):
        return int(name.rsplit("-", 1)[1])

    def alive(self, name):
        return self.node_id(name) not in self.sim.down or name in self._paused

    async def regions(self, freshness=None):
        return self.sim.catalog()

    async def store_views(self):
        return self.sim.views()

    async def store_name(self, store_id):
        return f"store-{store_id}" if store_id in self.sim.stores else None

    async def admin(self, store_id, request, timeout=15.0):
        await trio.sleep(0.05)
        return self.sim.admin(store_id, request)

    async def leads_region(self, name, region_id, timeout=0.5):
        r = self.sim.regions.get(region_id)
        return r is not None and r["leader"] == self.node_id(name)

    async def _down(self, name, how):
        self.faults.append((how, name))
        self.sim.down.add(self.node_id(name))
        self.sim.elect()
        return {"action": how}

    async def pause(self, name):
        self._paused.add(name)
        return await self._down(name, "pause")

    async def kill(self, name):
        return await self._down(name, "kill")

    async def resume(self, name):
        self._paused.discard(name)
        self.sim.down.discard(self.node_id(name))
        return {"action": "SIGCONT"}

    async def start(self, name):
        self.sim.down.discard(self.node_id(name))
        return {"action": "restarted"}

    async def _dropped(self, name, rid, peer_id, timeout):
        return 0.0


def region(rid, start, end, voters, leader=None, learners=(), epoch=(2, 5), peer_base=None):
    base = peer_base if peer_base is not None else rid * 10
    peers = [{"store_id": s, "peer_id": base + s, "learner": False} for s in voters]
    peers += [{"store_id": s, "peer_id": base + s, "learner": True} for s in learners]
    return {"region_id": rid, "start": start, "end": end,
            "leader": voters[0] if leader is None else leader, "voters": list(voters),
            "learners": list(learners), "peers": peers, "epoch": list(epoch)}


# -- the choice ----------------------------------------------------------------------------------


@st.composite
def catalogs(draw):
    n = draw(st.integers(1, 4))
    bounds = sorted(draw(st.sets(st.sampled_from(KEYS), min_size=n - 1, max_size=n - 1)))
    edges = [b"", *bounds, b""]
    regions = []
    for i in range(n):
        voters = sorted(draw(st.sets(st.sampled_from(STORES), min_size=1, max_size=3)))
        spare = [s for s in STORES if s not in voters]
        learners = draw(st.lists(st.sampled_from(spare), max_size=1, unique=True)) if spare else []
        leader = draw(st.sampled_from([0, *voters]))
        regions.append(region(i + 1, edges[i], edges[i + 1], voters, leader, learners))
    live = sorted(draw(st.sets(st.sampled_from(STORES), min_size=1)))
    removed = draw(st.dictionaries(st.sampled_from([r["region_id"] for r in regions]),
                                   st.sampled_from(STORES), max_size=1))
    return regions, live, removed


@settings(max_examples=300, deadline=None)
@given(catalogs(), st.integers(0, 2**32))
def test_every_planned_command_is_eligible(case, seed):
    regions, live, removed = case
    plan = plan_churn(random.Random(seed), regions, KEYS, live=live, replication=3,
                      removed=removed)
    again = plan_churn(random.Random(seed), regions, KEYS, live=live, replication=3,
                       removed=removed)
    assert plan == again  # seeded
    op = plan["op"]
    if op == "none":
        return
    by_id = {r["region_id"]: r for r in regions}
    r = by_id[plan["region"]]
    if r["leader"] in live or op == "transfer_leader":
        assert plan["send_to"] == r["leader"]
    elif set(r["voters"]) & set(live):
        assert plan["send_to"] == min(set(r["voters"]) & set(live))  # forwards to the leader
    else:
        assert plan["send_to"] == (r["leader"] or r["voters"][0])
    under = any(len(x["voters"]) < 3 for x in regions)
    if op == "remove_peer":
        assert not r["learners"] and len(r["voters"]) >= 2 and plan["store"] in r["voters"]
        assert r["region_id"] not in removed
        assert len(r["voters"]) > 3 or (len(r["voters"]) == 3 and not under and not removed)
    elif op == "add_peer":
        assert len(r["voters"]) < 3 and not r["learners"]
        assert plan["store"] in live and plan["store"] not in r["voters"]
        prev = removed.get(r["region_id"])
        if prev in live and prev not in r["voters"]:
            assert plan["store"] == prev and plan["readd"] is True
        else:
            assert plan["readd"] is False
    elif op == "move":
        assert not r["learners"] and 2 <= len(r["voters"]) <= 3
        assert plan["to_store"] in live and plan["to_store"] not in r["voters"]
        assert plan["from_store"] in r["voters"] and plan["from_store"] != plan["to_store"]
    elif op == "merge":
        other = by_id[plan["other"]]
        assert r["end"] == other["start"] and sorted(r["voters"]) == sorted(other["voters"])
        assert not r["learners"] and not other["learners"]
    elif op == "split":
        assert plan["key"] not in {x["start"] for x in regions}
    elif op == "transfer_leader":
        assert plan["to_store"] in r["voters"] and plan["to_store"] != r["leader"]


def test_readd_goes_back_to_the_store_the_replica_left():
    regions = [region(1, b"", b"", [1, 3])]
    seen = set()
    for seed in range(50):
        plan = plan_churn(random.Random(seed), regions, [], live=[1, 2, 3], replication=3,
                          removed={1: 2}, ops=("add_peer",))
        assert plan["op"] == "add_peer" and plan["store"] == 2 and plan["readd"] is True
        # the store it left is down: another live store that lacks it (none here)
        none = plan_churn(random.Random(seed), regions, [], live=[1, 3], replication=3,
                          removed={1: 2}, ops=("add_peer",))
        assert none["op"] == "none"
        four = plan_churn(random.Random(seed), regions, [], live=[1, 3, 4], replication=3,
                          removed={1: 2}, ops=("add_peer",))
        seen.add(four["store"])
        assert four["readd"] is False
    assert seen == {4}


def test_no_second_replica_goes_missing_and_the_weights_hold():
    full = [region(1, b"", b"k1", [1, 2, 3]), region(2, b"k1", b"", [1, 2, 3])]
    ops = [plan_churn(random.Random(s), full, KEYS, live=STORES, replication=3)["op"]
           for s in range(400)]
    assert {"split", "merge", "transfer_leader", "remove_peer"} == set(ops)  # no add, no move
    assert ops.count("split") > ops.count("remove_peer") > 50  # weights 3 : 2 (: 2 : 2)
    short = [region(1, b"", b"k1", [1, 3]), region(2, b"k1", b"", [1, 2, 3])]
    ops = [plan_churn(random.Random(s), short, KEYS, live=STORES, replication=3,
                      removed={1: 2})["op"] for s in range(400)]
    assert "remove_peer" not in ops and ops.count("add_peer") > 100 and "move" in ops
    # an outstanding removal blocks the next one even before the catalog shows it
    ops = {plan_churn(random.Random(s), full, KEYS, live=STORES, replication=3,
                      removed={1: 3})["op"] for s in range(200)}
    assert "remove_peer" not in ops


def test_move_on_a_four_store_cluster():
    regions = [region(1, b"", b"", [1, 2, 3])]
    for seed in range(30):
        plan = plan_churn(random.Random(seed), regions, [], live=[1, 2, 3, 4], replication=3,
                          ops=("move",))
        assert plan["to_store"] == 4 and plan["from_store"] in (1, 2, 3)


def test_repair_plan():
    regions = [region(1, b"", b"k1", [1, 3]), region(2, b"k1", b"k2", [1, 2, 3, 4], leader=4),
               region(3, b"k2", b"k3", [1, 2], learners=[3]), region(4, b"k3", b"", [1, 2, 3])]
    plan = repair_plan(regions, [1, 2, 3, 4], 3, removed={1: 2})
    assert [(p["op"], p["region"], p["store"], p.get("readd")) for p in plan] == [
        ("add_peer", 1, 2, True), ("remove_peer", 2, 3, None)]
    assert repair_plan(regions, [1, 2, 4], 3)[1]["store"] == 3  # the dead voter goes first


# -- the control against an in-memory cluster ---------------------------------------------------


async def test_seeded_churn_removes_readds_and_moves(tmp_path, autojump_clock):
    totals = {"readds": 0, "moves": 0}
    for seed in range(4):
        sim = Sim(stores=(1, 2, 3, 4))
        control = SimControl(tmp_path / f"c{seed}", sim)
        rng = random.Random(seed)
        steps = []
        for _ in range(120):
            steps.append(await control.churn_step(rng, KEYS))
            for r in sim.catalog():  # never more than one replica missing
                assert len(r["voters"]) >= 2, (seed, steps[-3:], r)
        counts = membership_counts(steps)
        assert counts["remove_peer"] and counts["add_peer"] and counts["readds"], counts
        for k in totals:
            totals[k] += counts[k]
        readds = [s for s in steps if s["op"] == "add_peer" and s.get("readd") and applied(s)]
        for s in readds:  # each went back to the store of the last removal from that region
            last = [x for x in steps[:steps.index(s)]
                    if x.get("region") == s["region"] and applied(x)
                    and x["op"] in ("remove_peer", "move")][-1]
            assert s["store"] == last.get("store", last.get("from_store"))
        restored = await control.restore_replication(timeout=10)
        assert "error" not in restored, restored
        assert topology_verdict(sim.catalog(), sim.views(), 3)["recovered"]
        assert control._removed == {}
    assert totals["readds"] >= 8 and totals["moves"] >= 1, totals


@pytest.mark.parametrize("mode", ["pause", "kill"])
@pytest.mark.parametrize("seed", range(3))
async def test_store_fault_readd(tmp_path, autojump_clock, mode, seed):
    sim = Sim()
    control = SimControl(tmp_path / "c", sim)
    before = {s: p for s, (p, _) in sim.regions[1]["peers"].items()}
    out = await control.churn_store_fault(random.Random(seed), mode)
    assert out["op"] == "fault_readd" and out["store_fault"] == mode, out
    assert applied(out["remove"]) and applied(out["add"]) and applied(out), out
    victim = out["store"]
    assert control.faults == [(mode, f"store-{victim}")]
    assert sim.down == set() and control.paused() == set()
    assert out["was_leader"] == (victim == 1)
    assert sim.regions[1]["peers"][victim][0] > before[victim]  # a new peer on the same store
    assert membership_counts([out]) == {"remove_peer": 1, "add_peer": 1, "readds": 1,
                                        "moves": 0, "fault_readds": 1}
    assert topology_verdict(sim.catalog(), sim.views(), 3)["recovered"]
    json.dumps(out)


async def test_store_fault_needs_a_fully_replicated_region(tmp_path, autojump_clock):
    sim = Sim()
    control = SimControl(tmp_path / "c", sim)
    del sim.regions[1]["peers"][3]
    out = await control.churn_store_fault(random.Random(1), "pause")
    assert out.get("skipped") and control.faults == []
    assert membership_counts([out])["readds"] == 0


async def test_nemesis_churn_window_starts_with_the_store_fault_and_heal_restores(
        tmp_path, autojump_clock):
    sim = Sim()
    control = SimControl(tmp_path / "c", sim)
    control.heal = _async_value({"restarted": []})
    recorder = Recorder()
    nemesis = Nemesis(control, recorder, keys=KEYS, seed=1, clock=trio.current_time,
                      restore_timeout=10)
    window = Window(1, 15, "churn", "topology",
                    {"seed": 4, "every": [0.5, 2.0], "store_fault": "kill"})
    await nemesis.run([window])
    assert nemesis.events[0]["op"] == "fault_readd" and applied(nemesis.events[0])
    assert control.faults[0][0] == "kill" and len(nemesis.events) > 3
    rid = min(sim.regions)  # as if the run ended right after a removal from store-2
    del sim.regions[rid]["peers"][2]
    sim.regions[rid]["epoch"][1] += 1
    sim.elect()
    control._removed[rid] = 2
    result = await nemesis.heal_all()
    assert result["replication"]["actions"][0]["readd"] is True, result
    assert topology_verdict(sim.catalog(), sim.views(), 3)["recovered"]


async def test_restore_does_not_trust_an_empty_catalog(tmp_path, autojump_clock):
    """A coordinator that has just reconnected to a restarted metaroot may list nothing:
    the restore waits for a catalog instead of declaring the replication restored."""
    sim = Sim()
    del sim.regions[1]["peers"][3]
    control = SimControl(tmp_path / "c", sim)
    asked: list = []

    async def regions(freshness=None):
        asked.append(freshness)
        return [] if len(asked) < 4 else sim.catalog()

    control.regions = regions
    restored = await control.restore_replication(timeout=10)
    assert [a["store"] for a in restored["actions"]] == [3] and "error" not in restored
    assert asked[0].name == "STRONG"
    empty = SimControl(tmp_path / "d", Sim())
    empty.regions = _async_value([])
    assert "no region" in (await empty.restore_replication(timeout=3))["error"]


def _async_value(value):
    async def f(*args, **kwargs):
        return value
    return f


def test_schedule_store_faults_are_seeded_and_do_not_move_the_windows():
    procs = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]
    on = build_schedule("churn,kill", 120, 3, procs, ScheduleOptions(churn_store_fault=0.5))
    off = build_schedule("churn,kill", 120, 3, procs, ScheduleOptions(churn_store_fault=0))
    assert on == build_schedule("churn,kill", 120, 3, procs, ScheduleOptions())
    assert [replace(w, params={k: v for k, v in w.params.items() if k != "store_fault"})
            for w in on] == off
    faults = [w.params.get("store_fault") for w in on if w.fault == "churn"]
    assert set(faults) - {None} <= {"pause", "kill"} and any(faults)
    always = build_schedule("churn", 120, 3, procs, ScheduleOptions(churn_store_fault=1))
    assert all(w.params["store_fault"] in ("pause", "kill") for w in always)


def test_unlisted_churn_looks_inside_moves_and_fault_readds():
    steps = [{"op": "move", "add": {"transition_id": "a1", "stage": "TERMINAL_PUBLISHED"},
              "transition_id": "r1", "stage": "TERMINAL_PUBLISHED"},
             {"op": "fault_readd", "remove": {"transition_id": "r2", "stage": "APPLIED"},
              "add": {"transition_id": "a2", "stage": "PLANNED"}}]
    assert unlisted_churn(steps, [{"transition_id": "r1"}]) == ["a1", "r2"]


# -- the recovery verdict -----------------------------------------------------------------------


def views_for(catalog, live=(1, 2, 3), tweak=None):
    views = {}
    for s in STORES:
        view = {"name": f"store-{s}", "live": s in live}
        if s in live:
            view["regions"] = {
                str(r["region_id"]): {"peer_id": p["peer_id"], "initialized": True,
                                      "epoch": list(r["epoch"])}
                for r in catalog for p in r["peers"] if p["store_id"] == s}
        views[s] = view
    if tweak:
        tweak(views)
    return views


CATALOG = [region(1, b"", b"k1", [1, 2, 3]), region(2, b"k1", b"", [1, 2, 3], epoch=(3, 7))]


def test_verdict_recovered():
    verdict = topology_verdict(CATALOG, views_for(CATALOG), 3)
    assert verdict == {"recovered": True, "regions": {}, "extra": []}
    # an uninitialized peer of a region not placed there is not an extra replica
    views = views_for(CATALOG, tweak=lambda v: v[2]["regions"].update(
        {"9": {"peer_id": 5, "initialized": False, "epoch": []}}))
    assert topology_verdict(CATALOG, views, 3)["recovered"]


def test_verdict_missing_voter():
    catalog = [CATALOG[0], region(2, b"k1", b"", [1, 3], epoch=(3, 8))]
    verdict = topology_verdict(catalog, views_for(catalog), 3)
    assert not verdict["recovered"] and list(verdict["regions"]) == ["2"]
    entry = verdict["regions"]["2"]
    assert entry["problems"] == ["2 voters on stores [1, 3], want 3"]
    assert entry["catalog"]["voters"] == [1, 3] and entry["stores"]["store-2"] is None
    learner = [CATALOG[0], region(2, b"k1", b"", [1, 3], learners=[2], epoch=(3, 8))]
    problems = topology_verdict(learner, views_for(learner), 3)["regions"]["2"]["problems"]
    assert "learners on stores [2]" in problems
    dead = topology_verdict(CATALOG, views_for(CATALOG, live=(1, 2)), 3)
    assert set(dead["regions"]) == {"1", "2"}
    assert "store-3: not live" in dead["regions"]["1"]["problems"]


def test_verdict_blocked_outbox_is_not_recovered():
    entry = {"seq": 1, "tid": "peer:1:remove:3:4", "state": "blocked"}
    views = views_for(CATALOG, tweak=lambda v: v[3].update({"blocked": [entry]}))
    verdict = topology_verdict(CATALOG, views, 3)
    assert not verdict["recovered"] and verdict["regions"] == {} and verdict["extra"] == []
    assert verdict["blocked"] == [{"store": "store-3", "outbox": [entry]}]
    assert "store-3: publish outbox blocked (1 entries)" in describe_verdict(verdict)
    # a dead store's outbox is not judged (it is not asked)
    views[3]["live"] = False
    assert "blocked" not in topology_verdict(CATALOG, views, 3)


@pytest.mark.parametrize("field, value, words", [
    ("peer_id", 99, "hosts peer 99 initialized at epoch [3, 7] (catalog: peer 23"),
    ("epoch", [3, 6], "hosts peer 23 initialized at epoch [3, 6] (catalog: peer 23 at epoch [3, 7])"),
    ("initialized", False, "hosts peer 23 uninitialized"),
])
def test_verdict_store_disagrees(field, value, words):
    views = views_for(CATALOG, tweak=lambda v: v[3]["regions"]["2"].update({field: value}))
    verdict = topology_verdict(CATALOG, views, 3)
    assert list(verdict["regions"]) == ["2"]
    assert any(p.startswith("store-3 ") and words in p
               for p in verdict["regions"]["2"]["problems"]), verdict
    assert verdict["regions"]["2"]["stores"]["store-3"][field] == value
    missing = views_for(CATALOG, tweak=lambda v: v[1]["regions"].pop("1"))
    problems = topology_verdict(CATALOG, missing, 3)["regions"]["1"]["problems"]
    assert problems == ["store-1 hosts no peer (catalog: peer 11 at epoch [2, 5])"]
    unreachable = views_for(CATALOG, tweak=lambda v: v[2].update(error="TooSlowError"))
    assert "store-2: no status: TooSlowError" in (
        topology_verdict(CATALOG, unreachable, 3)["regions"]["1"]["problems"])


def test_verdict_extra_peer():
    catalog = [region(1, b"", b"k1", [1, 2]), region(2, b"k1", b"", [1, 2], epoch=(3, 8))]

    def stale(views):  # store-2 still hosts a merged-away region, store-3 a removed replica
        views[2]["regions"]["7"] = {"peer_id": 71, "initialized": True, "epoch": [4, 4]}
        views[3]["regions"]["2"] = {"peer_id": 23, "initialized": True, "epoch": [3, 7]}

    assert topology_verdict(catalog, views_for(catalog), 2)["recovered"]
    verdict = topology_verdict(catalog, views_for(catalog, tweak=stale), 2)
    assert not verdict["recovered"] and verdict["regions"] == {}
    extra = {(e["store"], e["region"]): e for e in verdict["extra"]}
    assert set(extra) == {("store-2", 7), ("store-3", 2)}
    assert extra[("store-2", 7)]["catalog"] == "no such region"
    assert extra[("store-3", 2)] == {"store": "store-3", "region": 2, "peer_id": 23,
                                     "epoch": [3, 7], "catalog": "peers on stores [1, 2]"}


class FakeTopology:
    """regions()/store_views() for the polling check: a missing voter that comes back at
    ``heal_at`` (virtual seconds; None: never)."""

    def __init__(self, heal_at):
        self.heal_at = heal_at
        self.t0 = trio.current_time()

    async def regions(self):
        if self.heal_at is not None and trio.current_time() - self.t0 >= self.heal_at:
            return CATALOG
        return [CATALOG[0], region(2, b"k1", b"", [1, 3], epoch=(3, 8))]

    async def store_views(self):
        return views_for(await self.regions())


async def test_recovery_check_polls_until_recovered(autojump_clock):
    check = await check_topology_recovery(FakeTopology(heal_at=4.0), 3, timeout=30)
    assert check["valid"] is True and 4.0 <= check["elapsed_s"] < 5 and check["polls"] > 5
    assert check["regions"] == 2


async def test_recovery_check_timeout_is_invalid_and_names_the_region(autojump_clock):
    check = await check_topology_recovery(FakeTopology(heal_at=None), 3, timeout=30)
    assert check["valid"] is False and 30 <= check["elapsed_s"] < 31
    assert check["note"] == "not recovered within 30s: region 2"
    assert check["regions"]["2"]["catalog"]["voters"] == [1, 3]
    assert check["regions"]["2"]["stores"]["store-2"] is None
    json.dumps(check)
    text = summary_text({"config": {"workload": "register", "nemesis": ["churn"]},
                         "checks": {"topology-recovery": check}, "valid": False,
                         "exit_code": 1, "dir": "runs/x"})
    assert "topology-recovery  INVALID  not recovered within 30s: region 2" in text
    assert "  region 2: catalog voters [1, 3]" in text
    assert "    store-2: no peer" in text and "    store-1: peer 21 initialized" in text
    assert "differs: 2 voters on stores [1, 3], want 3" in text


async def test_recovery_check_repairs_a_region_left_short_after_the_heal(autojump_clock):
    """A removal the churn planned just before the heal leaves a region a voter short after
    it: the check runs the repair again (level-triggered) instead of waiting out its bound."""
    topo = FakeTopology(heal_at=None)
    calls = []

    async def repair(timeout):
        calls.append(trio.current_time() - topo.t0)
        topo.heal_at = 0.0  # the repair added the peer back

    check = await check_topology_recovery(topo, 3, timeout=30, repair=repair, repair_every=5)
    assert check["valid"] is True and len(calls) == 1 and check["elapsed_s"] < 6
    never = FakeTopology(heal_at=None)
    tries = []

    async def useless(timeout):
        tries.append(timeout)

    check = await check_topology_recovery(never, 3, timeout=30, repair=useless,
                                          repair_every=5)
    assert check["valid"] is False and 5 <= len(tries) <= 7  # every 5 s, never faster


async def test_recovery_check_with_no_coordinator(autojump_clock):
    class Down:
        async def regions(self):
            raise RuntimeError("no coordinator answered")

    check = await check_topology_recovery(Down(), 3, timeout=5)
    assert check["valid"] is False and "no coordinator answered" in check["note"]


# -- a real cluster ------------------------------------------------------------------------------


def _explain(results: dict) -> str:
    return (f"\n{summary_text(results)}\nerror: {results.get('error')}\n"
            f"run directory: {results['dir']}\nreproduce with: {results['reproduce']}\n")


@pytest.mark.cluster
@pytest.mark.slow  # a 35 s run: the default tier keeps the unit tests and the smoke run
def test_churn_run_with_readds_is_valid_and_recovers(tmp_path):
    seed = int(os.environ.get("NOKV_JEPSEN_SEED", "2"))
    time_limit = float(os.environ.get("NOKV_JEPSEN_TIME_LIMIT", "35"))
    config = RunConfig(workload="register", nemesis=["churn"], time_limit=time_limit,
                       seed=seed, dir=str(tmp_path / "run"), churn_store_fault=1.0)
    results = run(config, log=lambda msg: print(msg, flush=True))
    print(summary_text(results))
    topo = results["checks"]["topology-recovery"]
    assert topo["valid"] is True and topo["regions"] >= 1, _explain(results)
    counts = results["churn"]["membership"]
    assert counts["readds"] >= 1 and counts["remove_peer"] >= 1, (counts, _explain(results))
    assert results["ops"]["by_type"]["ok"] > 5 * time_limit, _explain(results)
    assert results["valid"] is True, _explain(results)
