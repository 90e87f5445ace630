"""Features beyond the core paper: pre-vote and check-quorum (Raft thesis 9.6 / 6.2), leader
transfer (thesis 3.10), ReadIndex and leases (thesis 6.4), snapshots (paper section 7) and
membership changes (paper section 6 / thesis 4.1 single-server changes)."""

from __future__ import annotations

import pytest

from nokvpy.raft import (
    ConfChange,
    ConfChangeType,
    MessageType,
    ProgressState,
    ProposalDroppedError,
    ReadOnlyOption,
    StateType,
)

from .network import Network, change, elected

MT = MessageType




# -- pre-vote and check-quorum ---------------------------------------------------------------


def test_prevote_isolated_node_does_not_inflate_term_or_disrupt():
    """Raft thesis section 9.6: with pre-vote, a partitioned server cannot win a pre-vote so it
    never bumps its term; when it rejoins the leader keeps leading."""
    net = elected()
    term = net.nodes[1].term
    net.isolate(3)
    net.tick(3, 100)
    assert net.nodes[3].term == term
    assert net.nodes[3].state == StateType.PRE_CANDIDATE
    net.recover()
    net.tick(1)  # heartbeat
    assert net.leader() == 1 and all(n.term == term for n in net.nodes.values())
    assert net.nodes[3].state == StateType.FOLLOWER


def test_without_prevote_rejoining_node_disrupts():
    """Contrast (thesis 9.6): without pre-vote or check-quorum the rejoining node's higher term
    deposes the leader."""
    net = elected(pre_vote=False, check_quorum=False)
    net.isolate(3)
    net.tick(3, 100)
    assert net.nodes[3].term > net.nodes[1].term
    net.recover()
    net.tick(3, 40)
    assert net.nodes[1].state != StateType.LEADER or net.nodes[1].term == net.nodes[3].term


def test_check_quorum_leader_steps_down_when_isolated():
    """Raft thesis section 6.2: a leader that has not heard from a majority within an election
    timeout steps down."""
    net = elected()
    net.isolate(1)
    net.tick(1, 10)  # the first check still sees answers from the last round
    assert net.nodes[1].state == StateType.LEADER
    net.tick(1, 10)
    assert net.nodes[1].state == StateType.FOLLOWER


def test_check_quorum_follower_ignores_vote_while_leader_is_alive():
    """Raft thesis section 4.2.3: a server that heard from a current leader within the minimum
    election timeout ignores RequestVote (and does not adopt the higher term)."""
    net = elected(pre_vote=False)
    term = net.nodes[1].term
    net.nodes[3].rn.campaign()  # node 3 jumps the gun
    net.stabilize()
    assert net.nodes[2].term == term and net.nodes[2].raft.vote == 1
    assert net.nodes[3].state != StateType.LEADER


# -- leader transfer -------------------------------------------------------------------------


def test_leader_transfer_to_up_to_date_follower():
    """Raft thesis section 3.10: the leader sends TimeoutNow to an up-to-date target, which
    campaigns at once (bypassing pre-vote and the lease)."""
    net = elected()
    net.propose(1, b"a")
    net.nodes[1].rn.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
    assert any(m.type == MT.TIMEOUT_NOW for m in net.delivered)
    net.propose(2, b"b")
    assert net.nodes[3].applied_data() == [b"a", b"b"]


def test_leader_transfer_catches_up_lagging_target_first():
    net = elected()
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"x%d" % i)
    net.recover()
    net.nodes[1].rn.transfer_leader(3)
    net.stabilize()
    net.tick(1)  # heartbeat un-pauses the probe; the target catches up, then TimeoutNow
    assert net.leader() == 3
    assert net.nodes[3].applied_data()[:5] == [b"x%d" % i for i in range(5)]


def test_leader_transfer_refuses_proposals_then_aborts_after_election_timeout():
    """Thesis 3.10: during a transfer the leader stops accepting client requests; if the
    transfer does not complete within an election timeout it is aborted."""
    net = elected()
    net.isolate(3)
    net.propose(1, b"behind")
    net.nodes[1].rn.transfer_leader(3)
    net.stabilize()
    with pytest.raises(ProposalDroppedError) as ei:
        net.nodes[1].rn.propose(b"refused")
    assert ei.value.reason == "leader transfer in progress"
    net.recover()
    net.isolate(3)
    for _ in range(10):
        net.tick(1)
        net.tick(2)
    assert net.leader() == 1
    assert net.nodes[1].raft.lead_transferee == 0
    net.propose(1, b"accepted")
    assert net.nodes[2].applied_data()[-1] == b"accepted"


def test_transfer_from_follower_is_forwarded_to_leader():
    net = elected()
    net.nodes[3].rn.transfer_leader(3)
    net.stabilize()
    assert net.leader() == 3


# -- ReadIndex -------------------------------------------------------------------------------


def test_read_index_safe_needs_heartbeat_quorum():
    """Raft thesis section 6.4: the leader records its commit index, confirms it is still
    leader with a heartbeat round, and only then answers."""
    net = elected()
    net.propose(1, b"w")
    commit = net.nodes[1].raft.raft_log.committed
    net.isolate(1)
    net.nodes[1].rn.read_index(b"r1")
    net.stabilize()
    assert net.nodes[1].read_states == []
    net.recover()
    net.tick(1)  # the next heartbeat carries the pending read's context
    [rs] = net.nodes[1].read_states
    assert (rs.index, rs.request_ctx) == (commit, b"r1")


def test_read_index_on_follower_is_forwarded():
    net = elected()
    net.propose(2, b"w")
    net.nodes[3].rn.read_index(b"from-3")
    net.stabilize()
    [rs] = net.nodes[3].read_states
    assert rs.request_ctx == b"from-3" and rs.index == net.nodes[1].raft.raft_log.committed
    assert net.nodes[3].applied_index >= rs.index


def test_read_index_waits_for_commit_in_current_term():
    """Thesis 6.4 step 1: a new leader serves reads only after committing an entry of its term
    (its commit index may be stale before that)."""
    net = elected()
    net.nodes[2].raft.read_only  # noqa: B018
    net.ignore(MT.APP_RESP)
    net.tick(1, 10)  # check-quorum still sees heartbeat answers; nothing new commits
    net.nodes[1].rn.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
    assert not net.nodes[2].raft.committed_entry_in_current_term()
    net.nodes[2].rn.read_index(b"early")
    net.stabilize()
    assert net.nodes[2].read_states == []
    net.recover()
    net.tick(2)
    net.stabilize()
    assert [r.request_ctx for r in net.nodes[2].read_states] == [b"early"]
    assert net.nodes[2].raft.committed_entry_in_current_term()


def test_read_index_lease_based_answers_without_heartbeat_round():
    """Thesis 6.4.1: with a valid lease the leader answers immediately."""
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.tick_all(10)  # the start-up lease (no votes for one election timeout) expires
    net.campaign(1)
    assert net.leader() == 1
    net.tick(1)  # heartbeat answers establish the lease
    net.delivered.clear()
    net.nodes[1].rn.read_index(b"lease")
    net.stabilize()
    assert [r.request_ctx for r in net.nodes[1].read_states] == [b"lease"]
    assert not [m for m in net.delivered if m.type == MT.HEARTBEAT]


def test_read_index_lease_expires_when_isolated():
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.tick_all(10)
    net.campaign(1)
    net.tick(1)
    net.isolate(1)
    net.tick(1, 8)  # election timeout 10 minus the 2-tick margin
    net.nodes[1].rn.read_index(b"stale?")
    net.stabilize()
    assert net.nodes[1].read_states == []


def test_lease_based_node_refuses_votes_right_after_start():
    net = Network([1, 2, 3], read_only_option=ReadOnlyOption.LEASE_BASED)
    net.campaign(1)
    assert net.leaders() == []
    net.tick_all(10)
    net.campaign(1)
    assert net.leader() == 1


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_sent_to_follower_behind_compaction_and_restored():
    """Raft paper section 7: when the leader compacted the entries a follower needs, it sends
    InstallSnapshot; the follower replaces its state and continues from there."""
    net = elected()
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"s%d" % i)
    leader = net.nodes[1]
    leader.snapshot_and_compact()
    snap_index = leader.storage.snapshot().metadata.index
    net.recover()
    net.tick(1)
    net.stabilize()
    assert any(m.type == MT.SNAP and m.to == 3 for m in net.delivered)
    f = net.nodes[3]
    assert f.storage.snapshot().metadata.index == snap_index
    assert f.applied_index >= snap_index
    net.propose(1, b"after-snap")
    assert f.applied_data()[-1] == b"after-snap"
    pr = leader.raft.prs.progress[3]
    assert pr.state == ProgressState.REPLICATE and pr.match == leader.raft.raft_log.last_index()


def test_failed_snapshot_is_retried():
    net = elected()
    net.isolate(3)
    for i in range(3):
        net.propose(1, b"s%d" % i)
    net.nodes[1].snapshot_and_compact()
    net.recover()
    net.ignore(MT.SNAP)  # the snapshot is lost; the sender reports failure
    net.tick(1)
    pr = net.nodes[1].raft.prs.progress[3]
    assert pr.state == ProgressState.PROBE
    net.recover()
    net.tick(1)
    assert net.nodes[3].applied_index == net.nodes[1].applied_index


def test_restart_from_snapshot():
    net = elected()
    for i in range(5):
        net.propose(1, b"s%d" % i)
    n2 = net.nodes[2]
    n2.snapshot_and_compact()
    net.restart(2)
    assert net.nodes[2].raft.raft_log.first_index() == n2.storage.snapshot().metadata.index + 1
    net.propose(1, b"more")
    assert net.nodes[2].applied_data() == [b"more"]  # earlier ones are inside the snapshot


# -- membership ------------------------------------------------------------------------------


def test_add_learner_replicates_but_does_not_count_for_quorum():
    """Thesis 4.2.1: a new server joins as a non-voting learner and catches up first."""
    net = elected()
    net.add_node(4)
    change(net, 1, ConfChangeType.ADD_LEARNER, 4)
    net.propose(1, b"x")
    assert net.nodes[4].applied_data() == [b"x"]
    assert net.conf(1).learners == (4,)
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].rn.propose(b"needs-a-voter")
    net.stabilize()
    assert net.nodes[1].applied_data() == [b"x"]  # 1 + learner is not a quorum


def test_learner_does_not_campaign_and_its_vote_does_not_count():
    """Learners never start elections; a candidate counts only votes from its voters."""
    net = Network([1, 2])
    net.campaign(1)
    net.add_node(3)
    change(net, 1, ConfChangeType.ADD_LEARNER, 3)
    net.tick(3, 100)
    assert net.nodes[3].state == StateType.FOLLOWER
    net.isolate(2)
    net.tick(1, 20)  # check-quorum: the learner's answers do not keep 1 in office
    assert net.nodes[1].state == StateType.FOLLOWER
    net.tick(3, 10)  # the learner's lease for the old leader runs out
    net.delivered.clear()
    net.nodes[1].rn.campaign()
    net.stabilize()
    asked = {m.to for m in net.delivered if m.type in (MT.PRE_VOTE, MT.VOTE)}
    assert 3 not in asked  # a candidate canvasses voters only (2 is cut off)
    assert net.nodes[1].state != StateType.LEADER
    # Even a (stray) grant from the learner is not counted.
    r = net.nodes[1].raft
    r.prs.record_vote(3, True)
    assert r.prs.tally_votes()[0] == 1


def test_promote_learner_then_it_can_lead():
    net = elected()
    net.add_node(4)
    change(net, 1, ConfChangeType.ADD_LEARNER, 4)
    change(net, 1, ConfChangeType.ADD_NODE, 4)
    assert net.conf(1).voters == (1, 2, 3, 4) and net.conf(4).voters == (1, 2, 3, 4)
    net.nodes[1].rn.transfer_leader(4)
    net.stabilize()
    assert net.leader() == 4


def test_second_pending_conf_change_is_refused():
    """Paper section 6 / thesis 4.1: one membership change at a time; a second proposal while
    one is pending is rejected."""
    net = elected()
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDroppedError) as ei:
        net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    assert ei.value.reason == "pending conf change"
    net.recover()
    net.tick(1)
    net.stabilize()
    net.nodes[1].rn.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    net.stabilize()
    assert net.conf(1).learners == (4, 5)


def test_remove_node_shrinks_quorum():
    net = elected()
    change(net, 1, ConfChangeType.REMOVE_NODE, 3)
    assert net.conf(1).voters == (1, 2)
    net.isolate(3)
    net.propose(1, b"two-of-two")
    assert net.nodes[2].applied_data() == [b"two-of-two"]


def test_removed_leader_steps_down_and_rest_elect():
    net = elected()
    change(net, 1, ConfChangeType.REMOVE_NODE, 1)
    assert net.nodes[1].state == StateType.FOLLOWER
    net.isolate(1)
    net.tick_all(30)
    lead = net.leaders()
    assert len(lead) == 1 and lead[0] in (2, 3)
    net.propose(lead[0], b"after-removal")
    assert net.nodes[5 - lead[0]].applied_data()[-1] == b"after-removal"


def test_new_leader_cannot_propose_conf_change_before_applying_its_term():
    net = elected()
    r = net.nodes[1].raft
    assert r.pending_conf_index <= r.raft_log.applied  # after stabilize: allowed
    net.isolate(2)
    net.isolate(3)
    net.tick_all(10)
    net.recover()
    net.nodes[2].rn.campaign()
    net.stabilize()
    assert net.leader() == 2


# -- lazy commit broadcast -------------------------------------------------------------------


def _apps_to(msgs, to):
    return [m for m in msgs if m.type == MT.APP and m.to == to]


def test_lazy_commit_rides_on_the_next_append_instead_of_an_empty_one():
    """With lazy_commit_broadcast the leader does not send empty appends just to announce a
    new commit index; followers learn it from the next append, which then carries it."""
    net = elected(lazy_commit_broadcast=True)
    leader = net.nodes[1]
    net.propose(1, b"a")
    commit_a = leader.raft.raft_log.committed
    assert leader.raft.commit_bcast_pending
    # Followers hold entry a but do not know it committed: nothing extra was sent.
    assert net.nodes[2].raft.raft_log.committed < commit_a
    assert net.nodes[2].applied_data() == []
    # The next proposal's append carries the commit index of a.
    leader.rn.propose(b"b")
    msgs = leader.handle_ready()
    [app] = _apps_to(msgs, 2)
    assert [e.data for e in app.entries] == [b"b"] and app.commit == commit_a
    net.send(*msgs)
    net.stabilize()
    assert net.nodes[2].applied_data() == [b"a"]


def test_lazy_commit_flush_and_heartbeat_tell_followers():
    net = elected(lazy_commit_broadcast=True)
    net.propose(1, b"a")
    leader = net.nodes[1]
    assert leader.rn.commit_flush_pending()
    assert leader.rn.flush_commit() is True
    assert not leader.rn.commit_flush_pending()
    assert leader.rn.flush_commit() is False  # nothing pending any more
    msgs = leader.handle_ready()
    assert {m.to for m in msgs if m.type == MT.APP and not m.entries} == {2, 3}
    net.send(*msgs)
    net.stabilize()
    assert net.nodes[2].applied_data() == [b"a"] == net.nodes[3].applied_data()
    # A heartbeat round also delivers it (and clears the pending flag).
    net.propose(1, b"b")
    assert leader.rn.commit_flush_pending()
    net.tick(1)
    assert not leader.rn.commit_flush_pending()
    net.stabilize()
    assert net.nodes[3].applied_data() == [b"a", b"b"]


def test_lazy_commit_follower_read_index_learns_the_commit_it_must_apply():
    """A follower's ReadIndex answer is preceded by the commit index it has to apply, so the
    read does not wait for the next heartbeat."""
    net = elected(lazy_commit_broadcast=True)
    net.propose(1, b"a")
    assert net.nodes[1].raft.commit_bcast_pending
    net.nodes[3].rn.read_index(b"r")
    net.stabilize()
    [rs] = net.nodes[3].read_states
    assert rs.index == net.nodes[1].raft.raft_log.committed
    assert net.nodes[3].applied_index >= rs.index


def test_default_broadcasts_commit_at_once():
    net = elected()
    net.propose(1, b"a")
    assert not net.nodes[1].raft.commit_bcast_pending
    assert net.nodes[2].applied_data() == [b"a"]
