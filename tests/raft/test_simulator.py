"""Randomized whole-cluster schedules (see simulator.py for what is injected and checked).

- default: 200 schedules (hypothesis-chosen seeds, derandomized so CI is reproducible, plus a
  few pinned seeds); the injected fault counts are asserted and reported in the summary;
- replay one schedule: NOKV_SIM_SEED=1234 python -m pytest tests/raft/test_simulator.py
- long mode: NOKV_SIM_SCHEDULES=5000 python -m pytest tests/raft/test_simulator.py -m slow
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .simulator import SimStats, run_seed

PINNED_SEEDS = [0, 1, 2, 3, 42, 66, 1234, 99991]
DEFAULT_SCHEDULES = 200
REPLAY = os.environ.get("NOKV_SIM_SEED")

_batch = SimStats()


def _run(seed: int) -> None:
    _batch.add(run_seed(seed))


@pytest.mark.skipif(REPLAY is None, reason="set NOKV_SIM_SEED to replay one schedule")
def test_replay_seed():
    _run(int(REPLAY))


@pytest.mark.parametrize("seed", PINNED_SEEDS)
def test_pinned_seeds(seed):
    _run(seed)


@settings(
    max_examples=DEFAULT_SCHEDULES - len(PINNED_SEEDS),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_randomized_schedules(seed):
    _run(seed)


def test_faults_were_injected():
    """The schedules above must actually have exercised the faults they claim to."""
    s = _batch
    if s.schedules < DEFAULT_SCHEDULES:
        pytest.skip("run together with the schedule tests")
    assert s.partitions > 0 and s.crashes > 0 and s.restarts > 0
    assert s.conf_changes > 0 and s.transfers > 0 and s.snapshots_installed > 0
    assert s.reads_checked > 0 and s.duplicated > 0 and s.dropped > 0 and s.elections > 0
    assert s.lease_schedules > 0 and s.lazy_commit_schedules > 0
    print(f"\nsimulator: {s.summary()}")


@pytest.mark.slow
def test_long_randomized_run():
    n = int(os.environ.get("NOKV_SIM_SCHEDULES", "5000"))
    rng = random.Random(int(os.environ.get("NOKV_SIM_BASE_SEED", "20240601")))
    for _ in range(n):
        _run(rng.getrandbits(32))
