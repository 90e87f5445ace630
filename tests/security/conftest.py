"""Fixtures of the security tests: a real local cluster (metaroot, coordinator, three stores
on loopback; every process SIGKILLed by pid when the test ends, files under tmp_path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "topology"))

from topo_harness import Topo  # noqa: E402


@pytest.fixture
async def local_cluster(tmp_path):
    c = Topo(tmp_path / "cluster", stores=3)
    try:
        yield await c.astart()
    finally:
        c.stop_all()
