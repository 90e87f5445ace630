"""The ``metaroot-swap`` fault (jepsen_lite.metaroot_swap) and ``checks["membership"]``
(jepsen_lite.membership.check_history): the judgement of membership windows, the seeded
parameters, and (slow tier) real runs that swap metaroot peers under a workload and kills."""

from __future__ import annotations

import json
import random

import pytest
from jepsen_lite import membership


def stop(fault: str, **value) -> dict:
    return {"type": "info", "process": "nemesis", "f": "stop", "value": {"fault": fault, **value}}


def test_every_window_judged_valid_makes_the_check_valid():
    events = [stop("metaroot-swap", target="metaroot", outcome="swapped", valid=True),
              stop("join", target="cluster", outcome="joined", valid=True),
              stop("kill", target="store-1")]  # not a membership window
    check = membership.check_history(events)
    assert check["valid"] is True and check["windows"] == 2
    assert check["outcomes"] == {"metaroot-swap: swapped": 1, "join: joined": 1}


def test_one_invalid_window_makes_the_check_invalid_and_names_it():
    bad = stop("metaroot-swap", target="metaroot", valid=False,
               outcome="not settled within 30s: the leader lists voters [1, 2, 3, 4]")
    check = membership.check_history([stop("join", target="cluster", valid=True), bad])
    assert check["valid"] is False
    assert [v["outcome"] for v in check["violations"]] == [bad["value"]["outcome"]]


def test_a_window_never_judged_is_unknown_not_valid():
    check = membership.check_history([stop("retire", target="store-2", valid=True),
                                      stop("metaroot-swap", target="metaroot")])
    assert check["valid"] == "unknown" and check["violations"] == []
    assert membership.check_history([])["valid"] == "unknown"


def test_swap_parameters_come_from_the_seed_and_remove_leaders_and_followers():
    def draws(seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [membership.membership_params("metaroot-swap", rng, {})[1] for _ in range(20)]

    assert draws(7) == draws(7) and draws(7) != draws(8)
    assert {d["remove"] for d in draws(7)} == {"leader", "follower"}
    assert membership.membership_params("metaroot-swap", random.Random(1), {})[0] == "metaroot"


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_runs_that_swap_metaroot_peers_under_kills_are_valid(tmp_path, seed):
    """Three founding metaroot peers, register workload, ``metaroot-swap`` and ``kill``
    windows: the run is valid and every swap window swapped (a new voter, an old one removed,
    the group elected among the new voters, coordinators served STRONG routes)."""
    from jepsen_lite.report import summary_text
    from jepsen_lite.runner import RunConfig, run

    config = RunConfig(workload="register", nemesis=["metaroot-swap", "kill"], time_limit=45,
                       seed=seed, metaroots=3, dir=str(tmp_path / "run"))
    results = run(config, log=lambda msg: print(msg, flush=True))
    explain = f"\nseed {seed}\n{summary_text(results)}\nrun directory: {results['dir']}\n"
    assert results["valid"] is True, explain
    assert results["checks"]["membership"]["valid"] is True, explain
    stops = [e["value"] for e in
             map(json.loads, (tmp_path / "run" / "history.jsonl").read_text().splitlines())
             if e.get("process") == "nemesis" and e.get("f") == "stop"
             and e["value"].get("fault") == "metaroot-swap"]
    assert stops and all(s.get("outcome") == "swapped" for s in stops), (stops, explain)
    spec = json.loads((tmp_path / "run" / "cluster" / "cluster.json").read_text())
    serving = [p["node_id"] for p in spec["processes"] if p["kind"] == "metaroot" and not p["retired"]]
    assert len(serving) == 3, (serving, explain)
