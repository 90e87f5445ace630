"""The Ready contract the core owns (rawnode.py): which messages may leave before a Ready is
persisted (`early_messages`, with Config.early_messages) and which wait (`messages`), and
`must_sync`; plus the RawNode API callers use instead of reaching into the core (bootstrap
with a context, propose_at, lease_read_index, statuses) and the conf-change fold."""

from __future__ import annotations

import random
from collections import deque

import pytest

from nokvpy.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    RawNode,
    ReadOnlyOption,
    StateType,
    conf_state_after,
    next_conf_state,
)

from .network import Network

MT = MessageType


class Cluster:
    """Three RawNodes whose Readys are handled by the contract: early messages are queued
    before the persist, the others after it; every Ready is recorded with what the node
    had persisted before it."""

    def __init__(self, early: bool):
        self.disks = {i: MemoryStorage() for i in (1, 2, 3)}
        self.nodes = {i: RawNode(Config(i, self.disks[i], rng=random.Random(i),
                                        early_messages=early)) for i in (1, 2, 3)}
        for rn in self.nodes.values():
            rn.bootstrap([1, 2, 3])
        self.wire: deque = deque()
        self.sent: list = []  # every message in send order
        self.readies: list = []  # (node id, state, persisted (term, vote), Ready)

    def handle(self, nid: int) -> bool:
        rn, disk = self.nodes[nid], self.disks[nid]
        if not rn.has_ready():
            return False
        rd = rn.ready()
        hs, _ = disk.initial_state()
        self.readies.append((nid, rn.raft.state, (hs.term, hs.vote), rd))
        for m in rd.early_messages:
            self.wire.append(m)
            self.sent.append(m)
        if rd.snapshot is not None:
            disk.apply_snapshot(rd.snapshot)
        disk.append(rd.entries)
        if rd.hard_state is not None:
            disk.set_hard_state(rd.hard_state)
        for m in rd.messages:
            self.wire.append(m)
            self.sent.append(m)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                rn.apply_conf_change(ConfChange.decode(e.data))
        rn.advance(rd)
        return True

    def stabilize(self) -> None:
        while True:
            busy = any([self.handle(i) for i in self.nodes])
            while self.wire:
                m = self.wire.popleft()
                self.nodes[m.to].step(m)
                busy = True
            if not busy:
                return


def scenario(early: bool) -> Cluster:
    c = Cluster(early)
    c.stabilize()
    c.nodes[1].campaign()
    c.stabilize()
    for i in range(5):
        c.nodes[1].propose(b"v%d" % i)
        c.stabilize()
    for _ in range(3):
        c.nodes[1].tick()  # heartbeats (heartbeat_tick 1)
        c.stabilize()
    c.nodes[2].propose(b"forwarded")  # a follower forwards a PROP
    c.stabilize()
    return c


def test_early_messages_vouch_for_nothing_the_ready_persists():
    c = scenario(early=True)
    assert c.nodes[1].raft.state == StateType.LEADER
    early_kinds: set[MessageType] = set()
    for _, state, persisted_tv, rd in c.readies:
        hs = rd.hard_state
        tv_changed = hs is not None and (hs.term, hs.vote) != persisted_tv
        assert not (rd.early_messages and rd.messages), "a Ready's messages are not split"
        assert rd.must_sync == (tv_changed or bool(rd.entries) or rd.snapshot is not None)
        if not rd.early_messages:
            continue
        assert not tv_changed and rd.snapshot is None
        if rd.entries:
            assert state == StateType.LEADER
            assert {m.type for m in rd.early_messages} <= {MT.APP, MT.HEARTBEAT}
        early_kinds.update(m.type for m in rd.early_messages)
        assert not any(m.type in (MT.VOTE, MT.VOTE_RESP) for m in rd.early_messages)
    # the leader's appends of new entries leave before its own write...
    assert any(rd.early_messages and rd.entries for _, _, _, rd in c.readies)
    assert MT.HEARTBEAT in early_kinds and MT.HEARTBEAT_RESP in early_kinds
    # ...a vote, a vote response and a follower's ack of new entries never do
    late = [m for _, _, _, rd in c.readies for m in rd.messages]
    assert {MT.VOTE, MT.VOTE_RESP} <= {m.type for m in late}
    assert any(rd.messages and rd.entries and state == StateType.FOLLOWER
               and all(m.type == MT.APP_RESP for m in rd.messages)
               for _, state, _, rd in c.readies)


def test_without_the_switch_every_message_waits_and_the_split_only_partitions():
    off, on = scenario(early=False), scenario(early=True)
    assert all(not rd.early_messages for _, _, _, rd in off.readies)
    assert off.sent == on.sent  # same messages, same order: only the timing may differ
    assert sum(len(rd.early_messages) for _, _, _, rd in on.readies) > 0


def test_bootstrap_context_rides_in_the_first_entry_only():
    rn = RawNode(Config(1, MemoryStorage(), rng=random.Random(1)))
    rn.bootstrap([1, 2, 3], context=b"descriptor")
    rd = rn.ready()
    ccs = [ConfChange.decode(e.data) for e in rd.entries]
    assert [(cc.type, cc.node_id, cc.context) for cc in ccs] == [
        (ConfChangeType.ADD_NODE, 1, b"descriptor"),
        (ConfChangeType.ADD_NODE, 2, b""),
        (ConfChangeType.ADD_NODE, 3, b""),
    ]
    plain = RawNode(Config(1, MemoryStorage(), rng=random.Random(1)))
    plain.bootstrap([1, 2, 3])
    assert [e.data for e in plain.ready().entries[1:]] == [e.data for e in rd.entries[1:]]


def test_propose_at_returns_the_entry_or_says_why_not():
    net = Network([1, 2, 3])
    net.campaign(1)
    with pytest.raises(NotLeaderError) as err:
        net.nodes[2].rn.propose_at(b"x")
    assert err.value.leader_hint == 1
    leader = net.nodes[1].rn
    index, term = leader.propose_at(b"x")
    st = leader.basic_status()
    assert (index, term) == (st.last_index, st.term)
    leader.propose_at(ConfChange(ConfChangeType.ADD_LEARNER, 4).encode(), conf_change=True)
    with pytest.raises(ProposalDroppedError, match="pending conf change"):
        leader.propose_at(ConfChange(ConfChangeType.ADD_LEARNER, 5).encode(), conf_change=True)
    with pytest.raises(ValueError):
        leader.propose_at(b"?", conf_change=True)


def test_lease_read_index_and_statuses():
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.tick_all(10)
    net.campaign(1)
    leader, follower = net.nodes[1].rn, net.nodes[2].rn
    assert follower.lease_read_index() is None
    net.tick(1)  # heartbeat answers establish the lease
    st = leader.status()
    assert leader.lease_read_index() == st.commit == leader.basic_status().commit
    assert st.committed_in_term and st.lead == 1 and st.state == StateType.LEADER
    assert {pid: (p.match, p.is_learner) for pid, p in st.progress.items()} == {
        1: (st.last_index, False), 2: (st.last_index, False), 3: (st.last_index, False)}
    assert follower.status().progress == {}
    safe = Network([1, 2, 3])
    safe.campaign(1)
    safe.tick(1)
    assert safe.nodes[1].rn.lease_read_index() is None  # SAFE reads never use a lease


def test_conf_change_fold():
    cs = ConfState((1, 2, 3), ())
    add = ConfChange(ConfChangeType.ADD_LEARNER, 4)
    assert next_conf_state(cs, add) == ConfState((1, 2, 3), (4,))
    assert next_conf_state(cs, ConfChange(ConfChangeType.ADD_LEARNER, 2)) == cs
    promote = ConfChange(ConfChangeType.ADD_NODE, 4)
    remove = ConfChange(ConfChangeType.REMOVE_NODE, 1)
    ents = [Entry(1, 5, EntryType.CONF_CHANGE, add.encode()), Entry(1, 6, EntryType.NORMAL, b"x"),
            Entry(1, 7, EntryType.CONF_CHANGE, promote.encode()),
            Entry(1, 8, EntryType.CONF_CHANGE, remove.encode()), Entry(1, 9)]
    assert conf_state_after(cs, ents) == (8, ConfState((2, 3, 4), ()))
    assert conf_state_after(cs, ents[1:2]) is None
