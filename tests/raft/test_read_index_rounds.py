"""ReadIndex heartbeat rounds owned by the leader (Raft thesis section 6.4).

A read is confirmed by a quorum answering a heartbeat the leader sent *after* the read arrived.
The caller's context cannot tell that: each driver numbers its contexts from 1, so contexts
from different nodes (or a delayed answer to an earlier read) collide. The leader therefore
tags each heartbeat round with its own counter; the caller's context only routes the answer.
"""

from __future__ import annotations

import pytest

from nokvpy.raft import MessageType, StateType, read_only
from nokvpy.raft.read_only import decode_round

from .network import Network, elected

MT = MessageType



def depose_with_delayed_ack(net: Network) -> tuple[int, int]:
    """The collision schedule. Follower 2 reads ctx b"1" through leader 1; node 3's answer to
    that heartbeat round is delayed. Leader 1 is cut off (and not ticked, so check-quorum has
    not yet noticed); 2 and 3 elect a new leader, which commits more. Returns
    (old leader's commit index, new leader's commit index)."""
    net.hold(lambda m: m.type == MT.HEARTBEAT_RESP and m.frm == 3 and bool(m.context))
    net.nodes[2].rn.read_index(b"1")
    net.stabilize()
    net.stop_holding()
    assert [rs.request_ctx for rs in net.nodes[2].read_states] == [b"1"]
    assert len(net.held) == 1
    old_commit = net.nodes[1].raft.raft_log.committed

    net.isolate(1)
    for _ in range(60):
        net.tick(2)
        net.tick(3)
        if [i for i in (2, 3) if net.nodes[i].state == StateType.LEADER]:
            break
    [new] = [i for i in (2, 3) if net.nodes[i].state == StateType.LEADER]
    net.propose(new, b"after-1")
    net.propose(new, b"after-2")
    new_commit = net.nodes[new].raft.raft_log.committed
    assert new_commit > old_commit
    assert net.nodes[1].state == StateType.LEADER  # deposed, and does not know it yet
    assert net.nodes[1].term < net.nodes[new].term
    return old_commit, new_commit


def test_delayed_ack_of_an_earlier_round_does_not_confirm_a_later_read_with_the_same_ctx():
    """init: the collision schedule (see depose_with_delayed_ack); act: a client on the deposed
    leader reads with the same ctx b"1", then the delayed answer arrives; check: no ReadState.
    The answer is for the heartbeat sent before this read arrived, so it proves nothing."""
    net = elected()
    depose_with_delayed_ack(net)
    net.nodes[1].rn.read_index(b"1")
    net.stabilize()
    assert net.nodes[1].read_states == []
    assert len(net.deliver_held()) == 1
    assert net.nodes[1].read_states == []


def test_unsafe_switch_restores_matching_by_context(monkeypatch):
    """NOKV_UNSAFE_READINDEX=1 (test only) matches acks by the caller's context again: the same
    schedule then yields a stale read on the deposed leader."""
    monkeypatch.setattr(read_only, "UNSAFE_MATCH_BY_CONTEXT", True)
    net = elected()
    old_commit, new_commit = depose_with_delayed_ack(net)
    net.nodes[1].rn.read_index(b"1")
    net.stabilize()
    net.deliver_held()
    [rs] = net.nodes[1].read_states
    assert rs.request_ctx == b"1" and rs.index == old_commit < new_commit


def test_round_tags_heartbeats_and_is_echoed():
    """The heartbeat carries the leader's round (leader-private bytes), the answer echoes it."""
    net = elected()
    net.delivered.clear()
    net.nodes[1].rn.read_index(b"x")
    net.stabilize()
    beats = [m for m in net.delivered if m.type == MT.HEARTBEAT]
    resps = [m for m in net.delivered if m.type == MT.HEARTBEAT_RESP]
    r = net.nodes[1].raft.read_round
    assert r >= 1
    assert {decode_round(m.context) for m in beats} == {r}
    assert {decode_round(m.context) for m in resps} == {r}
    assert all(m.context != b"x" for m in beats)


def test_same_ctx_from_two_nodes_is_kept_and_answered_separately():
    net = elected()
    net.nodes[1].rn.read_index(b"1")
    net.nodes[3].rn.read_index(b"1")
    net.stabilize()
    commit = net.nodes[1].raft.raft_log.committed
    assert [(rs.index, rs.request_ctx) for rs in net.nodes[1].read_states] == [(commit, b"1")]
    assert [(rs.index, rs.request_ctx) for rs in net.nodes[3].read_states] == [(commit, b"1")]


def test_two_pending_reads_with_the_same_ctx_on_one_node_both_answered():
    net = elected()
    net.isolate(1)
    net.nodes[1].rn.read_index(b"1")
    net.nodes[1].rn.read_index(b"1")
    net.stabilize()
    assert net.nodes[1].read_states == []
    net.recover()
    net.tick(1)  # the periodic heartbeat carries the newest round
    assert [rs.request_ctx for rs in net.nodes[1].read_states] == [b"1", b"1"]


def test_quorum_ack_of_a_later_round_confirms_earlier_reads():
    """Read a's round is lost entirely; read b's round confirms both (in arrival order)."""
    net = elected()
    net.ignore(MT.HEARTBEAT)
    net.nodes[1].rn.read_index(b"a")
    net.stabilize()
    net.recover()
    net.nodes[1].rn.read_index(b"b")
    net.stabilize()
    assert [rs.request_ctx for rs in net.nodes[1].read_states] == [b"a", b"b"]


def test_ack_from_one_follower_is_not_a_quorum_in_five():
    net = elected(ids=(1, 2, 3, 4, 5))
    for i in (3, 4, 5):
        net.isolate(i)
    net.nodes[1].rn.read_index(b"r")
    net.stabilize()
    assert net.nodes[1].read_states == []  # leader + node 2 = 2 of 5
    net.recover()
    net.tick(1)
    assert [rs.request_ctx for rs in net.nodes[1].read_states] == [b"r"]


def test_round_counter_is_not_reset_across_terms():
    net = elected()
    net.nodes[1].rn.read_index(b"r")
    net.stabilize()
    before = net.nodes[1].raft.read_round
    net.nodes[1].rn.transfer_leader(2)
    net.stabilize()
    net.nodes[2].rn.transfer_leader(1)
    net.stabilize()
    assert net.leader() == 1
    net.nodes[1].rn.read_index(b"r")
    net.stabilize()
    assert net.nodes[1].raft.read_round > before


def test_heartbeat_with_round_round_trips_through_the_wire_codec():
    from nokvpy.wire import decode, encode

    net = elected()
    net.delivered.clear()
    net.nodes[1].rn.read_index(b"x")
    net.stabilize()
    for m in net.delivered:
        if m.type in (MT.HEARTBEAT, MT.HEARTBEAT_RESP):
            assert decode(encode(m)) == m


@pytest.mark.parametrize("ctx", [b"", b"abc", b"\x00" * 7, b"\x00" * 9])
def test_decode_round_refuses_foreign_contexts(ctx):
    assert decode_round(ctx) is None
