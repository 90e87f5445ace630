"""The jepsen-lite ``hostile`` nemesis (issue 16, build item 6).

- attempt generation: seeded and deterministic, every kind of attempt in every window, every
  privileged request of the target's kind;
- the effect check on hand-built observations: a clean window is valid, each kind of effect
  is found and names the attempt that asked for it, a window that could not be observed is
  unknown; the run's check and the summary line from a history;
- the attacker on real sockets against an in-process RpcServer (127.0.0.1, free port): a
  server enforcing roles refuses every attempt; one that does not (``policy=None``) is caught;
- one short run against a real local cluster (marked ``cluster``; processes killed by the
  run's own teardown, files under tmp_path): valid, the hostile check passed, and every kind
  of attempt was made and refused.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import trio
from jepsen_lite import hostile
from jepsen_lite.history import Recorder
from jepsen_lite.hostile import (
    KINDS,
    PRIVILEGED,
    AttackContext,
    Attacker,
    check_history,
    count_refusal_lines,
    hostile_params,
    plan_attempts,
    window_effects,
    window_verdict,
)
from jepsen_lite.nemesis import build_schedule, parse_faults
from jepsen_lite.report import summary_text
from jepsen_lite.runner import RunConfig, run

from nokvpy.protocol import roles
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RpcServer
from nokvpy.rpc.identity import Identity, role_key
from nokvpy.rpc.ports import free_ports
from nokvpy.wire import FRAME_HEADER_SIZE, Pong
from nokvpy.wire.raft_msgs import RaftBatch

PROCS = ["metaroot-1", "coordinator-1", "store-1", "store-2", "store-3"]
BY_KIND = {"metaroot": ["metaroot-1"], "coordinator": ["coordinator-1"],
           "store": ["store-1", "store-2", "store-3"]}


# ---- attempt generation ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["store", "coordinator", "metaroot"])
def test_attempts_are_seeded_and_cover_every_kind(kind):
    for seed in range(30):
        plan = plan_attempts(seed, kind)
        assert plan == plan_attempts(seed, kind)  # deterministic
        assert {a["kind"] for a in plan} == set(KINDS)
        assert len({a["attempt"] for a in plan}) == len(plan)
        privileged = [a["op"] for a in plan if a["kind"] == "privileged"]
        assert sorted(privileged) == sorted(PRIVILEGED[kind])
        assert any(a["op"] == "claim-store" for a in plan)
        fp = next(a for a in plan if a["op"] == "FailpointSetRequest")
        assert (fp["failpoint"], fp["spec"]) in hostile.FAILPOINTS[kind]
        for a in plan:
            if a["op"] in ("unknown-tag", "unknown-body"):
                from nokvpy.wire import registered_types

                assert a["tag"] not in registered_types()
    plans = {json.dumps(plan_attempts(seed, kind)) for seed in range(30)}
    assert len(plans) > 20  # the seed moves the mix


def test_windows_pick_every_kind_of_process_and_name_a_marker():
    targets = set()
    for seed in range(60):
        target, params = hostile_params(random.Random(seed), BY_KIND)
        again = hostile_params(random.Random(seed), BY_KIND)
        assert (target, params) == again
        assert target in PROCS and params["marker"] == f"hostile-{params['seed']:08x}"
        targets.add(hostile.kind_of(target))
    assert targets == {"store", "coordinator", "metaroot"}
    assert "hostile" in parse_faults("all")
    schedule = build_schedule("hostile,kill", 60, 4, PROCS)
    assert schedule == build_schedule("hostile,kill", 60, 4, PROCS)
    windows = [w for w in schedule if w.fault == "hostile"]
    assert windows and all(w.target in PROCS and w.params["marker"] for w in windows)


def test_garbage_bytes_are_deterministic_and_hostile():
    ctx = AttackContext("c", b"k" * 32, "store-1", "127.0.0.1:1", 1, "hostile-00000001")
    attacker = Attacker(ctx)
    rb = {"attempt": "a01", "kind": "garbage", "op": "random-bytes", "size": 40,
          "bytes_seed": 7}
    assert attacker.garbage_bytes(rb) == attacker.garbage_bytes(dict(rb))
    assert len(attacker.garbage_bytes(rb)) == 40
    huge = attacker.garbage_bytes({"op": "huge-length", "length": (1 << 32) - 1})
    assert huge[:4] == b"\xff\xff\xff\xff"
    cut = attacker.garbage_bytes({"op": "truncated", "cut": 0.5})
    declared = int.from_bytes(cut[:4], "big")
    assert 0 < len(cut) - FRAME_HEADER_SIZE < declared


# ---- the effect check on hand-built observations ---------------------------------------


def attempts_of(plan: list[dict], outcome: str = "refused") -> list[dict]:
    return [{**a, "window": "hostile-0000000a", "outcome": outcome, "answer": "x"} for a in plan]


def clean_observation(**changes) -> dict:
    obs = {
        "alive": True, "pid": 4242, "failpoints": {}, "fault_rules": [],
        "lookup_grant": {"coordinator": "coordinator-1", "holder": "coordinator-1#ab",
                         "grant_id": "coordinator-1#ab/3", "era": 3},
        "root": {"peer": "metaroot-1", "index": 10,
                 "grants": [{"grant_id": "coordinator-1#ab/3", "holder": "coordinator-1#ab",
                             "era": 3, "issued_at_ms": 1000, "predecessors": []}],
                 "sealed": [], "recovery_records": []},
        "listed_recovery_records": [],
    }
    obs.update(changes)
    return obs


PLAN = plan_attempts(3, "store")


def test_a_window_that_changed_nothing_is_valid():
    judged = window_effects(attempts_of(PLAN), clean_observation(), clean_observation(),
                            "store-2")
    assert judged["effects"] == [] and judged["unchecked"] == []
    assert judged["refused"] == len(PLAN) and window_verdict(judged) is True


def _fp_attempt() -> str:
    return next(a["attempt"] for a in PLAN if a["op"] == "FailpointSetRequest")


@pytest.mark.parametrize("name, after, culprit, words", [
    ("dead", {"alive": False, "pid": None, "failpoints": None, "fault_rules": None},
     "FailpointSetRequest", "not running"),
    ("restarted", {"pid": 999}, "FailpointSetRequest", "restarted"),
    ("failpoint", {"failpoints": {"store.before_apply": "exit"}}, "FailpointSetRequest",
     "store.before_apply"),
    ("rules", {"fault_rules": [{"label": "hostile-0000000a", "drop": 1.0, "delay": 0.0,
                                "src": [], "dst": []}]}, "SetFaultRules", "fault rules"),
])
def test_each_effect_is_found_and_names_the_attempt(name, after, culprit, words):
    judged = window_effects(attempts_of(PLAN), clean_observation(), clean_observation(**after),
                            "store-2")
    assert window_verdict(judged) is False, judged
    (effect,) = judged["effects"]
    culprit_id = next(a["attempt"] for a in PLAN if a["op"] == culprit)
    assert culprit_id in effect["attempt"] and culprit in effect["attempt"]
    assert words in effect["effect"]


def test_a_store_taken_down_by_a_churn_store_fault_is_a_note_not_an_effect():
    after = clean_observation(pid=999, churn_overlap=True)
    judged = window_effects(attempts_of(PLAN), clean_observation(), after, "store-2")
    assert judged["effects"] == [] and any("churn" in n for n in judged["notes"])
    judged = window_effects(attempts_of(plan_attempts(3, "metaroot")), clean_observation(),
                            after, "metaroot-1")  # churn faults only stores
    assert len(judged["effects"]) == 1


def test_root_effects_a_forged_recovery_record_and_a_sealed_grant():
    plan = plan_attempts(3, "metaroot")
    forged = {"transition_id": "hostile-0000000a", "action": "compensated",
              "failure_evidence": "hostile-0000000a: forged"}
    root = copy.deepcopy(clean_observation()["root"])
    root["recovery_records"] = [forged]
    judged = window_effects(attempts_of(plan), clean_observation(),
                            clean_observation(root=root), "metaroot-1")
    assert [e["effect"] for e in judged["effects"]] == [
        "root holds RECOVERY_RECORDED event(s) ['hostile-0000000a'] with a hostile marker"]
    assert "AppendRequest" in judged["effects"][0]["attempt"]
    # only listed by a coordinator: still found
    judged = window_effects(attempts_of(plan), clean_observation(),
                            clean_observation(listed_recovery_records=[forged]), "metaroot-1")
    assert len(judged["effects"]) == 1
    # the region_lookup grant sealed, the holder campaigning again later: the attacker's seal
    sealed = copy.deepcopy(clean_observation()["root"])
    sealed["sealed"] = [{"grant_id": "coordinator-1#ab/3", "holder": "coordinator-1#ab",
                         "era": 3, "retired_at_ms": 5000}]
    sealed["grants"] = [{"grant_id": "coordinator-1#ab/4", "holder": "coordinator-1#ab",
                         "era": 4, "issued_at_ms": 5200, "predecessors": ["coordinator-1#ab/3"]}]
    after = clean_observation(root=sealed, lookup_grant={
        "coordinator": "coordinator-1", "holder": "coordinator-1#ab",
        "grant_id": "coordinator-1#ab/4", "era": 4})
    judged = window_effects(attempts_of(plan), clean_observation(), after, "metaroot-1")
    assert len(judged["effects"]) == 1 and "sealed" in judged["effects"][0]["effect"]
    assert "GrantRequest" in judged["effects"][0]["attempt"]
    # the same seal as part of a re-issue in place by its holder (same instant): legitimate
    sealed["grants"][0]["issued_at_ms"] = 5000
    judged = window_effects(attempts_of(plan), clean_observation(), after, "metaroot-1")
    assert judged["effects"] == [] and any("re-issued" in n for n in judged["notes"])


def test_a_paused_catch_up_and_an_accepted_attempt_are_effects():
    plan = plan_attempts(5, "coordinator")
    before = clean_observation(catch_up_paused=False, pause_requests=0)
    judged = window_effects(attempts_of(plan), before,
                            clean_observation(catch_up_paused=True, pause_requests=1),
                            "coordinator-1")
    assert len(judged["effects"]) == 1 and "PauseCatchUp" in judged["effects"][0]["attempt"]
    attempts = attempts_of(plan)
    claim = next(a for a in attempts if a["op"] == "claim-store")
    claim.update(outcome="accepted", answer="claimed store-2")
    judged = window_effects(attempts, before, before, "coordinator-1")
    (effect,) = judged["effects"]
    assert claim["attempt"] in effect["attempt"] and "claimed store-2" in effect["effect"]


def test_a_window_that_could_not_be_observed_or_reached_is_unknown():
    judged = window_effects(attempts_of(PLAN), clean_observation(), None, "store-2")
    assert window_verdict(judged) == "unknown"
    judged = window_effects(attempts_of(PLAN), clean_observation(),
                            clean_observation(failpoints=None), "store-2")
    assert judged["unchecked"] == ["failpoints"] and window_verdict(judged) == "unknown"
    judged = window_effects(attempts_of(PLAN, "no_answer"), clean_observation(),
                            clean_observation(), "store-2")
    assert window_verdict(judged) == "unknown"  # nothing reached the server


def _history(after: dict, outcome: str = "refused") -> list[dict]:
    rec = Recorder()
    marker = "hostile-0000000a"
    rec.nemesis_start("hostile", "store-2", seed=10, marker=marker)
    for a in attempts_of(PLAN, outcome):
        rec.nemesis("event", "hostile", "store-2", **a)
    rec.nemesis_stop("hostile", "store-2", window=marker, before=clean_observation(),
                     after=after)
    return rec.history.events


def test_the_run_check_judges_every_window_from_the_history():
    ok = check_history(_history(clean_observation()))
    assert ok["valid"] is True, ok
    assert ok["by_kind"]["privileged"] == {"made": 5, "refused": 5}
    assert all(v["refused"] == v["made"] > 0 for v in ok["by_kind"].values())
    bad = check_history(_history(clean_observation(failpoints={"store.before_apply": "exit"})))
    assert bad["valid"] is False
    assert _fp_attempt() in bad["note"] and "store.before_apply" in bad["note"]
    results = {"config": {"workload": "register", "nemesis": ["hostile"], "seed": 1},
               "checks": {"hostile": bad}, "valid": False, "exit_code": 1, "dir": "x"}
    text = summary_text(results)
    assert "hostile" in text and "INVALID" in text
    assert "EFFECT window hostile-0000000a on store-2" in text and _fp_attempt() in text
    # a window that never stopped cannot be judged
    events = [e for e in _history(clean_observation()) if e["f"] != "stop"]
    assert check_history(events)["valid"] == "unknown"


async def test_a_window_cut_short_before_its_attempts_is_skipped_not_judged():
    window = hostile.HostileWindow("store-1", {"seed": 1, "marker": "hostile-00000001"})
    out = await hostile.close_window(None, window)  # never observed: nothing to ask
    assert out["skipped"].startswith("the run ended before")
    rec = Recorder()
    rec.nemesis_start("hostile", "store-1", seed=1, marker="hostile-00000001")
    rec.nemesis_stop("hostile", "store-1", **out)
    events = _history(clean_observation()) + rec.history.events
    check = check_history(events)
    assert check["valid"] is True and check["checked"] == 1 and len(check["skipped"]) == 1
    assert check_history(rec.history.events)["valid"] == "unknown"  # nothing was checked


def test_refusal_lines_are_counted_with_what_the_rate_limit_suppressed():
    text = "\n".join([
        "2026-12-07 03:16:34,469 metaroot-1 nokvpy.rpc WARNING closing connection from "
        "127.0.0.1:36582 (handshake): frame_too_large: frame of 4097 bytes",
        "2026-12-07 03:16:34,474 metaroot-1 nokvpy.rpc WARNING refused SetFaultRules from "
        "client-31337: role 'client' may not call SetFaultRules (3 similar lines suppressed "
        "in the last 12s)",
        "2026-12-07 03:16:35,000 metaroot-1 metaroot.service INFO refused nothing",
    ])
    assert count_refusal_lines(text) == {"lines": 2, "suppressed": 3}


# ---- the attacker on real sockets (in-process server) ----------------------------------

SECRET = b"hostile-test-secret"


def _server(enforce: bool) -> tuple[RpcServer, list[str]]:
    from nokvpy.adminsvc import register_failpoint_admin

    server = RpcServer(Identity("c", "store", 1, SECRET), enable_failpoints=True,
                       handshake_timeout=0.5, policy=roles.allowed if enforce else None)
    register_failpoint_admin(server)
    hits: list[str] = []

    async def on_batch(req, ctx):
        hits.append("RaftBatch")
        return Pong(b"", "store-1")

    async def on_admin(req, ctx):
        hits.append("AdminRequest")
        return Pong(b"", "store-1")

    server.register(RaftBatch, on_batch)
    server.register(AdminRequest, on_admin)
    return server, hits


ATTEMPTS = [
    {"attempt": "a01", "kind": "garbage", "op": "huge-length", "length": (1 << 32) - 1},
    {"attempt": "a02", "kind": "garbage", "op": "truncated", "cut": 0.5},
    {"attempt": "a03", "kind": "garbage", "op": "unknown-tag", "tag": 55555},
    {"attempt": "a04", "kind": "garbage", "op": "unknown-body", "tag": 55556},
    {"attempt": "a05", "kind": "garbage", "op": "non-record"},
    {"attempt": "a06", "kind": "garbage", "op": "random-bytes", "size": 64, "bytes_seed": 3},
    {"attempt": "a07", "kind": "replay", "op": "pipelined"},
    {"attempt": "a08", "kind": "replay", "op": "stepwise"},
    {"attempt": "a09", "kind": "role-claim", "op": "claim-store", "role": "store"},
    {"attempt": "a10", "kind": "role-claim", "op": "claim-admin", "role": "admin"},
    {"attempt": "a11", "kind": "privileged", "op": "FailpointSetRequest",
     "failpoint": "store.before_apply", "spec": "off"},
    {"attempt": "a12", "kind": "privileged", "op": "RaftBatch"},
    {"attempt": "a13", "kind": "privileged", "op": "AdminRequest"},
    # last: once accepted, its rules drop every later request
    {"attempt": "a14", "kind": "privileged", "op": "SetFaultRules"},
]


async def _attack(enforce: bool) -> tuple[dict[str, dict], list[str], RpcServer]:
    server, hits = _server(enforce)
    (port,) = free_ports(1)
    results: dict[str, dict] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, "127.0.0.1", port)
        ctx = AttackContext("c", role_key(SECRET, "client"), "store-1", f"127.0.0.1:{port}",
                            1, "hostile-0000beef", [], [2])
        attacker = Attacker(ctx)
        with trio.fail_after(60):
            for attempt in ATTEMPTS:
                results[attempt["attempt"]] = await attacker.run(attempt)
        nursery.cancel_scope.cancel()
    return results, hits, server


async def test_a_server_that_enforces_roles_refuses_every_attempt():
    results, hits, server = await _attack(enforce=True)
    assert {k: r["outcome"] for k, r in results.items()} == {
        a["attempt"]: "refused" for a in ATTEMPTS}, results
    assert hits == [] and server.faults.rules == ()
    assert results["a04"]["answer"] == "invalid_argument/decode_error"
    assert "bad_hmac" in results["a07"]["answer"] and "bad_hmac" in results["a09"]["answer"]
    assert results["a11"]["answer"] == "permission_denied/permission_denied"
    # each refusal stands for a server counter that went up
    counters = server.counters
    assert counters["permission_denied{role=client,rpc=SetFaultRules}"] == 1
    assert counters["permission_denied{role=client,rpc=RaftBatch}"] == 1
    assert counters["rejected_handshake{reason=bad_hmac}"] == 4  # 2 replays, 2 claims
    assert counters["bad_requests{reason=decode_error}"] == 1
    assert counters["frame_too_large{phase=handshake}"] >= 1  # random bytes may be one too
    assert counters["handshake_timeouts"] >= 1


async def test_a_server_that_does_not_enforce_roles_is_caught():
    from nokvpy import failpoints

    try:
        results, hits, server = await _attack(enforce=False)
    finally:
        failpoints.clear("store.before_apply")
    accepted = sorted(k for k, r in results.items() if r["outcome"] == "accepted")
    assert accepted == ["a11", "a12", "a13", "a14"], results
    assert sorted(hits) == ["AdminRequest", "RaftBatch"]
    assert [r.label for r in server.faults.rules] == ["hostile-0000beef"]
    attempts = [{**a, **results[a["attempt"]]} for a in ATTEMPTS]
    judged = window_effects(attempts, clean_observation(), clean_observation(), "store-1")
    assert window_verdict(judged) is False
    assert {e["attempt"].split()[0] for e in judged["effects"]} == set(accepted)


# ---- a real cluster --------------------------------------------------------------------


@pytest.mark.slow  # a 30 s run (python -m pytest -m slow)
@pytest.mark.cluster
def test_a_short_hostile_run_is_refused_everything_and_changes_nothing(tmp_path):
    # seed 4: windows on metaroot-1, coordinator-1, store-1, metaroot-1
    config = RunConfig(workload="register", nemesis=["hostile"], time_limit=30, seed=4,
                       dir=str(tmp_path / "run"))
    results = run(config, log=lambda msg: print(msg, flush=True))
    text = summary_text(results)
    print(text)
    explain = f"\n{text}\nerror: {results.get('error')}\nrun directory: {results['dir']}"
    assert results["valid"] is True, explain
    check = results["checks"]["hostile"]
    assert check["valid"] is True and check["effects"] == [], explain
    assert check["checked"] >= 3, explain
    targets = {iv["target"] for iv in results["nemesis_intervals"] if iv["fault"] == "hostile"}
    assert {hostile.kind_of(t) for t in targets} == {"store", "coordinator", "metaroot"}
    for kind in KINDS:
        row = check["by_kind"][kind]
        assert row["made"] >= 1 and row["refused"] == row["made"], (kind, explain)
    assert "hostile:" in text
    assert results["ops"]["by_type"]["ok"] > 100, explain
