"""RawNode: the thin, synchronous API over the raft core, and the Ready it hands out.

Owns: turning caller actions into core messages, batching everything the core produced into
one `Ready` at a time, and the Ready contract below: which of a Ready's messages may leave
before it is persisted, and whether persisting it needs an fsync. The caller obeys the contract
and decides nothing about safety. Never does I/O, never reads a clock, never spawns anything:
the caller's driver loop (nokvpy/replication) does the persisting, sending and applying.

The caller's duties for each Ready, in this order:

0. Send `early_messages` (any time from now on; empty unless `Config.early_messages`). They
   vouch for nothing this Ready persists (see `_sendable_early`), so they may go out while the
   caller's own disk write is in flight (Raft thesis 10.2.1). The caller must not step an
   answer to them into this node before this Ready's `entries` are durable (a loop that
   persists a turn's entries before it steps the next turn's input never does).
1. Persist: if `snapshot` is set, install it in storage (`MemoryStorage.apply_snapshot`);
   append `entries` (truncating any conflicting suffix); store `hard_state` if set. Write them
   atomically and fsync when `must_sync` is true (term, vote or entries changed).
2. Send `messages`. Only after step 1: a message may acknowledge (or, on the leader, carry)
   entries and votes that must already be durable. Always here: a vote, a vote response,
   anything of a Ready with a new term or vote or a snapshot, and, when the Ready has
   entries, anything but a leader's appends and heartbeats.
3. Apply: if `snapshot` is set, restore the state machine from it; then apply
   `committed_entries` in order. For an `EntryType.CONF_CHANGE` entry call
   `apply_conf_change(ConfChange.decode(entry.data))` and keep the returned ConfState with the
   applied state (it goes into the next snapshot; `confchange.conf_state_after` computes it
   ahead, for a caller that persists it with the applied index). Serve `read_states` once the
   applied index reaches their `index`.
4. Call `advance(ready)`. Only one Ready may be outstanding: `ready()` raises until the previous
   one was advanced.

A forwarded proposal that the leader drops is discarded silently in `step` (the proposer
times out and retries); local calls raise `ProposalDroppedError` with a leader hint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import Config
from .core import Raft
from .progress import ProgressState
from .read_only import ReadOnlyOption
from .types import (
    LOCAL_MESSAGE_TYPES,
    NONE,
    RESPONSE_MESSAGE_TYPES,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotAppendedError,
    NotLeaderError,
    ProposalDroppedError,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)


@dataclass(slots=True)
class Ready:
    # Leader and role, or None if unchanged since the previous Ready. Volatile: not persisted.
    soft_state: SoftState | None = None
    # Term, vote and commit to persist, or None if unchanged.
    hard_state: HardState | None = None
    # ReadIndex answers that became ready.
    read_states: list[ReadState] = field(default_factory=list)
    # Entries to persist (step 1), then...
    entries: list[Entry] = field(default_factory=list)
    # ...a snapshot to install, or None.
    snapshot: Snapshot | None = None
    # Committed entries to apply (step 3). May include entries from `entries`.
    committed_entries: list[Entry] = field(default_factory=list)
    # Messages to send after persisting (step 2).
    messages: list[Message] = field(default_factory=list)
    # Persist with fsync: term/vote changed or there are entries / a snapshot.
    must_sync: bool = False
    # Messages that may be sent before this Ready is persisted (step 0; only with
    # Config.early_messages). A Ready's messages are all here or all in `messages`.
    early_messages: list[Message] = field(default_factory=list)


# What a leader with new entries may send before they are durable (see _sendable_early).
_LEADER_MSGS = frozenset((MessageType.APP, MessageType.HEARTBEAT))


def _sendable_early(state: StateType, tv_changed: bool, entries: list[Entry],
                    snapshot: Snapshot | None, msgs: list[Message]) -> bool:
    """May these messages of one Ready go out before the Ready is persisted (overlapping the
    caller's fsync with the network and the followers' fsyncs)?

    Only when nothing they vouch for is in the Ready: term and vote unchanged (a vote, a vote
    response or a new term must be durable before anyone hears of it), no snapshot, and
    either no new entries at all (commit-only / heartbeat / read-index traffic: responses then
    only speak of entries persisted by earlier Readys), or the node is leader and only sends
    appends and heartbeats (Raft thesis 10.2.1: the leader may write its log in parallel with
    replicating it). The latter needs the caller to step a follower's ack only after this
    Ready's entries are durable (a serial loop does: acks are stepped in a later turn, after
    this turn's commit returned), so the leader's own match index (counted at append) is
    durable whenever it contributes to a commit."""
    if snapshot is not None or tv_changed:
        return False
    if not entries:
        return True
    if state != StateType.LEADER:
        return False
    for m in msgs:
        if m.type not in _LEADER_MSGS:
            return False
    return True


@dataclass(slots=True, frozen=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    paused: bool
    inflight: int


@dataclass(slots=True, frozen=True)
class BasicStatus:
    """What a caller outside the core may read of a node, cheaply (no per-peer progress)."""

    id: int
    term: int
    vote: int
    lead: int
    state: StateType
    commit: int
    applied: int
    last_index: int
    lead_transferee: int
    # The commit index is an entry of the current term (a new leader committed its first
    # entry: only then is its commit index the group's, and may a read use it).
    committed_in_term: bool


@dataclass(slots=True, frozen=True)
class Status:
    id: int
    term: int
    vote: int
    lead: int
    state: StateType
    commit: int
    applied: int
    last_index: int
    conf_state: ConfState
    lead_transferee: int
    # Only on the leader: one entry per peer (learners included, `is_learner`).
    progress: dict[int, ProgressStatus]
    committed_in_term: bool = False


class RawNode:
    __slots__ = ("raft", "_prev_soft", "_prev_hard", "_outstanding", "_early")

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        # Invariant: term and vote of the last Ready advanced (or of storage): what the
        # caller has persisted once it advanced that Ready.
        self._prev_hard = self.raft.hard_state()
        self._outstanding = False
        self._early = config.early_messages

    def bootstrap(self, peers: Iterable[int], context: bytes = b"") -> None:
        """Start a brand-new group: the log begins with one committed ADD_NODE entry per peer
        (term 1). Every founding member calls this with the same peers on empty storage. The
        first Ready carries those entries to persist and to apply (applying again is a no-op).
        Nodes added later start on empty storage without bootstrap.

        `context` rides in the first entry's ConfChange (e.g. a region descriptor: the log is
        then self-describing, for a peer that later replays it from index 1); founding
        members pass the same one, so their founding entries are identical."""
        peers = list(peers)
        if not peers:
            raise ValueError("bootstrap needs at least one peer")
        r = self.raft
        if r.raft_log.last_index() != 0:
            raise RuntimeError("can only bootstrap an empty storage")
        r.become_follower(1, NONE)
        ents = [
            Entry(1, i + 1, EntryType.CONF_CHANGE,
                  ConfChange(ConfChangeType.ADD_NODE, p, context if i == 0 else b"").encode())
            for i, p in enumerate(peers)
        ]
        r.raft_log.append(ents)
        r.raft_log.committed = len(ents)
        for p in peers:
            r.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, p))

    # -- driving ---------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MessageType.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose a normal entry. Raises ProposalDroppedError if it cannot be appended or
        forwarded (no leader, transfer under way, forwarding disabled, size limit)."""
        self.raft.propose_local(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-step membership change; refused while another is pending."""
        self.raft.step(
            Message(
                MessageType.PROP,
                frm=self.raft.id,
                entries=[Entry(0, 0, EntryType.CONF_CHANGE, cc.encode())],
            )
        )

    def propose_at(self, data: bytes, conf_change: bool = False) -> tuple[int, int]:
        """Propose on the leader (`data` is an encoded ConfChange when `conf_change`) and
        return the (index, term) the entry was appended at. Raises NotLeaderError when this
        node is not the leader, NotAppendedError when nothing was appended, and what
        `propose` / `propose_conf_change` raise (ValueError for an undecodable change)."""
        r = self.raft
        if r.state != StateType.LEADER:
            raise NotLeaderError(r.lead)
        before = r.raft_log.last_index()
        if conf_change:
            self.propose_conf_change(ConfChange.decode(data))
        else:
            self.propose(data)
        index = r.raft_log.last_index()
        if index == before:  # e.g. a conf change refused while another is pending
            raise NotAppendedError(r.lead)
        return index, r.term

    def step(self, m: Message) -> None:
        """Feed a message received from the network."""
        if m.type in LOCAL_MESSAGE_TYPES:
            raise ValueError(f"cannot step local message type {m.type.name} from the network")
        r = self.raft
        if m.type in RESPONSE_MESSAGE_TYPES and m.frm not in r.prs.progress:
            return  # a response from a peer we do not track
        try:
            r.step(m)
        except ProposalDroppedError:
            r.dropped_forwarded_proposals += 1

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer comes back as a ReadState with this
        ctx (which must be non-empty and unique among outstanding reads). Without a known
        leader the request is dropped: the caller times out and retries."""
        if not ctx:
            raise ValueError("read_index needs a non-empty context")
        self.raft.step(Message(MessageType.READ_INDEX, context=ctx))

    def transfer_leader(self, transferee: int) -> None:
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=failed))

    def flush_commit(self) -> bool:
        """Leader with lazy_commit_broadcast: send a pending commit index to every peer now.
        Returns whether one was pending (the next Ready then carries the messages)."""
        return self.raft.flush_commit_bcast()

    def commit_flush_pending(self) -> bool:
        return self.raft.commit_bcast_pending

    @property
    def hibernating(self) -> bool:
        """This node stopped ticking (see "hibernation" in core.py): the caller must not
        tick it, and must `wake` it before it steps anything into it."""
        return self.raft.hibernating

    def wake(self, elapsed: int, *, keep_lease_clock: bool = False) -> None:
        """Tick again after `elapsed` ticks asleep (see `Raft.wake`)."""
        self.raft.wake(elapsed, keep_lease_clock=keep_lease_clock)

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    def lease_read_index(self) -> int | None:
        """The read index this leader may answer from its lease now, without a heartbeat
        round, or None: not leader, not LEASE_BASED, no entry committed in this term yet, or
        the lease is not valid (the same rule as the core's LEASE_BASED ReadIndex). The
        caller must have fed the ticks that elapsed (see ticks.py) for the lease to mean
        anything."""
        r = self.raft
        if r.state != StateType.LEADER or r.read_only.option != ReadOnlyOption.LEASE_BASED:
            return None
        if r.hibernating:  # its lease clock stopped with it: `wake` first
            return None
        if not r.committed_entry_in_current_term() or not r.lease_valid():
            return None
        return r.raft_log.committed

    # -- Ready -----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        ps = self._prev_soft
        if r.lead != ps.lead or r.state != ps.raft_state:
            return True
        ph = self._prev_hard
        log = r.raft_log
        if r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit:
            return True
        u = log.unstable
        if u.snapshot is not None or u.entries or r.msgs or r.read_states or r.bcast_pending:
            return True
        return log.has_next_ents()

    def ready(self) -> Ready:
        if self._outstanding:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        r = self.raft
        r.flush_bcast()
        log = r.raft_log
        entries = log.unstable_entries()
        snapshot = log.unstable.snapshot
        msgs = r.msgs
        r.msgs = []
        read_states = r.read_states
        if read_states:
            r.read_states = []
        else:
            read_states = []
        soft = hard = None
        ps = self._prev_soft
        if r.lead != ps.lead or r.state != ps.raft_state:
            soft = self._prev_soft = SoftState(r.lead, r.state)
        ph = self._prev_hard
        tv_changed = r.term != ph.term or r.vote != ph.vote
        if tv_changed or log.committed != ph.commit:
            hard = HardState(r.term, r.vote, log.committed)
        early: list[Message] = []
        if msgs and self._early and _sendable_early(r.state, tv_changed, entries, snapshot, msgs):
            early, msgs = msgs, early
        self._outstanding = True
        return Ready(soft, hard, read_states, entries, snapshot, log.next_ents(), msgs,
                     tv_changed or bool(entries) or snapshot is not None, early)

    def advance(self, rd: Ready) -> None:
        """The caller finished persisting, sending and applying `rd`."""
        r = self.raft
        log = r.raft_log
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.committed_entries:
            log.applied_to(rd.committed_entries[-1].index)
            if r.uncommitted_size:
                r.reduce_uncommitted_size(rd.committed_entries)
        elif rd.snapshot is not None:
            log.applied_to(rd.snapshot.metadata.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.snapshot is not None:
            log.stable_snap_to(rd.snapshot.metadata.index)
        self._outstanding = False

    # -- introspection ---------------------------------------------------------------------

    def basic_status(self) -> BasicStatus:
        r = self.raft
        log = r.raft_log
        return BasicStatus(r.id, r.term, r.vote, r.lead, r.state, log.committed, log.applied,
                           log.last_index(), r.lead_transferee,
                           r.committed_entry_in_current_term())

    def status(self) -> Status:
        r = self.raft
        progress: dict[int, ProgressStatus] = {}
        if r.state == StateType.LEADER:
            for pid in r.prs.ids():
                pr = r.prs.progress[pid]
                progress[pid] = ProgressStatus(
                    pr.match,
                    pr.next,
                    pr.state,
                    pr.is_learner,
                    pr.is_paused(),
                    pr.inflights.count(),
                )
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            lead=r.lead,
            state=r.state,
            commit=r.raft_log.committed,
            applied=r.raft_log.applied,
            last_index=r.raft_log.last_index(),
            conf_state=r.prs.conf_state(),
            lead_transferee=r.lead_transferee,
            progress=progress,
            committed_in_term=r.committed_entry_in_current_term(),
        )
