"""Coordinator service, route reads (DESIGN 4.3-4.5): join + bootstrap, GetRegionByKey and
ScanRegions at every freshness with the witness, lag rejection, STRONG only by the grant
holder, and confirmation batching. Real metaroot + coordinators over loopback, real LMDB."""

from __future__ import annotations

import pytest
import trio
from _coord_harness import bootstrapped, leader_report, open_env, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    GetRegionByKeyRequest,
    ListStoresRequest,
    PauseCatchUpRequest,
    ScanRegionsRequest,
    StoreJoinRequest,
)
from nokvpy.protocol.enums import (
    CatchUpState,
    DegradedMode,
    EventKind,
    ServingClass,
    StoreState,
    SyncHealth,
)
from nokvpy.protocol.metaroot_rpc import AppendRequest
from nokvpy.protocol.records import RecoveryRecord, RegionEpoch, RootEvent
from nokvpy.rpc import RemoteError


async def test_join_and_bootstrap_creates_exactly_one_region(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        ids, d = await bootstrapped(env, stores=3)
        assert len(set(ids)) == 3 and all(i > 0 for i in ids)
        assert (d.start_key, d.end_key, d.epoch) == (b"", b"", RegionEpoch(1, 1))
        assert sorted(p.store_id for p in d.peers) == sorted(ids)
        assert len({p.peer_id for p in d.peers} | {d.region_id} | set(ids)) == 7  # all distinct
        # a fourth store and a re-join change nothing about regions
        more = await env.call(1, StoreJoinRequest(0, "127.0.0.1:31999"))
        again = await env.call(1, StoreJoinRequest(ids[0], "127.0.0.1:30000"))
        assert again.store_id == ids[0] and more.store_id not in ids
        await trio.sleep(1.0)  # bootstrap loop runs every 0.5 s
        diag = await env.diag(1)
        assert diag["region_count"] == 1 and diag["store_count"] == 4
        assert diag["bootstrap_state"].startswith("done")
        stores = (await env.call(1, ListStoresRequest())).stores
        assert [s.state for s in stores] == [StoreState.UNKNOWN] * 4  # no heartbeats yet


async def test_route_reads_at_each_freshness_carry_a_witness(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        ids, d = await bootstrapped(env)
        for sid in ids:
            await env.heartbeat(1, sid, [leader_report(d, sid, leader=(sid == ids[1]))])

        bounded = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
        w = bounded.witness
        assert bounded.descriptor == d and bounded.leader_store_id == ids[1]
        assert set(bounded.store_addrs) == set(ids)
        assert w.served_freshness == Freshness.BOUNDED and w.root_lag == 0
        assert w.catch_up_state == CatchUpState.FRESH and w.degraded_mode == DegradedMode.HEALTHY
        assert w.serving_class == ServingClass.AUTHORITATIVE and w.sync_health == SyncHealth.HEALTHY
        assert w.served_root_token == w.current_root_token and w.descriptor_revision == d.revision
        assert w.served_by_leader and w.coordinator_id == 1

        strong = await env.call(1, GetRegionByKeyRequest(b"zz", Freshness.STRONG))
        assert strong.descriptor == d
        assert strong.witness.served_freshness == Freshness.STRONG
        assert strong.witness.serving_class == ServingClass.AUTHORITATIVE

        best = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BEST_EFFORT))
        assert best.descriptor == d and best.witness.served_freshness == Freshness.BEST_EFFORT

        # the witness pins a token: asking for a future token is refused, not downgraded
        future = w.served_root_token.__class__(0, w.served_root_token.index + 100)
        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, future))
        assert err.value.kind == "rejected" and err.value.reason == "required_root_token"
        assert err.value.details["witness"].served_root_token == w.served_root_token
        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, None,
                                                    d.revision + 1))
        assert err.value.reason == "required_descriptor"

        scan = await env.call(1, ScanRegionsRequest(b"", b"", 10, Freshness.STRONG))
        assert scan.descriptors == [d] and scan.leaders == {d.region_id: ids[1]}
        assert scan.witness.served_freshness == Freshness.STRONG
        stores = (await env.call(1, ListStoresRequest())).stores
        assert {s.store_id: s.state for s in stores} == dict.fromkeys(ids, StoreState.UP)


async def test_bounded_rejected_with_root_lag_exceeded_while_catch_up_paused(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        paused = (await env.call(1, PauseCatchUpRequest(True))).body
        assert paused["paused"] is True
        before = paused["served_token"]["index"]
        for i in range(3):
            await env.meta.call(AppendRequest([RootEvent(
                EventKind.RECOVERY_RECORDED, RecoveryRecord(f"t{i}", "noted", "test"))]))
        diag = await wait_until(lambda: _lag_at_least(env, 3), 5, what="lag")
        assert diag["served_token"]["index"] == before
        assert diag["degraded_mode"] == "ROOT_LAGGING" and diag["catch_up_state"] == "LAGGING"

        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
        assert err.value.kind == "rejected" and err.value.reason == "root_lag_exceeded"
        w = err.value.details["witness"]
        assert w.root_lag >= 3 and w.served_freshness == Freshness.BOUNDED
        assert w.current_root_token.index - w.served_root_token.index == w.root_lag
        # a looser bound is still served, labelled stale
        loose = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 10))
        assert loose.witness.serving_class == ServingClass.BOUNDED_STALE
        assert loose.witness.degraded_mode == DegradedMode.ROOT_LAGGING
        # BEST_EFFORT is served and labelled; STRONG is refused (no silent downgrade)
        best = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BEST_EFFORT))
        assert best.descriptor == d and best.witness.root_lag >= 3
        assert best.witness.serving_class == ServingClass.BOUNDED_STALE
        assert best.witness.sync_health == SyncHealth.LAGGING
        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"k", Freshness.STRONG))
        assert err.value.reason == "root_lag_exceeded"

        await env.call(1, PauseCatchUpRequest(False))
        await wait_until(lambda: _lag_is(env, 0), 5, what="caught up")
        fresh = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
        assert fresh.witness.root_lag == 0
        assert fresh.witness.served_root_token.index >= before + 3
        steps = (await env.diag(1))["catch_up_steps"]
        assert any(s["action"] == "ADVANCE" for s in steps)


async def _lag_at_least(env, n):
    diag = await env.diag(1)
    return diag if diag["root_lag"] >= n else None


async def _state_is(env, state):
    diag = await env.diag(1)
    return diag if diag["catch_up_state"] == state else None


async def _lag_is(env, n):
    diag = await env.diag(1)
    return diag if diag["root_lag"] == n and diag["catch_up_state"] == "FRESH" else None


async def test_strong_is_served_only_by_the_region_lookup_grant_holder(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        await env.start_coordinator(2)
        await wait_until(lambda: _served_at(env, 2, d), 5, what="standby catalog")
        with pytest.raises(RemoteError) as err:
            await env.call(2, GetRegionByKeyRequest(b"k", Freshness.STRONG))
        assert err.value.kind == "rejected" and err.value.reason == "not_grant_holder"
        assert err.value.details["try_another_coordinator"] is True
        assert err.value.details["witness"].served_by_leader is False
        bounded = await env.call(2, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
        assert bounded.descriptor == d and not bounded.witness.served_by_leader
        diag2 = await env.diag(2)
        assert diag2["grants_held"] == []
        assert diag2["grants"]["duties"]["region_lookup"]["holder"].startswith("coordinator-1#")
        # a standby reports the mode its view is in, and that it is a standby: never a
        # degraded mode it is not in (clients tell it from a sick coordinator)
        assert sorted(diag2["standby_for"]) == ["alloc_id", "region_lookup", "tso"]
        healthy = await wait_until(lambda: _mode_is(env, 2, "HEALTHY"), 5, what="HEALTHY")
        assert healthy["degraded_mode"] == "HEALTHY"
        assert bounded.witness.degraded_mode != DegradedMode.COORDINATOR_DEGRADED
        strong = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.STRONG))
        assert strong.witness.served_by_leader
        assert sorted((await env.diag(1))["grants_held"]) == ["alloc_id", "region_lookup", "tso"]


async def _mode_is(env, cid, mode):
    diag = await env.diag(cid)
    return diag if diag["degraded_mode"] == mode else None


async def _served_at(env, cid, d):
    reply = await env.call(cid, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
    return reply.descriptor == d


async def test_concurrent_strong_reads_share_confirmation_rounds(tmp_path):
    async with open_env(tmp_path) as env:
        svc = await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        rounds_before = svc.confirmer.rounds
        results = []

        async def one():
            reply = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.STRONG))
            results.append(reply)

        async with trio.open_nursery() as n:
            for _ in range(60):
                n.start_soon(one)
        assert len(results) == 60 and all(r.descriptor == d for r in results)
        rounds = svc.confirmer.rounds - rounds_before
        assert 1 <= rounds < 30, rounds
        stats = (await env.diag(1))["strong_confirmations"]
        assert stats["max_batch"] >= 2


async def _append_noise(env, n):
    for i in range(n):
        await env.meta.call(AppendRequest([RootEvent(
            EventKind.RECOVERY_RECORDED, RecoveryRecord(f"n{i}", "noted", "test"))]))


async def test_catch_up_installs_a_checkpoint_when_behind_the_retained_tail(tmp_path):
    async with open_env(tmp_path, retained_tail=4) as env:
        await env.start_coordinator(1, wait_grants=True)
        _, d = await bootstrapped(env)
        await env.call(1, PauseCatchUpRequest(True))
        await _append_noise(env, 30)  # metaroot compacts: the tail keeps the last few only
        # behind the retained tail while paused: BOOTSTRAP_REQUIRED (not LAGGING), VIEW_ONLY
        behind = await wait_until(lambda: _state_is(env, "BOOTSTRAP_REQUIRED"), 5,
                                  what="bootstrap required while paused")
        assert behind["degraded_mode"] == "VIEW_ONLY"
        await env.call(1, PauseCatchUpRequest(False))
        diag = await wait_until(lambda: _lag_is(env, 0), 10, what="caught up from checkpoint")
        assert any(s["action"] == "BOOTSTRAP" for s in diag["catch_up_steps"])
        assert diag["counters"]["root.checkpoint_installs"] >= 1
        assert diag["region_count"] == 1
        # a brand-new coordinator starts from a checkpoint too, and its mirror is complete
        svc2 = await env.start_coordinator(2)
        await wait_until(lambda: _served_at(env, 2, d), 10, what="second coordinator")
        assert svc2.sub.state.descriptor(d.region_id).same_truth(d)
        assert (await env.diag(2))["counters"]["root.checkpoint_installs"] >= 1


async def test_unreachable_root_turns_into_root_unavailable_and_recovers(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True, staleness_window=1.0)
        _, d = await bootstrapped(env)
        env.stop_metaroot()
        diag = await wait_until(lambda: _mode(env, "VIEW_ONLY"), 5, what="view only")
        assert diag["heard_within_window"] is False
        with pytest.raises(RemoteError) as err:
            await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED))
        assert err.value.reason == "root_unavailable"
        assert err.value.details["witness"].sync_health == SyncHealth.ROOT_UNAVAILABLE
        best = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BEST_EFFORT))
        assert best.descriptor == d
        assert best.witness.serving_class == ServingClass.DEGRADED
        assert best.witness.degraded_mode == DegradedMode.VIEW_ONLY
        await env.start_metaroot()  # same data directory and address
        await wait_until(lambda: _lag_is(env, 0), 10, what="recovered")
        reply = await env.call(1, GetRegionByKeyRequest(b"k", Freshness.BOUNDED, None, 0))
        assert reply.witness.serving_class == ServingClass.AUTHORITATIVE


async def _mode(env, mode):
    diag = await env.diag(1)
    return diag if diag["degraded_mode"] == mode else None
