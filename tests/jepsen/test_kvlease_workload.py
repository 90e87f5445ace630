"""The jepsen-lite ``kvlease`` workload: its checker on hand-made and generated histories, the
lessees against an in-memory lease store (one that keeps the rules, one that expires early),
one short run on a real cluster with the lease authority paused, and (slow tier) runs under
kill -9 and pauses of the region leader, which is the lease authority here, of a safe build
and of one with ``NOKV_UNSAFE_LEASE_EXTEND=1``."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jepsen_lite.history import History, Recorder
from jepsen_lite.kvleasecheck import (
    check_kvlease,
    check_run_dir,
    failovers,
    kvlease_lines,
    load_records,
)
from jepsen_lite.kvleaseload import KvLeaseWorkload
from jepsen_lite.watchload import WORKLOADS
from jepsen_lite.workloads import run_worker

from nokvpy.client import LeaseNotFoundError

S = 1_000_000_000
TTL = 3.0

# -- hand-made histories --------------------------------------------------------------------


def op(f, key, value, t, status="ok", out=None, **extra) -> dict:
    """One operation: ``t`` = (invoke, end) in seconds (end None: never completed);
    ``lease`` (a put's label) goes to the invoke, ``error`` to the completion."""
    return {"f": f, "key": key, "value": value, "t": t, "status": status, "out": out,
            "extra": extra}


def grant(label, t, status="ok", ttl=TTL):
    return op("grant", label, ttl, t, status, ttl)


def ka(label, t, status="ok", error=None):
    return op("keep-alive", label, 7, t, status, 7, **({"error": error} if error else {}))


def revoke(label, t, status="ok"):
    return op("revoke", label, 7, t, status, 7)


def put(key, value, label, t, status="ok", error=None):
    return op("put", key, value, t, status, value, lease=label,
              **({"error": error} if error else {}))


def read(key, out, t, status="ok"):
    return op("read", key, None, t, status, out)


def listing(labels, t):
    return op("leases", None, None, t, "ok", sorted(labels))


def history(*ops, windows=()) -> list[dict]:
    raw = []
    for n, o in enumerate(ops):
        common = {"process": n, "f": o["f"], "key": o["key"]}
        call, end = o["t"]
        extra = dict(o["extra"])
        lease = extra.pop("lease", None)
        raw.append((int(call * S), 1, {"type": "invoke", **common, "value": o["value"],
                                       **({"lease": lease} if lease else {})}))
        if end is not None:
            raw.append((int(end * S), 0, {"type": o["status"], **common, "value": o["out"],
                                          **extra}))
    for fault, target, start, stop in windows:
        for f, t in (("start", start), ("stop", stop)):
            raw.append((int(t * S), 2, {"type": "info", "process": "nemesis", "f": f,
                                        "key": None, "value": {"fault": fault,
                                                               "target": target}}))
    raw.sort(key=lambda item: (item[0], item[1]))
    return [{"index": i, **e, "time": t} for i, (t, _, e) in enumerate(raw)]


# L1: granted at 0, a key k put with it, kept alive at 1 and 2 (sent at 2.0: alive until at
# least 4.94 with the 2 % clock allowance; gone by 2.01 + 3 + 2 = 7.01 at the latest)
BASE = [grant("L1", (0.0, 0.01)), ka("L1", (0.02, 0.03)), put("k", 1, "L1", (0.04, 0.05)),
        ka("L1", (1.0, 1.01)), ka("L1", (2.0, 2.01))]


def kinds(result) -> set[str]:
    return {v["kind"] for v in result["violations"]}


def test_a_lease_kept_alive_then_let_go_is_valid():
    h = history(*BASE, read("k", 1, (2.5, 2.51)), read("k", 1, (4.0, 4.01)),
                read("k", None, (5.5, 5.51)), read("k", None, (8.0, 8.01)),
                listing([], (9.0, 9.01)))
    result = check_kvlease(h)
    assert result["valid"] is True, result["violations"]
    assert (result["leases_granted"], result["keys"], result["reads"]) == (1, 1, 4)
    assert (result["reads_present"], result["reads_absent"]) == (2, 2)
    assert result["max_past_last_keep_alive_s"] == pytest.approx(1.99)
    assert result["earliest_absence_s"] == pytest.approx(3.51)
    assert result["leases_seen_gone"] == 1
    assert result["ops"]["keep-alive"] == {"ok": 3}
    lines = kvlease_lines(result)
    assert lines[0].startswith("kvlease: 1 leases granted, 1 keys, 4 reads (2 found, 2 absent)")


def test_a_key_gone_while_its_lease_is_alive():
    result = check_kvlease(history(*BASE, read("k", None, (4.0, 4.5))))
    assert kinds(result) == {"early_delete"}
    v = result["violations"][0]
    assert v["anchor"]["invoke_s"] == 2.0 and v["read"]["end_s"] == 4.5
    assert v["absent_after_s"] == pytest.approx(2.5)
    assert kvlease_lines(result)[-1].startswith("  early_delete: ")


@pytest.mark.parametrize("end, early", [(4.93, True), (4.95, False)])
def test_the_clock_allowance_is_two_percent_of_the_ttl(end, early):
    result = check_kvlease(history(*BASE, read("k", None, (4.9, end))))
    assert (result["valid"] is False) == early
    assert check_kvlease(history(*BASE, read("k", None, (4.9, end))),
                         clock_drift=0.0)["valid"] is False


def test_an_acknowledged_keep_alive_after_the_key_went_proves_it_early():
    """Gone is for good: a lease found alive later was alive when its key was read gone."""
    h = history(*BASE, read("k", None, (5.5, 5.51)), ka("L1", (6.0, 6.01)))
    assert kinds(check_kvlease(h)) == {"early_delete"}


@pytest.mark.parametrize("status", ["ok", "info", "fail"])
def test_a_revoke_invoked_before_the_read_ended_excuses_the_absence(status):
    h = history(*BASE, revoke("L1", (4.4, 4.45), status), read("k", None, (4.0, 4.5)))
    assert check_kvlease(h)["valid"] is True
    late = history(*BASE, read("k", None, (4.0, 4.5)), revoke("L1", (4.6, 4.7), status))
    assert kinds(check_kvlease(late)) == {"early_delete"}


def test_another_write_of_the_key_may_explain_the_absence():
    unleased = put("k", 2, None, (3.0, 3.5), "info")
    unleased["extra"].pop("lease")
    h = history(*BASE, unleased, read("k", None, (4.0, 4.5)))
    assert check_kvlease(h)["valid"] is True
    earlier = put("k", 0, None, (-1.0, -0.5))  # acknowledged before the leased put began
    earlier["extra"].pop("lease")
    h = history(earlier, *BASE, read("k", None, (4.0, 4.5)))
    assert kinds(check_kvlease(h)) == {"early_delete"}


@pytest.mark.parametrize("status", ["info", "pending", "fail"])
def test_a_put_not_acknowledged_proves_nothing_absent(status):
    ops = [*BASE[:2], put("k", 1, "L1", (0.04, None if status == "pending" else 0.05), status),
           *BASE[3:], read("k", None, (4.0, 4.5))]
    assert check_kvlease(history(*ops))["violations"] == []


def test_an_indeterminate_keep_alive_is_no_proof_of_life_but_may_extend():
    """An info keep-alive (3.0-5.0) may have reached the authority: the key may live until
    5.0 + TTL + bound = 10.0, but the floor stays with the acknowledged one (2.0)."""
    info = ka("L1", (3.0, 5.0), "info")
    assert check_kvlease(history(*BASE, info, read("k", None, (5.5, 5.51))))["valid"] is True
    assert check_kvlease(history(*BASE, info, read("k", 1, (9.5, 9.51))))["valid"] is True
    result = check_kvlease(history(*BASE, info, read("k", 1, (10.5, 10.51))))
    assert kinds(result) == {"overlive"}
    assert result["violations"][0]["last_keep_alive"]["status"] == "info"
    assert kinds(check_kvlease(history(*BASE, read("k", 1, (9.5, 9.51))))) == {"overlive"}


def test_a_keep_alive_never_completed_leaves_the_lease_unbounded():
    h = history(*BASE, ka("L1", (3.0, None), "info"), read("k", 1, (30.0, 30.01)))
    assert check_kvlease(h)["valid"] is True


@pytest.mark.parametrize("at, late", [(6.9, False), (7.2, True)])
def test_a_key_outliving_its_lease(at, late):
    result = check_kvlease(history(*BASE, read("k", 1, (at, at + 0.01))))
    assert (kinds(result) == {"overlive"}) == late
    if late:
        v = result["violations"][0]
        assert v["past_last_keep_alive_s"] == pytest.approx(at - 2.01)
        assert v["past_limit_s"] == pytest.approx(at - 7.01)
    assert check_kvlease(history(*BASE, read("k", 1, (7.2, 7.21))), bound=3.0)["valid"] is True


def test_a_put_whose_lease_check_passed_just_before_the_lease_went():
    """The put ends at 6.0, after the lease's deadline: its key may live until 6.0 + bound."""
    ops = [*BASE[:2], put("k", 1, "L1", (4.5, 6.0)), *BASE[3:]]
    assert check_kvlease(history(*ops, read("k", 1, (7.9, 7.91))))["valid"] is True
    assert kinds(check_kvlease(history(*ops, read("k", 1, (8.1, 8.11))))) == {"overlive"}


def test_revoked():
    ops = [*BASE, revoke("L1", (3.0, 3.1))]
    assert check_kvlease(history(*ops, read("k", None, (3.5, 3.51)),
                                 read("k", 1, (5.0, 5.01))))["valid"] is True
    result = check_kvlease(history(*ops, read("k", 1, (5.2, 5.21))))
    assert kinds(result) == {"overlive_revoked"}
    assert result["violations"][0]["past_revoke_s"] == pytest.approx(2.1)
    unknown = [*BASE, revoke("L1", (3.0, 3.1), "info")]  # judged by the keep-alives only
    assert check_kvlease(history(*unknown, read("k", 1, (5.2, 5.21))))["valid"] is True


def test_the_lease_itself_found_gone_early():
    result = check_kvlease(history(*BASE, ka("L1", (3.0, 3.5), "fail", error="lease_not_found")))
    assert kinds(result) == {"early_expiry"}
    assert result["violations"][0]["gone_after_s"] == pytest.approx(1.5)
    late = ka("L1", (4.0, 5.0), "fail", error="lease_not_found")
    assert check_kvlease(history(*BASE, late))["violations"] == []
    other = ka("L1", (3.0, 3.5), "fail", error="UnavailableError")  # not a judgement
    assert check_kvlease(history(*BASE, other))["violations"] == []
    refused = put("k2", 5, "L1", (3.0, 3.5), "fail", error="lease_not_found")
    assert kinds(check_kvlease(history(*BASE, refused))) == {"early_expiry"}


def test_the_final_listing():
    assert kinds(check_kvlease(history(*BASE, listing([], (4.0, 4.1))))) == {"early_expiry"}
    assert kinds(check_kvlease(history(*BASE, listing(["L1"], (7.5, 7.6))))) == {"overlive"}
    revoked = [*BASE, revoke("L1", (3.0, 3.1))]
    assert kinds(check_kvlease(history(*revoked, listing(["L1"], (5.5, 5.6))))) == {
        "overlive_revoked"}
    assert check_kvlease(history(*revoked, listing([], (3.5, 3.6))))["violations"] == []


def test_a_phantom_and_a_failed_put_seen():
    assert kinds(check_kvlease(history(*BASE, read("k", 99, (2.5, 2.51))))) == {"phantom"}
    failed = put("k2", 5, "L1", (1.5, 1.6), "fail", error="RejectedError")
    assert kinds(check_kvlease(history(*BASE, failed, read("k2", 5, (2.5, 2.51))))) == {
        "failed_put_seen"}


def test_one_violation_per_key_the_worst_with_a_count():
    result = check_kvlease(history(*BASE, read("k", 1, (7.2, 7.21)), read("k", 1, (8.0, 8.01)),
                                   read("k", 1, (7.5, 7.51))))
    assert len(result["violations"]) == 1 and result["counts"]["overlive"] == 3
    assert result["violations"][0]["operations"] == 3
    assert result["violations"][0]["read"]["invoke_s"] == 8.0


def test_failover_restarts_the_deadline_at_an_authority_change():
    """docs/protocols.md: a new authority gives every lease a full TTL from its takeover. The
    authority changed at 4.5 (before the deadline 5.01): gone by 7.5 + 2, not 7.01."""
    t0 = 0  # the first event's time
    records = [{"type": "leader", "role": "authority", "store": 1, "time": t0},
               {"type": "leader", "role": "authority", "store": 2, "time": int(4.5 * S)}]
    h = history(*BASE, read("k", 1, (8.0, 8.01)), windows=[("kill", "store-1", 3.0, 6.0)])
    strict = check_kvlease(h, records)
    assert kinds(strict) == {"overlive"}
    assert strict["violations"][0]["leader_changes_s"] == [4.5]
    assert strict["violations"][0]["faults"] == ["kill store-1 3.0-6.0s"]
    assert strict["faults_on_authority"] == {"kill": 1}
    assert check_kvlease(h, records, failover=True)["valid"] is True
    config = [{"type": "config", "failover": True, "bound": 2.0}]
    assert check_kvlease(h, config + records)["valid"] is True
    late = history(*BASE, read("k", 1, (9.6, 9.61)))
    assert kinds(check_kvlease(late, records, failover=True)) == {"overlive"}
    # a new authority seen long after the deadline (the lease was judged) gives nothing...
    after = records[:1] + [{"type": "leader", "role": "authority", "store": 2,
                            "time": int(7.5 * S)}]
    plain = history(*BASE, read("k", 1, (8.0, 8.01)))
    assert kinds(check_kvlease(plain, after, failover=True)) == {"overlive"}
    # ...unless the old one was lost (the kill at 3.0) before it
    assert check_kvlease(h, after, failover=True)["valid"] is True


def test_failovers_from_the_leader_records():
    """A takeover is when the new leader is first seen; the loss, at the start of a fault
    window on the old leader in its term; an unknown leader (0) between two sightings of the
    same store is a new term."""
    def leader(store, t):
        return {"type": "leader", "role": "authority", "store": store, "time": t}

    records = [leader(3, 1), leader(0, 4), leader(3, 6), leader(1, 9), leader(1, 12)]
    windows = [SimpleNamespace(start=5, target="store-3"), SimpleNamespace(start=2,
                                                                           target="store-1")]
    assert failovers(records, windows, "authority") == [(5, 6), (9, 9)]
    assert failovers(records, windows, "keys") == []


def test_failover_lets_a_new_sweeper_start_afresh():
    """The lease went at 5.01 and its keys were due by 7.01, or after the revoke (3.1) by
    5.1; the keys' region leader changed at 6.5 (resp. 4.0): its sweep may come 2 s later."""
    records = [{"type": "leader", "role": "keys", "store": 1, "time": 0},
               {"type": "leader", "role": "keys", "store": 3, "time": int(6.5 * S)}]
    h = history(*BASE, read("k", 1, (8.3, 8.31)))
    assert kinds(check_kvlease(h, records)) == {"overlive"}
    assert check_kvlease(h, records, failover=True)["valid"] is True
    assert kinds(check_kvlease(history(*BASE, read("k", 1, (8.6, 8.61))), records,
                               failover=True)) == {"overlive"}
    records[1]["time"] = int(4.0 * S)
    revoked = history(*BASE, revoke("L1", (3.0, 3.1)), read("k", 1, (5.8, 5.81)))
    assert kinds(check_kvlease(revoked, records)) == {"overlive_revoked"}
    assert check_kvlease(revoked, records, failover=True)["valid"] is True


def test_an_empty_run_is_unknown():
    assert check_kvlease([])["valid"] == "unknown"
    assert check_kvlease(history(*BASE))["valid"] == "unknown"  # nothing read


# -- generated histories --------------------------------------------------------------------


@st.composite
def lease_runs(draw):
    """One lease as a correct store serves it (times in ms): the grant sets the deadline to
    5 + TTL; keep-alives, one after another, each reach the authority at a point of their
    interval; one that reaches it after the deadline plus a pass delay (drawn once) finds
    the lease gone (lease_not_found), otherwise an ``ok`` one (and an ``info`` one, maybe)
    moves the deadline to that point plus the TTL. A revoke (maybe, after the keep-alives)
    deletes the record within its interval; the key goes up to 1.5 s after the record.
    Reads see the key at a point of their interval."""
    ttl = draw(st.sampled_from([1000, 2000, 3000]))
    delay = draw(st.integers(0, 300))  # expiry pass and proposal
    ops, t, deadline, gone = [("grant", 0, 10, "ok", None)], 10, 5 + ttl, None
    for _ in range(draw(st.integers(0, 8))):
        t += draw(st.integers(50, ttl))
        end = t + draw(st.integers(1, 400))
        at = draw(st.integers(t, end))
        if gone is not None or at >= deadline + delay:
            gone = deadline + delay if gone is None else gone
            ops.append(("keep-alive", t, end, "fail", "lease_not_found"))
        else:
            status = draw(st.sampled_from(["ok", "ok", "info", "fail"]))
            if status == "ok" or status == "info" and draw(st.booleans()):
                deadline = max(deadline, at + ttl)
            ops.append(("keep-alive", t, end, status, "Unavailable" if status == "fail"
                        else None))
        t = end
    record_gone = deadline + delay if gone is None else gone
    if draw(st.booleans()):
        revoke_at = t + draw(st.integers(0, ttl))
        ops.append(("revoke", revoke_at, revoke_at + 20, "ok", None))
        record_gone = min(record_gone, revoke_at + draw(st.integers(0, 20)))
    key_gone = record_gone + draw(st.integers(0, 1500))
    reads = []
    for _ in range(draw(st.integers(1, 12))):
        c = draw(st.integers(30, t + 3 * ttl + 3000))
        r = c + draw(st.integers(1, 300))
        reads.append((c, r, draw(st.integers(c, r)) < key_gone))
    return ttl, ops, reads


def generated(ttl, ops, reads) -> list[dict]:
    out = [grant("L", (0.0, 0.01), ttl=ttl / 1000), put("k", 1, "L", (0.015, 0.025))]
    for f, c, r, status, error in ops[1:]:
        make = ka if f == "keep-alive" else revoke
        o = make("L", (c / 1000, r / 1000), status)
        if error:
            o["extra"]["error"] = error
        out.append(o)
    for c, r, present in reads:
        out.append(read("k", 1 if present else None, (c / 1000, r / 1000)))
    return history(*out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lease_runs(), st.data())
def test_generated_leases_are_valid_and_an_early_delete_is_caught(run, data):
    ttl, ops, reads = run
    result = check_kvlease(generated(ttl, ops, reads))
    assert result["valid"] is True, result["violations"]
    # break it: a read ending before the floor of the latest acknowledged keep-alive finds
    # the key gone
    anchors = [c for f, c, _, status, _ in ops if status == "ok" and f != "revoke"]
    anchor = max([0, *anchors])
    if any(f == "revoke" for f, *_ in ops):
        return
    end = anchor + data.draw(st.integers(50, int(ttl * 0.97)))
    bad = generated(ttl, ops, [*reads, (end - 10, end, False)])
    assert "early_delete" in kinds(check_kvlease(bad))


# -- the lessees against an in-memory store ------------------------------------------------


class FakeLeases:
    """Leases as the docs promise (``early`` > 0: the record and its keys go that many
    seconds before the deadline); time is trio's."""

    def __init__(self, early: float = 0.0):
        self.early = early
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.leases: dict[int, list[float]] = {}  # id -> [ttl, deadline]
        self.ids = itertools.count(1)

    def expire(self) -> None:
        now = trio.current_time()
        for lid, (_, deadline) in list(self.leases.items()):
            if now >= deadline - self.early:
                del self.leases[lid]
        for key, (_, lid) in list(self.data.items()):
            if lid and lid not in self.leases:
                del self.data[key]


class FakeClient:
    def __init__(self, store: FakeLeases):
        self.store = store

    async def _step(self) -> None:
        await trio.sleep(0.002)
        self.store.expire()

    async def grant(self, ttl, timeout=None):
        await self._step()
        lid = next(self.store.ids)
        self.store.leases[lid] = [ttl, trio.current_time() + ttl]
        return lid

    async def keep_alive(self, lid, timeout=None):
        await self._step()
        if lid not in self.store.leases:
            raise LeaseNotFoundError("gone")
        entry = self.store.leases[lid]
        entry[1] = max(entry[1], trio.current_time() + entry[0])
        return entry[0]

    async def revoke(self, lid, timeout=None):
        await self._step()
        self.store.leases.pop(lid, None)
        self.store.expire()

    async def put(self, key, value, timeout=None, *, lease=0):
        await self._step()
        if lease and lease not in self.store.leases:
            raise LeaseNotFoundError("gone")
        self.store.data[key] = (value, lease)
        return 1

    async def get(self, key, timeout=None):
        await self._step()
        return self.store.data.get(key, (None, 0))[0]

    async def leases(self, timeout=None):
        await self._step()
        return {lid: e[0] for lid, e in self.store.leases.items()}

    async def route(self, key, freshness=None):
        await self._step()
        return SimpleNamespace(leader_store_id=1, descriptor=None)

    async def aclose(self):
        pass


async def fake_run(tmp_path: Path, store: FakeLeases, seconds: float = 20.0) -> tuple:
    workload = KvLeaseWorkload(keys=2, seed=3)
    recorder = Recorder(clock=lambda: int(trio.current_time() * S))
    async with workload.session(lambda i: FakeClient(store), recorder, tmp_path,
                                lambda msg: None, 0.5) as side:
        until = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(lambda i=i: run_worker(
                    workload, FakeClient(store), recorder, index=i, concurrency=3,
                    rng=random.Random(i), until=until, rate=30, op_timeout=0.5))
        summary = await side.finish()
    return recorder.history, summary


async def test_the_lessees_against_a_store_that_keeps_the_rules(tmp_path, autojump_clock):
    assert WORKLOADS["kvlease"] is KvLeaseWorkload
    hist, summary = await fake_run(tmp_path, FakeLeases())
    assert summary["found_at_end"] == [] and summary["listed_at_end"] == []
    assert {"expire", "revoked"} <= set(summary["outcomes"])
    result = check_run_dir(hist, tmp_path)
    assert result["valid"] is True, result["violations"]
    assert result["leases_granted"] >= 10 and result["reads_present"] > 50
    assert result["reads_absent"] > 20 and result["final_reads"] == result["keys"]
    assert result["reads_held_to_early_rule"] > 10
    assert result["earliest_absence_s"] >= 3.0
    assert 2.5 <= result["max_past_last_keep_alive_s"] < 5.0
    assert load_records(tmp_path / "kvlease-events.jsonl")[0]["ttl"] == 3.0


async def test_the_lessees_catch_a_store_that_expires_early(tmp_path, autojump_clock):
    hist, _ = await fake_run(tmp_path, FakeLeases(early=1.0))
    assert kinds(check_run_dir(hist, tmp_path)) & {"early_delete", "early_expiry"}


# -- a real cluster ------------------------------------------------------------------------


def _run(tmp_path: Path, seed: int, nemesis: list[str], time_limit: float,
         env: dict[str, str] | None = None, **options) -> dict:
    from jepsen_lite.runner import RunConfig, run

    config = RunConfig(workload="kvlease", nemesis=nemesis, time_limit=time_limit, seed=seed,
                       keys=2, leader_share=1.0, dir=str(tmp_path / f"seed-{seed}"),
                       env=env or {}, workload_options=options)
    return run(config, log=lambda msg: print(msg, flush=True))


def _explain(results: dict) -> str:
    from jepsen_lite.report import summary_text

    return f"\n{summary_text(results)}\nreproduce: {results['reproduce']}"


def _offline(results: dict, **options) -> dict:
    d = Path(results["dir"])
    return check_kvlease(History.load(d / "history.jsonl"),
                         load_records(d / "kvlease-events.jsonl"), **options)


@pytest.mark.slow  # ~24 s; the checker's rules are covered above without a cluster
@pytest.mark.cluster
def test_a_short_run_with_the_lease_authority_paused(tmp_path):
    """12 s, every pause aimed at the region leader (the lease authority: one region); the
    documented failover rule (a new authority restarts the TTL) judges how long keys live."""
    results = _run(tmp_path, 1, ["pause"], 12, failover=1)
    print(_explain(results))
    assert results["valid"] is True, _explain(results)
    check = results["checks"]["kvlease"]
    assert check["faults_on_authority"].get("pause", 0) >= 1, _explain(results)
    assert check["leases_seen_gone"] >= 5 and check["reads_held_to_early_rule"] >= 10
    assert check["final_reads"] == check["keys"]


# -- slow tier: kill -9 and pauses of the authority, safe and unsafe -------------------------

SEEDS = [int(s) for s in os.environ.get("NOKV_JEPSEN_SEEDS", "1,2,3").split(",")]
TIME_LIMIT = float(os.environ.get("NOKV_JEPSEN_TIME_LIMIT", "40"))


@pytest.fixture(scope="module")
def safe_runs(tmp_path_factory) -> dict[int, dict]:
    root = tmp_path_factory.mktemp("kvlease-safe")
    return {seed: _run(root, seed, ["kill", "pause"], TIME_LIMIT, failover=1)
            for seed in SEEDS}


@pytest.mark.slow
@pytest.mark.cluster
def test_kill_and_pause_of_the_authority_keep_the_documented_bounds(safe_runs):
    """No key goes early; none outlives TTL + 2 s past its last keep-alive, or past an
    authority change before that (docs/protocols.md: a new authority restarts the TTL)."""
    for seed, results in safe_runs.items():
        check = results["checks"]["kvlease"]
        strict = _offline(results, failover=False)
        print(f"seed {seed}: {results['valid']}; {check['note']}; faults on the authority "
              f"{check['faults_on_authority']}; with the issue's bound (no failover "
              f"allowance): {strict['valid']} {strict['counts']}")
        assert results["valid"] is True, _explain(results)
        assert check["faults_on_authority"], _explain(results)
        assert not {"early_delete", "early_expiry"} & kinds(strict), _explain(results)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.xfail(strict=True, reason="a new lease authority gives every lease a full TTL "
                   "from its takeover (docs/protocols.md 'Leases'), so a kill or pause of the "
                   "authority in a lease's last TTL lets its keys live up to about TTL + "
                   "election + sweep past the last keep-alive: the issue's TTL + 2 s bound "
                   "does not hold under failover")
def test_kill_and_pause_of_the_authority_keep_ttl_plus_2s(safe_runs):
    for results in safe_runs.values():
        strict = _offline(results, failover=False)
        assert strict["valid"] is True, f"{strict['note']}\n{kvlease_lines(strict)}"


@pytest.mark.slow
@pytest.mark.cluster
def test_unsafe_lease_extend_is_caught(tmp_path):
    """NOKV_UNSAFE_LEASE_EXTEND=1: a new authority gives the leases it has not seen no time;
    keys of leases kept alive go early (early_delete) and keep-alives find them gone
    (early_expiry)."""
    caught = {}
    for seed in SEEDS:
        results = _run(tmp_path, seed, ["kill", "pause"], TIME_LIMIT,
                       env={"NOKV_UNSAFE_LEASE_EXTEND": "1"}, failover=1)
        check = results["checks"]["kvlease"]
        caught[seed] = sorted(kinds(check) & {"early_delete", "early_expiry"})
        print(f"seed {seed}: {results['valid']}; {check['note']}")
    rate = sum(1 for v in caught.values() if v)
    print(f"NOKV_UNSAFE_LEASE_EXTEND=1 caught in {rate}/{len(caught)} seeds: {caught}")
    assert rate == len(caught), caught
