"""Coordinator duties (DESIGN 6): AllocID / Tso served only under a live grant, monotone and
never reissued across crashes, restarts and failover; grant failover to a standby after the
holder crashes (on expiry) or stops gracefully (on seal)."""

from __future__ import annotations

import pytest
import trio
from _coord_harness import bootstrapped, open_env, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import AllocIdRequest, GetRegionByKeyRequest, TsoRequest
from nokvpy.rpc import RemoteError


async def _alloc(env, cid, count=1):
    reply = await env.call(cid, AllocIdRequest(count))
    return list(range(reply.first, reply.first + reply.count)), reply.era


async def test_alloc_ids_are_monotone_and_never_reissued_across_restarts(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True, windows={"alloc_id": 50})
        seen: list[int] = []
        for count in (1, 3, 40, 20, 1):  # crosses several 50-wide windows
            ids, era = await _alloc(env, 1, count)
            seen.extend(ids)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        diag = await env.diag(1)
        assert diag["allocators"]["alloc_id"]["extensions"] >= 1
        assert diag["allocators"]["alloc_id"]["rooted_fence"] >= seen[-1]

        # crash (no seal): the restart is a new incarnation; it takes over on expiry
        env.crash(1)
        await env.start_coordinator(1, wait_grants=True, windows={"alloc_id": 50})
        ids, era2 = await _alloc(env, 1, 5)
        assert ids[0] > seen[-1], (ids, seen[-1])
        seen.extend(ids)

        # crash again, then a different coordinator takes over after expiry
        env.crash(1)
        await env.start_coordinator(2, wait_grants=True, windows={"alloc_id": 50})
        ids, era3 = await _alloc(env, 2, 5)
        assert ids[0] > seen[-1] and era3 > era2
        seen.extend(ids)
        assert len(set(seen)) == len(seen) and seen == sorted(seen)


async def test_tso_is_monotone_and_only_the_holder_serves(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        await env.start_coordinator(2)
        last = 0
        for _ in range(20):
            reply = await env.call(1, TsoRequest(2))
            assert reply.first > last and reply.count == 2
            last = reply.first + 1
        with pytest.raises(RemoteError) as err:
            await env.call(2, TsoRequest())
        assert err.value.kind == "not_leader" and err.value.reason == "grant_not_held"
        assert err.value.details["holder"].startswith("coordinator-1#")
        diag = await env.diag(2)
        assert diag["counters"]["grant.gate_rejections"] >= 1
        assert diag["counters"]["grant.violations.primacy"] >= 1


async def test_standby_takes_over_after_the_holder_crashes(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        standby = await env.start_coordinator(2)
        before, era1 = await _alloc(env, 1, 3)
        await trio.sleep(0.5)
        assert standby.grants.held_duties() == []
        env.crash(1)
        t0 = trio.current_time()
        await wait_until(lambda: len(standby.grants.held_duties()) == 3, 10, what="takeover")
        took = trio.current_time() - t0
        assert took < 2.0 + 1.5  # within the grant TTL plus a renew interval
        ids, era2 = await _alloc(env, 2, 3)
        assert ids[0] > before[-1] and era2 > era1
        strong = await env.call(2, GetRegionByKeyRequest(b"k", Freshness.STRONG))
        assert strong.descriptor == d and strong.witness.served_by_leader
        diag = await env.diag(2)
        assert diag["grants"]["duties"]["alloc_id"]["holder"].startswith("coordinator-2#")
        assert diag["counters"]["grant.era_transitions"] >= 3

        async def inherited():  # finality: every expired predecessor ends inherited
            audit = (await env.diag(2))["audit"]
            return audit["retired_not_inherited"] == 0 and audit["expired_bound_inherited"] >= 3

        await wait_until(inherited, 5, what="expired retirements inherited")


async def test_graceful_stop_seals_grants_and_standby_takes_over_at_once(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True, grant_ttl=6.0)
        standby = await env.start_coordinator(2, grant_ttl=6.0)
        before, _ = await _alloc(env, 1, 7)
        out = await env.stop(1)
        assert all(v.startswith("sealed") for v in out.values()), out
        t0 = trio.current_time()
        await wait_until(lambda: len(standby.grants.held_duties()) == 3, 5, what="takeover")
        assert trio.current_time() - t0 < 3.0  # far sooner than the 6 s TTL
        ids, _ = await _alloc(env, 2, 1)
        assert ids[0] > before[-1]

        async def inherited():
            return (await env.diag(2))["audit"]["sealed_exact_completed"] >= 3

        await wait_until(inherited, 5, what="sealed retirements inherited")


async def test_two_processes_with_one_coordinator_id_never_share_a_grant(tmp_path):
    """A misconfigured duplicate (or a paused-and-resumed old incarnation) is another
    holder: primacy keeps it a standby, so no value is served twice."""
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True, windows={"alloc_id": 20})
        twin = await env.start_coordinator(11, node_id=1, windows={"alloc_id": 20})
        seen: list[int] = []
        for _ in range(15):
            ids, _ = await _alloc(env, 1, 3)
            seen.extend(ids)
            with pytest.raises(RemoteError) as err:
                await env.call(11, AllocIdRequest(3))
            assert err.value.reason == "grant_not_held"
        assert twin.grants.held_duties() == [] and len(set(seen)) == len(seen)
        env.crash(1)
        await wait_until(lambda: len(twin.grants.held_duties()) == 3, 10, what="twin takeover")
        ids, _ = await _alloc(env, 11, 3)
        assert ids[0] > max(seen)
