"""Fixtures of the `nokv` command tests: one real local cluster for the whole session.

The cluster is started with `nokv cluster up` in a temporary directory and always stopped with
`nokv cluster down` in a finalizer, which then kills (SIGKILL) any pid of that directory still
alive. Tests marked `cli_last(N)` (the ones that stop or reshape the shared cluster) run after
every other test of the session, in the order of N.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_harness import Cluster, kill_leftovers, nokv, start_cluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    """One local cluster (1 metaroot, 1 coordinator, 3 stores) for every CLI test."""
    directory = tmp_path_factory.mktemp("nokv-cli") / "cluster"
    try:
        yield Cluster(directory, start_cluster(directory))
    finally:
        pids = Cluster(directory, None).pids()
        try:
            nokv("cluster", "down", "--dir", directory, timeout=60)
        except (subprocess.TimeoutExpired, AssertionError):
            pass
        kill_leftovers(directory, pids)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cli_last(N)` reshape or stop the shared cluster: run them last, by N."""
    def order(item) -> int:
        marker = item.get_closest_marker("cli_last")
        return marker.args[0] if marker and marker.args else 0

    last = sorted((i for i in items if i.get_closest_marker("cli_last")), key=order)
    if last:
        items[:] = [i for i in items if not i.get_closest_marker("cli_last")] + last


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cli_last(order): run after every other test (reshapes or stops the shared cluster)")
