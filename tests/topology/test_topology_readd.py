"""Re-adding a removed replica on the same store (issue 15, items 1 and 2): real processes
(metaroot, coordinator, three stores on loopback ports), every one killed by pid in
`finally`, files only under tmp_path.

A store that once hosted a replica of a region keeps a tombstone for it; a later replica of
the same region on that store has a new peer id, which the tombstone must not block (TiKV:
a tombstone blocks its own peer id and older ones). An addition is done only when the new
replica has applied its region on its store, as that store reports it (never on a guess of
the leader's progress).

The test removes a replica and adds it back on the same store, round after round (every
store in turn, the leader's included), writing between rounds, and requires after each
round that the store hosts the catalog's peer id, initialized; and at the end that every
region serves with 3 voters on 3 live stores, each store hosts exactly the catalog's peers,
every acknowledged key reads back, and the cluster still serves with any one store killed.

A removal of a replica whose store is paused (SIGSTOP) or killed completes from the two
survivors, whether that store held the follower or the leader; once back, that store destroys
its peer (tombstoned at its peer id) from the region's newer epoch, and the same store can
then be added back.
"""

from __future__ import annotations

import signal
import time

import pytest
import trio
from recovery_helpers import put_keys
from topo_harness import Topo, wait_until
from topology_checks import admin, check_whole, diagnose, lacks, region_of, settled

from nokvpy.protocol.coordinator_rpc import ListTransitionsRequest
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RpcTimeoutError

pytestmark = pytest.mark.cluster

ROUNDS = 6  # every store removed and re-added twice


@pytest.mark.slow  # ~13 s; the re-add cases below keep one in the default run
async def test_remove_and_readd_the_same_store_repeatedly(topo):
    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = await put_keys(client, b"ra/0", 10)
        rid = (await region_of(c, client, b"ra/")).region_id
        await settled(c, client, rid)
        started = time.monotonic()
        for rnd in range(ROUNDS):
            victim = 3 - rnd % 3  # stores 3, 2, 1, 3, 2, 1
            before = await settled(c, client, rid)
            old = before.peer_on(victim).peer_id
            removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=victim,
                                                          wait=True))
            assert removed.outcome == "APPLIED", (rnd, removed)
            await wait_until(lambda v=victim: lacks(c, client, rid, v), 30, 0.2,
                             f"store {victim} to leave region {rid} in the catalog")
            data.update(await put_keys(client, b"ra/%d" % (rnd + 1), 10))
            sent = await snapshots_sent(c, client)
            added = await admin(c, client, AdminRequest("add_peer", rid, store_id=victim,
                                                        wait=True))
            assert added.outcome == "APPLIED", (rnd, added, await diagnose(c, client, rid))
            # built from a snapshot, never by replaying membership changes made before it
            # existed onto today's descriptor (replay_floor)
            assert await snapshots_sent(c, client) > sent, rnd
            after = await settled(c, client, rid)
            new = after.peer_on(victim).peer_id
            assert new > old, (rnd, old, new)
        elapsed = time.monotonic() - started
        await check_whole(c, client, data)
    print(f"{ROUNDS} remove/add rounds in {elapsed:.1f}s")


@pytest.mark.parametrize("case", [
    "caller_gives_up",
    pytest.param("publish_reply_lost", marks=pytest.mark.slow),  # the default run keeps one
])
async def test_an_addition_goes_on_once_its_plan_is_rooted(topo, case):
    """The coordinator roots the plan of an add_peer, then answers late.

    - caller_gives_up: the admin caller's deadline passes before the answer.
    - publish_reply_lost: the store's own publish call times out (its 2 s link timeout)
      before the answer, an outcome unknown, not a refusal.

    The plan is in root and its target shown in the catalog: the executor must go on with
    it. Before, the request's cancellation (or the timeout taken as "nothing planned") left
    the plan pending with no one executing it until the scheduler called it stuck and
    compensated 15 s later, and the replica was never added."""
    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = await put_keys(client, b"gu/0", 10)
        rid = (await region_of(c, client, b"gu/")).region_id
        await settled(c, client, rid)
        removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=3,
                                                      wait=True))
        assert removed.outcome == "APPLIED", removed
        await wait_until(lambda: lacks(c, client, rid, 3), 30, 0.2,
                         f"store 3 to leave region {rid} in the catalog")
        hold_ms, deadline = (1500, 0.5) if case == "caller_gives_up" else (3000, 30.0)
        await c.failpoint(client, "coordinator-1", "coordinator.after_root_append",
                          f"1*sleep({hold_ms})")
        leader = await c.leader_store(client, b"gu/")
        req = AdminRequest("add_peer", rid, store_id=3, wait=True)
        if case == "caller_gives_up":
            with pytest.raises((RpcTimeoutError, trio.TooSlowError)):
                await c.admin(client, req, leader, timeout=deadline)
        else:
            reply = await c.admin(client, req, leader, timeout=deadline)
            assert reply.outcome == "APPLIED", reply
        started = time.monotonic()
        after = await settled(c, client, rid, timeout=12)  # under the scheduler's stuck_after
        assert after.peer_on(3) is not None
        took = time.monotonic() - started
        pending = (await client.call_coordinator(ListTransitionsRequest(False))).entries
        assert not pending, pending
        await check_whole(c, client, data)
    print(f"{case}: settled {took:.1f}s after the admin call returned")


@pytest.mark.parametrize("role,fault", [
    # ~30 s each: slow tier (the default run keeps the re-add of
    # test_an_addition_goes_on_once_its_plan_is_rooted and test_topology_sequences')
    pytest.param("leader", "pause", marks=pytest.mark.slow),
    pytest.param("follower", "pause", marks=pytest.mark.slow),
    pytest.param("follower", "kill", marks=pytest.mark.slow),
])
async def test_remove_an_unreachable_replica_then_add_it_back(topo, role, fault):
    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = await put_keys(client, b"rp/0", 10)
        rid = (await region_of(c, client, b"rp/")).region_id
        d = await settled(c, client, rid)
        leader = await c.leader_store(client, b"rp/")
        victim = leader if role == "leader" else next(
            p.store_id for p in d.peers if p.store_id != leader)
        old = d.peer_on(victim).peer_id
        name = f"store-{victim}"
        if fault == "pause":
            c.cluster.signal(name, signal.SIGSTOP)
        else:
            c.kill(name)
        try:
            removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=victim,
                                                          wait=True))
            assert removed.outcome == "APPLIED", removed
            await wait_until(lambda: lacks(c, client, rid, victim), 30, 0.2,
                             f"store {victim} to leave region {rid} in the catalog")
            data.update(await put_keys(client, b"rp/1", 10))  # served by the survivors
        finally:
            if fault == "pause":
                c.cluster.signal(name, signal.SIGCONT)
            else:
                c.start_process(name)

        async def destroyed():
            body = await c.status(client, name)
            peers = body.get("tombstoned_peers", {str(rid): old})  # (older stores: ids only)
            return str(rid) not in body["regions"] and rid in body["tombstones"] and \
                peers.get(str(rid)) == old

        try:
            await wait_until(destroyed, 30, 0.2, f"{name} to tombstone peer {old}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await diagnose(c, client, rid)}") from None
        added = await admin(c, client, AdminRequest("add_peer", rid, store_id=victim,
                                                    wait=True))
        assert added.outcome == "APPLIED", (added, await diagnose(c, client, rid))
        assert (await settled(c, client, rid)).peer_on(victim).peer_id > old
        await check_whole(c, client, data)


@pytest.mark.slow
async def test_readd_after_the_log_was_compacted_gets_a_snapshot(topo):
    """The log no longer starts at index 1 (3,300 writes: compacted), so the re-added peer is
    filled by a region snapshot instead of replaying the log."""
    c = await topo(stores=3)
    data: dict[bytes, bytes] = {}

    async def worker(w: int) -> None:
        async with c.client(timeout=20) as client:
            for i in range(w, 3300, 16):
                key, value = b"rs/%05d" % i, b"%d" % i
                await client.put(key, value)
                data[key] = value

    async with trio.open_nursery() as nursery:
        for w in range(16):
            nursery.start_soon(worker, w)
    async with c.client(timeout=20) as client:
        rid = (await region_of(c, client, b"rs/")).region_id
        leader = await c.leader_store(client, b"rs/")
        victim = next(s for s in (1, 2, 3) if s != leader)
        old = (await settled(c, client, rid)).peer_on(victim).peer_id
        sent = await snapshots_sent(c, client)
        removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=victim,
                                                      wait=True))
        assert removed.outcome == "APPLIED", removed
        await wait_until(lambda: lacks(c, client, rid, victim), 30, 0.2,
                         f"store {victim} to leave region {rid} in the catalog")
        added = await admin(c, client, AdminRequest("add_peer", rid, store_id=victim,
                                                    wait=True))
        assert added.outcome == "APPLIED", (added, await diagnose(c, client, rid))
        assert (await settled(c, client, rid)).peer_on(victim).peer_id > old
        assert await snapshots_sent(c, client) > sent
        sample = dict(list(data.items())[::50])
        await check_whole(c, client, sample)


async def snapshots_sent(c: Topo, client) -> int:
    total = 0
    for name in c.store_names():
        total += (await c.status(client, name))["counters"].get("snapshots_sent", 0)
    return total
