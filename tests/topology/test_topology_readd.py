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
from recovery_helpers import put_keys, unreadable
from topo_harness import Topo, wait_until

from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError, RpcError

pytestmark = pytest.mark.cluster

ROUNDS = 6  # every store removed and re-added twice
ADMIN_TIMEOUT = 40.0


async def region_of(c: Topo, client, key: bytes):
    return next(d for d in await c.regions(client) if d.contains(key))


async def hosted(c: Topo, client, name: str) -> dict[int, tuple[int, bool]]:
    """Region id -> (peer id, initialized) as store `name` reports it."""
    body = await c.status(client, name)
    return {int(r): (v["peer_id"], v["initialized"]) for r, v in body["regions"].items()}


async def admin(c: Topo, client, req: AdminRequest):
    """Send `req` to the region's leader (a follower forwards it once); a refusal that names
    a leader change is retried until the deadline."""
    deadline = time.monotonic() + ADMIN_TIMEOUT
    while True:
        d = next(d for d in await c.regions(client) if d.region_id == req.region_id)
        try:
            leader = await c.leader_store(client, d.start_key, timeout=10)
            left = max(1.0, deadline - time.monotonic())
            return await c.admin(client, req, leader, timeout=min(left, 20.0))
        except (RemoteError, RpcError, TimeoutError, trio.TooSlowError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{req.op} of region {req.region_id} on store "
                                     f"{req.store_id}: {exc!r}") from None
            await trio.sleep(0.5)


async def diagnose(c: Topo, client, rid: int) -> str:
    lines = [f"catalog: {[d for d in await c.regions(client) if d.region_id == rid]}"]
    for name in c.store_names():
        try:
            body = await c.status(client, name)
        except RpcError as exc:
            lines.append(f"{name}: {exc!r}")
            continue
        lines.append(f"{name}: regions={body['regions']} drops={body['drops']} "
                     f"tombstones={body['tombstones']} "
                     f"topology={body['topology'].get('counters')}")
    return "\n".join(lines)


async def settled(c: Topo, client, rid: int, timeout: float = 30.0):
    """Until the catalog lists 3 voters (no learner) for `rid` and every store hosts the
    catalog's peer id of it, initialized, at the catalog's epoch."""

    async def check():
        d = next((d for d in await c.regions(client) if d.region_id == rid), None)
        if d is None or len(d.voters()) != 3 or any(p.learner for p in d.peers):
            return None
        for p in d.peers:
            body = await c.status(client, f"store-{p.store_id}")
            r = body["regions"].get(str(rid))
            if r is None or r["peer_id"] != p.peer_id or not r["initialized"] or \
                    r["epoch"] != [d.epoch.version, d.epoch.conf_ver]:
                return None
        return d

    try:
        return await wait_until(check, timeout, 0.2, f"region {rid} to settle on 3 stores")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnose(c, client, rid)}") from None


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
            await wait_until(lambda v=victim: _lacks(c, client, rid, v), 30, 0.2,
                             f"store {victim} to leave region {rid} in the catalog")
            data.update(await put_keys(client, b"ra/%d" % (rnd + 1), 10))
            added = await admin(c, client, AdminRequest("add_peer", rid, store_id=victim,
                                                        wait=True))
            assert added.outcome == "APPLIED", (rnd, added, await diagnose(c, client, rid))
            after = await settled(c, client, rid)
            new = after.peer_on(victim).peer_id
            assert new > old, (rnd, old, new)
        elapsed = time.monotonic() - started
        await check_whole(c, client, data)
    print(f"{ROUNDS} remove/add rounds in {elapsed:.1f}s")


async def _lacks(c: Topo, client, rid: int, store_id: int) -> bool:
    d = next(d for d in await c.regions(client) if d.region_id == rid)
    return d.peer_on(store_id) is None


async def check_whole(c: Topo, client, data: dict[bytes, bytes]) -> None:
    """Every region: 3 voters on 3 live stores; every store hosts exactly the catalog's
    peers; every key reads back; and still so with any one store killed (then restarted)."""
    regions = await c.regions(client)
    for d in regions:
        await settled(c, client, d.region_id)
    for name in c.store_names():
        sid = int(name.split("-")[1])
        want = {d.region_id: d.peer_on(sid).peer_id for d in regions if d.peer_on(sid)}
        got = {r: pid for r, (pid, init) in (await hosted(c, client, name)).items() if init}
        assert got == want, (name, got, want)
    assert await unreadable(client, data) == []
    for name in c.store_names():
        c.kill(name)
        try:
            key = b"ra/kill-" + name.encode()
            with trio.fail_after(30):
                while True:
                    try:
                        await client.put(key, b"x")
                        break
                    except Exception:  # noqa: BLE001 - a new leader may still be elected
                        await trio.sleep(0.5)
            data[key] = b"x"
            assert await unreadable(client, data) == [], f"with {name} killed"
        finally:
            c.start_process(name)
        await c.wait_store(client, name)
        for d in await c.regions(client):
            await settled(c, client, d.region_id, timeout=60)
    route = await client.route(b"ra/", Freshness.STRONG)
    assert route.leader_store_id


@pytest.mark.parametrize("role,fault", [
    ("leader", "pause"),
    pytest.param("follower", "pause", marks=pytest.mark.slow),  # the default run keeps one
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
            await wait_until(lambda: _lacks(c, client, rid, victim), 30, 0.2,
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
        await wait_until(lambda: _lacks(c, client, rid, victim), 30, 0.2,
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
