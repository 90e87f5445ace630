"""Regression tests for core defects: removing the last voter (etcd refuses it: "removed all
voters") and a stale append rejection moving a probing follower's next below match + 1."""

from __future__ import annotations

import pytest

from nokvpy.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    MessageType,
    ProgressState,
    ProposalDroppedError,
    StateType,
)
from nokvpy.raft.progress import Progress

from .network import change, elected

MT = MessageType




# -- removing the last voter -----------------------------------------------------------------


def test_removing_the_only_voter_is_refused_at_proposal():
    """A group without voters can never elect again: the leader refuses the proposal."""
    net = elected(ids=(1,))
    with pytest.raises(ProposalDroppedError) as ei:
        net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert "last voter" in ei.value.reason
    net.stabilize()
    assert net.conf(1) == ConfState((1,), ())
    assert net.nodes[1].state == StateType.LEADER


def test_removing_down_to_one_voter_then_the_last_is_refused():
    net = elected(ids=(1, 2))
    change(net, 1, ConfChangeType.REMOVE_NODE, 2)
    assert net.conf(1).voters == (1,)
    with pytest.raises(ProposalDroppedError, match="last voter"):
        net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))


def test_last_voter_with_learners_cannot_be_removed_but_a_learner_can():
    net = elected(ids=(1,))
    net.add_node(2)
    change(net, 1, ConfChangeType.ADD_LEARNER, 2)
    assert net.conf(1) == ConfState((1,), (2,))
    with pytest.raises(ProposalDroppedError, match="last voter"):
        net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    change(net, 1, ConfChangeType.REMOVE_NODE, 2)
    assert net.conf(1) == ConfState((1,), ())


def test_committed_removal_of_the_last_voter_is_a_no_op_on_every_replica():
    """init: voter 1, learner 2, and a REMOVE_NODE 1 entry already in the log (written by an
    older version, or proposed around the check); act: it commits and both apply it; check:
    every replica keeps the config and the group keeps working."""
    net = elected(ids=(1,))
    net.add_node(2)
    change(net, 1, ConfChangeType.ADD_LEARNER, 2)
    r = net.nodes[1].raft
    cc = ConfChange(ConfChangeType.REMOVE_NODE, 1)
    r.append_entry([Entry(r.term, r.raft_log.last_index() + 1, EntryType.CONF_CHANGE, cc.encode())])
    r.bcast_pending = True
    net.stabilize()
    for i in (1, 2):
        assert net.nodes[i].applied[-1].data == cc.encode()
        assert net.nodes[i].conf_state == ConfState((1,), (2,))
        assert net.conf(i) == ConfState((1,), (2,))
    assert net.nodes[1].state == StateType.LEADER
    net.propose(1, b"still-working")
    assert net.nodes[2].applied_data() == [b"still-working"]


def test_apply_conf_change_refuses_to_empty_the_voters_directly():
    net = elected(ids=(1,))
    cs = net.nodes[1].rn.apply_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    assert cs == ConfState((1,), ())
    assert net.nodes[1].state == StateType.LEADER


# -- stale append rejections -----------------------------------------------------------------


def test_probe_rejection_at_match_is_stale():
    """The follower holds [1, match]: a rejection of an append at index <= match is stale."""
    pr = Progress(10, 11, 4)
    assert pr.state == ProgressState.PROBE
    assert not pr.maybe_decr_to(10, 3)
    assert (pr.match, pr.next) == (10, 11)


def test_probe_rejection_hint_below_match_keeps_next_above_match():
    pr = Progress(5, 11, 4)
    assert pr.maybe_decr_to(10, 2)
    assert pr.next == 6  # not 3: entries up to 5 are known to be there


def test_probe_rejection_above_match_backs_off_to_hint():
    pr = Progress(5, 11, 4)
    assert pr.maybe_decr_to(10, 7)
    assert pr.next == 8


def test_replicate_rejection_at_or_below_match_is_stale():
    pr = Progress(5, 6, 4)
    pr.become_replicate()
    pr.optimistic_update(9)
    assert not pr.maybe_decr_to(5, 1)
    assert pr.next == 10
    assert pr.maybe_decr_to(7, 1)
    assert pr.next == 6


def test_stale_rejection_after_report_unreachable_keeps_next_above_match():
    """init: follower 2 at index a, replicating; two appends to it are reordered: the second
    (prev a+1) arrives first and is rejected (the rejection is delayed), then the first (prev a)
    is accepted, so match = a+1; act: report_unreachable(2) (REPLICATE -> PROBE, next = a+2),
    then the delayed rejection of index a+1 arrives; check: it is stale, next stays a+2."""
    net = elected()
    a = net.nodes[2].raft.raft_log.last_index()
    pr = net.nodes[1].raft.prs.progress[2]
    assert pr.state == ProgressState.REPLICATE and pr.match == a
    net.hold(lambda m: m.type == MT.APP and m.to == 2)
    net.propose(1, b"x")  # prev a, [a+1]
    net.propose(1, b"y")  # prev a+1, [a+2]
    net.stop_holding()
    held = net.held
    net.held = []
    first = next(m for m in held if m.index == a and m.entries)
    second = next(m for m in held if m.index == a + 1 and m.entries)
    n2 = net.nodes[2]
    n2.rn.step(second)
    [rejection] = n2.handle_ready()
    assert rejection.type == MT.APP_RESP and rejection.reject and rejection.index == a + 1
    n2.rn.step(first)
    [ok] = [m for m in n2.handle_ready() if m.type == MT.APP_RESP]
    assert not ok.reject and ok.index == a + 1
    net.nodes[1].rn.step(ok)
    assert pr.match == a + 1
    net.nodes[1].rn.report_unreachable(2)
    assert pr.state == ProgressState.PROBE and pr.next == a + 2
    net.nodes[1].rn.step(rejection)
    assert pr.next == a + 2
    assert pr.next >= pr.match + 1
    net.stabilize()
    net.tick(1)
    assert net.nodes[2].applied_data() == [b"x", b"y"]
