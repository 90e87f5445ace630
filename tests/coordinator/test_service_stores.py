"""Coordinator heartbeats (DESIGN 5, 7): membership checks, liveness by TTL, region leaders,
stale-epoch refusal, should_host / tombstoned answers, drift kinds, scheduler readiness and
the diagnostics body."""

from __future__ import annotations

import pytest
import trio
from _coord_harness import bootstrapped, leader_report, open_env, plan_split, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    AssessRootEventRequest,
    GetRegionByKeyRequest,
    ListStoresRequest,
    ListTransitionsRequest,
    PublishRootEventRequest,
    RegionHeartbeat,
    StoreJoinRequest,
)
from nokvpy.protocol.enums import EventKind, StoreState
from nokvpy.protocol.records import RegionEpoch
from nokvpy.rpc import RemoteError


async def test_heartbeats_refuse_unknown_stores_and_stale_epochs(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        ids, d = await bootstrapped(env)
        with pytest.raises(RemoteError) as err:
            await env.heartbeat(1, 4242, [])
        assert err.value.reason == "unknown_store"

        # root moves the region to epoch v2 (a committed split); a store still at v1 is stale
        split = await plan_split(env, d, b"m", EventKind.SPLIT_COMMITTED)
        await env.call(1, PublishRootEventRequest(split))
        left = split.payload.left
        stale = await env.heartbeat(1, ids[0], [leader_report(d, ids[0])])
        assert stale.accepted and stale.stale_region_ids == (d.region_id,)
        diag = await env.diag(1)
        assert diag["counters"]["store.stale_heartbeats"] == 1
        kinds = {(x["kind"], x["store_id"]) for x in diag["drift"]}
        assert ("stale_heartbeat", ids[0]) in kinds and ("store_behind_root", ids[0]) in kinds
        # the refused report did not make store ids[0] the leader
        route = await env.call(1, GetRegionByKeyRequest(b"a", Freshness.BOUNDED))
        assert route.descriptor.region_id == left.region_id and route.leader_store_id == 0
        # ... and it is told to host the right child it did not report
        assert split.payload.right.region_id in {x.region_id for x in stale.should_host}

        fresh = await env.heartbeat(1, ids[0], [leader_report(left, ids[0])])
        assert fresh.stale_region_ids == ()
        route = await env.call(1, GetRegionByKeyRequest(b"a", Freshness.BOUNDED))
        assert route.leader_store_id == ids[0]
        assert set(fresh.store_addrs) == set(ids)


async def test_should_host_tombstoned_liveness_and_drift(tmp_path):
    async with open_env(tmp_path) as env:
        svc = await env.start_coordinator(1, wait_grants=True, store_ttl=0.6)
        ids, d = await bootstrapped(env)
        diag = await env.diag(1)
        assert diag["scheduler_ready"] is False
        # store 0 hosts the region and an unknown one; store 1 reports nothing. The unknown
        # one is kept (data and all) until it was reported so for the grace period over 3
        # heartbeats and its removal is recorded in root; only then is it tombstoned
        svc.stores.orphan_grace = 0.3
        unknown = RegionHeartbeat(999, RegionEpoch(1, 1), 77, True, 0, 3)
        a = await env.heartbeat(1, ids[0], [leader_report(d, ids[0]), unknown])
        assert a.tombstoned == [] and a.should_host == []
        for _ in range(2):
            a = await env.heartbeat(1, ids[0], [leader_report(d, ids[0]), unknown])
            assert a.tombstoned == []
        await trio.sleep(0.3)  # the grace period itself (nothing else to wait for)

        async def removed():
            out = await env.heartbeat(1, ids[0], [leader_report(d, ids[0]), unknown])
            return out if out.tombstoned == [999] else None

        a = await wait_until(removed, 10, what="the orphan's removal to be recorded")
        assert a.should_host == []
        records = [r for r in (await env.call(1, ListTransitionsRequest(include_history=True))
                               ).recovery_records or []
                   if r.action == "orphan_region_removed"]
        assert [r.transition_id for r in records] == [f"orphan:999:store-{ids[0]}"]
        b = await env.heartbeat(1, ids[1], [])
        assert [x.region_id for x in b.should_host] == [d.region_id]
        # store 2 reports a newer epoch than root: store ahead of root (drift, still recorded)
        ahead = RegionEpoch(d.epoch.version + 1, d.epoch.conf_ver)
        c = await env.heartbeat(1, ids[2], [leader_report(d, ids[2], False, ahead)])
        assert c.stale_region_ids == () and c.tombstoned == []
        diag = await env.diag(1)
        kinds = {(x["kind"], x["store_id"], x["region_id"]) for x in diag["drift"]}
        assert ("orphan_peer", ids[0], 999) in kinds
        assert ("missing_peer", ids[1], d.region_id) in kinds
        assert ("store_ahead_of_root", ids[2], d.region_id) in kinds
        assert diag["scheduler_ready"] is True  # the only region reported again
        # assessing a transition on the region reports the same divergences
        assessed = await env.call(1, AssessRootEventRequest(await plan_split(env, d, b"m")))
        touched = {(x["kind"], x["store_id"]) for x in assessed.drift}
        assert {("missing_peer", ids[1]), ("store_ahead_of_root", ids[2])} <= touched
        states = {s.store_id: s.state for s in (await env.call(1, ListStoresRequest())).stores}
        assert states == dict.fromkeys(ids, StoreState.UP)
        route = await env.call(1, GetRegionByKeyRequest(b"", Freshness.BOUNDED))
        assert route.leader_store_id == ids[0]

        async def down():
            stores = (await env.call(1, ListStoresRequest())).stores
            return all(s.state == StoreState.DOWN for s in stores)

        await wait_until(down, 5, what="stores DOWN")
        route = await env.call(1, GetRegionByKeyRequest(b"", Freshness.BOUNDED))
        assert route.leader_store_id == 0  # a DOWN store's claim is not handed out


async def test_rejoin_changes_address_and_retired_check(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        ids, _ = await bootstrapped(env)
        moved = await env.call(1, StoreJoinRequest(ids[0], "127.0.0.1:40001"))
        assert moved.store_id == ids[0]
        stores = {s.store_id: s.address for s in (await env.call(1, ListStoresRequest())).stores}
        assert stores[ids[0]] == "127.0.0.1:40001"
        with pytest.raises(RemoteError) as err:
            await env.call(1, StoreJoinRequest(0, "no-port"))
        assert err.value.reason == "invalid_address"


async def test_diagnostics_body_is_plain_data_with_the_documented_keys(tmp_path):
    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        await bootstrapped(env)
        body = await env.diag(1)
        for key in ("coordinator_id", "served_token", "current_token", "root_lag",
                    "catch_up_state", "degraded_mode", "catch_up_steps", "grants_held", "grants",
                    "counters", "strong_confirmations", "drift", "allocators",
                    "scheduler_ready", "store_count", "region_count"):
            assert key in body, key
        assert body["degraded_mode"] == "HEALTHY" and body["catch_up_state"] == "FRESH"
        for duty in ("alloc_id", "tso", "region_lookup"):
            g = body["grants"]["duties"][duty]
            assert g["holder"] == body["holder_id"] and g["serving_state"] == "serving"
            assert g["era"] > 0 and g["expires_in_ms"] > 0
        for v in ("primacy", "inheritance", "silence", "finality"):
            assert f"grant.violations.{v}" in body["counters"]

        def plain(x):
            if isinstance(x, dict):
                return all(type(k) is str and plain(v) for k, v in x.items())
            if isinstance(x, list):
                return all(plain(v) for v in x)
            return type(x) in (int, str, bool) or x is None

        assert plain(body)
        assert body["region_count"] == 1 and body["store_count"] == 3


async def test_failpoint_admin_reaches_the_coordinator(tmp_path):
    from nokvpy.protocol.admin import FailpointClearRequest, FailpointSetRequest

    async with open_env(tmp_path) as env:
        await env.start_coordinator(1, wait_grants=True)
        try:
            await env.call(1, FailpointSetRequest("coordinator.before_root_append", "1*raise"))
            with pytest.raises(RemoteError):
                await env.call(1, StoreJoinRequest(0, "127.0.0.1:30500"))
            again = await env.call(1, StoreJoinRequest(0, "127.0.0.1:30500"))
            assert again.store_id > 0
        finally:
            await env.call(1, FailpointClearRequest(""))
