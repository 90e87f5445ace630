"""The replica convergence check (jepsen_lite.convergence): the verdict over stores' region
digests as a table (agree, diverged, lagging then agree, never agree, ...), the polling
collector against a scripted control, the summary lines, and (slow tier) real runs: a
``register`` run with ``kill`` must converge, and one store damaging its applied puts
(``NOKV_UNSAFE_APPLY_FLIP=1``, test-only) must be caught."""

from __future__ import annotations

import json
import os

import pytest
import trio
from jepsen_lite.convergence import check_convergence, judge_polls, judge_region
from jepsen_lite.report import summary_text
from jepsen_lite.runner import RunConfig, run

from nokvpy.protocol import RegionEpoch
from nokvpy.protocol.store_rpc import RegionDigest, RegionDigestReply, RegionDigestRequest


def rep(index: int, digest: str = "aa11", keys: int = 3, voters=(1, 2, 3), epoch=(1, 1),
        note: str = "", learners=()) -> dict:
    return {"region_id": 0, "peer_id": 0, "applied_index": index, "applied_term": 1,
            "epoch": list(epoch), "key_count": keys, "byte_count": 10 * keys, "digest": digest,
            "note": note, "start": "", "end": "", "voters": list(voters),
            "learners": list(learners)}


def poll(**stores) -> dict:
    """``poll(s1={1: rep(...)}, s3=None)``: store id -> its digests by region (None: not
    live; a string: the call failed with it). Stores not named are live with no region."""
    views = {}
    for key, digests in stores.items():
        sid = int(key[1:])
        view: dict = {"name": f"store-{sid}", "live": digests is not None}
        if isinstance(digests, str):
            view["error"] = digests
        elif digests is not None:
            view["digests"] = digests
        views[sid] = view
    return views


def same(index: int, **kw) -> dict:
    return poll(s1={1: rep(index, **kw)}, s2={1: rep(index, **kw)}, s3={1: rep(index, **kw)})


CASES = [
    ("agree", [same(10)], True, "1 region: every voter holds the same data"),
    ("one value differs",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(10, digest="bb22")})], False,
     "region 1 diverged at applied index 10: store-1, store-2 (3 keys, digest aa11) vs "
     "store-3 (3 keys, digest bb22)"),
    ("the key count differs",
     [poll(s1={1: rep(10)}, s2={1: rep(10, keys=4, digest="cc")}, s3={1: rep(10)})], False,
     "store-2 (4 keys, digest cc)"),
    ("lagging then agree",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(8, digest="old")}),
      poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(9, digest="old")}),
      same(10)], True, "every voter holds the same data"),
    ("lagging then diverged",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(8, digest="old")}),
      poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(10, digest="bad")})], False,
     "region 1 diverged at applied index 10"),
    ("never agree",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(8)})] * 3, "unknown",
     "region 1 never reached a common applied index within 20s: applied indexes store-1 10, "
     "store-2 10, store-3 8"),
    ("a voter's store is down",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3=None)], "unknown", "store-3: not live"),
    ("a voter's store does not answer",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3="RpcTimeoutError: deadline")], "unknown",
     "store-3: no answer (RpcTimeoutError: deadline)"),
    ("a voter hosts no replica",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={})], "unknown", "store-3: hosts no replica"),
    ("a voter not initialized yet",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(0, note="uninitialized", voters=())})],
     "unknown", "store-3: replica not initialized"),
    ("a region too large to digest",
     [poll(s1={1: rep(10, digest="", note="too_large: more than 5 keys")}, s2={1: rep(10)},
           s3={1: rep(10)})], "unknown", "region 1 not compared: store-1: too_large"),
    ("a learner and a replica outside the voters are not compared",
     [poll(s1={1: rep(10, voters=(1, 2), learners=(4,), epoch=(1, 3))},
           s2={1: rep(10, voters=(1, 2), learners=(4,), epoch=(1, 3))},
           s3={1: rep(7, digest="removed", epoch=(1, 1))},
           s4={1: rep(10, digest="learner", voters=(1, 2), learners=(4,), epoch=(1, 3))})],
     True, "1 region"),
    ("the newest descriptor names the voters",
     [poll(s1={1: rep(12, voters=(1, 2, 4), epoch=(1, 4))},
           s2={1: rep(12, voters=(1, 2, 4), epoch=(1, 4))},
           s3={1: rep(9, voters=(1, 2, 3), epoch=(1, 3))},
           s4={1: rep(11, voters=(1, 2, 4), epoch=(1, 4))})],
     "unknown", "applied indexes store-1 12, store-2 12, store-4 11"),
    ("one region diverged, another agrees",
     [poll(s1={1: rep(10), 2: rep(5)}, s2={1: rep(10), 2: rep(5)},
           s3={1: rep(10), 2: rep(5, digest="x")})], False, "region 2 diverged"),
    ("a settled region keeps its verdict when later polls lag",
     [same(10), poll(s1={1: rep(11)}, s2={1: rep(11)}, s3={1: rep(10)})], True, "1 region"),
    ("epochs differ at the same index",
     [poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(10, epoch=(2, 1))})], False,
     "epoch [2, 1]"),
    ("no store reports any region", [poll(s1={}, s2={}, s3=None)], "unknown",
     "no store reported any region (store-3: not live)"),
]


@pytest.mark.parametrize("name, polls, valid, note", CASES, ids=[c[0] for c in CASES])
def test_the_verdict_table(name, polls, valid, note):
    for p in polls:  # the records name their region
        for view in p.values():
            for rid, d in (view.get("digests") or {}).items():
                d["region_id"] = rid
    check = judge_polls(polls, final=True, timeout=20)
    assert check["valid"] == valid, check
    assert note in check["note"], check["note"]
    json.dumps(check)  # results.json


def test_a_diverged_region_names_its_stores_indexes_and_key_counts():
    p = poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(10, keys=2, digest="ff00")})
    verdict = judge_region(1, p)
    assert verdict["state"] == "diverged" and verdict["applied_index"] == 10
    assert verdict["voters"] == ["store-1", "store-2", "store-3"]
    assert verdict["replicas"]["store-3"] == {"applied_index": 10, "key_count": 2,
                                              "digest": "ff00", "epoch": [1, 1]}
    check = judge_polls([p])
    assert check["diverged"][0]["region"] == 1
    text = summary_text({"config": {"workload": "register", "nemesis": ["kill"]},
                         "checks": {"convergence": check}, "valid": False})
    assert "convergence  INVALID  region 1 diverged at applied index 10" in text
    assert "  region 1 DIVERGED at applied index 10 (voters store-1, store-2, store-3):" in text
    assert "    store-3: applied 10, 2 keys, digest ff00, epoch [1, 1]" in text


def test_polling_is_not_done_while_a_region_lags():
    lag = poll(s1={1: rep(10)}, s2={1: rep(10)}, s3={1: rep(8)})
    assert judge_polls([lag], final=False)["done"] is False
    assert judge_polls([lag, same(10)], final=False)["done"] is True


# ---- the collector against a scripted control ------------------------------------------------


def record(rid: int, index: int, digest: bytes = b"\xaa" * 32, keys: int = 3,
           voters=(1, 2, 3)) -> RegionDigest:
    return RegionDigest(rid, 100 + rid, index, 2, RegionEpoch(1, 1), keys, digest,
                        voters=tuple(voters))


class ScriptedRpc:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    async def call(self, addr, req, timeout):
        assert isinstance(req, RegionDigestRequest) and req.region_ids == ()
        self.calls += 1
        return self.answer(int(addr.rsplit("-", 1)[1]), trio.current_time())


class ScriptedControl:
    """names / node_id / alive / paused / address / rpc, as ClusterControl has them."""

    def __init__(self, answer, dead=()):
        self.rpc = ScriptedRpc(answer)
        self.dead = set(dead)

    def names(self, kind=None):
        assert kind == "store"
        return ["store-1", "store-2", "store-3"]

    def node_id(self, name):
        return int(name.rsplit("-", 1)[1])

    def alive(self, name):
        return name not in self.dead

    def paused(self):
        return set()

    def address(self, name):
        return name


async def test_the_collector_waits_for_a_lagging_voter(autojump_clock):
    t0 = trio.current_time()

    def answer(sid, now):
        index = 10 if sid != 3 or now - t0 >= 3.0 else 7
        return RegionDigestReply(sid, (record(1, index),))

    control = ScriptedControl(answer)
    check = await check_convergence(control, timeout=20)
    assert check["valid"] is True and 3.0 <= check["elapsed_s"] < 4.0, check
    assert check["polls"] >= 6 and check["agreed"] == 1


async def test_the_collector_reports_divergence(autojump_clock):
    def answer(sid, now):
        return RegionDigestReply(sid, (record(1, 10, b"\xbb" * 32 if sid == 3 else b"\xaa" * 32),
                                       record(2, 4)))

    check = await check_convergence(ScriptedControl(answer), timeout=20)
    assert check["valid"] is False and check["polls"] == 1
    assert check["note"] == ("region 1 diverged at applied index 10: store-1, store-2 (3 keys, "
                             "digest aaaaaaaaaaaa) vs store-3 (3 keys, digest bbbbbbbbbbbb)")
    assert check["agreed"] == 1


async def test_the_collector_gives_up_at_its_deadline(autojump_clock):
    def answer(sid, now):
        return RegionDigestReply(sid, (record(1, 10 if sid != 2 else 9),))

    check = await check_convergence(ScriptedControl(answer), timeout=20)
    assert check["valid"] == "unknown" and 20 <= check["elapsed_s"] < 21
    assert "region 1 never reached a common applied index within 20s" in check["note"]

    def failing(sid, now):
        if sid == 2:
            raise OSError("connection refused")
        return RegionDigestReply(sid, (record(1, 10),))

    check = await check_convergence(ScriptedControl(failing, dead={"store-3"}), timeout=5)
    assert check["valid"] == "unknown"
    assert "store-2: no answer (OSError: connection refused); store-3: not live" in check["note"]


# ---- real runs (slow) ------------------------------------------------------------------------


def _explain(results: dict) -> str:
    return (f"\n{summary_text(results)}\nerror: {results.get('error')}\n"
            f"run directory: {results['dir']}\nreproduce with: {results['reproduce']}\n")


@pytest.mark.slow
@pytest.mark.cluster
def test_a_register_run_with_kill_converges(tmp_path):
    seed = int(os.environ.get("NOKV_JEPSEN_SEED", "1"))
    config = RunConfig(workload="register", nemesis=["kill"], time_limit=20, seed=seed,
                       dir=str(tmp_path / "run"))
    results = run(config, log=lambda msg: print(msg, flush=True))
    print(summary_text(results))
    check = results["checks"]["convergence"]
    assert check["valid"] is True, _explain(results)
    assert check["agreed"] >= 1 and not check["diverged"]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_store_that_damages_applied_puts_is_caught(tmp_path):
    """NOKV_UNSAFE_APPLY_FLIP=1: store 3 flips a bit of every 50th put value it applies.
    A damaged value survives until its key is overwritten by a put, so the run uses many
    keys (a damaged key is rarely written again) and a higher rate (more damaged puts).
    Prints the catch rate over the seeds; caught runs must name region and stores."""
    seeds = [int(s) for s in os.environ.get("NOKV_JEPSEN_SEEDS", "1,2,3").split(",")]
    verdicts = {}
    for seed in seeds:
        config = RunConfig(workload="register", nemesis=["kill"], time_limit=20, seed=seed,
                           dir=str(tmp_path / f"seed-{seed}"), keys=50, rate=60,
                           env={"NOKV_UNSAFE_APPLY_FLIP": "1"})
        results = run(config, log=lambda msg: None)
        check = results["checks"]["convergence"]
        verdicts[seed] = check["valid"]
        print(f"seed {seed}: convergence {check['valid']}: {check['note']} "
              f"(run {results['valid']}, linearizable "
              f"{results['checks'].get('linearizable', {}).get('valid')}; "
              f"{results['timing'].get('run_s')} s; {results['reproduce']})")
        if check["valid"] is False:
            for d in check["diverged"]:
                assert "store-3" in d["replicas"] and d["applied_index"] > 0, d
                assert "store-3" in d["reason"], d
    caught = sum(1 for v in verdicts.values() if v is False)
    print(f"NOKV_UNSAFE_APPLY_FLIP caught by convergence: {caught}/{len(seeds)}: {verdicts}")
    assert caught >= 1, f"never caught: {verdicts}"
