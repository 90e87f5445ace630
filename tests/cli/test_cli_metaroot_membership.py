"""`nokv metaroot add-peer | remove-peer` on a local cluster directory whose metaroot peers
run as real processes on 127.0.0.1 (only the metaroot peers: the commands touch nothing
else).

- add-peer grows 3 peers to 4: cluster.json records metaroot-4 (`--join`), it runs, it is a
  voter and holds the rooted state; remove-peer of the current leader shrinks the group back
  to 3, which elects and serves: the removed peer is stopped, retired in cluster.json, never
  started again, and its process refuses to start;
- refusals change nothing (cluster.json, processes, membership): an unknown or removed id,
  a change while a learner waits for promotion, the last voter, a directory that holds no
  cluster, a second change while one runs on the same directory.
"""

from __future__ import annotations

import fcntl
import subprocess

import pytest
import trio
from cli_harness import Cluster, kill_leftovers, nokv, one_line_error, parsed, wait_for

from nokvpy.client.admin import identity_for
from nokvpy.client.meta import MetaClient
from nokvpy.cluster.local import LocalCluster
from nokvpy.protocol import EventKind, RootEvent, StoreMembership
from nokvpy.protocol.metaroot_rpc import (
    AppendRequest,
    MetarootConfChangeRequest,
    MetarootStatusRequest,
    SnapshotRequest,
)
from nokvpy.rpc import RpcClient

pytestmark = pytest.mark.cluster


def start_metaroot_only(directory, metaroots: int) -> tuple[LocalCluster, Cluster]:
    local = LocalCluster(directory)
    spec = local.create(metaroots=metaroots, coordinators=1, stores=1, replication=1)
    for proc in spec.of_kind("metaroot"):
        local.start(spec, proc)
    return local, Cluster(directory, None)


def root_call(local: LocalCluster, request, addrs: list[str] | None = None, leader=True,
              role: str = "admin"):
    """One call to the metaroot group of `local` as the operator (or as `role`)."""
    spec = local.load()

    async def main():
        rpc = RpcClient(identity_for(spec, role))
        try:
            meta = MetaClient(rpc, addrs or spec.metaroot_addrs(), timeout=15.0)
            return await meta.call(request, leader=leader)
        finally:
            await rpc.aclose()

    return trio.run(main)


def leader_status(local: LocalCluster):
    """The status of the peer that says it leads (polled: an election may be running)."""
    def find():
        for addr in local.load().metaroot_addrs():
            try:
                st = root_call(local, MetarootStatusRequest(), [addr], leader=False)
            except Exception:  # noqa: BLE001 - down, or not serving yet
                continue
            if st.is_leader:
                return st
        return None

    return wait_for(find, 20, "a metaroot leader")


def append(local: LocalCluster, n: int, prefix: str) -> None:
    for i in range(n):
        ev = RootEvent(EventKind.STORE_JOINED, StoreMembership(100 + i, f"10.1.0.1:{i + 1}"),
                       f"{prefix}-{i}")
        root_call(local, AppendRequest([ev]), role="coordinator")  # appends are theirs


@pytest.mark.slow  # ~12 s; tests/metaroot/test_metaroot_membership.py runs by default
def test_add_and_remove_a_metaroot_peer(tmp_path):
    directory = tmp_path / "cluster"
    cluster = Cluster(directory, None)
    try:
        local, cluster = start_metaroot_only(directory, 3)
        leader_status(local)
        append(local, 20, "a")

        added = parsed(cluster.run("metaroot", "add-peer", "--json", timeout=90))
        assert (added["name"], added["peer_id"], added["voters"]) == \
            ("metaroot-4", 4, [1, 2, 3, 4])
        entry = next(p for p in cluster.spec["processes"] if p["name"] == "metaroot-4")
        assert entry["extra_args"] == ["--join"] and not entry["retired"]
        assert local.pid("metaroot-4") == added["pid"]
        st4 = root_call(local, MetarootStatusRequest(), [added["address"]], leader=False)
        assert st4.voters == (1, 2, 3, 4) and st4.applied_token.index == 20
        snaps = [root_call(local, SnapshotRequest(), [a], leader=False).checkpoint
                 for a in local.load().metaroot_addrs()]
        assert all(s == snaps[0] for s in snaps)

        # remove the leader itself: it steps down, the other three elect and serve
        gone = leader_status(local).node_id
        name = f"metaroot-{gone}"
        rest = [i for i in (1, 2, 3, 4) if i != gone]
        removed = parsed(cluster.run("metaroot", "remove-peer", str(gone), "--json", timeout=60))
        assert removed["voters"] == rest and removed["removed_ids"] == [gone]
        assert removed["stopped_pid"] and local.pid(name) is None
        spec = local.load()
        assert spec.get(name).retired and spec.get(name).address not in spec.metaroot_addrs()
        append(local, 5, "b")  # the rest serve
        assert leader_status(local).applied_token.index == 25

        # it never starts again: the local cluster refuses, and so does its process
        assert "retired" in one_line_error(cluster.run("cluster", "restart", name))
        proc = subprocess.run(local.command(spec, spec.get(name)), capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 1 and f"{name} was removed" in proc.stderr, proc.stderr

        # refusals change nothing
        before = (directory / "cluster.json").read_bytes()
        assert "no metaroot peer 9" in one_line_error(cluster.run("metaroot", "remove-peer", "9"))
        assert "removed from the metaroot group already" in one_line_error(
            cluster.run("metaroot", "remove-peer", str(gone)))
        root_call(local, MetarootConfChangeRequest("add_learner", 7, "127.0.0.1:1"))
        err = one_line_error(cluster.run("metaroot", "add-peer", "--wait", "5"))
        assert "metaroot-7 is joining as a learner" in err, err
        err = one_line_error(cluster.run("metaroot", "remove-peer", str(rest[0])))
        assert "metaroot-7 is joining as a learner" in err, err
        assert (directory / "cluster.json").read_bytes() == before
        assert not (directory / "data" / "metaroot-5").exists()
        st = leader_status(local)
        assert (list(st.voters), st.learners) == (rest, (7,))
        undo = parsed(cluster.run("metaroot", "remove-peer", "7", "--json"))  # no process
        assert undo["voters"] == rest and undo["learners"] == []
        assert "no cluster in" in one_line_error(
            nokv("metaroot", "remove-peer", "2", "--dir", tmp_path / "nothing"))

        # the whole group stops and starts again as cluster.json now describes it: every
        # peer rebuilds the membership from its own data dir
        spec = local.load()
        for proc in spec.of_kind("metaroot"):
            local.stop(proc.name)
        for proc in spec.serving().of_kind("metaroot"):
            local.start(spec, proc)
        st = leader_status(local)
        assert list(st.voters) == rest and st.applied_token.index == 25
        assert sorted(st.peers) == rest and st.removed_ids == (gone, 7)
    finally:
        kill_leftovers(directory)


def test_the_last_voter_is_never_removed(tmp_path):
    directory = tmp_path / "one"
    try:
        local, cluster = start_metaroot_only(directory, 1)
        leader_status(local)
        before = (directory / "cluster.json").read_bytes()
        err = one_line_error(cluster.run("metaroot", "remove-peer", "1"))
        assert "last voter" in err, err
        assert (directory / "cluster.json").read_bytes() == before
        assert local.pid("metaroot-1") is not None
        assert leader_status(local).voters == (1,)
        # one change at a time per directory: a running one holds the lock
        with open(directory / ".metaroot-change.lock", "a") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            err = one_line_error(cluster.run("metaroot", "add-peer"))
        assert "another `nokv metaroot` change runs" in err, err
        assert (directory / "cluster.json").read_bytes() == before
    finally:
        kill_leftovers(directory)
