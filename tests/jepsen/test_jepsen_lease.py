"""The lease and tick-stretch nemeses without a cluster: schedule parameters, the order of
their steps against a fake control and fake store RPCs (virtual time), what they record, and
the root-read checks (``strong_stale``, ``confirm_stale``) that judge the metaroot and
coordinator windows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
from jepsen_lite.checkers import check_route_reads
from jepsen_lite.history import History, Recorder
from jepsen_lite.lease import LOOKUP_HOLDER, METAROOT_LEADER, isolation_label
from jepsen_lite.linearizable import check_linearizable
from jepsen_lite.nemesis import Nemesis, ScheduleOptions, Window, build_schedule, parse_faults
from jepsen_lite.workloads import RegisterWorkload
from test_jepsen_run_nemesis import FakeControl

from nokvpy.protocol.records import PeerMeta, RegionDescriptor
from nokvpy.protocol.store_rpc import GetReply, GetRequest, PutRequest, WriteReply
from nokvpy.rpc import RemoteError

PROCS = ["metaroot-1", "metaroot-2", "metaroot-3", "coordinator-1", "coordinator-2",
         "store-1", "store-2", "store-3"]
REGION = RegionDescriptor(1, peers=(PeerMeta(1, 11), PeerMeta(2, 12), PeerMeta(3, 13)))


# -- schedule --------------------------------------------------------------------------------


def test_lease_windows_carry_their_mode_and_symbolic_target():
    windows = build_schedule("lease", 600, 3, PROCS)
    modes = {w.params["mode"] for w in windows}
    assert modes == {"store", "metaroot", "coordinator"}
    targets = {w.params["mode"]: w.target for w in windows}
    assert targets == {"store": ":leader", "metaroot": METAROOT_LEADER,
                       "coordinator": LOOKUP_HOLDER}
    assert {w.params["isolate"] for w in windows} == {True, False}
    for w in windows:
        assert w.params["min_pause"] > 2.0 and w.params["reads"] == 16
    assert build_schedule("lease", 600, 3, PROCS) == windows


def test_lease_modes_and_isolation_share_are_options():
    opts = ScheduleOptions(lease_modes=("store",), lease_isolate=1.0)
    windows = build_schedule("lease", 300, 4, PROCS, opts)
    assert {w.params["mode"] for w in windows} == {"store"}
    assert all(w.params["isolate"] for w in windows)


def test_tick_stretch_stalls_stores_and_skews_mildly():
    windows = build_schedule("tick-stretch", 900, 5, PROCS)
    stalls = [w for w in windows if w.params["mode"] == "stall"]
    skews = [w for w in windows if w.params["mode"] == "skew"]
    assert stalls and skews
    assert all(w.target == ":leader" or w.target.startswith("store-") for w in stalls)
    assert all(not w.target.startswith("coordinator") for w in skews)  # no driver there
    assert all(0.85 <= w.params["factor"] <= 1.15 for w in skews)


def test_clock_alias_and_all():
    assert parse_faults("clock") == ["lease", "tick-stretch", "clock-skew"]
    assert {"lease", "tick-stretch"} <= set(parse_faults("all"))


# -- a fake cluster for the sequences ------------------------------------------------------------


class FakeRpc:
    """Store and metaroot RPCs as the lease windows send them. The region leader answers
    gets with the newest value, a resumed deposed leader with ``stale_value`` (or refuses)."""

    def __init__(self, control: LeaseControl):
        self.control = control
        self.values: dict[bytes, bytes] = {b"k0": b"100", b"k1": b"200"}
        self.index = 10

    async def call(self, addr: str, request, timeout: float):
        c = self.control
        name = addr
        c.calls.append(("rpc", type(request).__name__, name))
        if name in c.paused:
            await trio.sleep(1000)  # a stopped process answers nothing
        if isinstance(request, PutRequest):
            assert name == c.region_leader_name
            self.index += 1
            self.values[request.key] = request.value
            return WriteReply(self.index)
        if isinstance(request, GetRequest):
            if name == c.region_leader_name:
                return GetReply(self.values.get(request.key), self.index)
            if c.stale_value is not None:
                return GetReply(c.stale_value, 1)
            raise RemoteError("rejected", "NOT_LEADER", "not the leader")
        raise RemoteError("rejected", "not_grant_holder", "no coordinator in this fake")


class LeaseControl(FakeControl):
    """FakeControl plus what jepsen_lite.lease needs; a paused leader is replaced after
    ``elect_after`` seconds of virtual time."""

    def __init__(self, stale_value: bytes | None = None, elect_after: float = 1.5):
        super().__init__(leader="store-1")
        self.region_leader_name = "store-1"
        self.metaroot_leader_name = "metaroot-1"
        self.holder = "coordinator-1"
        self.stale_value = stale_value
        self.stale_token: int | None = None
        self.elect_after = elect_after
        self.paused_at: dict[str, float] = {}
        self.probe_rpc = FakeRpc(self)
        self.token = 10
        self.hits = 0

    def names(self, kind=None):
        return [n for n in PROCS if kind is None or n.startswith(kind + "-")]

    async def pause(self, name):
        self.paused_at[name] = trio.current_time()
        return await super().pause(name)

    def sigcont(self, name):
        self._call("sigcont", name)
        self.paused.discard(name)
        return 1

    def _elect(self) -> None:
        now = trio.current_time()
        for name, at in self.paused_at.items():
            if now - at < self.elect_after or name not in self.paused:
                continue
            if name == self.region_leader_name:
                self.region_leader_name = "store-2"
            if name == self.metaroot_leader_name:
                self.metaroot_leader_name = "metaroot-2"
                self.token += 5
            if name == self.holder:
                self.holder = "coordinator-2"

    def node_id(self, name):
        return int(name.rsplit("-", 1)[1])

    def address(self, name):
        return name

    async def ping(self, name, rpc=None, timeout=1.0):
        self._call("ping", name)
        return True

    async def route_of(self, key):
        return REGION, self.region_leader_name

    async def store_name(self, store_id):
        return f"store-{store_id}"

    async def leads_region(self, name, region_id):
        self._elect()
        return name == self.region_leader_name and name not in self.paused

    async def region_leader(self, region_id, names):
        self._elect()
        return self.region_leader_name if self.region_leader_name in names else None

    async def metaroot_status(self, name):
        self._elect()
        leads = name == self.metaroot_leader_name
        return SimpleNamespace(is_leader=leads,
                               applied_token=SimpleNamespace(index=self.token if leads else 10))

    async def metaroot_leader(self, exclude=()):
        self._elect()
        return None if self.metaroot_leader_name in exclude else self.metaroot_leader_name

    async def confirm_token(self, name, rpc=None, timeout=None):
        self._call("confirm", name)
        if name == self.metaroot_leader_name:
            return self.token
        if self.stale_token is not None:
            return self.stale_token
        raise RemoteError("not_leader", "not_leader", "deposed")

    async def lookup_grant_holder(self):
        self._elect()
        return self.holder

    async def failpoint_hits(self, name):
        self.hits += 1
        return {"driver.tick": self.hits}


def lease_nemesis(control, recorder, workload=None):
    workload = workload or RegisterWorkload(keys=2)
    return Nemesis(control, recorder, keys=workload.split_keys(), seed=1,
                   clock=lambda: trio.current_time(), workload=workload, op_timeout=2.0)


STORE_WINDOW = {"mode": "store", "min_pause": 2.5, "max_pause": 8.0, "hold": 0.5, "reads": 16}


@pytest.mark.parametrize("isolate", [False, True])
async def test_store_window_order_and_records(autojump_clock, isolate):
    control = LeaseControl()
    recorder = Recorder()
    nemesis = lease_nemesis(control, recorder)
    await nemesis.run([Window(1, 2, "lease", ":leader", {**STORE_WINDOW, "isolate": isolate})])
    calls = [c for c in control.calls if c[0] != "rpc" or c[1] != "GetRequest"]
    kinds = [c[0] for c in calls]
    # init: connect, (isolate,) pause; act: writes through the new leader; SIGCONT, reads, resume
    assert kinds.index("ping") < kinds.index("pause")
    if isolate:
        assert calls[kinds.index("add_rules")] == ("add_rules", isolation_label("store-1"))
        assert kinds.index("add_rules") < kinds.index("pause")
        assert kinds.index("remove_rules") > kinds.index("resume")
    else:
        assert "add_rules" not in kinds
    gets = [i for i, c in enumerate(control.calls) if c[:2] == ("rpc", "GetRequest")]
    assert len(gets) == 16
    assert control.calls.index(("sigcont", "store-1")) < gets[0]
    assert control.calls.index(("resume", "store-1")) > gets[-1]
    puts = [c for c in control.calls if c[:2] == ("rpc", "PutRequest")]
    assert [c[2] for c in puts] == ["store-2", "store-2"]  # one per key, at the new leader
    ops = History(recorder.history.events).operations()
    reads = [op for op in ops if op.f == "read"]
    writes = [op for op in ops if op.f == "write"]
    assert len(reads) == 16 and len(writes) == 2
    assert all(op.invoke["probe"] == "lease" and op.invoke["store"] == "store-1" for op in reads)
    assert all(op.status == "fail" and op.completion["error"] == "RejectedError:NOT_LEADER"
               for op in reads)
    assert all(op.status == "ok" and op.invoke["store"] == "store-2" for op in writes)
    assert min(op.call for op in reads) > max(op.ret for op in writes)
    record = nemesis.intervals[0]
    assert record.details["new_leader"] == "store-2"
    assert record.details["probe_reads"]["fail"] == 16
    assert record.details["paused_s"] >= 2.5
    assert check_linearizable(recorder.history, "register")["valid"] is True


async def test_a_stale_answer_at_the_resumed_leader_is_invalid(autojump_clock):
    """The recorded reads are ordinary operations: a value from before the pause, returned
    after the new leader acknowledged a newer one, fails the linearizability check."""
    control = LeaseControl(stale_value=b"100")  # k0's value before the pause
    recorder = Recorder()
    nemesis = lease_nemesis(control, recorder)
    await nemesis.run([Window(1, 2, "lease", ":leader", {**STORE_WINDOW, "isolate": True})])
    result = check_linearizable(recorder.history, "register")
    assert result["valid"] is False and result["failing_key"] in ("k0", "k1")


async def test_heal_resumes_and_unisolates_a_cancelled_window(autojump_clock):
    control = LeaseControl(elect_after=1000)  # never replaced: the window waits max_pause
    recorder = Recorder()
    nemesis = lease_nemesis(control, recorder)
    with trio.move_on_after(3):
        await nemesis.run([Window(1, 2, "lease", ":leader", {**STORE_WINDOW, "isolate": True})])
    assert "store-1" in control.paused
    await nemesis.heal_all()
    assert control.paused == set()
    assert ("remove_rules", isolation_label("store-1")) in control.calls


async def test_metaroot_window_records_confirms_judged_by_the_route_checker(autojump_clock):
    params = {"mode": "metaroot", "min_pause": 2.5, "max_pause": 8.0, "hold": 0.5,
              "reads": 4, "isolate": True}
    for stale in (None, 10):
        control = LeaseControl()
        control.stale_token = stale
        recorder = Recorder()
        nemesis = lease_nemesis(control, recorder)
        await nemesis.run([Window(1, 2, "lease", METAROOT_LEADER, params)])
        ops = History(recorder.history.events).operations()
        confirms = [op for op in ops if op.f == "root-confirm"]
        assert [op.invoke["metaroot"] for op in confirms] == ["metaroot-2"] + ["metaroot-1"] * 4
        assert confirms[0].output == 15
        result = check_route_reads(recorder.history)
        if stale is None:
            assert result["valid"] is True
            assert all(op.status == "fail" for op in confirms[1:])
        else:
            assert result["valid"] is False
            assert {v["kind"] for v in result["violations"]} == {"confirm_stale"}


async def test_coordinator_window_waits_for_a_new_grant_holder(autojump_clock):
    params = {"mode": "coordinator", "min_pause": 7.5, "max_pause": 12.0, "hold": 0.5,
              "reads": 3, "isolate": False}
    control = LeaseControl()
    recorder = Recorder()
    nemesis = lease_nemesis(control, recorder)
    await nemesis.run([Window(1, 2, "lease", LOOKUP_HOLDER, params)])
    record = nemesis.intervals[0]
    assert record.target == "coordinator-1"
    assert record.details["new_holder"] == "coordinator-2"
    assert record.details["paused_s"] >= 7.5
    routes = [op for op in History(recorder.history.events).operations() if op.f == "route"]
    at_target = [op for op in routes if op.invoke["coordinator"] == "coordinator-1"]
    assert len(at_target) == 3 and all(op.status == "fail" for op in routes)


async def test_tick_stretch_skew_is_restored_before_it_is_cleared(autojump_clock):
    control = LeaseControl()
    nemesis = lease_nemesis(control, Recorder())
    await nemesis.run([Window(1, 5, "tick-stretch", "store-2", {"mode": "skew", "factor": 1.05})])
    fps = [c for c in control.calls if c[0] in ("set_fp", "clear_fp")]
    assert fps == [("set_fp", "store-2", "driver.tick", "return(1.05)"),
                   ("set_fp", "store-2", "driver.tick", "return(1)"),
                   ("clear_fp", "store-2", "driver.tick")]


async def test_tick_stretch_stalls_then_reads_as_the_store_wakes(autojump_clock):
    control = LeaseControl()
    recorder = Recorder()
    nemesis = lease_nemesis(control, recorder)
    params = {"mode": "stall", "ms": 800, "every": [1.0, 1.0], "reads": 4}
    await nemesis.run([Window(1, 6, "tick-stretch", "store-1", params)])
    sets = [c for c in control.calls if c[0] == "set_fp"]
    assert sets and all(c[3] == "1*sleep(800)" for c in sets)
    assert control.calls[-1] == ("clear_fp", "store-1", "driver.tick")
    stalls = nemesis.intervals[0].details["stalls"]
    assert len(stalls) == len(sets) >= 2
    reads = [op for op in History(recorder.history.events).operations() if op.f == "read"]
    assert len(reads) == 4 * len(sets)
    assert all(op.invoke["probe"] == "tick-stretch" for op in reads)


# -- the root-read checks ------------------------------------------------------------------------


def _route(p, t, served, freshness="STRONG", coordinator="coordinator-1"):
    value = {"freshness": freshness, "served_freshness": freshness, "served_root_token": served,
             "current_root_token": served, "root_lag": 0, "serving_class": "AUTHORITATIVE",
             "coordinator": coordinator}
    return {"p": p, "f": "route", "v": {"freshness": freshness}, "t": t, "out": value}


def test_strong_read_below_an_index_seen_earlier_is_stale(hb):
    # a BEST_EFFORT read at coordinator-2 saw index 7; a later STRONG read at coordinator-1
    # served 5: it missed a committed event
    history = hb(_route(1, (0, 1), 7, "BEST_EFFORT", "coordinator-2"),
                 _route(2, (2, 3), 5, "STRONG", "coordinator-1"))
    result = check_route_reads(history)
    assert [v["kind"] for v in result["violations"]] == ["strong_stale"]
    # overlapping in time: either order is possible
    history = hb(_route(1, (0, 3), 7, "BEST_EFFORT", "coordinator-2"),
                 _route(2, (2, 4), 5, "STRONG", "coordinator-1"))
    assert check_route_reads(history)["valid"] is True
    # a BEST_EFFORT read may be behind
    history = hb(_route(1, (0, 1), 7, "STRONG", "coordinator-2"),
                 _route(2, (2, 3), 5, "BEST_EFFORT", "coordinator-1"))
    assert check_route_reads(history)["valid"] is True


def test_root_confirms_must_cover_earlier_indexes(hb):
    def confirm(p, t, index, **kw):
        return {"p": p, "f": "root-confirm", "key": "root", "v": None, "t": t, "out": index,
                **kw}

    history = hb(confirm(1, (0, 1), 9), confirm(2, (2, 3), 8))
    result = check_route_reads(history)
    assert [v["kind"] for v in result["violations"]] == ["confirm_stale"]
    history = hb(confirm(1, (0, 1), 9), confirm(2, (2, 3), 9), _route(3, (4, 5), 9),
                 confirm(4, (6, 7), None, type="fail"))
    assert check_route_reads(history)["valid"] is True
    history = hb(_route(1, (0, 1), 12, "BOUNDED"), confirm(2, (2, 3), 11))
    assert [v["kind"] for v in check_route_reads(history)["violations"]] == ["confirm_stale"]
    history = hb(confirm(1, (0, 1), "x"))
    assert [v["kind"] for v in check_route_reads(history)["violations"]] == ["malformed"]


def test_workload_probe_writes_are_unique():
    w = RegisterWorkload(keys=2)
    a, b = w.probe_write("k0"), w.probe_write("k0")
    assert a.f == "write" and a.write and a.value != b.value


def test_clock_skew_stays_inside_the_lease_drift_bound():
    """clock-skew windows skew two raft processes apart by less than the 28 % the leases
    assume (docs/protocols.md, Leader leases): skew beyond it breaks a lease by construction."""
    import random

    from jepsen_lite.lease import clock_skew_params

    by_kind = {"store": ["store-1", "store-2", "store-3"], "metaroot": ["metaroot-1"],
               "coordinator": ["coordinator-1"]}
    for seed in range(200):
        target, params = clock_skew_params(random.Random(seed), by_kind)
        factors = params["factors"]
        assert set(target.split(",")) == set(factors) and len(factors) == 2
        assert not any(name.startswith("coordinator") for name in factors)
        assert max(factors.values()) / min(factors.values()) < 1.28
