"""RawNode: the thin, synchronous API over the raft core, and the Ready it hands out.

Owns: turning caller actions into core messages, and batching everything the core produced
into one `Ready` at a time. Never does I/O, never reads a clock, never spawns anything: the
caller's driver loop (raftstore's peer) does the persisting, sending and applying.

The caller's duties for each Ready, in this order:

1. Persist: if `snapshot` is set, install it in storage (`MemoryStorage.apply_snapshot`);
   append `entries` (truncating any conflicting suffix); store `hard_state` if set. Write them
   atomically and fsync when `must_sync` is true (term, vote or entries changed).
2. Send `messages`. Only after step 1: a message may acknowledge (or, on the leader, carry)
   entries and votes that must already be durable. We do not relax etcd's rule for leader
   messages; a leader may not send before it persisted.
3. Apply: if `snapshot` is set, restore the state machine from it; then apply
   `committed_entries` in order. For an `EntryType.CONF_CHANGE` entry call
   `apply_conf_change(ConfChange.decode(entry.data))` and keep the returned ConfState with the
   applied state (it goes into the next snapshot). Serve `read_states` once the applied index
   reaches their `index`.
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


@dataclass(slots=True, frozen=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    paused: bool
    inflight: int


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
    # Only on the leader: one entry per peer.
    progress: dict[int, ProgressStatus]


class RawNode:
    __slots__ = ("raft", "_prev_soft", "_prev_hard", "_outstanding")

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._outstanding = False

    def bootstrap(self, peers: Iterable[int]) -> None:
        """Start a brand-new group: the log begins with one committed ADD_NODE entry per peer
        (term 1). Every founding member calls this with the same peers on empty storage. The
        first Ready carries those entries to persist and to apply (applying again is a no-op).
        Nodes added later start on empty storage without bootstrap."""
        peers = list(peers)
        if not peers:
            raise ValueError("bootstrap needs at least one peer")
        r = self.raft
        if r.raft_log.last_index() != 0:
            raise RuntimeError("can only bootstrap an empty storage")
        r.become_follower(1, NONE)
        ents = [
            Entry(1, i + 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_NODE, p).encode())
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

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

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
        rd = Ready(
            entries=log.unstable_entries(),
            committed_entries=log.next_ents(),
            messages=r.msgs,
            snapshot=log.unstable.snapshot,
        )
        r.msgs = []
        if r.read_states:
            rd.read_states = r.read_states
            r.read_states = []
        ps = self._prev_soft
        if r.lead != ps.lead or r.state != ps.raft_state:
            rd.soft_state = self._prev_soft = SoftState(r.lead, r.state)
        ph = self._prev_hard
        if r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit:
            rd.hard_state = HardState(r.term, r.vote, log.committed)
            rd.must_sync = r.term != ph.term or r.vote != ph.vote
        if rd.entries or rd.snapshot is not None:
            rd.must_sync = True
        self._outstanding = True
        return rd

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
        )
