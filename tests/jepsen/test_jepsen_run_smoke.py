"""The jepsen-lite CI smoke run (a real local cluster, about 40 s) and, opt-in, the
buggy-build detection experiment.

Smoke run: a 30-second ``register`` workload under ``kill,partition,publish-fail`` (seed 1
schedules one window of each) must be valid. Seed and length come from ``NOKV_JEPSEN_SEED``
(default 1) and ``NOKV_JEPSEN_TIME_LIMIT`` (default 30). A failure prints the run directory,
the summary and the command that reproduces it.

Experiment (``-m slow``): with a test-only unsafe switch in the stores (``NOKV_UNSAFE_READS=1``:
linearizable reads served from local state without ReadIndex; ``NOKV_UNSAFE_ACK=1``: writes
acknowledged before commit), runs over several seeds must be caught as invalid. Prints the
detection rate. Skipped when raftstore does not implement the switch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jepsen_lite.report import summary_text
from jepsen_lite.runner import RunConfig, run

ROOT = Path(__file__).resolve().parents[2]


def _explain(results: dict) -> str:
    return (
        f"\n{summary_text(results)}\n"
        f"error: {results.get('error')}\n"
        f"run directory (history.jsonl, results.json, plot.svg, cluster logs): {results['dir']}\n"
        f"reproduce with: {results['reproduce']}\n"
    )


@pytest.mark.cluster
def test_smoke_register_kill_partition_publish_fail(tmp_path):
    seed = int(os.environ.get("NOKV_JEPSEN_SEED", "1"))
    time_limit = float(os.environ.get("NOKV_JEPSEN_TIME_LIMIT", "30"))
    print(f"jepsen-lite smoke run: seed {seed}, {time_limit:g} s, dir {tmp_path / 'run'}")
    config = RunConfig(
        workload="register",
        nemesis=["kill", "partition", "publish-fail"],
        time_limit=time_limit,
        seed=seed,
        dir=str(tmp_path / "run"),
    )
    results = run(config, log=lambda msg: print(msg, flush=True))
    print(summary_text(results))
    assert results["valid"] is True, _explain(results)
    ops = results["ops"]
    assert ops["by_type"]["ok"] > 5 * time_limit, _explain(results)  # it did work
    faults = {iv["fault"] for iv in results["nemesis_intervals"]}
    assert {"kill", "partition", "publish-fail"} <= faults, _explain(results)
    assert all(iv["stop_s"] is not None for iv in results["nemesis_intervals"])
    for name in ("history.jsonl", "results.json", "plot.svg", "schedule.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "index.html").is_file() and "index.html" in results["files"]


def _switch_exists(name: str) -> bool:
    return any(name in p.read_text(errors="replace") for p in (ROOT / "raftstore").rglob("*.py"))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(
    "switch, nemesis",
    [("NOKV_UNSAFE_READS", ["partition", "pause"]), ("NOKV_UNSAFE_ACK", ["kill", "partition"])],
)
def test_unsafe_build_is_caught(tmp_path, switch, nemesis):
    """Detection rate of a deliberately broken build over seeds (docs/testing.md)."""
    if not _switch_exists(switch):
        pytest.skip(f"raftstore does not implement {switch} yet")
    seeds = [int(s) for s in os.environ.get("NOKV_JEPSEN_SEEDS", "1,2,3,4,5").split(",")]
    time_limit = float(os.environ.get("NOKV_JEPSEN_TIME_LIMIT", "30"))
    verdicts = {}
    for seed in seeds:
        config = RunConfig(
            workload="register", nemesis=nemesis, time_limit=time_limit, seed=seed,
            dir=str(tmp_path / f"seed-{seed}"), env={switch: "1"}, leader_share=1.0,
            keys=3, rate=60,
        )
        results = run(config, log=lambda msg: None)
        verdicts[seed] = results["valid"]
        print(f"{switch} seed {seed}: {results['valid']} ({results['reproduce']})")
    caught = sum(1 for v in verdicts.values() if v is False)
    print(f"{switch} with {','.join(nemesis)}: caught {caught}/{len(seeds)} seeds: {verdicts}")
    assert caught >= 1, f"{switch} was never caught: {verdicts}"
