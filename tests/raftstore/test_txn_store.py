"""Transactions and range deletes on stores over loopback sockets: through the client and
raw RPCs, on one region (the fake coordinator), across a split (a whole cluster in one trio
run), and across a leader change."""

from __future__ import annotations

import pytest
import trio
from real_cluster import RealCluster
from store_cluster import InProcCluster

from nokvpy.client import Compare, InvalidRequestError, Op, RejectedError, TxnGetResult
from nokvpy.protocol import RegionEpoch
from nokvpy.protocol.store_rpc import (
    CompareTarget,
    DeleteRangeRequest,
    KvContext,
    TxnCompare,
    TxnOp,
    TxnOpKind,
    TxnRequest,
)
from nokvpy.rpc import Identity, RemoteError, RpcClient


async def refused(rpc: RpcClient, address: str, req) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await rpc.call(address, req, timeout=5)
    exc = info.value
    assert exc.kind == "rejected" and exc.details["admission"].reason.name == exc.reason
    return exc


async def test_txn_branches_mod_indexes_limits_and_refusals(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        leader = await cluster.wait_leader()
        async with cluster.client() as c:
            await c.put(b"acct/a", b"10")
            # the success branch: compares hold, every op applies, gets see the branch
            r = await c.txn([Compare.value(b"acct/a", "==", b"10"), Compare.missing(b"acct/b")],
                            [Op.put(b"acct/a", b"7"), Op.put(b"acct/b", b"3"),
                             Op.get(b"acct/a"), Op.get(b"acct/b")],
                            [Op.get(b"acct/a")])
            assert r.succeeded and [g.value for g in r.gets] == [b"7", b"3"]
            assert all(g.mod_index == r.applied_index and g.mod_region == 1 for g in r.gets)
            # the same again: a compare fails, only the failure branch runs
            again = await c.txn([Compare.value(b"acct/a", "==", b"10")],
                                [Op.put(b"acct/a", b"0")], [Op.get(b"acct/a")])
            assert not again.succeeded and again.gets[0].value == b"7"
            # optimistic concurrency on the mod index: an interleaved write makes it fail
            seen = r.gets[1]
            await c.put(b"acct/b", b"4")
            stale = await c.txn([Compare.mod(b"acct/b", "==", seen)], [Op.delete(b"acct/b")],
                                [Op.get(b"acct/b")])
            assert not stale.succeeded and stale.gets[0].value == b"4"
            assert stale.gets[0].mod_index > seen.mod_index
            fresh = await c.txn([Compare.mod(b"acct/b", "==", stale.gets[0])],
                                [Op.delete(b"acct/b")])
            assert fresh.succeeded and await c.get(b"acct/b") is None
            created = await c.txn([Compare.mod(b"acct/b", "==", 0)], [Op.put(b"acct/b", b"1")])
            assert created.succeeded and await c.get(b"acct/b") == b"1"

            # scan and delete_range say when the limit cut them
            for i in range(12):
                await c.put(b"r/%02d" % i, b"v")
            page = await c.scan(b"r/", b"r0", 5)
            assert [k for k, _ in page] == [b"r/%02d" % i for i in range(5)]
            assert page.more and page.next_key == b"r/05"
            whole = await c.scan(b"r/", b"r0", 12)
            assert len(whole) == 12 and not whole.more and whole.next_key is None
            cut = await c.delete_range(b"r/", b"r0", limit=5)
            assert (cut.deleted, cut.more, cut.next_key) == (5, True, b"r/05")
            assert [(x.region_id, x.deleted) for x in cut.regions] == [(1, 5)]
            rest = await c.delete_range(cut.next_key, b"r0")
            assert (rest.deleted, rest.more, rest.next_key) == (7, False, None)
            assert await c.scan(b"r/", b"r0") == []
            assert (await c.delete_range(b"r/", b"r0")).deleted == 0

            # refused before anything is sent
            with pytest.raises(InvalidRequestError, match="empty range"):
                await c.delete_range(b"k", b"k")
            with pytest.raises(InvalidRequestError, match="inverted range"):
                await c.delete_range(b"z", b"a")
            with pytest.raises(InvalidRequestError, match="at least one"):
                await c.txn()

        rpc = RpcClient(Identity("nokv", "client", 7))
        ctx = KvContext(1, RegionEpoch(1, 1), leader.store_id)
        # malformed: refused INVALID by the store, nothing written
        exc = await refused(rpc, leader.cfg.address, TxnRequest(
            ctx, [], [TxnOp(TxnOpKind.PUT, b"x", None)], []))
        assert exc.reason == "INVALID" and "needs a value" in exc.message
        exc = await refused(rpc, leader.cfg.address, DeleteRangeRequest(ctx, b"b", b"a"))
        assert exc.reason == "INVALID" and "inverted range" in exc.message
        # an epoch the region does not have: EPOCH_MISMATCH with the current descriptor
        old = KvContext(1, RegionEpoch(7, 1), leader.store_id)
        exc = await refused(rpc, leader.cfg.address, TxnRequest(
            old, [], [TxnOp(TxnOpKind.PUT, b"x", b"1")], []))
        assert exc.reason == "EPOCH_MISMATCH"
        assert exc.details["admission"].descriptor.epoch == RegionEpoch(1, 1)
        exc = await refused(rpc, leader.cfg.address, DeleteRangeRequest(old, b"", b""))
        assert exc.reason == "EPOCH_MISMATCH"
        assert leader.peers[1].sm.get(b"x") is None
        await rpc.aclose()
        nursery.cancel_scope.cancel()


async def test_a_txn_and_a_delete_range_survive_a_leader_change(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = InProcCluster(nursery, tmp_path)
        await cluster.start()
        await cluster.wait_leader()
        async with cluster.client() as c:
            r = await c.txn([Compare.missing(b"lock")], [Op.put(b"lock", b"one"),
                                                         Op.get(b"lock")])
            for i in range(6):
                await c.put(b"d/%d" % i, b"v")
            cut = await c.delete_range(b"d/", b"d0", limit=2)
            assert cut.deleted == 2 and cut.more
            dead = (await cluster.wait_leader()).store_id
            await cluster.kill(dead)
            assert (await cluster.wait_leader()).store_id != dead
            # what applied before is there; the next txn and delete_range go to the new leader
            again = await c.txn([Compare.mod(b"lock", "==", r.gets[0])],
                                [Op.put(b"lock", b"two")], [Op.get(b"lock")])
            assert again.succeeded
            rest = await c.delete_range(cut.next_key, b"d0")
            assert (rest.deleted, rest.more) == (4, False)
            assert await c.get(b"lock") == b"two" and await c.scan(b"d/", b"d0") == []
            for store in cluster.live():
                with trio.fail_after(10):
                    while store.peers[1].sm.applied < rest.regions[-1].applied_index:
                        await trio.sleep(0.02)
                assert store.kv.get(b"lock") == b"two" and store.kv.get(b"d/5") is None
        nursery.cancel_scope.cancel()


async def test_across_a_split_delete_range_splits_and_txns_stay_in_one_region(tmp_path):
    async with trio.open_nursery() as nursery:
        cluster = RealCluster(nursery, tmp_path)
        await cluster.start()
        async with cluster.client() as c:
            left = await cluster.first_region(c)
            for i in range(10):
                await c.put(b"s/%d" % i, b"v%d" % i)
            before = await c.txn(success=[Op.get(b"s/7")])
            old_epoch = (await c.route(b"s/0")).descriptor.epoch
            async with cluster.client() as admin:  # c keeps its route from before the split
                right = await cluster.split(admin, left, b"s/5")

            # a client whose cached route predates the split: the store refuses the txn
            with pytest.raises(RejectedError) as info:
                await c.txn([Compare.exists(b"s/1")], [Op.put(b"s/8", b"x")])
            assert info.value.reason == "INVALID"
            assert "cross_region" in str(info.value) and f"region {left}" in str(info.value)
            # a client that knows both regions refuses it before sending anything
            async with cluster.client() as fresh:
                await fresh.route(b"s/8")
                with pytest.raises(InvalidRequestError) as info:
                    await fresh.txn([Compare.exists(b"s/1")], [Op.put(b"s/8", b"x")])
                assert info.value.reason == "cross_region"
                assert f"(region {right})" in str(info.value)
            assert await c.get(b"s/8") == b"v8"  # nothing was written

            # a txn inside the right region: the key now carries the right region's id, so
            # a compare against what was read before the split fails even if an index
            # repeats
            moved = await c.txn([Compare.mod(b"s/7", "==", before.gets[0])],
                                [Op.put(b"s/7", b"w7"), Op.get(b"s/7")])
            assert moved.succeeded and moved.gets[0].mod_region == right
            stale = TxnGetResult(b"s/7", None, moved.gets[0].mod_index, left)
            assert not (await c.txn([Compare.mod(b"s/7", "==", stale)], [Op.delete(b"s/7")])
                        ).succeeded

            # the old epoch is refused (by admission) for both kinds of write
            rpc = RpcClient(Identity("nokv", "client", 7))
            leader = await cluster.wait_leader(left)
            ctx = KvContext(left, old_epoch, leader.store_id)
            exc = await refused(rpc, leader.cfg.address, TxnRequest(
                ctx, [TxnCompare(b"s/1", CompareTarget.EXISTS)], [], []))
            assert exc.reason == "EPOCH_MISMATCH"
            exc = await refused(rpc, leader.cfg.address, DeleteRangeRequest(ctx, b"s/", b"s0"))
            assert exc.reason == "EPOCH_MISMATCH"
            # ... and so is a txn reaching from the left region into the right one
            ctx = KvContext(left, leader.peers[left].descriptor.epoch, leader.store_id)
            exc = await refused(rpc, leader.cfg.address, TxnRequest(
                ctx, [TxnCompare(b"s/1", CompareTarget.EXISTS)],
                [TxnOp(TxnOpKind.PUT, b"s/9", b"x")], []))
            assert exc.reason == "INVALID" and exc.message.startswith("cross_region")
            await rpc.aclose()

            # a scan and a range delete over both regions
            page = await c.scan(b"s/", b"s0", 5)
            assert len(page) == 5 and page.more and page.next_key == b"s/5"
            cut = await c.delete_range(b"s/3", b"s0", limit=2)  # stops inside the left one
            assert (cut.deleted, cut.more, cut.next_key) == (2, True, b"s/5")
            assert [r.region_id for r in cut.regions] == [left]
            both = await c.delete_range(b"s/", b"s0")
            assert (both.deleted, both.more) == (8, False)
            assert [(r.region_id, r.start, r.end, r.deleted) for r in both.regions] == [
                (left, b"s/", b"s/5", 3), (right, b"s/5", b"s0", 5)]
            assert await c.scan(b"s/", b"s0") == []
        nursery.cancel_scope.cancel()
