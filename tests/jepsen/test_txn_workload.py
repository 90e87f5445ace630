"""The ``txn`` workload: composite registers of three keys changed by transactions, against an
in-memory store that runs a transaction atomically (and one that tears writes, which the
register checker must flag); the split keys; (slow tier) one run on a real cluster."""

from __future__ import annotations

import random

import pytest
import trio
from jepsen_lite.history import History, Recorder
from jepsen_lite.runner import run_checks
from jepsen_lite.txnload import TxnWorkload, composite, member_keys
from jepsen_lite.watchload import WORKLOADS, make_workload
from jepsen_lite.workloads import Op, final_reads, perform, run_worker

from nokvpy.client.errors import OutcomeUnknownError, RejectedError
from nokvpy.client.txn import TxnResponse
from nokvpy.protocol.store_rpc import CompareOp, CompareTarget, TxnGetResult, TxnOpKind


class FakeTxnClient:
    """An in-memory store whose ``txn`` applies atomically; ``errors`` are raised by successive
    calls (an ``OutcomeUnknownError`` transaction is applied before it is raised).
    ``tear``: a write transaction applies its puts one at a time with a pause between, so a
    concurrent read can see some of them (not atomic)."""

    def __init__(self, errors=None, tear=False, latency=0.001):
        self.data: dict[bytes, bytes] = {}
        self.errors = list(errors or [])
        self.tear = tear
        self.latency = latency
        self.calls: list[tuple] = []
        self.index = 0

    def _holds(self, c) -> bool:
        current = self.data.get(c.key)
        if c.target == CompareTarget.EXISTS:
            held = current is not None
        elif c.target == CompareTarget.VALUE:
            held = current == c.value
        else:
            raise AssertionError(f"unexpected compare {c}")
        return held if c.op == CompareOp.EQ else not held

    def _run(self, ops) -> list[TxnGetResult]:
        gets = []
        for op in ops:
            if op.kind == TxnOpKind.PUT:
                self.data[op.key] = op.value
            elif op.kind == TxnOpKind.GET:
                gets.append(TxnGetResult(op.key, self.data.get(op.key)))
            else:
                self.data.pop(op.key, None)
        return gets

    async def txn(self, compare=(), success=(), failure=(), timeout=None):
        compare, success, failure = list(compare), list(success), list(failure)
        self.calls.append((compare, success, failure))
        await trio.sleep(self.latency)
        exc = self.errors.pop(0) if self.errors else None
        if exc is not None and not isinstance(exc, OutcomeUnknownError):
            raise exc
        succeeded = all(self._holds(c) for c in compare)
        branch = success if succeeded else failure
        if self.tear and any(op.kind == TxnOpKind.PUT for op in branch):
            gets = []
            for op in branch:
                gets += self._run([op])
                await trio.sleep(0.002)
        else:
            gets = self._run(branch)
        self.index += 1
        if exc is not None:
            raise exc
        return TxnResponse(succeeded, gets, self.index)


def test_registered_and_key_layout():
    assert WORKLOADS["txn"] is TxnWorkload
    w = make_workload("txn", keys=12)
    assert w.model == "register"
    assert w.keys() == [f"t/{g:03d}" for g in range(12)]
    assert member_keys("t/003") == [b"t/003/a", b"t/003/b", b"t/003/c"]


def test_split_keys_never_fall_inside_a_group():
    w = TxnWorkload(keys=15)
    splits = sorted(w.split_keys())
    assert splits
    members = sorted(k for name in w.keys() for k in member_keys(name))
    for split in splits:
        # every group lies entirely on one side of every split key
        for name in w.keys():
            sides = {k >= split for k in member_keys(name)}
            assert len(sides) == 1, (split, name)
        assert split not in members
    # and the splits do separate the groups: consecutive groups are in different ranges
    for a, b in zip(w.keys(), w.keys()[1:], strict=False):
        assert any(member_keys(a)[-1] < s <= member_keys(b)[0] for s in splits)


def test_composite_value():
    assert composite([None, None, None]) is None
    assert composite([4, 4, 4]) == 4
    torn = composite([4, 5, 4])
    assert isinstance(torn, str) and torn.startswith("torn:")
    assert composite([None, 3, 3]) == "torn:None,3,3"


def test_op_mix():
    w = TxnWorkload(keys=3)
    rng = random.Random(5)
    state: dict = {}
    ops = [w.next_op(rng, state) for _ in range(2000)]
    counts = {f: sum(op.f == f for op in ops) for f in ("read", "write", "cas")}
    assert set(counts) == {op.f for op in ops}
    assert 0.4 < counts["read"] / 2000 < 0.6
    assert 0.2 < counts["write"] / 2000 < 0.4
    assert 0.1 < counts["cas"] / 2000 < 0.3
    assert {op.key for op in ops} == set(w.keys())
    writes = [op.value for op in ops if op.f == "write"] + [op.value[1] for op in ops
                                                            if op.f == "cas"]
    assert len(writes) == len(set(writes))  # unique values
    assert TxnWorkload(keys=1).next_op(rng, {"after_failed_write": True}).f == "read"


async def test_invoke_builds_one_transaction_per_operation():
    w = TxnWorkload(keys=1)
    client = FakeTxnClient()
    keys = member_keys("t/000")
    out = await w.invoke(client, Op("read", "t/000", None, False), 1.0)
    assert out.type == "ok" and out.value is None
    out = await w.invoke(client, Op("cas", "t/000", [None, 7], True), 1.0)
    assert out.type == "ok"
    compare, success, failure = client.calls[-1]
    assert [c.key for c in compare] == keys
    assert all(c.target == CompareTarget.EXISTS and c.op == CompareOp.NE for c in compare)
    assert [(op.kind, op.key, op.value) for op in success] == [
        (TxnOpKind.PUT, k, b"7") for k in keys]
    assert [(op.kind, op.key) for op in failure] == [(TxnOpKind.GET, k) for k in keys]
    assert {client.data[k] for k in keys} == {b"7"}
    out = await w.invoke(client, Op("cas", "t/000", [6, 8], True), 1.0)
    assert out.type == "fail" and out.extra == {"error": "cas_mismatch", "current": 7}
    compare = client.calls[-1][0]
    assert all(c.target == CompareTarget.VALUE and c.value == b"6" for c in compare)
    out = await w.invoke(client, Op("write", "t/000", 9, True), 1.0)
    assert out.type == "ok" and {client.data[k] for k in keys} == {b"9"}
    out = await w.invoke(client, Op("read", "t/000", None, False), 1.0)
    assert out.type == "ok" and out.value == 9
    client.data[keys[1]] = b"3"
    out = await w.invoke(client, Op("read", "t/000", None, False), 1.0)
    assert out.value == "torn:9,3,9"
    out = await w.invoke(client, Op("cas", "t/000", [9, 10], True), 1.0)
    assert out.type == "fail" and out.extra["torn"] is True
    assert len(client.calls) == 7  # one transaction each


async def test_error_mapping_matches_register():
    w = TxnWorkload(keys=1)
    client = FakeTxnClient(errors=[OutcomeUnknownError("lost"), RejectedError("no", "NOT_LEADER"),
                                   OutcomeUnknownError("lost")])
    recorder = Recorder()
    write = await perform(w, client, recorder, 1, Op("write", "t/000", 1, True), 1.0)
    cas = await perform(w, client, recorder, 2, Op("cas", "t/000", [1, 2], True), 1.0)
    read = await perform(w, client, recorder, 3, Op("read", "t/000", None, False), 1.0)
    assert write.type == "info" and write.extra["error"].startswith("OutcomeUnknownError")
    assert cas.type == "fail" and cas.extra["error"].startswith("RejectedError")
    assert read.type == "fail"
    ops = History(recorder.history.events).operations()
    assert [(op.f, op.status) for op in ops] == [("write", "info"), ("cas", "fail"),
                                                 ("read", "fail")]
    done = [e for e in recorder.history.events if e["type"] != "invoke"]
    assert [e["value"] for e in done] == [1, [1, 2], None]  # as RegisterWorkload records them


async def _run(client, workers=4, seconds=1.5):
    workload = make_workload("txn", keys=2)
    recorder = Recorder()
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for i in range(workers):
            nursery.start_soon(lambda i=i: run_worker(
                workload, client, recorder, index=i, concurrency=workers,
                rng=random.Random(i), until=until, rate=300, op_timeout=1.0))
    final = await final_reads(workload, client, recorder, first_process=100, timeout=5,
                              op_timeout=1.0)
    history = History(recorder.history.events)
    return history, final, run_checks("txn", history, final, check_time_limit=30)


async def test_atomic_transactions_are_linearizable():
    history, final, checks = await _run(FakeTxnClient())
    ops = history.operations()
    assert len(ops) > 100
    assert {op.f for op in ops} == {"read", "write", "cas"}
    assert any(op.f == "cas" and op.status == "ok" for op in ops)
    assert sorted(final["values"]) == ["t/000", "t/001"] and final["missing"] == []
    assert not any(isinstance(op.output, str) for op in ops if op.f == "read")
    assert checks["linearizable"]["valid"] is True, checks["linearizable"]
    assert checks["lost_writes"]["valid"] is True
    assert checks["recovery"]["valid"] is True


async def test_torn_writes_are_flagged_by_the_register_checker():
    history, _, checks = await _run(FakeTxnClient(tear=True), seconds=1.0)
    torn = [op for op in history.operations()
            if op.f == "read" and op.status == "ok" and isinstance(op.output, str)]
    assert torn, "the tearing store produced no torn read"
    lin = checks["linearizable"]
    assert lin["valid"] is False
    assert lin["failing_key"] in ("t/000", "t/001")


# -- a real cluster ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_txn_run_under_kill_and_partition(tmp_path):
    from jepsen_lite.report import summary_text
    from jepsen_lite.runner import RunConfig, run

    config = RunConfig(workload="txn", nemesis=["kill", "partition"], time_limit=20, seed=1,
                       dir=str(tmp_path / "run"))
    results = run(config, log=lambda msg: print(msg, flush=True))
    text = summary_text(results)
    print(text)
    assert results["valid"] is True, f"{text}\n{results['reproduce']}"
    assert results["checks"]["linearizable"]["valid"] is True
