"""A coordinator over a 3-peer metaroot group (DESIGN 1, 4.2): it follows the leader for
writes, grants and confirmations, re-subscribes when the peer it watches dies, and keeps
serving (alloc stays monotone) after the metaroot leader is stopped."""

from __future__ import annotations

from _coord_harness import bootstrapped, open_env, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import AllocIdRequest, GetRegionByKeyRequest
from nokvpy.protocol.metaroot_rpc import MetarootStatusRequest


async def _leader(env) -> int:
    for nid, addr in env.group_peers.items():
        if nid in env.group_scopes and not env.group_scopes[nid].cancel_called:
            try:
                st = await env.rpc.call(addr, MetarootStatusRequest(), timeout=1.0)
            except Exception:  # noqa: BLE001 - peer down
                continue
            if st.is_leader:
                return nid
    return 0


async def test_coordinator_survives_the_metaroot_leader_stopping(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_metaroot_group(3)
        first = await wait_until(lambda: _leader(env), 15, what="metaroot leader")
        svc = await env.start_coordinator(1, wait_grants=True, grant_ttl=3.0,
                                          staleness_window=2.0)
        _, d = await bootstrapped(env)
        before = await env.call(1, AllocIdRequest(5))
        env.stop_group_peer(first)
        second = await wait_until(lambda: _leader(env), 15, what="new metaroot leader")
        assert second != first

        async def strong_ok():
            reply = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.STRONG))
            return reply.descriptor == d

        await wait_until(strong_ok, 15, what="STRONG after failover")
        after = await env.call(1, AllocIdRequest(5))
        assert after.first > before.first + 4
        diag = await env.diag(1)
        assert diag["catch_up_state"] == "FRESH" and sorted(diag["grants_held"]) == [
            "alloc_id", "region_lookup", "tso"]
        assert svc.sub.connected_to != env.group_peers[first]
