"""The raft state machine: everything that decides what a peer does lives here.

Owns: term, vote, role (follower / pre-candidate / candidate / leader), the log cursors via
`RaftLog`, per-peer progress via `ProgressTracker`, ReadIndex bookkeeping, leader transfer and
membership. It is driven by `tick()` and `step(msg)` and only *produces* work: outgoing
messages in `msgs`, read answers in `read_states`, and log state the caller persists through a
`Ready` (see rawnode.py). It never does I/O, never reads a clock, never uses global randomness
(the election timeout is drawn from `Config.rng`) and never writes to `Storage`.

Choices (modelled on etcd raft; where we differ it says so):

- Elections use pre-vote and check-quorum by default. A follower that heard from a leader within
  the last election timeout ignores (pre-)vote requests, unless the request carries the
  leader-transfer context.
- Proposals on a follower are forwarded to the leader as PROP messages (term 0, like etcd)
  unless `disable_proposal_forwarding`, in which case `ProposalDroppedError` is raised with the
  leader hint. With no known leader, or while the leader is transferring leadership, or with a
  conf change still pending, proposals raise `ProposalDroppedError`. A forwarded proposal the
  leader drops is lost silently: the proposer retries (RawNode.step swallows the error).
- A leader batches: a proposal only appends to the log; the MsgApps for everything appended
  since the last Ready go out when the caller takes the next Ready (`flush_bcast`). Responses
  that advance the commit index broadcast immediately, as in etcd.
- The leader counts its own log as replicated as soon as it appends (etcd v3.5 behaviour); this
  is safe because the caller persists a Ready's entries before it steps any answer to its
  messages (its appends may leave early, see `Ready.early_messages` in rawnode.py), so no
  follower's acknowledgement counts towards a commit before the leader made the entry durable.
- Membership changes are single-step and take effect when the caller applies the ConfChange
  entry (`apply_conf_change`). A second conf change while one is pending (proposed but not yet
  applied by the leader) is rejected with ProposalDroppedError("pending conf change"). A new
  leader may not propose one until it applied everything up to its election (this covers the
  single-server change bug described by Ongaro). A leader that applies its own removal steps
  down (etcd keeps leading; we prefer to stop at once). Removing the last voter is refused at
  proposal and is a no-op if applied (the group could never elect again). Learners may grant
  votes (a promoted learner may not know it yet, as etcd notes) but a candidate only counts its
  voters.
- SAFE ReadIndex confirms leadership with heartbeat rounds the leader numbers itself
  (`read_round`, never reset), not with the caller's context, which only routes the answer
  (see read_only.py): an answer to a round started before a read arrived never confirms it.
- LEASE_BASED reads are served from a real lease, stricter than etcd's: each heartbeat carries
  the leader's tick count in `index` and the answer echoes it; the lease holds while a quorum
  answered a heartbeat sent less than `election_timeout - LEASE_MARGIN_TICKS` ticks ago, no
  leader transfer was started this term, and the leader committed an entry in its term.
  Followers keep their side of the promise by refusing votes for an election timeout after
  they last heard from the leader, and (LEASE_BASED only) for an election timeout after
  start-up, so a restart does not forget a promise. Outside the lease the leader falls back to
  the SAFE heartbeat round. It assumes a tick means the same real time on every node, to
  within one tick per election timeout: the caller feeds the ticks that really elapsed
  (`ticks.ElapsedTicks`), so a paused or starved process sees its lease run out. The argument
  is "Leader leases" in docs/protocols.md.
"""

from __future__ import annotations

import random
from enum import IntEnum

from .config import Config
from .log import RaftLog
from .progress import Progress, ProgressState, ProgressTracker, VoteResult
from .read_only import ReadOnly, ReadOnlyOption
from .types import (
    NONE,
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDroppedError,
    ReadState,
    Snapshot,
    SnapshotTemporarilyUnavailableError,
    SoftState,
    StateType,
    UnavailableError,
)

MT = MessageType
# Ticks the lease gives up to clock-rate drift and tick granularity: see "Leader leases" in
# docs/protocols.md (two ticks cover the granularity of the leader's and the voter's counts,
# the third tolerates a 10 % rate difference over an election timeout of 10 ticks).
LEASE_MARGIN_TICKS = 3
CAMPAIGN_TRANSFER_CONTEXT = b"CampaignTransfer"


class CampaignType(IntEnum):
    PRE_ELECTION = 0
    ELECTION = 1
    TRANSFER = 2


def vote_resp_type(t: MessageType) -> MessageType:
    if t == MT.VOTE:
        return MT.VOTE_RESP
    if t == MT.PRE_VOTE:
        return MT.PRE_VOTE_RESP
    raise ValueError(f"not a vote message: {t!r}")


def payload_size(ents: list[Entry]) -> int:
    return sum(len(e.data) for e in ents)


class Raft:
    __slots__ = (
        "id",
        "term",
        "vote",
        "raft_log",
        "prs",
        "state",
        "is_learner",
        "lead",
        "lead_transferee",
        "pending_conf_index",
        "uncommitted_size",
        "read_only",
        "read_round",
        "read_states",
        "pending_read_index_messages",
        "msgs",
        "election_elapsed",
        "heartbeat_elapsed",
        "randomized_election_timeout",
        "election_timeout",
        "heartbeat_timeout",
        "check_quorum",
        "pre_vote",
        "max_msg_size",
        "max_uncommitted_size",
        "disable_proposal_forwarding",
        "rng",
        "ticks",
        "lease_revoked",
        "startup_lease",
        "bcast_pending",
        "lazy_commit",
        "commit_bcast_pending",
        "dropped_forwarded_proposals",
        "hibernate_tick",
        "idle_ticks",
        "hibernate_acks",
        "hibernating",
        "_tick_fn",
        "_step_fn",
    )

    def __init__(self, c: Config) -> None:
        c.validate()
        rng = c.rng
        assert isinstance(rng, random.Random)
        self.id = c.id
        self.rng = rng
        self.raft_log = RaftLog(c.storage, c.max_size_per_msg)
        hs, cs = c.storage.initial_state()
        self.prs = ProgressTracker(c.max_inflight_msgs)
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.election_timeout = c.election_tick
        self.heartbeat_timeout = c.heartbeat_tick
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        # Invariant: at most one vote per term; (term, vote) is persisted before any message
        # that depends on it is sent (such messages are never a Ready's early_messages).
        self.term = 0
        self.vote = NONE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.lead = NONE
        # Non-NONE only on a leader that is handing leadership over; proposals are refused.
        self.lead_transferee = NONE
        # Invariant (leader): no conf change may be proposed while pending_conf_index > applied.
        self.pending_conf_index = 0
        # Bytes of entry data appended by this leader and not yet applied (0 when no limit).
        self.uncommitted_size = 0
        self.read_only = ReadOnly(c.read_only_option)
        # Leader: the newest ReadIndex heartbeat round started (see read_only.py). Never reset,
        # not even across terms. Invariant: increases by one per round.
        self.read_round = 0
        self.read_states: list[ReadState] = []
        # ReadIndex requests that arrived before the leader committed an entry in its term.
        self.pending_read_index_messages: list[Message] = []
        self.msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        # Ticks seen since this Raft was created; the leader's lease clock.
        self.ticks = 0
        # Leader: a TIMEOUT_NOW was sent this term, so the lease can no longer be trusted.
        self.lease_revoked = False
        # LEASE_BASED: refuse votes for an election timeout after start (promises survive a
        # restart). Cleared once an election timeout has elapsed.
        self.startup_lease = c.read_only_option == ReadOnlyOption.LEASE_BASED
        # Leader: entries were appended since the last broadcast (see flush_bcast).
        self.bcast_pending = False
        # Leader with lazy_commit_broadcast: the commit index advanced and not every peer has
        # been told yet (see broadcast_commit / flush_commit_bcast).
        self.lazy_commit = c.lazy_commit_broadcast
        self.commit_bcast_pending = False
        self.dropped_forwarded_proposals = 0
        # Hibernation (see `ask_hibernate`): ticks the leader has been idle; the peers that
        # agreed to stop ticking (None: not asked); this node stopped ticking (the caller
        # reads it and must `wake` the node before stepping anything into it).
        self.hibernate_tick = c.hibernate_tick
        self.idle_ticks = 0
        self.hibernate_acks: set[int] | None = None
        self.hibernating = False
        self._tick_fn = self.tick_election
        self._step_fn = self.step_follower

        last = self.raft_log.last_index()
        for v in cs.voters:
            self.prs.init_progress(v, 0, last + 1, False)
        for v in cs.learners:
            self.prs.init_progress(v, 0, last + 1, True)
        pr = self.prs.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if hs.term or hs.vote or hs.commit:
            self.load_state(hs)
        if c.applied > 0:
            self.raft_log.applied_to(c.applied)
        self.become_follower(self.term, NONE)

    def __repr__(self) -> str:
        return (
            f"Raft(id={self.id}, term={self.term}, vote={self.vote}, state={self.state.name}, "
            f"lead={self.lead}, log={self.raft_log!r})"
        )

    # -- state snapshots for Ready ---------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.raft_log.committed)

    def load_state(self, hs: HardState) -> None:
        if hs.commit < self.raft_log.committed or hs.commit > self.raft_log.last_index():
            raise AssertionError(
                f"{self.id} state.commit {hs.commit} is out of range "
                f"[{self.raft_log.committed}, {self.raft_log.last_index()}]"
            )
        self.raft_log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    # -- sending ---------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self.id
        t = m.type
        if t in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            if m.term == 0:
                raise AssertionError(f"term should be set when sending {t.name}")
        else:
            if m.term != 0:
                raise AssertionError(f"term should not be set when sending {t.name}")
            # PROP and READ_INDEX are forwarded to the leader and handled there like local
            # messages, so they carry no term.
            if t != MT.PROP and t != MT.READ_INDEX:
                m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send the entries from `to`'s next index (or a snapshot if they are compacted).
        Returns whether a message was sent."""
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        raft_log = self.raft_log
        try:
            prev_term = raft_log.term(pr.next - 1)
            ents = raft_log.entries(pr.next, self.max_msg_size)
        except (CompactedError, UnavailableError):
            return self.maybe_send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        m = Message(
            MT.APP,
            to=to,
            index=pr.next - 1,
            log_term=prev_term,
            entries=ents,
            commit=raft_log.committed,
        )
        if ents:
            if pr.state == ProgressState.REPLICATE:
                last = ents[-1].index
                pr.next = last + 1
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        self.send(m)
        return True

    def maybe_send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        try:
            snap = self.raft_log.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False
        if snap.is_empty():
            raise AssertionError("need non-empty snapshot")
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(MT.SNAP, to=to, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # Attach commit as min(match, committed): the follower may not have entries up to our
        # commit yet. `index` carries our tick count for the lease (echoed in the answer).
        commit = min(self.prs.progress[to].match, self.raft_log.committed)
        self.send(Message(MT.HEARTBEAT, to=to, commit=commit, index=self.ticks, context=ctx))

    def bcast_append(self) -> None:
        self.bcast_pending = False
        self.commit_bcast_pending = False
        for pid in self.prs.ids():
            if pid != self.id:
                self.send_append(pid)

    def broadcast_commit(self) -> None:
        """The commit index advanced: tell the followers now, or (lazy_commit_broadcast) let
        it ride on the next append or heartbeat until `flush_commit_bcast`."""
        if self.lazy_commit:
            self.commit_bcast_pending = True
        else:
            self.bcast_append()

    def flush_commit_bcast(self) -> bool:
        """Leader: send the pending commit index to every peer (an empty append where there
        is nothing new). Returns whether anything was pending."""
        if not self.commit_bcast_pending:
            return False
        self.commit_bcast_pending = False
        if self.state != StateType.LEADER:
            return False
        for pid in self.prs.ids():
            if pid != self.id:
                self.send_append(pid)
        return True

    def flush_bcast(self) -> None:
        """Leader: send the entries appended since the last broadcast to every peer that is
        not paused (called by RawNode before building a Ready, so proposals batch)."""
        if not self.bcast_pending:
            return
        self.bcast_pending = False
        if self.state != StateType.LEADER:
            return
        told_all = True
        for pid in self.prs.ids():
            if pid != self.id:
                sent = False
                while self.maybe_send_append(pid, False):
                    sent = True
                told_all = told_all and sent
        if told_all:
            self.commit_bcast_pending = False  # every append carried the commit index

    def bcast_heartbeat(self) -> None:
        # With reads pending, repeat the newest round: it started after every pending read
        # arrived, so its answers may confirm them all.
        self.bcast_heartbeat_with_ctx(self.read_only.heartbeat_context())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        # Heartbeats carry min(match, committed): every peer learns the commit index for the
        # entries it holds, so a pending lazy commit broadcast is done.
        self.commit_bcast_pending = False
        for pid in self.prs.ids():
            if pid != self.id:
                self.send_heartbeat(pid, ctx)

    # -- commit ----------------------------------------------------------------------------

    def maybe_commit(self) -> bool:
        return self.raft_log.maybe_commit(self.prs.committed(), self.term)

    def committed_entry_in_current_term(self) -> bool:
        return self.raft_log.term_or_zero(self.raft_log.committed) == self.term

    # -- role changes ----------------------------------------------------------------------

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.prs.reset_votes()
        last = self.raft_log.last_index()
        progress = self.prs.progress
        for pid, old in list(progress.items()):
            pr = Progress(0, last + 1, self.prs.max_inflight, old.is_learner)
            if pid == self.id:
                pr.match = last
            progress[pid] = pr
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly(self.read_only.option)
        self.pending_read_index_messages = []
        self.lease_revoked = False
        self.bcast_pending = False
        self.commit_bcast_pending = False
        self.idle_ticks = 0
        self.hibernate_acks = None
        self.hibernating = False

    def become_follower(self, term: int, lead: int) -> None:
        self._step_fn = self.step_follower
        self.reset(term)
        self._tick_fn = self.tick_election
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> candidate]")
        self._step_fn = self.step_candidate
        self.reset(self.term + 1)
        self._tick_fn = self.tick_election
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self.startup_lease = False

    def become_pre_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise AssertionError("invalid transition [leader -> pre-candidate]")
        # Pre-vote changes neither term nor vote.
        self._step_fn = self.step_candidate
        self.prs.reset_votes()
        self._tick_fn = self.tick_election
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        self.startup_lease = False

    def become_leader(self) -> None:
        if self.state == StateType.FOLLOWER:
            raise AssertionError("invalid transition [follower -> leader]")
        self._step_fn = self.step_leader
        self.reset(self.term)
        self._tick_fn = self.tick_heartbeat
        self.lead = self.id
        self.state = StateType.LEADER
        self.prs.progress[self.id].become_replicate()
        # Conservatively treat everything in the log as a possibly pending conf change: no
        # new conf change until this leader applied up to here (and so committed in its term).
        self.pending_conf_index = self.raft_log.last_index()
        # Raft section 5.4.2 / 8: an empty entry of our term lets earlier entries commit.
        self.append_entry([Entry(self.term, self.raft_log.last_index() + 1)])
        self.uncommitted_size = 0

    def reset_randomized_election_timeout(self) -> None:
        et = self.election_timeout
        self.randomized_election_timeout = et + self.rng.randrange(et)

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def promotable(self) -> bool:
        pr = self.prs.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.raft_log.has_pending_snapshot()

    def in_lease(self) -> bool:
        """Do we still promise the current leader not to help elect anyone else?"""
        if not self.check_quorum or self.election_elapsed >= self.election_timeout:
            return False
        return self.lead != NONE or self.startup_lease

    # -- ticking ---------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        self._tick_fn()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.startup_lease and self.election_elapsed >= self.election_timeout:
            self.startup_lease = False
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            # A transfer that did not finish within an election timeout is abandoned.
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()
        if self.state != StateType.LEADER:
            return
        if self.hibernate_tick and self.tick_hibernation():
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # -- hibernation -----------------------------------------------------------------------
    #
    # A leader with nothing left to do asks every peer to stop ticking (HIBERNATE, carrying
    # its last index and term and its commit index). A peer whose log ends at the same index
    # and term (so, by log matching, holds exactly the leader's log) takes the commit index,
    # answers yes and stops ticking; any other answers no. The leader sends no heartbeats
    # while it waits, stops ticking once every peer said yes, and gives up (heartbeats again)
    # on a no, on any activity, or after half an election timeout. Sleeping is safe because a
    # tick only drives elections, heartbeats and the lease clock: a sleeping follower keeps
    # its promise not to vote for anyone else (its election clock is stopped, so it promises
    # for longer, never shorter), and `wake` moves a sleeping leader's lease clock by the
    # ticks that really elapsed, so a lease never outlives the real time it was granted for.
    # Liveness needs the caller to wake a sleeping follower when its leader may be gone (the
    # store pings the leader's store; raftstore/hibernation.py).

    def tick_hibernation(self) -> bool:
        """Leader tick: count idleness, ask to hibernate, or wait for the answers. True
        when no heartbeat may go out this tick (asked, waiting for answers)."""
        self.idle_ticks += 1
        if self.hibernate_acks is not None:
            if self.idle_ticks < self.hibernate_tick + self.election_timeout // 2:
                return True
            self.cancel_hibernation()  # no (complete) answer in time: heartbeat again
            self.heartbeat_elapsed = self.heartbeat_timeout
            return False
        if self.idle_ticks >= self.hibernate_tick and self.can_hibernate():
            self.ask_hibernate()
            return True
        return False

    def can_hibernate(self) -> bool:
        """Leader: nothing in flight. Every entry committed (in this term) and applied, every
        peer replicating with the whole log, no transfer, read or conf change pending."""
        log = self.raft_log
        last = log.last_index()
        if (self.state != StateType.LEADER or self.lead_transferee != NONE
                or log.committed != last or log.applied != last
                or not self.committed_entry_in_current_term()
                or self.pending_read_index_messages or self.read_only.pending()
                or self.bcast_pending or self.pending_conf_index > log.applied):
            return False
        for pid, pr in self.prs.progress.items():
            if pid != self.id and (pr.match != last or pr.state != ProgressState.REPLICATE
                                   or pr.pending_snapshot):
                return False
        return True

    def ask_hibernate(self) -> None:
        self.hibernate_acks = {self.id}
        log = self.raft_log
        last, last_term = log.last_index(), log.last_term()
        for pid in self.prs.ids():
            if pid != self.id:
                self.send(Message(MT.HIBERNATE, to=pid, index=last, log_term=last_term,
                                  commit=log.committed))
        self.maybe_hibernate()

    def maybe_hibernate(self) -> None:
        acks = self.hibernate_acks
        if acks is not None and acks.issuperset(self.prs.progress) and self.can_hibernate():
            self.hibernating = True

    def cancel_hibernation(self) -> None:
        """Leader: activity (a proposal, a read, a transfer), a refusal or no answer."""
        self.idle_ticks = 0
        self.hibernate_acks = None

    def handle_hibernate(self, m: Message) -> None:
        """Follower or learner: agree to stop ticking when our log is the leader's."""
        log = self.raft_log
        agree = (m.frm == self.lead and log.last_index() == m.index
                 and log.last_term() == m.log_term and m.commit <= m.index)
        if agree:
            self.election_elapsed = 0
            log.commit_to(m.commit)
            self.hibernating = True
        self.send(Message(MT.HIBERNATE_RESP, to=m.frm, reject=not agree))

    def wake(self, elapsed: int, *, keep_lease_clock: bool = False) -> None:
        """Start ticking again after `elapsed` ticks of real time asleep (the caller counts
        them with its clock, at most `ticks.MAX_FEED`). The lease clock moves on by
        `elapsed` (`keep_lease_clock`: test-only, the unsafe rule that keeps it still); a
        leader counts its peers active again and heartbeats at once (the sleeping peers learn
        it is awake), so neither check-quorum nor an election follows from the sleep itself."""
        if not self.hibernating and self.hibernate_acks is None:
            return
        self.hibernating = False
        self.hibernate_acks = None
        self.idle_ticks = 0
        if not keep_lease_clock:
            self.ticks += max(0, elapsed)
        if self.state == StateType.LEADER:
            self.election_elapsed = 0
            self.heartbeat_elapsed = 0
            for pr in self.prs.progress.values():
                pr.recent_active = True
            self.bcast_heartbeat()

    # -- appending -------------------------------------------------------------------------

    def append_entry(self, es: list[Entry]) -> bool:
        """Leader: append entries already stamped with our term and consecutive indices."""
        if self.max_uncommitted_size > 0:
            s = payload_size(es)
            if (
                self.uncommitted_size > 0
                and s > 0
                and self.uncommitted_size + s > self.max_uncommitted_size
            ):
                return False
            self.uncommitted_size += s
        li = self.raft_log.append(es)
        self.prs.progress[self.id].maybe_update(li)
        self.maybe_commit()
        return True

    def reduce_uncommitted_size(self, ents: list[Entry]) -> None:
        if self.uncommitted_size == 0:
            return
        s = payload_size(ents)
        self.uncommitted_size = max(0, self.uncommitted_size - s)

    # -- elections -------------------------------------------------------------------------

    def hup(self, t: CampaignType) -> None:
        if self.state == StateType.LEADER:
            return
        if not self.promotable():
            return
        raft_log = self.raft_log
        if raft_log.committed > raft_log.applied:
            try:
                ents = raft_log.slice(raft_log.applied + 1, raft_log.committed + 1)
            except CompactedError:
                ents = []
            if any(e.type == EntryType.CONF_CHANGE for e in ents):
                # A conf change is committed but not applied: we may not know our quorum.
                return
        self.campaign(t)

    def campaign(self, t: CampaignType) -> None:
        if not self.promotable():
            return
        if t == CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1  # the term we would campaign in; not adopted yet
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        _, _, res = self.poll(self.id, vote_resp_type(vote_msg), True)
        if res == VoteResult.WON:
            # Single voter: we won already.
            if t == CampaignType.PRE_ELECTION:
                self.campaign(CampaignType.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER_CONTEXT if t == CampaignType.TRANSFER else b""
        last = self.raft_log.last_index()
        last_term = self.raft_log.last_term()
        for pid in sorted(self.prs.voters):
            if pid == self.id:
                continue
            self.send(
                Message(vote_msg, to=pid, term=term, index=last, log_term=last_term, context=ctx)
            )

    def poll(self, node_id: int, t: MessageType, granted: bool) -> tuple[int, int, VoteResult]:
        self.prs.record_vote(node_id, granted)
        return self.prs.tally_votes()

    # -- step ------------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message (local or from the network)."""
        if m.term == 0:
            pass  # local message (or a forwarded PROP / READ_INDEX)
        elif m.term > self.term:
            if m.type == MT.VOTE or m.type == MT.PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER_CONTEXT
                if not force and self.in_lease():
                    # Check quorum: we heard from a leader recently; ignore the disruptor
                    # without bumping our term (Raft thesis section 4.2.3).
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change our term in response to a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; we adopt it on winning
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader (e.g. after a partition) learns our term and steps down;
                # otherwise it could never rejoin with check-quorum / pre-vote on.
                self.send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t == MT.HUP:
            self.hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            # Raft section 5.2: one vote per term; 5.4.1: only for an up-to-date log.
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MT.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
                self.send(Message(vote_resp_type(t), to=m.frm, term=m.term))
                if t == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(vote_resp_type(t), to=m.frm, term=self.term, reject=True))
        else:
            self._step_fn(m)

    def step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            self.leader_propose(m)
            return
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            progress = self.prs.progress
            me = progress.get(self.id)
            if me is not None:
                me.recent_active = True
            if not self.prs.quorum_active():
                self.become_follower(self.term, NONE)
            for pid, pr in progress.items():
                if pid != self.id:
                    pr.recent_active = False
            return
        if t == MT.READ_INDEX:
            self.cancel_hibernation()
            if self.prs.is_singleton():
                self.answer_read_index(m, self.raft_log.committed)
                return
            if not self.committed_entry_in_current_term():
                # Raft thesis 6.4: the commit index is only known to be current once we
                # committed an entry of our term; hold the request until then.
                self.pending_read_index_messages.append(m)
                return
            self.send_read_index_response(m)
            return

        pr = self.prs.progress.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self.handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if m.index > pr.lease_tick:
                pr.lease_tick = m.index
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.raft_log.last_index():
                self.send_append(m.frm)
            if m.context and self.read_only.recv_ack(m.frm, m.context):
                self.confirm_reads()
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for an append response (or a heartbeat answer) before probing again.
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            # Optimistic replication probably lost messages; probe again.
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            self.cancel_hibernation()
            self.handle_transfer_leader(m, pr)
        elif t == MT.HIBERNATE_RESP:
            pr.recent_active = True
            if self.hibernate_acks is None:
                return
            if m.reject:
                self.cancel_hibernation()
                self.bcast_heartbeat()  # the peers that agreed start ticking again
                return
            self.hibernate_acks.add(m.frm)
            self.maybe_hibernate()

    def leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise AssertionError("stepped empty PROP")
        self.cancel_hibernation()
        if self.id not in self.prs.progress:
            raise ProposalDroppedError("leader was removed from the group", NONE)
        if self.lead_transferee != NONE:
            raise ProposalDroppedError("leader transfer in progress", self.lead_transferee)
        raft_log = self.raft_log
        li = raft_log.last_index()
        term = self.term
        conf_at = 0
        ents = []
        for i, e in enumerate(m.entries):
            if e.type == EntryType.CONF_CHANGE:
                if conf_at or self.pending_conf_index > raft_log.applied:
                    raise ProposalDroppedError("pending conf change", self.id)
                if self.removes_last_voter(e.data):
                    raise ProposalDroppedError(
                        "conf change would remove the last voter (the group could never elect "
                        "again)", self.id)
                conf_at = li + i + 1
            ents.append(Entry(term, li + i + 1, e.type, e.data))
        if not self.append_entry(ents):
            raise ProposalDroppedError("too many uncommitted entries", self.id)
        if conf_at:
            self.pending_conf_index = conf_at
        self.bcast_pending = True

    def propose_local(self, etype: int, data: bytes) -> None:
        """Fast path for RawNode.propose on a leader (same rules as leader_propose)."""
        if self.state != StateType.LEADER or etype != EntryType.NORMAL or self.max_uncommitted_size:
            self.step(Message(MT.PROP, frm=self.id, entries=[Entry(0, 0, etype, data)]))
            return
        if self.lead_transferee != NONE:
            raise ProposalDroppedError("leader transfer in progress", self.lead_transferee)
        me = self.prs.progress.get(self.id)
        if me is None:
            raise ProposalDroppedError("leader was removed from the group", NONE)
        raft_log = self.raft_log
        u = raft_log.unstable
        if u.entries:
            li = u.offset + len(u.entries)
            u.entries.append(Entry(self.term, li, etype, data))
        else:
            li = raft_log.last_index() + 1
            raft_log.append([Entry(self.term, li, etype, data)])
        me.match = li
        me.next = li + 1
        if len(self.prs.voters) == 1:
            self.maybe_commit()
        self.bcast_pending = True

    def handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe_idx = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of a term the follower does not have (etcd's
                # findConflictByTerm): one round trip per term instead of per entry.
                next_probe_idx, _ = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe_idx):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            self.release_pending_read_index_messages()
            self.broadcast_commit()
        elif old_paused:
            self.send_append(m.frm)
        # Keep the pipe full while the window allows.
        while self.maybe_send_append(m.frm, False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.raft_log.last_index():
            self.send_timeout_now(m.frm)

    def handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            return
        transferee = m.frm
        last = self.lead_transferee
        if last != NONE:
            if last == transferee:
                return  # same transfer already under way
            self.abort_leader_transfer()
        if transferee == self.id:
            return
        # The transfer must finish within an election timeout (see tick_heartbeat).
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.raft_log.last_index():
            self.send_timeout_now(transferee)
        else:
            self.send_append(transferee)

    def step_candidate(self, m: Message) -> None:
        t = m.type
        my_vote_resp = MT.PRE_VOTE_RESP if self.state == StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDroppedError("no leader", NONE)
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif t == my_vote_resp:
            _, _, res = self.poll(m.frm, t, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                # A pre-vote loss keeps the term; a real one already moved us to m.term.
                self.become_follower(self.term, NONE)
        # TIMEOUT_NOW while campaigning: ignored.

    def step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDroppedError("no leader", NONE)
            if self.disable_proposal_forwarding:
                raise ProposalDroppedError("proposal forwarding disabled", self.lead)
            self.send(Message(MT.PROP, to=self.lead, frm=m.frm, entries=m.entries))
        elif t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead != NONE:
                self.send(Message(MT.TRANSFER_LEADER, to=self.lead, frm=m.frm))
        elif t == MT.TIMEOUT_NOW:
            # Leader transfer: campaign at once, skipping pre-vote and the lease check.
            self.hup(CampaignType.TRANSFER)
        elif t == MT.READ_INDEX:
            if self.lead != NONE:
                self.send(Message(MT.READ_INDEX, to=self.lead, frm=m.frm, context=m.context))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        elif t == MT.HIBERNATE:
            self.handle_hibernate(m)

    # -- follower handlers -----------------------------------------------------------------

    def handle_append_entries(self, m: Message) -> None:
        raft_log = self.raft_log
        if m.index < raft_log.committed:
            self.send(Message(MT.APP_RESP, to=m.frm, index=raft_log.committed))
            return
        last_new, ok = raft_log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if ok:
            self.send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        # Raft section 5.3: reject, and hint where our log may match the leader's.
        hint_index = min(m.index, raft_log.last_index())
        hint_index, hint_term = raft_log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(
                MT.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self.send(Message(MT.HEARTBEAT_RESP, to=m.frm, index=m.index, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self.restore(snap):
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.last_index()))
        else:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.committed))

    def restore(self, snap: Snapshot) -> bool:
        """Install a snapshot from the leader; False if it is stale or not for us."""
        meta = snap.metadata
        if meta.index <= self.raft_log.committed:
            return False
        if self.state != StateType.FOLLOWER:
            # Defensive (etcd): only followers restore; force a new election.
            self.become_follower(self.term + 1, NONE)
            return False
        cs = meta.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            return False
        if self.raft_log.match_term(meta.index, meta.term):
            # We already have the entries: just fast-forward the commit index.
            self.raft_log.commit_to(meta.index)
            return False
        self.raft_log.restore(snap)
        self.restore_conf_state(cs)
        return True

    def restore_conf_state(self, cs: ConfState) -> None:
        self.prs = ProgressTracker(self.prs.max_inflight)
        last = self.raft_log.last_index()
        for v in cs.voters:
            self.prs.init_progress(v, 0, last + 1, False)
        for v in cs.learners:
            self.prs.init_progress(v, 0, last + 1, True)
        me = self.prs.progress.get(self.id)
        if me is not None:
            me.match = last
        self.is_learner = me is not None and me.is_learner

    # -- ReadIndex -------------------------------------------------------------------------

    def lease_valid(self) -> bool:
        if self.state != StateType.LEADER or self.lease_revoked:
            return False
        if self.lead_transferee != NONE:
            return False
        start = self.prs.quorum_lease_tick(self.id, self.ticks)
        return start >= 0 and self.ticks < start + self.election_timeout - LEASE_MARGIN_TICKS

    def send_read_index_response(self, m: Message) -> None:
        if self.read_only.option == ReadOnlyOption.LEASE_BASED and self.lease_valid():
            self.answer_read_index(m, self.raft_log.committed)
            return
        # SAFE: confirm leadership with a new heartbeat round, started after the read arrived.
        self.read_round += 1
        ctx = self.read_only.add_request(self.raft_log.committed, m, self.read_round, self.id)
        self.confirm_reads()  # a single voter confirms by itself
        if self.read_only.pending():
            self.bcast_heartbeat_with_ctx(ctx)

    def confirm_reads(self) -> None:
        """Answer every queued read a quorum of voters confirmed (in arrival order)."""
        for rs in self.read_only.advance(self.prs.quorum_value):
            self.answer_read_index(rs.req, rs.index)

    def answer_read_index(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            if (self.commit_bcast_pending and self.state == StateType.LEADER
                    and req.frm in self.prs.progress):
                # The follower waits to apply up to `index`: tell it the commit index first.
                self.send_append(req.frm)
            self.send(Message(MT.READ_INDEX_RESP, to=req.frm, index=index, context=req.context))

    def release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages:
            return
        if not self.committed_entry_in_current_term():
            return
        msgs = self.pending_read_index_messages
        self.pending_read_index_messages = []
        for m in msgs:
            self.send_read_index_response(m)

    # -- leader transfer -------------------------------------------------------------------

    def send_timeout_now(self, to: int) -> None:
        # From here on the transferee may win without waiting for our lease to expire.
        self.lease_revoked = True
        self.send(Message(MT.TIMEOUT_NOW, to=to))

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- membership ------------------------------------------------------------------------

    def removes_last_voter(self, data: bytes) -> bool:
        """Would this encoded conf change, applied to the current config, leave no voter?
        (No other conf change is pending when one is proposed, so the current config is the
        one it will be applied to.) Undecodable data is left to fail at apply, as before."""
        try:
            cc = ConfChange.decode(data)
        except ValueError:
            return False
        return cc.type == ConfChangeType.REMOVE_NODE and self.prs.voters == {cc.node_id}

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed single-step conf change; returns the new configuration.

        Removing the last voter is a no-op (etcd refuses it too: "removed all voters"): the
        leader refuses to propose it, and an entry that got into the log anyway leaves the
        config unchanged. This depends only on the config, so every replica agrees."""
        prs = self.prs
        nid = cc.node_id
        if cc.type == ConfChangeType.REMOVE_NODE and prs.voters == {nid}:
            return prs.conf_state()
        if nid != NONE:
            last = self.raft_log.last_index()
            if cc.type == ConfChangeType.ADD_NODE:
                prs.init_progress(nid, 0, last + 1, False)
            elif cc.type == ConfChangeType.ADD_LEARNER:
                if nid not in prs.voters:  # demoting a voter is not supported: ignored
                    prs.init_progress(nid, 0, last + 1, True)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                prs.remove(nid)
            else:
                raise ValueError(f"unknown conf change type {cc.type!r}")
            self.switch_to_config()
        return prs.conf_state()

    def switch_to_config(self) -> None:
        me = self.prs.progress.get(self.id)
        self.is_learner = me is not None and me.is_learner
        if self.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE) and not self.promotable():
            self.become_follower(self.term, NONE)  # removed or demoted mid-campaign
            return
        if self.state != StateType.LEADER:
            return
        if me is None or me.is_learner:
            # We were removed: step down at once; the rest elect a new leader.
            self.become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and self.lead_transferee not in self.prs.voters:
            self.abort_leader_transfer()
        # The quorum may have shrunk (commit more, confirm reads) and new peers need entries
        # (membership changes are rare: broadcast at once even with lazy_commit_broadcast).
        self.confirm_reads()
        if self.maybe_commit():
            self.release_pending_read_index_messages()
            self.bcast_append()
        else:
            for pid in self.prs.ids():
                if pid != self.id:
                    self.maybe_send_append(pid, False)
