"""Three stores in one trio run over real loopback sockets, with the fake coordinator."""

from __future__ import annotations

import trio
from store_cluster import InProcCluster


async def test_put_get_three_stores(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            for i in range(20):
                await client.put(b"k%02d" % i, b"v%d" % i)
            for i in range(20):
                assert await client.get(b"k%02d" % i) == b"v%d" % i
        nursery.cancel_scope.cancel()


async def test_failover_keeps_acknowledged_writes_and_restart_rehosts(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            acked = {}
            for i in range(50):
                await client.put(b"a%03d" % i, b"x%d" % i)
                acked[b"a%03d" % i] = b"x%d" % i
            # linearizable read after write, on the leader
            assert await client.get(b"a049") == b"x49"
            dead = (await cluster.wait_leader()).store_id
            await cluster.kill(dead)
            new_leader = await cluster.wait_leader()
            assert new_leader.store_id != dead
            for i in range(50, 80):
                await client.put(b"a%03d" % i, b"y%d" % i)
                acked[b"a%03d" % i] = b"y%d" % i
            got = await client.batch_get(sorted(acked))
            assert got == acked
            # restart the dead store from its data dir: it rehosts region 1 from localmeta
            store = await cluster.start_store(dead)
            assert 1 in store.peers
            assert store.restart.kind.name == "READY"
            with trio.fail_after(15):
                while store.kv.get(b"a079") != b"y79":
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_late_store_gets_an_uninitialized_peer_then_a_snapshot(tmp_path):
    """Store 3 is part of region 1 but starts late and is never told to host it: the leader's
    messages create an uninitialized peer there, and a snapshot (the log was compacted)
    carries the descriptor."""
    opts = {"compact_keep": 10, "compact_slack": 5}
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path, options=opts)
        cluster.coord.withhold.add(3)
        cluster.coord.preregister(3)
        await cluster.start([1, 2])
        await cluster.wait_leader()
        async with cluster.client() as client:
            for i in range(60):
                await client.put(b"s%03d" % i, b"%d" % i)
            with trio.fail_after(10):  # both live replicas compacted their logs
                while any(s.raftlog.group(1).first_index() == 1 for s in cluster.live()):
                    await trio.sleep(0.02)
            s3 = await cluster.start_store(3)
            with trio.fail_after(15):
                while 1 not in s3.peers or not s3.peers[1].initialized:
                    await trio.sleep(0.02)
            peer = s3.peers[1]
            assert s3.counters["peers_created_by_message"] == 1
            assert peer.sm.snapshots_installed == 1
            assert peer.descriptor == cluster.coord.region
            with trio.fail_after(15):
                while s3.kv.get(b"s059") != b"59":
                    await trio.sleep(0.02)
            # the descriptor was persisted with the snapshot: a restart rehosts it
            await cluster.kill(3)
            s3 = await cluster.start_store(3)
            assert 1 in s3.peers and s3.peers[1].initialized
            assert s3.restart.kind.name == "READY"
        nursery.cancel_scope.cancel()


async def test_late_store_learns_descriptor_from_the_log(tmp_path):
    """Without compaction the uninitialized peer receives the log from index 1 (no
    snapshot): the founding entry carries the descriptor, so it applies every write."""
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        cluster.coord.withhold.add(3)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            index = await client.put(b"k", b"v")
            s3 = cluster.store(3)
            with trio.fail_after(15):
                while 1 not in s3.peers or s3.peers[1].sm.applied < index:
                    await trio.sleep(0.02)
            assert s3.peers[1].initialized
            assert s3.peers[1].descriptor == cluster.coord.region
            assert s3.counters["peers_created_by_message"] == 1
            assert s3.kv.get(b"k") == b"v"
            assert s3.peers[1].sm.snapshots_installed == 0
            await cluster.kill(3)
            s3 = await cluster.start_store(3)
            assert 1 in s3.peers and s3.restart.kind.name == "READY"
        nursery.cancel_scope.cancel()


async def test_a_dead_coordinator_in_the_list_is_tolerated(tmp_path):
    from nokvpy.rpc.ports import free_ports

    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        cluster.extra_coordinators = [f"127.0.0.1:{free_ports(1)[0]}"]
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put(b"k", b"v")
            assert await client.get(b"k") == b"v"
        assert all(s.joined and s.heartbeats_sent > 0 for s in cluster.live())
        nursery.cancel_scope.cancel()
