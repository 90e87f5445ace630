"""The RawNode contract: what a Ready carries, the one-outstanding-Ready rule, local message
types, status, bootstrap, and lease revocation on leader transfer."""

from __future__ import annotations

import random

import pytest

from nokvpy.raft import (
    Config,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadOnlyOption,
    StateType,
)

from .network import Network

MT = MessageType


def test_step_rejects_local_message_types():
    rn = RawNode(Config(1, MemoryStorage(), rng=random.Random(1)))
    for t in (MT.HUP, MT.BEAT, MT.CHECK_QUORUM, MT.UNREACHABLE, MT.SNAP_STATUS):
        with pytest.raises(ValueError):
            rn.step(Message(t, to=1, frm=2, term=1))


def test_bootstrap_first_ready_and_must_sync():
    rn = RawNode(Config(1, MemoryStorage(), rng=random.Random(1)))
    rn.bootstrap([1, 2, 3])
    assert rn.has_ready()
    rd = rn.ready()
    assert [e.index for e in rd.entries] == [1, 2, 3]
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert rd.hard_state is not None and rd.hard_state.commit == 3 and rd.hard_state.term == 1
    assert rd.must_sync
    with pytest.raises(RuntimeError):
        rn.ready()  # one outstanding Ready at a time
    rn.raft.raft_log.storage.append(rd.entries)
    rn.advance(rd)
    assert not rn.has_ready()
    with pytest.raises(RuntimeError):
        rn.bootstrap([1])


def test_soft_and_hard_state_only_when_changed():
    net = Network([1, 2, 3])
    n = net.nodes[1]
    n.rn.campaign()
    rd = n.rn.ready()
    assert rd.soft_state is not None and rd.soft_state.raft_state == StateType.PRE_CANDIDATE
    n.storage.append(rd.entries)
    n.rn.advance(rd)
    n.rn.tick()
    if n.rn.has_ready():
        rd = n.rn.ready()
        assert rd.soft_state is None
        n.rn.advance(rd)


def test_status_reports_progress_on_leader():
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    s = net.nodes[1].rn.status()
    assert s.state == StateType.LEADER and s.lead == 1 and s.commit == s.applied
    assert set(s.progress) == {1, 2, 3}
    assert all(p.match == s.last_index for p in s.progress.values())
    assert s.conf_state.voters == (1, 2, 3)
    assert net.nodes[2].rn.status().progress == {}


def test_leader_transfer_revokes_lease():
    """Once TimeoutNow is sent the transferee may win without waiting for our lease, so the
    old leader must not answer lease reads any more."""
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.tick_all(10)
    net.campaign(1)
    net.tick(1)
    assert net.nodes[1].raft.lease_valid()
    net.ignore(MT.TIMEOUT_NOW)
    net.nodes[1].rn.transfer_leader(2)
    net.stabilize()
    assert net.nodes[1].raft.lease_revoked and not net.nodes[1].raft.lease_valid()


def test_no_new_leader_while_old_lease_is_valid():
    """The lease argument (Raft thesis 6.4.1 / 4.2.3): followers refuse votes for an election
    timeout after hearing from the leader, so with equal tick rates no other node can be
    elected while the isolated old leader still believes its lease."""
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.tick_all(10)
    net.campaign(1)
    net.tick_all(1)
    assert net.nodes[1].raft.lease_valid()
    net.isolate(1)
    others_elected = False
    for _ in range(40):
        net.tick_all(1)
        if any(net.nodes[i].state == StateType.LEADER for i in (2, 3)):
            others_elected = True
            assert not net.nodes[1].raft.lease_valid()
    assert others_elected


def test_report_unreachable_moves_replicating_peer_to_probe():
    from nokvpy.raft import ProgressState

    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    assert net.nodes[1].raft.prs.progress[2].state == ProgressState.REPLICATE
    net.nodes[1].rn.report_unreachable(2)
    assert net.nodes[1].raft.prs.progress[2].state == ProgressState.PROBE


def test_uncommitted_size_limit_drops_proposals():
    from nokvpy.raft import ProposalDroppedError

    net = Network([1, 2, 3], max_uncommitted_entries_size=100)
    net.campaign(1)
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].rn.propose(b"x" * 60)
    with pytest.raises(ProposalDroppedError):
        net.nodes[1].rn.propose(b"y" * 60)
