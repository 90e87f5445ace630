"""The ready-loop driver's held applies and lazy commit broadcast, on real LMDB environments.

Three in-process drivers (one fsynced LMDB environment each) host one group whose state
machine is a register: each normal entry overwrites key b"reg". Messages go straight from one
driver to another (copied, as a network would). Checks:
  - a turn that only applies plain writes is held and shares the next turn's fsync: a
    sequential writer costs about one transaction per write on every node, not two;
  - a reader of the applied index, another writer of the environment (ordered after the held
    writes) and the flush delay each release a held apply;
  - followers learn the commit index without an empty append per commit, and still apply
    everything once the leader goes quiet.
"""

from __future__ import annotations

import copy
import struct
from contextlib import contextmanager

import pytest
import trio

from nokvpy.raft.types import EntryType, SnapshotTemporarilyUnavailableError
from nokvpy.replication.driver import Driver
from nokvpy.storage import Env, RaftLogStore, WriteBatch

GROUP = 7
KEY = b"reg"


class Register:
    """A state machine holding one register (the last normal entry's data)."""

    def __init__(self, env: Env):
        self.env = env
        self.applied = 0
        self._staged = 0
        self._plain = False
        self.commits = 0

    def applied_index(self) -> int:
        return self.applied

    def stage_apply(self, batch: WriteBatch, entries):
        self._plain = True
        for e in entries:
            if e.type == EntryType.NORMAL:
                if e.data:
                    batch.put("kv", KEY, e.data)
            else:
                self._plain = False
        batch.put("kv", b"applied", struct.pack(">Q", entries[-1].index))
        self._staged = entries[-1].index
        return [e.index for e in entries]

    def after_commit(self, entries, results) -> None:
        self.applied = self._staged
        self.commits += 1

    def apply_deferrable(self) -> bool:
        return self._plain

    def value(self) -> bytes | None:
        return self.env.get("kv", KEY)

    def snapshot(self):
        raise SnapshotTemporarilyUnavailableError("not in this test")

    def stage_restore(self, batch, snapshot) -> None:
        raise AssertionError("no snapshots in this test")

    def on_conf_change(self, cc, conf_state) -> None:
        pass


class Node:
    def __init__(self, nid: int, env: Env, driver: Driver, group, sm: Register):
        self.nid, self.env, self.driver, self.group, self.sm = nid, env, driver, group, sm


async def start_cluster(nursery: trio.Nursery, root, *,
                        flush_delay: float,
                        heartbeat_tick: int = 1) -> tuple[Node, dict[int, Node]]:
    nodes: dict[int, Node] = {}

    def sender(frm: int):
        def send(envelopes):
            for gid, to, msg, _epoch in envelopes:
                node = nodes.get(to)
                if node is not None:
                    node.driver.step(gid, copy.deepcopy(msg))
        return send

    for nid in (1, 2, 3):
        env = Env.open(root / f"n{nid}")
        raftlog = RaftLogStore(env)
        driver = Driver(env, raftlog, sender(nid), tick_interval=0.02,
                        commit_flush_delay=flush_delay)
        sm = Register(env)
        group = driver.add_group(GROUP, nid, raftlog.group(GROUP), sm, route=lambda p: p,
                                 election_tick=max(10, 3 * heartbeat_tick),
                                 heartbeat_tick=heartbeat_tick, lazy_commit_broadcast=True)
        group.early_ack = True
        group.node.bootstrap([1, 2, 3])
        nodes[nid] = Node(nid, env, driver, group, sm)
    for node in nodes.values():
        await nursery.start(node.driver.run)
    nodes[1].driver.campaign(nodes[1].group)
    with _explain(nodes), trio.fail_after(10):
        while True:
            leaders = [n for n in nodes.values() if n.group.is_leader]
            if leaders:
                break
            await trio.sleep(0.01)
        leader = leaders[0]  # usually node 1; another node's timer may fire first
        # The new leader's empty entry applies everywhere before the tests measure anything.
        index, _ = await leader.driver.propose_at(leader.group, b"")
        for node in nodes.values():
            await node.driver.wait_applied(node.group, index)
    return leader, nodes


@contextmanager
def _explain(nodes: dict[int, Node]):
    """On a timeout, say where each node is (role, indexes, held batch, counters)."""
    try:
        yield
    except trio.TooSlowError:
        lines = []
        for nid, node in nodes.items():
            g, log = node.group, node.group.node.raft.raft_log
            lines.append(f"node {nid}: {g.role.name} lead={g.leader_id} applied={g.applied} "
                         f"committed={log.committed} last={log.last_index()} "
                         f"held={node.driver._deferred is not None} "
                         f"counters={dict(node.driver.counters)}")
        raise AssertionError("timed out:\n" + "\n".join(lines)) from None


@pytest.fixture
async def quiet_cluster(nursery, tmp_path):
    """Held applies are only flushed by readers and writers (the delay is very long)."""
    leader, _ = await start_cluster(nursery, tmp_path, flush_delay=3600.0)
    return leader


async def test_sequential_writes_cost_one_transaction_per_write_on_every_node(nursery, tmp_path):
    leader, nodes = await start_cluster(nursery, tmp_path, flush_delay=0.05)
    before = {nid: n.env.stats.transactions for nid, n in nodes.items()}
    writes = 40
    with trio.fail_after(30):
        for i in range(writes):
            await leader.driver.propose(leader.group, b"v%d" % i)
    # Ticks (heartbeats) persist nothing; a few extra transactions come from the flushes at
    # the end. Without holding and the lazy broadcast this is ~2 per write on every node.
    for nid, node in nodes.items():
        used = node.env.stats.transactions - before[nid]
        assert used <= writes + 6, f"node {nid}: {used} transactions for {writes} writes"
    assert leader.driver.counters["applies_held"] >= writes // 2
    # Nothing is lost: every node ends with the last value once it is flushed.
    last = leader.group.node.raft.raft_log.last_index()
    with trio.fail_after(10):
        for node in nodes.values():
            await node.driver.wait_applied(node.group, last)
    assert {n.sm.value() for n in nodes.values()} == {b"v%d" % (writes - 1)}


async def test_a_reader_of_the_applied_index_releases_a_held_apply(quiet_cluster):
    leader = quiet_cluster
    index, _ = await leader.driver.propose_at(leader.group, b"x")
    # Acknowledged (the entry is durable on a quorum) but its apply is held back.
    assert leader.group.applied < index
    assert leader.driver._deferred is not None
    with trio.fail_after(5):
        await leader.driver.wait_applied(leader.group, index)
    assert leader.sm.value() == b"x"
    assert leader.driver._deferred is None


async def test_another_writer_commits_after_the_held_apply(quiet_cluster):
    leader = quiet_cluster
    index, _ = await leader.driver.propose_at(leader.group, b"from-raft")
    assert leader.driver._deferred is not None and leader.group.applied < index
    batch = WriteBatch()
    batch.put("kv", KEY, b"from-outside")
    with trio.fail_after(5):
        await leader.env.commit(batch)
    # The held batch went first (staging order), so the outside write wins, and the held
    # apply was finished: the applied index moved.
    assert leader.sm.value() == b"from-outside"
    assert leader.driver.counters["applies_released"] == 1
    with trio.fail_after(5):
        while leader.group.applied < index:
            await trio.sleep(0.01)


async def test_the_flush_delay_releases_held_applies_and_tells_followers(nursery, tmp_path):
    # heartbeats 1 s apart: none carries the commit index first, even on a loaded host
    leader, nodes = await start_cluster(nursery, tmp_path, flush_delay=0.01, heartbeat_tick=50)
    index, _ = await leader.driver.propose_at(leader.group, b"quiet")
    # No reader, no further write: the delay alone flushes the leader's apply and sends the
    # commit index to the followers, which then apply too.
    with trio.fail_after(5):
        for node in nodes.values():
            while node.group.applied < index:
                await trio.sleep(0.005)
    assert {n.sm.value() for n in nodes.values()} == {b"quiet"}
    assert leader.driver.counters["commit_flushes"] >= 1


async def test_membership_entries_are_never_held(quiet_cluster):
    """A batch holding anything but plain writes commits at once (nothing waits on a
    reader to flush it)."""
    leader = quiet_cluster
    sm = leader.sm
    sm_stage = sm.stage_apply

    def not_plain(batch, entries):
        out = sm_stage(batch, entries)
        sm._plain = False
        return out

    sm.stage_apply = not_plain
    index, _ = await leader.driver.propose_at(leader.group, b"admin-like")
    with trio.fail_after(5):
        while leader.group.applied < index:
            await trio.sleep(0.005)
    assert leader.driver._deferred is None


def test_only_an_apply_of_a_held_group_forces_the_held_batch_out():
    """Another region's apply joins the held batch (disjoint keys); the same group's next
    apply (unless its state machine stages ahead of held applies), or any snapshot, makes
    the held batch commit first."""
    from types import SimpleNamespace as NS

    class G:  # hashable, like a Group
        def __init__(self, sm):
            self.sm = sm

    held_group, other = G(NS()), G(NS())
    ahead = G(NS(stages_ahead=True))
    held = (WriteBatch(), [(held_group, None, [], []), (ahead, None, [], [])])
    plain = NS(committed_entries=[1], snapshot=None)
    entries_only = NS(committed_entries=[], snapshot=None)
    snap = NS(committed_entries=[], snapshot=NS(is_empty=lambda: False))
    assert not Driver._needs_held_durable(held, [(other, plain)])
    assert not Driver._needs_held_durable(held, [(held_group, entries_only)])
    assert Driver._needs_held_durable(held, [(other, plain), (held_group, plain)])
    assert not Driver._needs_held_durable(held, [(ahead, plain)])
    assert Driver._needs_held_durable(held, [(ahead, snap)])
    assert Driver._needs_held_durable(held, [(other, snap)])


async def test_on_commit_reports_each_entry_once_before_its_result(quiet_cluster):
    """`propose_at(on_commit=...)`: called exactly once per proposal, with the entry's index,
    no later than the proposal's result (ExecutionOutcome.COMMITTED before APPLIED)."""
    leader = quiet_cluster
    seen: list[tuple[str, int]] = []
    for i in range(5):
        index, _ = await leader.driver.propose_at(
            leader.group, b"c%d" % i, on_commit=lambda idx: seen.append(("commit", idx)))
        seen.append(("result", index))
    assert [kind for kind, _ in seen] == ["commit", "result"] * 5
    assert all(seen[i][1] == seen[i + 1][1] for i in range(0, 10, 2)), seen
