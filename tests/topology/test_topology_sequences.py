"""The operator sequence that once left a cluster unable to recover (issue 15, sequence 2),
on real processes: writes under load, a split, a leader transfer of the new region, a merge
of the two halves back into one, removing a replica and adding it back on the same store.
Then the level-triggered end state: every region serves with 3 voters on 3 live stores,
each store hosts exactly the catalog's peers at the catalog's epoch, every acknowledged key
reads back, with any one store killed too; and all of it again after the whole cluster is
stopped (SIGTERM, as `nokv cluster down`) and started again.

Every process is killed by pid in `finally` (the `topo` fixture); files only under tmp_path.
"""

from __future__ import annotations

import pytest
import trio
from recovery_helpers import unreadable
from topo_harness import Topo
from topology_checks import admin, check_whole, diagnose, lacks, region_of, settled, wait_until

from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc import RemoteError

pytestmark = pytest.mark.cluster


async def load(c: Topo, seconds: float, prefix: bytes) -> dict[bytes, bytes]:
    """Acknowledged puts from 8 concurrent writers for `seconds` (as `nokv bench puts`)."""
    data: dict[bytes, bytes] = {}

    async def writer(w: int) -> None:
        async with c.client(timeout=20) as client:
            i = 0
            while True:
                key, value = prefix + b"%d/%05d" % (w, i), b"v%d" % i
                await client.put(key, value)
                data[key] = value
                i += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
    return data


async def transfer_to(c: Topo, client, rid: int, key: bytes, store: int) -> None:
    """Until `store` leads region `rid` (holding `key`): a transfer waits for the target to
    have the whole log, and one that does not finish in the store's transfer timeout (a
    loaded host) is asked again."""
    async def leads() -> bool:
        moved = await admin(c, client, AdminRequest("transfer_leader", rid, store_id=store))
        return moved.outcome == "APPLIED" and await _leads(c, client, key, store)

    try:
        await wait_until(leads, 60, 0.5, f"store {store} to lead region {rid}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnose(c, client, rid)}") from None


async def restart_cluster(c: Topo) -> None:
    """Every process stopped gracefully (stores first, metaroot last), then all started."""
    c.cluster.stop_all(c.spec)
    await c.astart(timeout=90)


@pytest.mark.slow  # about 30 s; the default run keeps sequences 1 and 3 (test_topology_readd.py)
async def test_split_transfer_merge_then_readd_recovers(topo):
    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = {b"a": b"1"}
        await client.put(b"a", b"1")
        data.update(await load(c, 4.0, b"user/"))
        assert len(data) > 20, len(data)
        left = (await region_of(c, client, b"user/5")).region_id
        split = await c.split(client, b"user/5")
        assert split.outcome == "APPLIED", split
        right = (await region_of(c, client, b"user/5")).region_id
        assert right != left
        await transfer_to(c, client, right, b"user/5", 2)
        merged = await admin(c, client, AdminRequest("merge", left, other_region_id=right))
        assert merged.outcome == "APPLIED", (merged, await diagnose(c, client, left))
        await wait_until(lambda: _one_region(c, client, left, right), 30, 0.2,
                         f"region {right} to be merged into {left}")
        removed = await admin(c, client, AdminRequest("remove_peer", left, store_id=3))
        assert removed.outcome == "APPLIED", removed
        await wait_until(lambda: lacks(c, client, left, 3), 30, 0.2,
                         f"store 3 to leave region {left}")
        added = await admin(c, client, AdminRequest("add_peer", left, store_id=3))
        assert added.outcome == "APPLIED", (added, await diagnose(c, client, left))
        await settled(c, client, left)
        await check_whole(c, client, data)
    await restart_cluster(c)
    async with c.client(timeout=20) as client:
        for d in await c.regions(client):
            await settled(c, client, d.region_id, timeout=60)
        assert await unreadable(client, data) == []
        await client.put(b"after-restart", b"x")
        assert await client.get(b"after-restart") == b"x"


async def _leads(c: Topo, client, key: bytes, store_id: int) -> bool:
    return await c.leader_store(client, key, timeout=5) == store_id


async def _one_region(c: Topo, client, left: int, right: int) -> bool:
    ids = {d.region_id for d in await c.regions(client)}
    return left in ids and right not in ids


@pytest.mark.slow  # 20-40 s each; the default run keeps the sequence-2 and re-add tests
@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_a_replica_that_missed_a_split_a_merge_and_its_removal_catches_up(topo, fault):
    """Store 3 is down (killed, or paused) while the survivors split a region; a merge of
    the halves is refused at once, naming store 3 (a merge needs every replica to freeze the
    source); store 3's replicas of both halves are removed, and the halves merged on stores
    1 and 2. Back, store 3 learns the newer epochs: it drops the replica of the region it
    missed the split, merge and removal of (tombstoned), and once its replica is added back
    it hosts exactly the catalog's peers at the catalog's epoch."""
    import signal

    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = await load(c, 2.0, b"m/")
        left = (await region_of(c, client, b"m/")).region_id
        if fault == "kill":
            c.kill("store-3")
        else:
            c.cluster.signal("store-3", signal.SIGSTOP)
        try:
            split = await admin(c, client, AdminRequest("split", left, split_key=b"m/4"))
            assert split.outcome == "APPLIED", split
            right = (await region_of(c, client, b"m/4")).region_id
            data.update(await load(c, 1.0, b"m/"))
            leader = await c.leader_store(client, b"m/")
            with pytest.raises(RemoteError) as refused:
                await c.admin(client, AdminRequest("merge", left, other_region_id=right),
                              leader, timeout=15)
            assert "store 3" in refused.value.message, refused.value
            for rid in (left, right):
                removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=3))
                assert removed.outcome == "APPLIED", removed
            merged = await admin(c, client, AdminRequest("merge", left, other_region_id=right))
            assert merged.outcome == "APPLIED", (merged, await diagnose(c, client, left))
            data.update(await load(c, 1.0, b"m/"))
        finally:
            if fault == "kill":
                c.start_process("store-3")
            else:
                c.cluster.signal("store-3", signal.SIGCONT)

        async def store3_dropped_both():
            body = await c.status(client, "store-3")
            return not ({str(left), str(right)} & set(body["regions"]))

        try:
            await wait_until(store3_dropped_both, 30, 0.2,
                             f"store-3 to drop regions {left} and {right}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await diagnose(c, client, left)}") from None
        added = await admin(c, client, AdminRequest("add_peer", left, store_id=3))
        assert added.outcome == "APPLIED", (added, await diagnose(c, client, left))
        await check_whole(c, client, data)


async def test_kv_keeps_serving_while_a_peer_addition_is_pending(topo):
    """A peer addition is planned in root (the catalog shows its target epoch at once) long
    before the region's leader applies it: here the new replica's store is paused, so the
    learner cannot catch up. Reads and writes of the region must go on at the leader's own
    epoch meanwhile (a peer change moves conf_ver, never the range: KV requests are checked
    against the version only, as the apply path always did)."""
    import signal

    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        data = await load(c, 1.0, b"p/")
        rid = (await region_of(c, client, b"p/")).region_id
        removed = await admin(c, client, AdminRequest("remove_peer", rid, store_id=3))
        assert removed.outcome == "APPLIED", removed
        await wait_until(lambda: lacks(c, client, rid, 3), 30, 0.2, "store 3 to leave")
        c.cluster.signal("store-3", signal.SIGSTOP)
        try:
            async with trio.open_nursery() as nursery:
                leader = await c.leader_store(client, b"p/")
                nursery.start_soon(lambda: c.admin(client, AdminRequest(
                    "add_peer", rid, store_id=3), leader, timeout=60))

                async def planned():
                    return not await lacks(c, client, rid, 3)

                await wait_until(planned, 20, 0.1, "the addition to be planned")
                async with c.client(timeout=8) as kv:
                    for i in range(10):
                        key = b"p/during/%d" % i
                        await kv.put(key, b"x%d" % i)
                        assert await kv.get(key) == b"x%d" % i
                        data[key] = b"x%d" % i
                c.cluster.signal("store-3", signal.SIGCONT)
        finally:
            c.cluster.signal("store-3", signal.SIGCONT)
        await settled(c, client, rid, timeout=60)
        assert await unreadable(client, data) == []


@pytest.mark.parametrize("then", ["split", pytest.param("split_merge", marks=pytest.mark.slow)])
async def test_a_readded_replica_is_filled_from_a_snapshot_not_an_old_log(topo, then):
    """A replica added back to a region whose range changed since its log began must not
    replay that log from the start: the old writes would land on keys another region of the
    same store owns now (after a split), or the writes the merged source received would be
    missing (after a merge). Its leader sends a snapshot instead (entries at or before the
    region's last range change are not served for replay: `replay_floor`). Checked by
    reading, through the re-added store as leader, values written after the split."""
    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        await client.put(b"k3", b"old")
        await client.put(b"k7", b"old")
        left = (await region_of(c, client, b"k3")).region_id
        split = await c.split(client, b"k3")
        assert split.outcome == "APPLIED", split
        right = (await region_of(c, client, b"k3")).region_id
        await client.put(b"k3", b"new")
        await client.put(b"k7", b"new")
        target = left
        if then == "split_merge":
            merged = await admin(c, client, AdminRequest("merge", left, other_region_id=right))
            assert merged.outcome == "APPLIED", merged
            await wait_until(lambda: _one_region(c, client, left, right), 30, 0.2,
                             "the merge to show in the catalog")
        removed = await admin(c, client, AdminRequest("remove_peer", target, store_id=2))
        assert removed.outcome == "APPLIED", removed
        await wait_until(lambda: lacks(c, client, target, 2), 30, 0.2, "store 2 to leave")
        added = await admin(c, client, AdminRequest("add_peer", target, store_id=2))
        assert added.outcome == "APPLIED", (added, await diagnose(c, client, target))
        await settled(c, client, target)
        for d in await c.regions(client):
            if d.peer_on(2) is not None:
                await transfer_to(c, client, d.region_id, d.start_key, 2)
        assert await client.get(b"k3") == b"new"
        assert await client.get(b"k7") == b"new"


@pytest.mark.slow  # the default run stays under 10 minutes
async def test_a_paused_follower_that_missed_two_splits_catches_up(topo):
    """Store 1 (a follower) is paused while its region is written to and split twice; once
    back it must reach every region's catalog epoch (by the log, or by snapshots of the
    regions' current ranges) and serve as their leader."""
    import signal

    c = await topo(stores=3)
    async with c.client(timeout=20) as client:
        rid = (await region_of(c, client, b"s/")).region_id
        leader = await c.leader_store(client, b"s/")
        if leader == 1:
            moved = await admin(c, client, AdminRequest("transfer_leader", rid, store_id=2))
            assert moved.outcome == "APPLIED", moved
        data = await load(c, 1.0, b"s/")
        c.cluster.signal("store-1", signal.SIGSTOP)
        try:
            data.update(await load(c, 3.0, b"s/"))
            for key in (b"s/3", b"s/6"):
                split = await c.split(client, key)
                assert split.outcome == "APPLIED", split
            data.update(await load(c, 1.0, b"s/"))
        finally:
            c.cluster.signal("store-1", signal.SIGCONT)
        for d in await c.regions(client):
            await settled(c, client, d.region_id, timeout=30)
        for d in await c.regions(client):
            await transfer_to(c, client, d.region_id, d.start_key, 1)
        assert await unreadable(client, data) == []
