"""With every metaroot peer down, a client that has no cached route still reads and writes
(issue 22 item 7): the coordinator refuses BOUNDED routes as root_unavailable, and the client
routes by its BEST_EFFORT catalog instead, counting it (`stats["best_effort_routes"]`); the
store's epoch check is what keeps a stale route from being used. Real processes on loopback,
killed by pid in `finally` (the topo fixture); files under tmp_path."""

from __future__ import annotations

import pytest
from topo_harness import wait_until

from nokvpy.client.errors import RouteRejectedError
from nokvpy.protocol import Freshness

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # 7 s; python -m pytest -m slow


async def test_a_client_routes_best_effort_while_metaroot_is_down(topo):
    c = await topo(stores=3)
    data = {b"rd/%02d" % i: b"v%d" % i for i in range(10)}
    async with c.client(timeout=20) as client:
        for k, v in data.items():
            await client.put(k, v)
        for proc in c.spec.of_kind("metaroot"):
            c.kill(proc.name)

        async def bounded_refused():
            try:
                await client.route(b"rd/", Freshness.BOUNDED)
            except RouteRejectedError as exc:
                return exc.reason == "root_unavailable"
            return False

        await wait_until(bounded_refused, 30, 0.25, "BOUNDED routes refused as root_unavailable")
    async with c.client(timeout=20) as fresh:  # nothing cached
        assert await fresh.get(b"rd/03") == b"v3"
        await fresh.put(b"rd/new", b"n")
        assert await fresh.get(b"rd/new") == b"n"
        for k, v in data.items():
            assert await fresh.get(k) == v
        assert fresh.stats["best_effort_routes"] >= 1
