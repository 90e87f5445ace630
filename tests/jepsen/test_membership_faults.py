"""Membership faults (jepsen_lite.membership) against a fake control: a real cluster
directory (cluster.json) whose processes are not started, and a fake coordinator that
answers ListStores, RetireStore (draining one replica per call, like the scheduler would),
ScanRegions, GetRegionByKey and Diagnostics."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from jepsen_lite import membership

from nokvpy.cluster.local import LocalCluster
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsReply,
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    ListStoresReply,
    ListStoresRequest,
    RetireStoreReply,
    RetireStoreRequest,
    RouteReply,
    ScanRegionsReply,
    ScanRegionsRequest,
    StoreInfo,
)
from nokvpy.protocol.enums import StoreState
from nokvpy.protocol.records import PeerMeta, RegionDescriptor, RegionEpoch
from nokvpy.rpc import RemoteError


class FakeCluster(LocalCluster):
    """cluster.json for real; processes only recorded."""

    def __init__(self, root):
        super().__init__(root)
        self.started: dict[str, dict] = {}
        self.stopped: list[str] = []

    def start(self, spec, proc, env=None):
        assert not proc.retired, f"{proc.name} is retired"
        self.started[proc.name] = dict(env or {})
        return 1000 + proc.node_id

    def stop(self, name, grace=5.0):
        self.stopped.append(name)
        return 1000


class FakeCoordinator:
    def __init__(self, spec, regions: int = 2, stuck: bool = False):
        self.spec = spec
        self.up = {p.node_id for p in spec.of_kind("store")}
        self.retired: dict[int, int] = {}
        self.draining: set[int] = set()
        self.stuck = stuck
        stores = sorted(self.up)[: spec.replication]
        self.regions = [RegionDescriptor(r, b"%d" % r, b"%d" % (r + 1), RegionEpoch(1, 1),
                                         tuple(PeerMeta(s, r * 10 + s) for s in stores))
                        for r in range(1, regions + 1)]
        self.calls: list[str] = []

    def _move_one(self, sid: int) -> None:
        if self.stuck:
            return
        for i, d in enumerate(self.regions):
            if d.peer_on(sid) is None:
                continue
            free = sorted(s for s in self.up if s not in self.draining and s not in
                          self.retired and d.peer_on(s) is None)
            peers = tuple(p for p in d.peers if p.store_id != sid) + (PeerMeta(free[0], 99),)
            self.regions[i] = RegionDescriptor(d.region_id, d.start_key, d.end_key,
                                               RegionEpoch(1, 3), peers)
            return

    async def call(self, addr, req, timeout=None):
        self.calls.append(type(req).__name__)
        if isinstance(req, ListStoresRequest):
            return ListStoresReply([StoreInfo(s, "", StoreState.RETIRED if s in self.retired
                                              else StoreState.UP, 0, 0, 0, "")
                                    for s in sorted(self.up | set(self.retired))])
        if isinstance(req, RetireStoreRequest):
            sid = req.store_id
            if sid in self.retired:
                return RetireStoreReply(sid, "retired", 0, (), (), self.retired[sid])
            if sid not in self.draining:
                left = [s for s in self.up if s != sid and s not in self.draining
                        and s not in self.retired]
                if len(left) < self.spec.replication:
                    raise RemoteError("rejected", "not_enough_stores",
                                      f"retiring store {sid} would leave {len(left)}")
                self.draining.add(sid)
            else:
                self._move_one(sid)
            on = [d.region_id for d in self.regions if d.peer_on(sid) is not None]
            if not on:
                self.draining.discard(sid)
                self.retired[sid] = 42
                return RetireStoreReply(sid, "retired", 0, (), (), 42)
            return RetireStoreReply(sid, "draining", len(on), tuple(on))
        if isinstance(req, ScanRegionsRequest):
            return ScanRegionsReply(list(self.regions), None, {})
        if isinstance(req, GetRegionByKeyRequest):
            return RouteReply(self.regions[0], None, self.regions[0].peers[0].store_id, {})
        if isinstance(req, DiagnosticsRequest):
            return DiagnosticsReply({"scheduler": {"draining_stores": sorted(self.draining)}})
        raise AssertionError(f"unexpected request {req!r}")


def make_control(tmp_path, stores: int = 3, **coordinator):
    cluster = FakeCluster(tmp_path / "cluster")
    spec = cluster.create(stores=stores, replication=3)
    coord = FakeCoordinator(spec, **coordinator)
    control = SimpleNamespace(cluster=cluster, spec=spec, rpc=coord, env={"X": "1"}, seed=7,
                              coordinator_addrs=lambda: ["127.0.0.1:1"])

    return control, coord


async def join(control, coord) -> dict:
    result = await membership.inject(control, "join", "cluster", {"timeout": 1.0})
    coord.up.add(result["store_id"])  # the new process joined
    return result


def test_params_are_seeded_and_name_the_fault():
    by_kind = {"store": ["store-1", "store-2", "store-3"], "metaroot": ["metaroot-1"]}
    a = [membership.membership_params("retire", random.Random(5), by_kind) for _ in range(2)]
    assert a[0] == a[1] and a[0][0] in by_kind["store"]
    assert membership.membership_params("join", random.Random(5), by_kind)[0] == "cluster"
    assert membership.membership_params("retire", random.Random(5), {})[0] is None
    assert set(membership.MEMBERSHIP_FAULTS) == {"join", "retire", "metaroot-swap"}
    with pytest.raises(ValueError):
        membership.membership_params("kill", random.Random(5), by_kind)


async def test_join_adds_and_starts_a_store_and_heal_sees_it_up(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    result = await join(control, coord)
    assert (result["added"], result["store_id"]) == ("store-4", 4)
    assert control.cluster.started["store-4"]["X"] == "1"
    assert control.cluster.started["store-4"]["NOKV_FAILPOINTS_SEED"] == "7"
    saved = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
    assert [p["name"] for p in saved["processes"] if p["kind"] == "store"][-1] == "store-4"
    healed = await membership.heal(control, "join", "cluster", {"timeout": 1.0})
    assert (healed["store"], healed["valid"], healed["outcome"]) == ("store-4", True, "joined")


async def test_a_join_that_never_comes_up_is_invalid(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    result = await membership.inject(control, "join", "cluster", {"timeout": 1.0})
    assert result["up"] is False
    healed = await membership.heal(control, "join", "cluster", {"timeout": 1.0})
    assert (healed["valid"], healed["outcome"]) == (False, "not up")


async def test_retire_without_a_spare_store_adds_one_first(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    start = control.cluster.start

    def start_and_join(spec, proc, env=None):  # the new process joins as it starts
        coord.up.add(proc.node_id)
        return start(spec, proc, env)

    control.cluster.start = start_and_join
    result = await membership.inject(control, "retire", "store-1", {"drain_timeout": 30.0})
    assert result["joined"]["added"] == "store-4" and result["joined"]["up"]
    assert (result["store_id"], result["state"]) == (1, "draining")
    healed = await membership.heal(control, "retire", "store-1", {"drain_timeout": 30.0})
    assert (healed["valid"], healed["outcome"]) == (True, "retired, drained"), healed
    for d in coord.regions:
        assert sorted(p.store_id for p in d.peers) == [2, 3, 4]


async def test_retire_is_skipped_when_the_replacement_never_comes_up(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    result = await membership.inject(control, "retire", "store-1", {"drain_timeout": 5.0})
    assert "did not come up" in result["skipped"]
    assert "RetireStoreRequest" not in coord.calls
    healed = await membership.heal(control, "retire", "store-1", {"drain_timeout": 5.0})
    assert (healed["valid"], healed["outcome"]) == (True, "skipped")
    none = await membership.inject(control, "retire", None, {})
    assert none == {"skipped": "no target"}


async def test_retire_after_a_join_drains_roots_and_stops_the_store(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    await join(control, coord)
    result = await membership.inject(control, "retire", "store-1", {"drain_timeout": 30.0})
    assert (result["store_id"], result["state"], result["replicas_left"]) == (1, "draining", 2)
    healed = await membership.heal(control, "retire", "store-1", {"drain_timeout": 30.0})
    assert (healed["valid"], healed["outcome"]) == (True, "retired, drained"), healed
    assert healed["regions_on_store"] == [] and healed["root_state"] == "RETIRED"
    assert control.cluster.stopped == ["store-1"]
    assert control.spec.get("store-1").retired
    saved = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
    assert [p["name"] for p in saved["processes"] if p.get("retired")] == ["store-1"]
    for d in coord.regions:
        assert sorted(p.store_id for p in d.peers) == [2, 3, 4]
    again = await membership.inject(control, "retire", "store-1", {})
    assert again == {"skipped": "store-1 is retired already"}


async def test_a_store_that_does_not_drain_in_time_is_invalid(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path, stuck=True)
    await join(control, coord)
    await membership.inject(control, "retire", "store-2", {})
    healed = await membership.heal(control, "retire", "store-2", {"drain_timeout": 10.0})
    assert (healed["valid"], healed["outcome"]) == (False, "did not drain within 10s")
    assert healed["replicas_left"] == 2
    assert control.cluster.stopped == []  # a draining store keeps running


async def test_a_refusal_by_the_coordinator_is_recorded_as_skipped(tmp_path, autojump_clock):
    control, coord = make_control(tmp_path)
    await join(control, coord)
    coord.draining.add(3)  # another retirement is under way: the coordinator refuses
    result = await membership.inject(control, "retire", "store-1", {})
    assert "would leave" in result["skipped"]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_run_that_replaces_stores_is_valid(tmp_path):
    """`retire` windows on a real cluster: a store joins, another is drained and retired while
    the workload runs; the run must be valid and every window retire a store."""
    from jepsen_lite.report import summary_text
    from jepsen_lite.runner import RunConfig, run

    config = RunConfig(workload="register", nemesis=["retire"], time_limit=40, seed=1,
                       dir=str(tmp_path / "run"), fault_duration=(20.0, 25.0))
    results = run(config, log=lambda msg: print(msg, flush=True))
    explain = f"\n{summary_text(results)}\nrun directory: {results['dir']}\n"
    assert results["valid"] is True, explain
    stops = [e["value"] for e in
             map(json.loads, (tmp_path / "run" / "history.jsonl").read_text().splitlines())
             if e.get("process") == "nemesis" and e.get("f") == "stop"
             and e["value"].get("fault") == "retire"]
    assert stops and all(s.get("outcome") == "retired, drained" for s in stops), stops
