"""jepsen-lite workloads against an in-memory fake client: recording, error mapping, process
ids after info, the append CAS loop, route witnesses, final reads."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import trio
from jepsen_lite.checkers import check_acknowledged_writes
from jepsen_lite.history import History, Recorder
from jepsen_lite.linearizable import check_linearizable
from jepsen_lite.workloads import (
    AppendWorkload,
    Op,
    RegisterWorkload,
    RoutesWorkload,
    classify_error,
    final_reads,
    make_workload,
    perform,
    run_worker,
)

from nokvpy.client.errors import (
    DeadlineExceededError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)


class FakeClient:
    """A linearizable in-memory store; ``errors`` is a list of exceptions (or None) raised by
    successive calls; an ``OutcomeUnknownError`` write is applied before it is raised."""

    def __init__(self, errors=None, latency=0.001):
        self.data: dict[bytes, bytes] = {}
        self.errors = list(errors or [])
        self.latency = latency
        self.calls = 0

    async def _maybe_fail(self, apply=None):
        self.calls += 1
        await trio.sleep(self.latency)
        exc = self.errors.pop(0) if self.errors else None
        if isinstance(exc, OutcomeUnknownError) and apply is not None:
            apply()
        if exc is not None:
            raise exc
        if apply is not None:
            return apply()

    async def get(self, key, timeout=None):
        await self._maybe_fail()
        return self.data.get(key)

    async def put(self, key, value, timeout=None):
        await self._maybe_fail(lambda: self.data.__setitem__(key, value))
        return 1

    async def compare_and_swap(self, key, expected, new, timeout=None):
        def apply():
            current = self.data.get(key)
            if current != expected:
                return False, current
            if new is None:
                self.data.pop(key, None)
            else:
                self.data[key] = new
            return True, None

        return await self._maybe_fail(apply)

    async def route(self, key, freshness, max_root_lag=None, required_root_token=None):
        await self._maybe_fail()
        token = SimpleNamespace(index=7)
        witness = SimpleNamespace(
            served_root_token=token, current_root_token=SimpleNamespace(index=8), root_lag=1,
            served_freshness=freshness, served_by_leader=False,
            catch_up_state=SimpleNamespace(name="LAGGING"),
            degraded_mode=SimpleNamespace(name="ROOT_LAGGING"),
            serving_class=SimpleNamespace(name="BOUNDED_STALE"),
            sync_health=SimpleNamespace(name="LAGGING"), descriptor_revision=3, coordinator_id=1,
        )
        descriptor = SimpleNamespace(region_id=1, start_key=b"", end_key=b"")
        return SimpleNamespace(witness=witness, descriptor=descriptor, leader_store_id=2)


@pytest.mark.parametrize(
    "exc, write, expected",
    [
        (RejectedError("no", "NOT_LEADER"), True, "fail"),
        (UnavailableError("down"), True, "fail"),
        (RouteRejectedError("no", "root_lag_exceeded"), True, "fail"),
        (DeadlineExceededError("late"), False, "fail"),
        (DeadlineExceededError("late"), True, "info"),
        (OutcomeUnknownError("?"), True, "info"),
        (NokvError("odd", "internal"), True, "info"),
        (NokvError("odd", "internal"), False, "fail"),
        (RuntimeError("bug"), True, "info"),
    ],
)
def test_error_mapping(exc, write, expected):
    kind, label = classify_error(exc, write)
    assert kind == expected and label.startswith(type(exc).__name__)


async def test_register_worker_history_is_linearizable_with_final_reads():
    workload = make_workload("register", keys=3)
    client = FakeClient()
    recorder = Recorder()
    until = trio.current_time() + 2.0
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(lambda i=i: run_worker(
                workload, client, recorder, index=i, concurrency=4,
                rng=random.Random(i), until=until, rate=200, op_timeout=1.0))
    final = await final_reads(workload, client, recorder, first_process=100, timeout=5,
                              op_timeout=1.0)
    history = History(recorder.history.events)
    ops = history.operations()
    assert len(ops) > 100
    assert {op.f for op in ops} == {"read", "write", "cas"}
    assert all(op.status in ("ok", "fail") for op in ops)
    writes = [op.input for op in ops if op.f == "write"]
    assert len(writes) == len(set(writes))  # unique values
    assert sorted(final["values"]) == ["k0", "k1", "k2"] and final["missing"] == []
    assert all(op.invoke.get("final") for op in ops if op.process >= 100)
    assert check_linearizable(history, "register")["valid"] is True
    assert check_acknowledged_writes(history, final["values"], "register")["valid"] is True


async def test_info_gives_a_new_process_and_failed_write_is_followed_by_a_read():
    workload = RegisterWorkload(keys=1)
    client = FakeClient(errors=[OutcomeUnknownError("lost")] * 1 + [None] * 50)

    class FirstWrite(RegisterWorkload):
        def next_op(self, rng, state):
            if not state.get("started"):
                state["started"] = True
                return Op("write", "k0", self.next_value(), True)
            return super().next_op(rng, state)

    workload = FirstWrite(keys=1)
    recorder = Recorder()
    stats = await run_worker(workload, client, recorder, index=2, concurrency=5,
                             rng=random.Random(0), until=trio.current_time() + 0.05, rate=0,
                             op_timeout=1.0)
    ops = History(recorder.history.events).operations()
    assert ops[0].f == "write" and ops[0].status == "info" and ops[0].process == 2
    assert ops[0].completion["error"].startswith("OutcomeUnknownError")
    assert ops[1].process == 7 and ops[1].f == "read"  # new process id, then a read
    assert stats.processes[:2] == [2, 7]


async def test_failed_reads_record_no_value_and_writes_keep_their_argument():
    workload = RegisterWorkload(keys=1)
    client = FakeClient(errors=[DeadlineExceededError("slow"), DeadlineExceededError("slow")])
    recorder = Recorder()
    read = await perform(workload, client, recorder, 1, Op("read", "k0", None, False), 1.0)
    write = await perform(workload, client, recorder, 2, Op("write", "k0", 5, True), 1.0)
    assert (read.type, write.type) == ("fail", "info")
    events = recorder.history.events
    assert events[1]["value"] is None and events[3]["value"] == 5


async def test_harness_timeout_when_the_client_hangs(autojump_clock):
    class Hanging(FakeClient):
        async def put(self, key, value, timeout=None):
            await trio.sleep_forever()

    recorder = Recorder()
    outcome = await perform(RegisterWorkload(), Hanging(), recorder, 1,
                            Op("write", "k0", 1, True), 0.5)
    assert outcome.type == "info" and outcome.extra["error"] == "harness_timeout"


async def test_cas_that_does_not_match_is_a_fail_with_the_current_value():
    client = FakeClient()
    client.data[b"k0"] = b"3"
    recorder = Recorder()
    workload = RegisterWorkload()
    outcome = await perform(workload, client, recorder, 1, Op("cas", "k0", [1, 2], True), 1.0)
    assert outcome.type == "fail" and outcome.extra["current"] == 3
    state: dict = {}
    workload.observe(state, Op("cas", "k0", [1, 2], True), outcome)
    assert state["seen"]["k0"] == 3


async def test_append_workload_cas_loop_under_contention():
    workload = AppendWorkload(keys=2, max_appends=10)
    client = FakeClient()
    recorder = Recorder()
    until = trio.current_time() + 1.0
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(lambda i=i: run_worker(
                workload, client, recorder, index=i, concurrency=5,
                rng=random.Random(i), until=until, rate=0, op_timeout=1.0))
    final = await final_reads(workload, client, recorder, first_process=100, timeout=5,
                              op_timeout=1.0)
    history = History(recorder.history.events)
    appends = [op for op in history.operations() if op.f == "append" and op.status == "ok"]
    assert len(appends) > 20
    assert len(workload.final_keys()) > 2  # keys were retired and replaced
    for values in final["values"].values():
        assert len(values) <= 10 and len(values) == len(set(values))
    assert check_linearizable(history, "list-append")["valid"] is True
    assert check_acknowledged_writes(history, final["values"], "list-append")["valid"] is True


async def test_append_read_failure_before_any_cas_is_a_fail():
    client = FakeClient(errors=[DeadlineExceededError("slow")])
    outcome = await perform(AppendWorkload(), client, Recorder(), 1,
                            Op("append", "a0", 1, True), 1.0)
    assert outcome.type == "fail"


async def test_routes_workload_records_the_witness():
    workload = RoutesWorkload(keys=4)
    recorder = Recorder()
    stats = await run_worker(workload, FakeClient(), recorder, index=0, concurrency=1,
                             rng=random.Random(1), until=trio.current_time() + 0.1, rate=0,
                             op_timeout=1.0)
    ops = History(recorder.history.events).operations()
    assert stats.ops == len(ops) > 5
    reply = ops[0].output
    assert reply["coordinator"] == "coordinator-1" and reply["root_lag"] == 1
    assert reply["served_root_token"] == 7 and reply["serving_class"] == "BOUNDED_STALE"
    assert {op.input["freshness"] for op in ops} <= {"STRONG", "BOUNDED", "BEST_EFFORT"}
    assert workload.final_keys() == []


async def test_final_reads_retry_until_the_cluster_answers(autojump_clock):
    workload = RegisterWorkload(keys=1)
    client = FakeClient(errors=[UnavailableError("down")] * 3)
    recorder = Recorder()
    final = await final_reads(workload, client, recorder, first_process=50, timeout=30,
                              op_timeout=1.0)
    ops = History(recorder.history.events).operations()
    assert [op.status for op in ops] == ["fail", "fail", "fail", "ok"]
    assert final == {"values": {"k0": None}, "missing": [], "attempts": 4}
    never = await final_reads(workload, FakeClient(errors=[UnavailableError("down")] * 100),
                              Recorder(), first_process=50, timeout=2, op_timeout=1.0)
    assert never["missing"] == ["k0"]
