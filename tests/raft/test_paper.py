"""Scenarios taken from the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", extended version). Each test cites the section it checks and reads
init / act / check."""

from __future__ import annotations

import random

import pytest

from nokvpy.raft import (
    NONE,
    ConfChange,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDroppedError,
    RawNode,
    StateType,
)

from .network import Network, storage_with

MT = MessageType


def out(rn: RawNode) -> list[Message]:
    """Handle one Ready (persist, apply conf changes, advance); return its messages."""
    rd = rn.ready()
    st = rn.raft.raft_log.storage
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    for e in rd.committed_entries:
        if e.type == EntryType.CONF_CHANGE:
            rn.apply_conf_change(ConfChange.decode(e.data))
    rn.advance(rd)
    return rd.messages


def raw(node_id: int, st: MemoryStorage, **cfg) -> RawNode:
    rn = RawNode(Config(node_id, st, rng=random.Random(node_id), **cfg))
    out(rn)
    return rn


def fresh_raw(node_id: int, peers, **cfg) -> RawNode:
    rn = RawNode(Config(node_id, MemoryStorage(), rng=random.Random(node_id), **cfg))
    rn.bootstrap(peers)
    out(rn)
    return rn


def log_terms(net: Network, node_id: int) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in net.nodes[node_id].raft.raft_log.all_entries()]


# -- 5.2 Leader election ---------------------------------------------------------------------


def test_leader_election_majority_wins():
    """Raft section 5.2: a candidate that gets votes from a majority becomes leader and the
    others learn it from its first AppendEntries."""
    net = Network([1, 2, 3])
    net.campaign(1)
    assert net.leader() == 1
    assert all(n.raft.lead == 1 for n in net.nodes.values())
    assert len({n.term for n in net.nodes.values()}) == 1


@pytest.mark.parametrize(
    "isolated, wins",
    [((), True), ((4,), True), ((4, 5), True), ((3, 4, 5), False)],
)
def test_leader_election_needs_a_majority(isolated, wins):
    """Raft section 5.2: a candidate wins only with votes from a majority of the full cluster."""
    net = Network([1, 2, 3, 4, 5])
    for i in isolated:
        net.isolate(i)
    net.campaign(1)
    assert (net.nodes[1].state == StateType.LEADER) is wins


def test_single_vote_per_term():
    """Raft section 5.2: each server votes for at most one candidate in a given term
    (first-come-first-served), and grants the same candidate again (idempotent)."""
    rn = fresh_raw(1, [1, 2, 3], pre_vote=False, check_quorum=False)
    term = rn.raft.term + 1

    def vote_from(cand: int) -> Message:
        rn.step(Message(MT.VOTE, to=1, frm=cand, term=term, index=10, log_term=term - 1))
        [resp] = out(rn)
        return resp

    assert vote_from(2).reject is False
    assert vote_from(3).reject is True
    assert vote_from(2).reject is False  # a retransmitted request is granted again
    assert rn.raft.vote == 2


@pytest.mark.parametrize(
    "cand_index, cand_term, granted",
    [
        (5, 1, False),  # lower last term
        (9, 2, False),  # same term, shorter log
        (10, 2, True),  # same term, same length
        (11, 2, True),  # same term, longer log
        (1, 3, True),  # higher last term wins even with a shorter log
    ],
)
def test_election_restriction_up_to_date_log(cand_index, cand_term, granted):
    """Raft section 5.4.1: a voter denies its vote if its own log is more up to date than the
    candidate's (compare last terms, then last indices)."""
    st = storage_with([2] * 7, [1, 2, 3], term=2)  # last entry (10, 2)
    rn = raw(1, st, pre_vote=False, check_quorum=False)
    rn.step(Message(MT.VOTE, to=1, frm=2, term=3, index=cand_index, log_term=cand_term))
    resps = [m for m in out(rn) if m.type == MT.VOTE_RESP]
    assert [m.reject for m in resps] == [not granted]


def test_candidate_steps_down_on_append_from_leader_of_same_term():
    """Raft section 5.2: a candidate that receives AppendEntries from a leader whose term is at
    least its own returns to follower state."""
    rn = fresh_raw(1, [1, 2, 3], pre_vote=False)
    rn.campaign()
    out(rn)
    assert rn.raft.state == StateType.CANDIDATE
    rn.step(Message(MT.APP, to=1, frm=2, term=rn.raft.term, index=3, log_term=1, commit=3))
    assert rn.raft.state == StateType.FOLLOWER
    assert rn.raft.lead == 2


def test_randomized_election_timeout_in_range():
    """Raft section 5.2: election timeouts are chosen randomly from [T, 2T) so split votes are
    rare; the randomness comes from the injected rng and is reproducible."""
    seen = set()
    for seed in range(50):
        rn = RawNode(Config(1, MemoryStorage(), election_tick=10, rng=random.Random(seed)))
        t = rn.raft.randomized_election_timeout
        assert 10 <= t < 20
        seen.add(t)
    assert len(seen) > 3
    a = RawNode(Config(1, MemoryStorage(), rng=random.Random(7))).raft.randomized_election_timeout
    b = RawNode(Config(1, MemoryStorage(), rng=random.Random(7))).raft.randomized_election_timeout
    assert a == b


def test_follower_starts_election_after_timeout():
    """Raft section 5.2: a follower that hears nothing for an election timeout campaigns."""
    net = Network([1, 2, 3])
    net.tick(1, 2 * 10)
    assert net.leader() == 1


def test_leader_appends_empty_entry_on_election():
    """Raft section 8 / 5.4.2: a new leader commits a blank entry of its own term."""
    net = Network([1, 2, 3])
    net.campaign(1)
    last = net.nodes[1].raft.raft_log.all_entries()[-1]
    assert last.term == net.nodes[1].term and last.data == b"" and last.type == EntryType.NORMAL
    assert all(n.raft.raft_log.committed == last.index for n in net.nodes.values())


# -- 5.3 Log replication ---------------------------------------------------------------------


def test_log_replication_commits_on_all():
    """Raft section 5.3: the leader replicates entries; once committed they are applied by every
    server in log order."""
    net = Network([1, 2, 3])
    net.campaign(1)
    for i in range(20):
        net.propose(1, b"v%d" % i)
    want = [b"v%d" % i for i in range(20)]
    for n in net.nodes.values():
        assert n.applied_data() == want
    assert log_terms(net, 1) == log_terms(net, 2) == log_terms(net, 3)


def test_log_matching_and_conflict_truncation():
    """Raft section 5.3: the leader forces followers to duplicate its log; conflicting
    uncommitted entries on a follower are deleted and replaced (Figure 7 style), and the
    rejection hint skips a whole conflicting term per round trip."""
    peers = [1, 2, 3]
    storages = {
        1: storage_with([2, 2, 4, 4], peers, term=4, commit=4),
        2: storage_with([2, 3, 3, 3, 3, 3, 3], peers, term=3, commit=4),
        3: storage_with([2, 2, 4], peers, term=4, commit=4),
    }
    net = Network(peers, storages=storages, pre_vote=False)
    net.campaign(1)
    assert net.leader() == 1
    assert log_terms(net, 2) == log_terms(net, 1) == log_terms(net, 3)
    assert [t for _, t in log_terms(net, 2)][3:] == [2, 2, 4, 4, net.nodes[1].term]
    rejects = [m for m in net.delivered if m.type == MT.APP_RESP and m.reject and m.frm == 2]
    assert 1 <= len(rejects) <= 2  # not one per conflicting entry (6 of them)


def test_follower_rejects_append_that_does_not_match():
    """Raft section 5.3: AppendEntries carries (prevLogIndex, prevLogTerm); a follower without
    a matching entry refuses it and hints where to retry."""
    st = storage_with([2, 2], [1, 2, 3], term=2)  # last (5, 2)
    rn = raw(1, st)
    rn.step(Message(MT.APP, to=1, frm=2, term=3, index=5, log_term=3, commit=3))
    [resp] = [m for m in out(rn) if m.type == MT.APP_RESP]
    assert resp.reject and resp.index == 5
    assert (resp.reject_hint, resp.log_term) == (5, 2)


# -- 5.4 Safety ------------------------------------------------------------------------------


def test_commit_only_current_term_entries_by_counting_replicas():
    """Raft section 5.4.2: a leader never commits an entry from a previous term by counting
    replicas; it commits its own-term entry and earlier ones follow (Log Matching)."""
    peers = [1, 2, 3, 4, 5]
    st = storage_with([2], peers, term=3)  # index 6 has term 2
    rn = raw(1, st, pre_vote=False)
    rn.campaign()
    out(rn)
    for v in (2, 3):
        rn.step(Message(MT.VOTE_RESP, to=1, frm=v, term=rn.raft.term))
    out(rn)
    assert rn.raft.state == StateType.LEADER
    term = rn.raft.term
    assert rn.raft.raft_log.term(6) == 2 and rn.raft.raft_log.term(7) == term
    for v in (2, 3):
        rn.step(Message(MT.APP_RESP, to=1, frm=v, term=term, index=6))
    assert rn.raft.raft_log.committed == 5  # index 6 is on a majority but is from term 2
    rn.step(Message(MT.APP_RESP, to=1, frm=2, term=term, index=7))
    assert rn.raft.raft_log.committed == 5
    rn.step(Message(MT.APP_RESP, to=1, frm=3, term=term, index=7))
    assert rn.raft.raft_log.committed == 7


def test_figure_8_uncommitted_old_term_entry_can_be_overwritten():
    """Raft section 5.4.2, Figure 8 (d): an entry of term 2 stored on a majority (S1, S2, S3)
    by the term-4 leader was never committed, so S5 (with a term-3 entry at that index) can
    still be elected and overwrite it. Nobody ever applies the term-2 entry."""
    peers = [1, 2, 3, 4, 5]
    storages = {
        1: storage_with([2, 4], peers, term=4, vote=1),
        2: storage_with([2], peers, term=4, vote=1),
        3: storage_with([2], peers, term=4, vote=1),
        4: storage_with([], peers, term=4, vote=1),
        5: storage_with([3], peers, term=4),
    }
    net = Network(peers, storages=storages)
    net.isolate(1)  # S1 crashed
    net.campaign(5)
    assert net.nodes[5].state == StateType.LEADER
    for i in (2, 3, 4, 5):
        assert net.nodes[i].raft.raft_log.term(6) == 3
        assert all(not (e.index == 6 and e.term == 2) for e in net.nodes[i].applied)
    net.recover()
    net.tick(5)  # a heartbeat round un-pauses the probe to S1
    net.propose(5, b"after")
    assert net.nodes[1].raft.raft_log.term(6) == 3
    assert net.nodes[1].applied_data()[-1] == b"after"


def test_leader_completeness():
    """Raft section 5.4.3: a leader elected after an entry was committed has that entry: a
    lagging server cannot win, an up-to-date one can. (Check-quorum off: with it, followers
    would ignore the campaigns while their lease for the dead leader lasts.)"""
    net = Network([1, 2, 3, 4, 5], check_quorum=False)
    net.campaign(1)
    net.isolate(4)
    net.isolate(5)
    for i in range(5):
        net.propose(1, b"c%d" % i)
    committed = net.nodes[1].raft.raft_log.committed
    net.recover()
    net.isolate(1)  # the old leader dies
    net.campaign(4)
    assert net.nodes[4].state != StateType.LEADER
    net.campaign(2)
    assert net.nodes[2].state == StateType.LEADER
    ents = net.nodes[2].raft.raft_log.all_entries()
    assert [e.data for e in ents if e.index <= committed][-5:] == [b"c%d" % i for i in range(5)]
    net.propose(2, b"next")
    for i in (2, 3, 4, 5):
        assert net.nodes[i].applied_data() == [b"c%d" % i for i in range(5)] + [b"next"]


def test_restart_keeps_persisted_term_vote_and_log():
    """Raft section 5.1 / Figure 2: currentTerm, votedFor and log[] are persistent state."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"a")
    before = (net.nodes[2].term, log_terms(net, 2))
    net.restart(2)
    assert (net.nodes[2].term, log_terms(net, 2)) == before
    net.stabilize()
    net.propose(1, b"b")
    assert net.nodes[2].applied_data() == [b"a", b"b"]


# -- proposals -------------------------------------------------------------------------------


def test_follower_forwards_proposal_to_leader():
    """Raft section 8: clients may contact any server; a follower forwards to the leader."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(3, b"via-follower")
    assert all(n.applied_data() == [b"via-follower"] for n in net.nodes.values())


def test_proposal_forwarding_disabled_raises_with_leader_hint():
    net = Network([1, 2, 3], disable_proposal_forwarding=True)
    net.campaign(1)
    with pytest.raises(ProposalDroppedError) as ei:
        net.nodes[2].rn.propose(b"x")
    assert ei.value.leader_hint == 1


def test_proposal_without_leader_is_dropped():
    net = Network([1, 2, 3])
    with pytest.raises(ProposalDroppedError) as ei:
        net.nodes[2].rn.propose(b"x")
    assert ei.value.leader_hint == NONE and ei.value.reason == "no leader"
