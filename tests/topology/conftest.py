"""Fixtures of the topology acceptance tests: real local clusters, killed in `finally`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from topo_harness import Topo  # noqa: E402


@pytest.fixture
def topo(tmp_path):
    """A factory: `await topo(stores=3, scheduler="stuck_after=3")` starts a cluster; every cluster
    started through it is SIGKILLed when the test ends."""
    started: list[Topo] = []

    async def make(**kw) -> Topo:
        t = Topo(tmp_path / f"cluster{len(started)}", **kw)
        started.append(t)
        return await t.astart()

    try:
        yield make
    finally:
        for t in started:
            t.stop_all()


@pytest.fixture(scope="module")
def module_topo(tmp_path_factory, request):
    """One cluster shared by a module's tests; options from the module's TOPO_OPTIONS."""
    opts = getattr(request.module, "TOPO_OPTIONS", {})
    t = Topo(tmp_path_factory.mktemp("topo") / "cluster", **opts)
    try:
        yield t.start()
    finally:
        t.stop_all()
