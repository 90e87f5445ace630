"""metaroot checkpoint, retained tail and restart, 3 real peers (DESIGN 4.2).

A watcher behind the retained tail is told `bootstrap_required`, installs the checkpoint and
converges on the leader's state; a peer killed with kill -9 and restarted on its data dir
rebuilds from checkpoint + tail and agrees with the others; a data dir of another cluster, or
a fresh data dir with a founding peer list that cannot found a group, is refused at start, in
one line. (An existing data dir serves with its own durable membership whatever --peer says:
tests/metaroot/test_metaroot_membership.py.)
"""

from __future__ import annotations

import subprocess
import zlib

import pytest
import trio
from metaroot_procs import REPO, MetarootProcs, joined

from metaroot.state import RootState
from nokvpy.protocol import RootToken
from nokvpy.protocol.metaroot_rpc import (
    AppendRequest,
    ConfirmTokenRequest,
    SnapshotReply,
    SnapshotRequest,
    WatchRequest,
)

pytestmark = pytest.mark.cluster

TAIL = 32


async def append_many(cluster: MetarootProcs, prefix: str, n: int, clients: int = 4) -> None:
    async def one(k: int) -> None:
        rpc = cluster.rpc(940 + k)
        meta = cluster.meta(rpc)
        for i in range(k, n, clients):
            sid = zlib.crc32(f"{prefix}-{i}".encode()) + 1
            await meta.call(AppendRequest([joined(sid, f"{prefix}-{i}")]))
        await rpc.aclose()

    async with trio.open_nursery() as nursery:
        for k in range(clients):
            nursery.start_soon(one, k)


async def snapshot_of(cluster: MetarootProcs, rpc, node_id: int) -> SnapshotReply:
    return await rpc.call(cluster.addrs[node_id], SnapshotRequest(), timeout=5.0)


async def converge(cluster: MetarootProcs, rpc) -> SnapshotReply:
    """Wait until every running peer applied the confirmed token; their snapshots agree."""
    meta = cluster.meta(rpc)
    final = (await meta.call(ConfirmTokenRequest())).token
    snaps = []
    for node_id in sorted(cluster.procs):
        await cluster.wait_token(rpc, node_id, final.index)
        snaps.append(await snapshot_of(cluster, rpc, node_id))
    assert all(s.checkpoint == snaps[0].checkpoint for s in snaps), "peers disagree"
    return snaps[0]


async def test_watch_behind_tail_bootstraps_and_restart_rebuilds(tmp_path):
    cluster = MetarootProcs(tmp_path, 3, retained_tail=TAIL)
    try:
        # init: 200 events through a 32-event retained tail
        cluster.start_all()
        rpc = cluster.rpc(950)
        leader = await cluster.wait_leader(rpc)
        await append_many(cluster, "a", 200)
        st = await cluster.status(rpc, leader, timeout=2.0)
        assert st.applied_token.index == 200
        assert st.retained_from > 1 and st.applied_token.index - st.retained_from + 1 <= TAIL + 16

        # act: watch from token 0 while more events are appended
        state: RootState | None = None
        bootstraps = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_many, cluster, "b", 40, 2)
            with trio.fail_after(20):
                async with rpc.stream(cluster.addrs[leader],
                                      WatchRequest(RootToken(0, 0), keepalive_ms=100)) as items:
                    async for item in items:
                        if item.bootstrap_required:
                            bootstraps += 1
                            state = RootState.from_checkpoint(item.checkpoint)
                            assert state.token == item.checkpoint_token
                            assert item.retained_from > 1
                        assert state is not None, "first item must be the bootstrap"
                        for ce in item.events:
                            state = state.apply(ce.token, ce.event)
                        if state.token.index >= 240:
                            break
        # check: the installed checkpoint plus deltas is exactly the leader's state
        assert bootstraps == 1
        leader_snap = await converge(cluster, rpc)
        assert state.token == leader_snap.token
        assert state.to_checkpoint() == leader_snap.checkpoint

        # a watcher inside the retained tail gets deltas, no bootstrap
        after = RootToken(0, leader_snap.token.index - 10)
        with trio.fail_after(10):
            async with rpc.stream(cluster.addrs[leader], WatchRequest(after)) as items:
                item = await items.__anext__()
        assert not item.bootstrap_required
        assert [ce.token.index for ce in item.events] == list(range(after.index + 1,
                                                                    leader_snap.token.index + 1))

        # restart: kill -9 a follower and the leader in turn, append, restart on the same dir
        for victim in (next(n for n in cluster.addrs if n != leader), leader):
            cluster.kill(victim)
            await append_many(cluster, f"r{victim}", 60)
            cluster.start(victim)
            snap = await converge(cluster, rpc)
            restarted = await cluster.status(rpc, victim, timeout=2.0)
            assert restarted.applied_token == snap.token and restarted.retained_from > 1
        assert snap.token.index == 360
        await rpc.aclose()
    finally:
        cluster.kill_all()

    # a data dir stamped by another cluster, or a bad founding list: refused in one line
    def refuse(argv: list[str], needle: str) -> None:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
        out = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, out
        assert len(out.splitlines()) == 1 and needle in out, out

    refuse(cluster.argv(1, cluster_id="another"), "belongs to cluster 'mr-test'")
    fresh = cluster.root / "fresh"
    two = {1: cluster.addrs[1], 2: cluster.addrs[2]}
    refuse(cluster.argv(1, peers=two, data=fresh), "metaroot needs 1, 3 or 5 peers, got 2")
    refuse(cluster.argv(1, peers={2: cluster.addrs[2], 3: cluster.addrs[3], 4: "127.0.0.1:1"},
                        data=fresh), "--id 1 is not in the peer list")
    refuse(cluster.argv(1, peers={1: cluster.addrs[1]}, data=fresh, join=True),
           "--join needs the current metaroot peers")
