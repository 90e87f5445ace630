"""metaroot membership change on real peer processes (metaroot.members, metaroot.reconfig).

- add: a fourth peer starts empty (`--join`), is added as a learner, catches up through the
  log, is promoted; the old leader is killed; rooted writes keep working on the new
  majority, the new peer holds the full state, a client learned its address, and the new
  peer restarts from its own data dir alone.
- remove: a peer removed while it was down learns it from the others when it starts and
  stops serving; a peer removed while running applies its own removal; the rest serve; a
  removed peer refuses to start again, in one line.
- refusals (a second change while one is pending, the last voter, an unknown or a reused id,
  a bad address) change nothing.
"""

from __future__ import annotations

import subprocess
import zlib

import pytest
import trio
from metaroot_procs import REPO, MetarootProcs, joined

from nokvpy.protocol.metaroot_rpc import (
    AppendRequest,
    ConfirmTokenRequest,
    MetarootConfChangeReply,
    MetarootConfChangeRequest,
    MetarootStatus,
    SnapshotRequest,
)
from nokvpy.rpc import RemoteError

pytestmark = pytest.mark.cluster


async def append_n(meta, prefix: str, n: int) -> None:
    for i in range(n):
        sid = zlib.crc32(f"{prefix}-{i}".encode()) + 1
        await meta.call(AppendRequest([joined(sid, f"{prefix}-{i}")]))


async def change(meta, kind: str, node_id: int, address: str = "") -> MetarootConfChangeReply:
    return await meta.call(MetarootConfChangeRequest(kind, node_id, address), timeout=10.0)


async def refused(meta, kind: str, node_id: int, address: str = "") -> RemoteError:
    with pytest.raises(RemoteError) as info:
        await change(meta, kind, node_id, address)
    return info.value


async def wait_status(cluster: MetarootProcs, rpc, node_id: int, what: str, check,
                      deadline: float = 15.0) -> MetarootStatus:
    with trio.fail_after(deadline):
        while True:
            st = await cluster.status(rpc, node_id)
            if st is not None and check(st):
                return st
            await trio.sleep(0.05)
    raise AssertionError(what)


async def same_state(cluster: MetarootProcs, rpc, nodes: list[int]):
    """Every node of `nodes` applied the confirmed token; their checkpoints are equal."""
    meta = cluster.meta(rpc)
    final = (await meta.call(ConfirmTokenRequest())).token
    snaps = []
    for node_id in nodes:
        await cluster.wait_token(rpc, node_id, final.index)
        snaps.append(await rpc.call(cluster.addrs[node_id], SnapshotRequest(), timeout=5.0))
    assert all(s.checkpoint == snaps[0].checkpoint for s in snaps), "peers disagree"
    return snaps[0]


async def test_add_a_peer_then_lose_the_old_leader(tmp_path):
    cluster = MetarootProcs(tmp_path, 3)
    try:
        cluster.start_all()
        rpc = cluster.rpc()
        old_leader = await cluster.wait_leader(rpc)
        meta = cluster.meta(rpc)
        await append_n(meta, "a", 40)

        # a second change while a learner waits for promotion is refused, and changes nothing
        addr4 = cluster.new_peer(4)
        cluster.start(4, join=True)
        st4 = await wait_status(cluster, rpc, 4, "4 answers", lambda st: True)
        assert st4.voters == () and not st4.removed  # joining: in no configuration yet
        first, second = await asyncio_gather(
            change(meta, "add_learner", 4, addr4),
            change(meta, "add_learner", 5, "127.0.0.1:1"))
        outcomes = [first, second]
        ok = [o for o in outcomes if isinstance(o, MetarootConfChangeReply)]
        bad = [o for o in outcomes if isinstance(o, RemoteError)]
        assert len(ok) == 1 and len(bad) == 1, outcomes
        assert bad[0].reason == "conf_change_pending", bad[0]
        if 5 in ok[0].learners:  # the other one won: undo it, then add 4
            await change(meta, "remove", 5)
            await change(meta, "add_learner", 4, addr4)
        st = await cluster.status(rpc, old_leader)
        assert st.learners == (4,) and st.voters == (1, 2, 3)
        assert (await refused(meta, "remove", 2)).reason == "conf_change_pending"
        assert (await refused(meta, "add_learner", 6, "127.0.0.1:2")).reason == \
            "conf_change_pending"

        # the learner catches up through the log, then is promoted
        leader_st = await cluster.status(rpc, old_leader)
        await wait_status(cluster, rpc, 4, "4 caught up",
                          lambda s: s.raft_applied >= leader_st.raft_commit and 4 in s.learners)
        reply = await change(meta, "promote", 4)
        assert reply.voters == (1, 2, 3, 4) and reply.learners == ()
        assert reply.peers[4] == addr4
        await wait_status(cluster, rpc, 4, "4 a voter", lambda s: 4 in s.voters)
        await same_state(cluster, rpc, [1, 2, 3, 4])

        # a client that only knew 1, 2, 3 learns the fourth address from a reply
        narrow = cluster.meta(rpc)
        narrow.addrs = [cluster.addrs[i] for i in (1, 2, 3)]
        await narrow.call(ConfirmTokenRequest())
        assert addr4 in narrow.addrs

        # the old leader dies: 3 of 4 voters elect and commit; 4 holds everything
        cluster.kill(old_leader)
        rest = [n for n in (1, 2, 3, 4) if n != old_leader]
        await cluster.wait_leader(rpc, among=rest)
        await append_n(narrow, "b", 20)
        snap = await same_state(cluster, rpc, rest)
        assert snap.token.index == 60

        # 4 restarts from its own data dir (no --join, no --peer it could trust)
        cluster.kill(4)
        cluster.start(4)
        st4 = await wait_status(cluster, rpc, 4, "4 back", lambda s: s.voters == (1, 2, 3, 4))
        assert st4.peers[4] == addr4
        await same_state(cluster, rpc, rest)
        await rpc.aclose()
    finally:
        cluster.kill_all()


async def asyncio_gather(*calls):
    """Run the calls concurrently; each result or the RemoteError it raised, in order."""
    out: list = [None] * len(calls)

    async def one(i, call) -> None:
        try:
            out[i] = await call
        except RemoteError as exc:
            out[i] = exc

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(one, i, call)
    return out


def refuses_to_start(cluster: MetarootProcs, node_id: int) -> str:
    done = subprocess.run(cluster.argv(node_id), cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, out
    assert len(out.splitlines()) == 1, out
    return out


async def test_remove_peers_and_refusals(tmp_path):
    cluster = MetarootProcs(tmp_path, 3)
    try:
        cluster.start_all()
        rpc = cluster.rpc()
        leader = await cluster.wait_leader(rpc)
        meta = cluster.meta(rpc)
        await append_n(meta, "a", 10)
        down, running = [n for n in (1, 2, 3) if n != leader]

        # refusals change nothing
        before = await cluster.status(rpc, leader)
        assert (await refused(meta, "remove", 9)).reason == "unknown_peer"
        assert (await refused(meta, "add_learner", 2, "127.0.0.1:3")).reason == "already_member"
        assert (await refused(meta, "add_learner", 7, "nowhere")).reason == "invalid_change"
        assert (await refused(meta, "add_learner", 7, cluster.addrs[leader])).reason == \
            "address_in_use"
        assert (await refused(meta, "promote", 2)).reason == "not_a_learner"
        assert (await refused(meta, "rename", 2)).reason == "invalid_change"
        after = await cluster.status(rpc, leader)
        assert (after.voters, after.learners, after.conf_index) == \
            (before.voters, before.learners, before.conf_index)

        # removed while down: it learns from the others when it starts, and stops serving
        cluster.kill(down)
        reply = await change(meta, "remove", down)
        assert down not in reply.voters and reply.removed_ids == (down,)
        await append_n(meta, "b", 5)
        cluster.start(down)
        st = await wait_status(cluster, rpc, down, "learns it was removed", lambda s: s.removed)
        assert st.peers.get(down) is None or st.removed
        with pytest.raises(RemoteError) as info:
            await rpc.call(cluster.addrs[down], ConfirmTokenRequest(), timeout=2.0)
        assert info.value.reason == "removed"
        cluster.kill(down)
        assert "was removed from the metaroot group" in refuses_to_start(cluster, down)
        assert (await refused(meta, "add_learner", down, "127.0.0.1:4")).reason == "id_retired"

        # removed while running: it applies its own removal; the last voter serves alone
        reply = await change(meta, "remove", running)
        assert reply.voters == (leader,)
        await wait_status(cluster, rpc, running, "applies its removal", lambda s: s.removed)
        await append_n(meta, "c", 5)
        st = await cluster.status(rpc, leader)
        assert st.applied_token.index == 20 and st.voters == (leader,)
        assert (await refused(meta, "remove", leader)).reason == "last_voter"
        cluster.kill(running)
        assert "was removed" in refuses_to_start(cluster, running)

        # the last voter restarts alone from its own data dir and leads again
        cluster.kill(leader)
        cluster.start(leader)
        st = await wait_status(cluster, rpc, leader, "leads alone", lambda s: s.is_leader)
        assert st.voters == (leader,) and st.removed_ids == tuple(sorted((down, running)))
        await append_n(meta, "d", 1)
        await rpc.aclose()
    finally:
        cluster.kill_all()
