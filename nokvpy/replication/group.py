"""One raft group hosted by the driver: its raw node, its waiters and their resolution.

Owns: a `Group` (raw node, state machine, the snapshot-producing storage wrapper, the driver's
view of its role, leader, membership and applied index), the waiters of its proposals, reads
and applied-index readers, and what a durable Ready means for them: `raft_persisted` (role,
term, snapshot, read answers), `apply_persisted` (membership, applied index, proposal results)
and the early answers (`note_committed`, `ack_durable`). Never persists, sends or steps the
raw node: the driver's loop does that (and calls these in the order the Ready contract
says). Never decides what may be sent or synced: the raft core's Ready says.

Proposal outcomes: a proposal is accepted only on the leader; its (index, term) is recorded and
it resolves when that index applies. If the index applies with another term, the proposal was
overwritten by a new leader and fails as dropped: it will never apply (the outcome is known).
A proposal whose waiter times out before apply has an unknown outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy.raft import ConfChange, Config, RawNode, Ready, conf_state_after
from nokvpy.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    Message,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from nokvpy.replication.statemachine import StateMachine, replay_floor


class ProposalError(Exception):
    """A proposal was refused or lost. `reason`: not_leader | dropped | stopped | too_large."""

    def __init__(self, reason: str, message: str, leader_id: int = 0):
        super().__init__(message)
        self.reason = reason
        self.leader_id = leader_id


@dataclass(slots=True)
class Waiter:
    term: int
    index: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: Exception | None = None
    on_commit: Any = None  # called once with the index when the entry is known committed

    def resolve(self, result: Any) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done.set()


class SnapshotStorage:
    """Wraps a group's durable log storage so that `snapshot()` produces a fresh, consistent
    image at the state machine's applied index (not a stale one from the last compaction)."""

    def __init__(self, inner: Any, group: Group):
        self._inner = inner
        self._group = group

    def initial_state(self):
        return self._inner.initial_state()

    def entries(self, lo, hi, max_size=None):
        floor = replay_floor(self._group.sm)
        if floor and lo <= 1:
            # a replica with an empty log (a new or re-added peer) is not built by replaying
            # the log from its start, written under an older range: the leader sends a
            # snapshot instead. A lagging replica with data replays from where it is (it
            # still owns its old range on its store: no other region's snapshot lands there
            # before it applies the range change, see Store._snapshot_overlaps).
            raise CompactedError(f"group {self._group.group_id}'s log from its start is not "
                                 f"replayed (range changed at {floor}): snapshot instead")
        return self._inner.entries(lo, hi, max_size)

    def term(self, index):
        return self._inner.term(index)

    def first_index(self):
        return self._inner.first_index()

    def last_index(self):
        return self._inner.last_index()

    def snapshot(self) -> Snapshot:
        group = self._group
        index, data = group.sm.snapshot()
        term = self._inner.term(index)
        meta = SnapshotMetadata(index=index, term=term, conf_state=group.conf_state)
        return Snapshot(meta, data)


def config_with_storage(config: Config, storage: Any) -> Config:
    config.storage = storage
    return config


class Group:
    """One raft group hosted here: its raw node, durable storage and state machine."""

    def __init__(
        self,
        group_id: int,
        node_id: int,
        storage: Any,
        sm: StateMachine,
        route: Callable[[int], int | None],
        config: Config,
    ):
        self.group_id = group_id
        self.node_id = node_id
        self.sm = sm
        self.route = route  # raft node id -> transport destination (store / peer process id)
        self.storage = SnapshotStorage(storage, self)
        self.node = RawNode(config_with_storage(config, self.storage))
        _, self.conf_state = storage.initial_state()
        self.waiters: dict[int, Waiter] = {}
        self.reads: dict[bytes, Waiter] = {}
        self.applied = sm.applied_index()
        self.apply_waiters: list[tuple[int, trio.Event]] = []
        self.leader_id = 0
        self.role = StateType.FOLLOWER
        self.term = 0
        self.vote = 0
        self.stopped = False
        # The driver's tick count when it found the node hibernating (None: ticking); the
        # ticks since then are handed to `RawNode.wake` (driver.py).
        self.slept_at: int | None = None
        self.early_ack = False  # resolve proposals before the fsync when safe (ack_durable)
        self.pending_steps: list[Message] = []
        self.epoch: tuple[int, int] = (0, 0)  # (version, conf_ver) stamped on outgoing envelopes

    @property
    def is_leader(self) -> bool:
        return self.role == StateType.LEADER

    def wait_applied_event(self, index: int) -> trio.Event | None:
        if self.applied >= index:
            return None
        ev = trio.Event()
        self.apply_waiters.append((index, ev))
        return ev

    def _notify_applied(self) -> None:
        if not self.apply_waiters:
            return
        keep = []
        for index, ev in self.apply_waiters:
            if index <= self.applied:
                ev.set()
            else:
                keep.append((index, ev))
        self.apply_waiters = keep

    def stop(self) -> None:
        """Removed from the driver: fail every waiter, wake every applied-index reader."""
        self.stopped = True
        err = ProposalError("stopped", f"group {self.group_id} was removed from this node")
        for w in list(self.waiters.values()) + list(self.reads.values()):
            w.fail(err)
        self.waiters.clear()
        self.reads.clear()
        for _, ev in self.apply_waiters:
            ev.set()

    # ---- a Ready's outcome -------------------------------------------------------------

    def conf_state_to_stage(self, rd: Ready, ents: list[Entry]) -> tuple[int, ConfState] | None:
        """The membership in force after applying `ents` (and the index of the last conf
        change among them), to persist in the batch that applies them: a restart resumes
        after the applied index and must not need to re-apply conf changes."""
        snap = rd.snapshot
        cs = (snap.metadata.conf_state if snap is not None and not snap.is_empty()
              else self.conf_state)
        return conf_state_after(cs, ents)

    def note_committed(self, ents: list[Entry]) -> None:
        """Tell the proposers of `ents` (those still waiting, of the same term) that their
        entry committed; apply comes later in the same turn or the next one."""
        waiters = self.waiters
        if not waiters:
            return
        for e in ents:
            w = waiters.get(e.index)
            if w is not None and w.on_commit is not None and w.term == e.term:
                callback, w.on_commit = w.on_commit, None
                callback(e.index)

    def ack_durable(self, rd: Ready, ents: list[Entry], results: list[Any],
                    persisted: bool = False) -> int:
        """Resolve proposal waiters before this turn's fsync when that is already safe;
        returns how many.

        A committed entry that this node persisted in an earlier turn is durable on a quorum
        (the leader's appends may leave before its own write, but an ack is only stepped after
        that write: see the Ready contract in nokvpy/raft/rawnode.py) and its result was
        computed deterministically while staging; a crash before this batch commits replays
        it to the same result. Entries persisted in this very batch (a single-voter group
        commits on append) wait for the fsync as before. Readers still wait for the apply to
        be durable: `applied` only moves after the commit. With `persisted` (WAL mode:
        applies are staged once this turn's log is durable) entries of this turn qualify
        too. Opt-in per group (`early_ack`): callers must not expect the state machine's
        in-memory view to include the entry when the proposal returns (a store's reads go
        through ReadIndex and wait for the durable applied index; metaroot's Snapshot reads
        do not, so it keeps acking after the commit)."""
        if (not self.early_ack or not ents or not self.waiters
                or (rd.snapshot is not None and not rd.snapshot.is_empty())):
            return 0
        first_new = (rd.entries[0].index if rd.entries and not persisted
                     else ents[-1].index + 1)
        acked = 0
        for e, res in zip(ents, results, strict=False):
            if e.index >= first_new:
                break
            if e.type != EntryType.NORMAL:
                continue
            w = self.waiters.get(e.index)
            if w is None or w.term != e.term:
                continue  # resolved (or failed as replaced) after the commit, as before
            del self.waiters[e.index]
            w.resolve(res)
            acked += 1
        return acked

    def raft_persisted(self, rd: Ready, on_role_change: Callable[[Group], None] | None,
                       notify: bool = True) -> None:
        """This Ready's raft state is durable: snapshot, role, term and read answers."""
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.conf_state = rd.snapshot.metadata.conf_state
            self.applied = max(self.applied, rd.snapshot.metadata.index)
        if rd.soft_state is not None:
            ss = rd.soft_state
            changed = ss.lead != self.leader_id or ss.raft_state != self.role
            lost_lead = changed and ss.lead != self.leader_id
            self.leader_id, self.role = ss.lead, ss.raft_state
            if lost_lead and self.reads:
                err = ProposalError("not_leader", f"leader of group {self.group_id} changed "
                                    "while a read index was pending", ss.lead)
                for w in self.reads.values():
                    w.fail(err)
            if changed and on_role_change:
                on_role_change(self)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        for rs in rd.read_states:
            w = self.reads.get(rs.request_ctx)
            if w is not None:
                w.resolve(rs.index)
        if notify:
            self._notify_applied()

    def apply_persisted(self, ents: list[Entry], results: list[Any],
                        before_apply: Callable[[], None] | None,
                        after_apply: Callable[[], None] | None) -> None:
        """The apply of `ents` is durable: move the applied index, answer the proposers."""
        if ents:
            if before_apply:
                before_apply()
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    cc = ConfChange.decode(e.data)
                    self.conf_state = self.node.apply_conf_change(cc)
                    self.sm.on_conf_change(cc, self.conf_state)
            self.sm.after_commit(ents, results)
            self.applied = ents[-1].index
            for e, res in zip(ents, results, strict=False):
                w = self.waiters.pop(e.index, None)
                if w is None:
                    continue
                if w.term == e.term:
                    w.resolve(res)
                else:
                    w.fail(ProposalError("dropped", f"entry {e.index} was replaced by a new "
                                         f"leader (term {e.term})", self.leader_id))
            if after_apply:
                after_apply()
        self._notify_applied()
