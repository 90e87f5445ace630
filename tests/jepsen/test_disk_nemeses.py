"""Disk and power faults in real jepsen-lite runs (slow tier): each must come out valid, every
window ending in a documented outcome, and each test-only unsafe WAL switch must be caught.

    python -m pytest -q -s -m slow tests/jepsen/test_disk_nemeses.py

``NOKV_JEPSEN_SEEDS`` (default ``1,2,3``) and ``NOKV_JEPSEN_TIME_LIMIT`` (default 30) set the
seeds of the catch runs and the length of every run. A failure prints the run directory, the
summary and the command that reproduces it.
"""

from __future__ import annotations

import os

import pytest
from jepsen_lite.disk import DISK_FAULTS
from jepsen_lite.report import summary_text
from jepsen_lite.runner import RunConfig, run

TIME_LIMIT = float(os.environ.get("NOKV_JEPSEN_TIME_LIMIT", "30"))
SEEDS = [int(s) for s in os.environ.get("NOKV_JEPSEN_SEEDS", "1,2,3").split(",")]


def _explain(results: dict) -> str:
    return (f"\n{summary_text(results)}\nerror: {results.get('error')}\n"
            f"checks: {results.get('checks', {}).get('disk')}\n"
            f"run directory: {results['dir']}\nreproduce with: {results['reproduce']}\n")


def _run(tmp_path, fault: str, seed: int, env: dict[str, str] | None = None) -> dict:
    config = RunConfig(workload="register", nemesis=[fault], time_limit=TIME_LIMIT, seed=seed,
                       dir=str(tmp_path / f"{fault}-{seed}"), env=env or {})
    return run(config, log=lambda msg: print(msg, flush=True))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("fault", sorted(DISK_FAULTS))
def test_a_disk_fault_run_is_valid_and_every_window_ends_in_a_documented_outcome(
        tmp_path, fault):
    results = _run(tmp_path, fault, seed=1)
    print(summary_text(results))
    disk = results["checks"].get("disk", {})
    assert results["valid"] is True, _explain(results)
    assert disk.get("valid") is True and disk["windows"] >= 1, _explain(results)
    assert results["ops"]["by_type"]["ok"] > 2 * TIME_LIMIT, _explain(results)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("switch, fault", [
    ("NOKV_UNSAFE_WAL_SKIP_CHECKSUM", "bit-flip"),
    ("NOKV_UNSAFE_WAL_ACK_BEFORE_SYNC", "power-loss"),
])
def test_an_unsafe_wal_is_caught(tmp_path, switch, fault):
    """Detection rate of a deliberately broken WAL over seeds (docs/testing.md)."""
    verdicts = {}
    for seed in SEEDS:
        results = _run(tmp_path, fault, seed, env={switch: "1"})
        verdicts[seed] = results["valid"]
        failing = sorted(k for k, c in results["checks"].items() if c.get("valid") is not True)
        print(f"{switch} under {fault}, seed {seed}: valid={results['valid']} "
              f"(checks not valid: {failing}) dir={results['dir']}")
    caught = sum(1 for v in verdicts.values() if v is not True)
    print(f"{switch}: caught {caught}/{len(SEEDS)} seeds by {fault}")
    assert caught == len(SEEDS), verdicts
