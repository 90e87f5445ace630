"""RetireStore on a real coordinator and metaroot (in process; stores are simulated by joins
and heartbeats): the refusals (unknown store, too few live stores left; only the admin role may ask),
the drain record, idempotent progress, STORE_RETIRED once nothing is left, and a retired
store refused at its heartbeat and at a rejoin."""

from __future__ import annotations

import pytest
from _coord_harness import CLUSTER, bootstrapped, open_env, wait_until

from coordinator.scheduler import DRAIN_ACTION, drain_record_id, draining_store_ids
from nokvpy.protocol import roles
from nokvpy.protocol.coordinator_rpc import (
    ListStoresRequest,
    RegionHeartbeat,
    RetireStoreReply,
    RetireStoreRequest,
    StoreJoinRequest,
)
from nokvpy.protocol.enums import StoreState
from nokvpy.protocol.records import RegionEpoch
from nokvpy.rpc import Identity, RemoteError, RpcClient


def test_only_operators_may_retire_a_store():
    assert roles.allowed_roles("coordinator", "RetireStoreRequest") == frozenset({roles.ADMIN})


async def test_retire_store_refusals_progress_and_retirement(tmp_path):
    admin = RpcClient(Identity(CLUSTER, "admin", 0))
    try:
        async with open_env(tmp_path) as env:
            svc = await env.start_coordinator(1, wait_grants=True)
            ids, d = await bootstrapped(env)

            async def retire(sid: int) -> RetireStoreReply:
                return await admin.call(env.addrs[1], RetireStoreRequest(sid), timeout=10.0)

            with pytest.raises(RemoteError) as err:
                await retire(4242)
            assert (err.value.kind, err.value.reason) == ("not_found", "unknown_store")
            with pytest.raises(RemoteError) as err:
                await retire(0)
            assert err.value.reason == "invalid_store_id"
            with pytest.raises(RemoteError) as err:  # 3 stores, replication 3
                await retire(ids[0])
            assert err.value.reason == "not_enough_stores"
            assert "leave 2 live store(s)" in err.value.message
            assert "replication of 3" in err.value.message
            assert draining_store_ids(svc.sub.state) == set()  # nothing was rooted

            # a fourth store that holds no replica is retired at once
            (fourth,) = await env.join_stores(1, 1, base_port=31000)
            reply = await retire(fourth)
            assert (reply.state, reply.replicas_left) == ("retired", 0)
            assert reply.retired_index > 0
            again = await retire(fourth)  # idempotent
            assert (again.state, again.retired_index) == ("retired", reply.retired_index)
            with pytest.raises(RemoteError) as err:
                await env.heartbeat(1, fourth, [])
            assert err.value.reason == "store_retired"
            with pytest.raises(RemoteError) as err:
                await env.call(1, StoreJoinRequest(fourth, "127.0.0.1:31000"))
            assert err.value.reason == "store_retired"
            stores = {s.store_id: s for s in (await env.call(1, ListStoresRequest())).stores}
            assert stores[fourth].state == StoreState.RETIRED

            # a retired store counts for nothing: 3 live stores again, retiring one is refused
            with pytest.raises(RemoteError) as err:
                await retire(ids[0])
            assert err.value.reason == "not_enough_stores"

            # with a fifth store, a store holding a replica drains (the record is rooted once)
            (fifth,) = await env.join_stores(1, 1, base_port=32000)
            reply = await retire(ids[0])
            assert (reply.state, reply.replicas_left, reply.region_ids) == \
                ("draining", 1, (d.region_id,))
            assert draining_store_ids(svc.sub.state) == {ids[0]}
            again = await retire(ids[0])
            assert (again.state, again.replicas_left) == ("draining", 1)
            entries = svc.sub.state.recovery_index.get(drain_record_id(ids[0]), ())
            assert [a for a, _ in entries] == [DRAIN_ACTION]
            # another retirement now would leave 2 stores (one is draining): refused
            with pytest.raises(RemoteError) as err:
                await retire(ids[1])
            assert err.value.reason == "not_enough_stores"
            assert "draining" in err.value.message
            diag = await env.diag(1)
            assert diag["scheduler"]["draining_stores"] == [ids[0]]
            assert fifth not in diag["scheduler"]["draining_stores"]
    finally:
        await admin.aclose()


async def test_a_store_still_reporting_replicas_is_retired_once_it_reports_none(tmp_path):
    """No replica in the catalog but the UP store still reports one (not dropped yet): the
    store stays draining; once it reports none, the region_lookup holder's drift scan roots
    STORE_RETIRED without another call."""
    admin = RpcClient(Identity(CLUSTER, "admin", 0))
    try:
        async with open_env(tmp_path) as env:
            svc = await env.start_coordinator(1, wait_grants=True)
            ids, d = await bootstrapped(env)
            (extra,) = await env.join_stores(1, 1, base_port=31000)
            await env.heartbeat(1, extra, [RegionHeartbeat(999, RegionEpoch(1, 1), 7, False,
                                                           0, 1)], "127.0.0.1:31000")
            reply = await admin.call(env.addrs[1], RetireStoreRequest(extra), timeout=10.0)
            assert (reply.state, reply.replicas_left) == ("draining", 0)
            assert "still reports 1 replica(s)" in reply.detail
            await env.heartbeat(1, extra, [], "127.0.0.1:31000")
            await wait_until(lambda: (svc.sub.state.store(extra).retired or None), 10,
                             what="STORE_RETIRED from the drift scan")
            assert svc.counters["stores_retired"] == 1
    finally:
        await admin.aclose()


async def test_draining_survives_a_coordinator_restart(tmp_path):
    admin = RpcClient(Identity(CLUSTER, "admin", 0))
    try:
        async with open_env(tmp_path) as env:
            await env.start_coordinator(1, wait_grants=True)
            ids, d = await bootstrapped(env)
            await env.join_stores(1, 1, base_port=31000)
            reply = await admin.call(env.addrs[1], RetireStoreRequest(ids[0]), timeout=10.0)
            assert reply.state == "draining"
            env.crash(1)
            svc = await env.start_coordinator(2, wait_grants=True)
            await wait_until(lambda: draining_store_ids(svc.sub.state) == {ids[0]}, 10,
                             what="the drain record in the new coordinator's view")
            again = await admin.call(env.addrs[2], RetireStoreRequest(ids[0]), timeout=10.0)
            assert (again.state, again.replicas_left) == ("draining", 1)
            entries = svc.sub.state.recovery_index.get(drain_record_id(ids[0]), ())
            assert len(entries) == 1
    finally:
        await admin.aclose()
