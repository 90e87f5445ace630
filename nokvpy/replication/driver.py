"""The trio driver around the pure raft core, shared by metaroot (one group) and stores (many).

Owns: one ready loop per process. Each turn it steps the queued incoming messages, proposals,
read requests and ticks into the raw nodes; collects the Readys of every group; stages their
hard state, entries and snapshots plus the writes of applying their committed entries into ONE
write batch; commits it in one fsynced LMDB transaction (group commit); then sends the
messages (batched per destination by the transport), applies membership changes, resolves
proposal and read waiters, and advances. Never interprets entry payloads: a `StateMachine`
does that. Never mutates a raw node outside the loop task, so a Ready is never interleaved
with a step.

Proposal outcomes: a proposal is accepted only on the leader; its (index, term) is recorded and
it resolves when that index applies. If the index applies with another term, the proposal was
overwritten by a new leader and fails as dropped: it will never apply (the outcome is known).
A proposal whose waiter times out before apply has an unknown outcome.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from nokvpy import failpoints
from nokvpy.raft import ConfChange, Config, RawNode, ReadOnlyOption
from nokvpy.raft.ticks import MAX_FEED, ElapsedTicks
from nokvpy.raft.types import (
    CompactedError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from nokvpy.storage import WriteBatch

log = logging.getLogger("nokvpy.replication")

_CTX = struct.Struct(">Q")


def unsafe_lease_from_env(environ: dict[str, str] | None = None) -> bool:
    """`NOKV_UNSAFE_LEASE=1`: the test-only switch that restores the old tick rule (one tick
    per wake-up, so a paused leader keeps its lease); see "Leader leases" in
    docs/protocols.md."""
    env = os.environ if environ is None else environ
    return env.get("NOKV_UNSAFE_LEASE", "") not in ("", "0")


if os.environ.get("NOKV_UNSAFE_READINDEX", "") not in ("", "0"):
    # Test-only: ReadIndex acks matched by the caller's context again (the old rule), so
    # fault runs can show they catch it. See "ReadIndex rounds" in docs/protocols.md.
    from nokvpy.raft import read_only as _read_only

    _read_only.UNSAFE_MATCH_BY_CONTEXT = True


class ProposalError(Exception):
    """A proposal was refused or lost. `reason`: not_leader | dropped | stopped | too_large."""

    def __init__(self, reason: str, message: str, leader_id: int = 0):
        super().__init__(message)
        self.reason = reason
        self.leader_id = leader_id


class StateMachine(Protocol):
    """What a group's owner supplies: how committed entries change durable state."""

    def stage_apply(self, batch: Any, entries: list[Entry]) -> list[Any]:
        """Stage the writes of applying `entries` (normal and conf change, in order) into
        `batch`, including the new applied index. Returns one result per entry (delivered to
        the proposal's waiter after the batch commits)."""

    def after_commit(self, entries: list[Entry], results: list[Any]) -> None:
        """The batch that applied `entries` is durable: update in-memory views."""

    def applied_index(self) -> int:
        """The applied index persisted with the state (restart resumes after it)."""

    def snapshot(self) -> tuple[int, bytes]:
        """A consistent (applied_index, data) image of the state for a lagging follower."""

    def stage_restore(self, batch: Any, snapshot: Snapshot) -> None:
        """Stage replacing the state with `snapshot` (its applied index included)."""

    def on_conf_change(self, cc: ConfChange, conf_state: ConfState) -> None:
        """A membership change applied (after the batch that applied it committed)."""


@dataclass(slots=True)
class _Waiter:
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
        floor = getattr(self._group.sm, "replay_floor", 0)
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
        hs, self.conf_state = storage.initial_state()
        self.persisted_tv = (hs.term, hs.vote) if hs is not None else (0, 0)
        self.waiters: dict[int, _Waiter] = {}
        self.reads: dict[bytes, _Waiter] = {}
        self.applied = sm.applied_index()
        self.apply_waiters: list[tuple[int, trio.Event]] = []
        self.leader_id = 0
        self.role = StateType.FOLLOWER
        self.term = 0
        self.vote = 0
        self.stopped = False
        self.early_ack = False  # resolve proposals before the fsync when safe (_ack_durable)
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


_LEADER_MSGS = frozenset((MessageType.APP, MessageType.HEARTBEAT))


def _sendable_before_persist(group: Group, rd: Any) -> bool:
    """May this Ready's messages go out before its batch is durable (overlapping this
    node's fsync with the network and the followers' fsyncs)?

    Only when nothing they vouch for is in the batch: term and vote unchanged (a vote or a
    new term must be durable before anyone hears of it), no snapshot, and either no new
    entries at all (commit-only / heartbeat / read-index traffic: responses then only speak
    of entries persisted in earlier turns), or the node is leader and only sends appends and
    heartbeats (Raft thesis 10.2.1: the leader may write its log in parallel with
    replicating it). The latter is safe here because the loop is serial: a follower's ack
    is stepped in a later turn, after this turn's commit returned, so the leader's own
    match index (counted at append) is durable whenever it contributes to a commit."""
    if rd.snapshot is not None and not rd.snapshot.is_empty():
        return False
    hs = rd.hard_state
    if hs is not None and (hs.term, hs.vote) != group.persisted_tv:
        return False
    if not rd.entries:
        return True
    if group.node.raft.state != StateType.LEADER:
        return False
    for m in rd.messages:
        if m.type not in _LEADER_MSGS:
            return False
    return True


async def _profile_dumper(path: str, driver: Driver) -> None:
    """Off by default. NOKV_PROFILE=PATH: cProfile this process's trio thread and dump the
    cumulative stats to PATH.<pid> every 2 s (read with pstats)."""
    import cProfile

    prof = None if os.environ.get("NOKV_PROFILE_TIMING_ONLY") else cProfile.Profile()
    if prof is not None:
        prof.enable()
    try:
        while True:
            await trio.sleep(2)
            if prof is not None:
                prof.dump_stats(f"{path}.{os.getpid()}")  # disables; re-enable to keep counting
                prof.enable()
            with open(f"{path}.{os.getpid()}.counters", "w") as f:
                f.write(repr(dict(driver.counters)) + "\n" + repr(driver.timing) + "\n"
                        + repr(getattr(driver.env, "stats", None)) + "\n")
    finally:
        if prof is not None:
            prof.disable()


def next_conf_state(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after applying `cc` to `cs` (mirrors Raft.apply_conf_change)."""
    nid = cc.node_id
    if not nid:
        return cs
    voters, learners = set(cs.voters), set(cs.learners)
    if cc.type == ConfChangeType.ADD_NODE:
        voters.add(nid)
        learners.discard(nid)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        if nid not in voters:
            learners.add(nid)
    elif cc.type == ConfChangeType.REMOVE_NODE:
        voters.discard(nid)
        learners.discard(nid)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


def config_with_storage(config: Config, storage: Any) -> Config:
    config.storage = storage
    return config


class Driver:
    """Hosts raft groups and runs their ready loop.

    `raftlog` stages Readys into a batch (`stage_ready`); `env.commit(batch)` makes a batch
    durable; `send(envelopes)` hands (group_id, to_node, message, epoch) tuples to the
    transport, which batches them per destination."""

    def __init__(
        self,
        env: Any,
        raftlog: Any,
        send: Callable[[list[tuple[int, int, Message, tuple[int, int]]]], None],
        *,
        tick_interval: float = 0.1,
        max_batch_proposals: int = 4096,
        commit_flush_delay: float = 0.002,
        apply_hold_max: float = 0.01,
    ):
        self.env = env
        self.raftlog = raftlog
        self.send = send
        self.tick_interval = tick_interval
        self.max_batch_proposals = max_batch_proposals
        # Groups with lazy_commit_broadcast whose leader holds a commit index not yet sent:
        # flushed when no other work arrives within commit_flush_delay seconds.
        self.commit_flush_delay = commit_flush_delay
        self._commit_pending: set[Group] = set()
        # A turn that only applied plain writes (see _deferrable) is not committed on its
        # own: its staged batch waits for the next turn's commit (one fsync for both), for a
        # reader of the applied index, for another writer of the environment, or for
        # commit_flush_delay. Invariant: while set, no other apply of a held group is staged
        # (see _needs_held_durable).
        self._deferred: tuple[WriteBatch, list[tuple[Group, Any, list[Entry], list[Any]]]] | None = None
        self._flush_deferred = False
        self._released: deque[tuple[Any, list[tuple[Group, Any, list[Entry], list[Any]]]]] = deque()
        self._nursery: trio.Nursery | None = None
        if hasattr(env, "before_submit"):
            env.before_submit = self._release_deferred
        self.groups: dict[int, Group] = {}
        self._wake = trio.Event()
        self._dirty: set[int] = set()
        self._proposals: deque[tuple[Group, bytes, _Waiter | None, bool]] = deque()
        # Ticks owed to the raw nodes, from the monotonic clock: a pause, a CPU starvation or
        # a stalled turn is fed as the ticks that really elapsed (see nokvpy/raft/ticks.py and
        # "Leader leases" in docs/protocols.md).
        # (origin set when the loop starts: see run)
        self._clock = ElapsedTicks(tick_interval, 0.0, unsafe=unsafe_lease_from_env())
        self._ticker_woke = False  # the ticker found ticks due since the last _feed
        # Read contexts are unique across restarts too: a READ_INDEX_RESP meant for a read of
        # this node's previous process (late, from a leader) must not answer a new read, and
        # the follower matches answers by context. A random start per process does that.
        self._ctx = itertools.count(int.from_bytes(os.urandom(8), "big") >> 2)
        self.counters: Counter[str] = Counter()
        self.on_role_change: Callable[[Group], None] | None = None
        self.on_applied_batch: Callable[[], None] | None = None
        self.before_persist: Callable[[], None] | None = None  # failpoint hooks
        self.after_persist: Callable[[], None] | None = None
        self.before_apply: Callable[[], None] | None = None
        self.after_apply: Callable[[], None] | None = None
        self.running = False
        # WAL mode (the raft log in a write-ahead log, see `_turn_wal`): held applies may
        # accumulate over several turns, committed at the latest apply_hold_max seconds after
        # the first was held.
        self._wal_mode = getattr(raftlog, "wal", None) is not None
        self.apply_hold_max = apply_hold_max
        self.apply_hold_ops = 4096
        self._held_since = 0.0
        self.timing = {"turn_s": 0.0, "persist_s": 0.0, "wait_s": 0.0}  # NOKV_PROFILE only
        self._timed = bool(os.environ.get("NOKV_PROFILE"))

    # ---- groups ----------------------------------------------------------------------

    def add_group(
        self,
        group_id: int,
        node_id: int,
        storage: Any,
        sm: StateMachine,
        route: Callable[[int], int | None],
        *,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        seed: int | None = None,
        lease_reads: bool = True,
        lazy_commit_broadcast: bool = False,
    ) -> Group:
        import random

        config = Config(
            id=node_id,
            storage=storage,  # replaced by the group's snapshot-producing wrapper
            election_tick=election_tick,
            heartbeat_tick=heartbeat_tick,
            applied=sm.applied_index(),
            check_quorum=True,
            pre_vote=True,
            read_only_option=ReadOnlyOption.LEASE_BASED if lease_reads else ReadOnlyOption.SAFE,
            lazy_commit_broadcast=lazy_commit_broadcast,
            rng=random.Random(seed if seed is not None else (group_id * 1_000_003 + node_id)),
        )
        group = Group(group_id, node_id, storage, sm, route, config)
        self.groups[group_id] = group
        self.mark(group)
        return group

    def remove_group(self, group_id: int) -> Group | None:
        group = self.groups.pop(group_id, None)
        if group is not None:
            group.stopped = True
            self._commit_pending.discard(group)
            err = ProposalError("stopped", f"group {group_id} was removed from this node")
            for w in list(group.waiters.values()) + list(group.reads.values()):
                w.fail(err)
            group.waiters.clear()
            group.reads.clear()
            for _, ev in group.apply_waiters:
                ev.set()
            self._dirty.discard(group_id)
        return group

    def mark(self, group: Group) -> None:
        self._dirty.add(group.group_id)
        self._wake.set()

    # ---- inputs (any task) -----------------------------------------------------------

    def step(self, group_id: int, msg: Message) -> bool:
        group = self.groups.get(group_id)
        if group is None or group.stopped:
            return False
        group.pending_steps.append(msg)
        self.mark(group)
        return True

    async def propose(self, group: Group, data: bytes, conf_change: bool = False) -> Any:
        """Propose on the leader and wait until applied; returns the state machine's result.

        Raises ProposalError(not_leader | dropped | stopped). Cancellation (a deadline) leaves
        the outcome unknown to the caller."""
        _, result = await self.propose_at(group, data, conf_change)
        return result

    async def propose_at(self, group: Group, data: bytes, conf_change: bool = False,
                         on_commit: Any = None) -> tuple[int, Any]:
        """`propose`, also returning the log index the proposal applied at. `on_commit(index)`
        is called once when the entry is known committed (a quorum holds it), before it is
        applied; never for an entry a new leader replaced."""
        if not group.is_leader:
            raise ProposalError("not_leader", f"node {group.node_id} is not the leader of "
                                f"group {group.group_id}", group.leader_id)
        waiter = _Waiter(term=0, on_commit=on_commit)
        self._proposals.append((group, data, waiter, conf_change))
        self.mark(group)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.index, waiter.result

    async def read_index(self, group: Group) -> int:
        """Linearizable read barrier: the index a read must wait for (ReadIndex; lease-based
        when configured). Raises ProposalError when no leader confirms it."""
        ctx = _CTX.pack(next(self._ctx))
        waiter = _Waiter(term=0)
        group.reads[ctx] = waiter
        self._proposals.append((group, ctx, None, False))
        self.mark(group)
        try:
            await waiter.done.wait()
        finally:
            group.reads.pop(ctx, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def lease_read_index(self, group: Group) -> int | None:
        """The leader's read index answered from its lease, without a loop turn, or None
        when only `read_index` can answer (not leader, lease not valid, no entry committed in
        this term yet, a tick that elapsed but was not fed to the node yet: after a pause the
        first answer must come from a turn that fed the elapsed ticks). Same rule as the
        core's LEASE_BASED ReadIndex; only reads the raw node."""
        r = group.node.raft
        # NOKV_UNSAFE_LEASE: the old check, a flag only the ticker task raises (a read handled
        # after a pause but before that task ran was answered from the lease).
        unfed = self._ticker_woke if self._clock.unsafe else self._clock.due(trio.current_time())
        if (group.stopped or unfed or r.state != StateType.LEADER
                or r.read_only.option != ReadOnlyOption.LEASE_BASED):
            return None
        if not r.committed_entry_in_current_term() or not r.lease_valid():
            return None
        return r.raft_log.committed

    async def wait_applied(self, group: Group, index: int) -> None:
        ev = group.wait_applied_event(index)
        if ev is not None:
            if self._deferred is not None:  # the apply it waits for may be held back
                if self._wal_mode:
                    self._release_deferred()
                else:
                    self._flush_deferred = True
                    self._wake.set()
            await ev.wait()

    def campaign(self, group: Group) -> None:
        self._proposals.append((group, b"", None, "campaign"))  # type: ignore[arg-type]
        self.mark(group)

    def transfer_leader(self, group: Group, to_node: int) -> None:
        self._proposals.append((group, to_node, None, "transfer"))  # type: ignore[arg-type]
        self.mark(group)

    def report_unreachable(self, group: Group, to_node: int) -> None:
        """The transport could not deliver to `to_node`: the leader probes it again."""
        self._proposals.append((group, to_node, None, "unreachable"))  # type: ignore[arg-type]
        self.mark(group)

    def report_snapshot(self, group: Group, to_node: int, failed: bool) -> None:
        """A snapshot sent to `to_node` was delivered (or lost): leave snapshot state."""
        kind = "snap_failed" if failed else "snap_done"
        self._proposals.append((group, to_node, None, kind))  # type: ignore[arg-type]
        self.mark(group)

    # ---- loop ------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        self._clock.origin, self._clock.fed = trio.current_time(), 0
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            if os.environ.get("NOKV_PROFILE"):
                nursery.start_soon(_profile_dumper, os.environ["NOKV_PROFILE"], self)
            task_status.started()
            try:
                timed, timing, clock = self._timed, self.timing, trio.current_time
                while True:
                    if ((self._commit_pending or self._deferred is not None)
                            and not self._wake.is_set()):
                        with trio.move_on_after(self.commit_flush_delay):
                            await self._wake.wait()
                        if not self._wake.is_set():
                            self._flush_commits()
                            if self._deferred is not None:
                                if self._wal_mode:
                                    self._release_deferred()  # committed in the background
                                else:
                                    self._flush_deferred = True
                                    self._wake.set()
                    if timed:
                        t0 = clock()
                        await self._wake.wait()
                        t1 = clock()
                        self._wake = trio.Event()
                        await self._turn()
                        timing["wait_s"] += t1 - t0
                        timing["turn_s"] += clock() - t1
                    else:
                        await self._wake.wait()
                        self._wake = trio.Event()
                        await self._turn()
                    await trio.sleep(0)  # let request handlers enqueue: natural batching
            finally:
                self.running = False
                self._nursery = None
                nursery.cancel_scope.cancel()

    def _flush_commits(self) -> None:
        """No append followed a commit within the delay: tell the followers now."""
        pending, self._commit_pending = self._commit_pending, set()
        for group in pending:
            if not group.stopped and group.node.flush_commit():
                self.counters["commit_flushes"] += 1
                self.mark(group)

    async def _ticker(self) -> None:
        """Wakes the loop once a tick is due; the number fed comes from the clock."""
        clock = self._clock
        while True:
            now = trio.current_time()
            if not clock.due(now):
                await trio.sleep(max(0.0, (clock.fed + 1) * clock.interval * clock.stretch
                                     - (now - clock.origin)) + 1e-4)
                continue
            self._ticker_woke = True
            self._wake.set()
            await trio.sleep(clock.interval * clock.stretch / 2)

    def _take_ticks(self) -> int:
        """The ticks to feed this turn. The `driver.tick` failpoint: `sleep(ms)` stalls the
        whole process here (CPU starvation), `return(f)` makes a tick last f intervals from
        now on (clock-rate skew; `return(1)` restores it)."""
        try:
            fp = failpoints.check("driver.tick")
        except failpoints.FailpointError:
            fp = None  # `raise` means nothing here
        now = trio.current_time()
        if isinstance(fp, failpoints.Return):
            try:
                stretch = float(fp.value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                stretch = 1.0
            if stretch > 0:
                self._clock.set_stretch(now, stretch)
        return self._clock.take(now)

    def _feed(self) -> None:
        self._ticker_woke = False
        ticks = self._take_ticks()
        if ticks:
            self.counters["ticks_fed"] += ticks
            if ticks > 1:
                self.counters["ticks_late"] += ticks - 1
            for group in self.groups.values():
                for _ in range(min(ticks, MAX_FEED)):
                    group.node.tick()
                self._dirty.add(group.group_id)
        for gid in list(self._dirty):
            group = self.groups.get(gid)
            if group is None:
                continue
            steps, group.pending_steps = group.pending_steps, []
            for msg in steps:
                try:
                    group.node.step(msg)
                except Exception as exc:  # remote input never crashes the loop
                    self.counters["step_errors"] += 1
                    log.warning("group %d: step %s from %d failed: %s", gid, msg.type.name,
                                msg.frm, exc)
        n = 0
        while self._proposals and n < self.max_batch_proposals:
            group, data, waiter, kind = self._proposals.popleft()
            n += 1
            if group.stopped:
                if waiter is not None:
                    waiter.fail(ProposalError("stopped", "group stopped"))
                continue
            self._dirty.add(group.group_id)
            if kind == "campaign":
                group.node.campaign()
                continue
            if kind == "transfer":
                group.node.transfer_leader(data)  # type: ignore[arg-type]
                continue
            if kind == "unreachable":
                group.node.report_unreachable(data)  # type: ignore[arg-type]
                continue
            if kind == "snap_failed" or kind == "snap_done":
                group.node.report_snapshot(data, kind == "snap_failed")  # type: ignore[arg-type]
                continue
            if waiter is None:  # read index request
                try:
                    group.node.read_index(data)
                except Exception as exc:
                    w = group.reads.get(data)
                    if w is not None:
                        w.fail(ProposalError("not_leader", f"read index refused: {exc}",
                                             group.leader_id))
                continue
            raft = group.node.raft
            if raft.state != StateType.LEADER:
                waiter.fail(ProposalError("not_leader", f"node {group.node_id} is no longer the "
                                          f"leader of group {group.group_id}", raft.lead))
                continue
            before = raft.raft_log.last_index()
            try:
                if kind:
                    group.node.propose_conf_change(ConfChange.decode(data))
                else:
                    group.node.propose(data)
            except Exception as exc:
                waiter.fail(ProposalError(getattr(exc, "reason", "dropped") or "dropped",
                                          f"proposal refused: {exc}",
                                          getattr(exc, "leader_hint", group.leader_id)))
                continue
            index = raft.raft_log.last_index()
            if index == before:  # e.g. a conf change refused while another is pending
                waiter.fail(ProposalError("dropped", "proposal was not appended", raft.lead))
                continue
            waiter.term = raft.term
            waiter.index = index
            group.waiters[index] = waiter
        if self._proposals:
            self._wake.set()

    async def _turn(self) -> None:
        if self._wal_mode:
            await self._turn_wal()
            return
        readies = await self._begin_turn()
        if not readies:
            return
        held = self._deferred
        if held is not None:
            self._deferred, self._flush_deferred = None, False
            batch, applied = held[0], list(held[1])
            n_held = len(applied)
            self.counters["applies_merged"] += 1
        else:
            batch, applied, n_held = WriteBatch(), [], 0
        for group, rd in readies:
            if group.stopped:
                # Removed while this turn was staged (a topology apply replaced or tore down
                # its replica): its Ready is dropped, never persisted, sent or advanced.
                continue
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                group.sm.stage_restore(batch, rd.snapshot)
                self.counters["snapshots_installed"] += 1
            self.raftlog.stage_ready(batch, group.group_id, rd.hard_state, rd.entries, rd.snapshot)
            ents = rd.committed_entries
            if ents:
                _note_committed(group, ents)
            results = group.sm.stage_apply(batch, ents) if ents else []
            if ents:
                self._stage_conf_state(batch, group, rd, ents)
            applied.append((group, rd, ents, results))
        for group, rd, ents, results in applied[n_held:]:
            self._ack_durable(group, rd, ents, results)
        self._send_before_persist([(g, rd) for g, rd, _, _ in applied[n_held:]])
        if not n_held and batch and self._deferrable(applied):
            # Nothing here has to be durable before anything else happens: hold the batch
            # (see _deferred) and let raft move on now.
            for group, rd, _, _ in applied:
                group.node.advance(rd)
                if group.node.has_ready():
                    self._dirty.add(group.group_id)
                self._note_commit_pending(group)
            self._deferred = (batch, applied)
            self.counters["applies_held"] += 1
            if self._dirty:
                self._wake.set()
            return
        if batch:
            await self._persist(batch)
        else:
            # Nothing to persist (heartbeats, read states): no write transaction, no fsync.
            self.counters["persist_skipped"] += 1
        self._drain_released()
        if n_held:
            self._finish_held(applied[:n_held])
        applied = [a for a in applied[n_held:] if not a[0].stopped]
        self._send_messages([(g, rd) for g, rd, _, _ in applied])
        for group, rd, ents, results in applied:
            self._after_persist(group, rd, ents, results)
        self._end_turn([(g, rd) for g, rd, _, _ in applied])

    async def _turn_wal(self) -> None:
        """One turn when the raft log lives in a write-ahead log.

        A Ready splits in two. Its raft part (entries, hard state, snapshot) goes to the WAL,
        one fdatasync, before this turn's messages go out. Its apply part (the committed
        entries' writes and replay pointers, LMDB's) is staged once that is durable - an
        apply never reaches LMDB before the entries it applies are in the WAL. When the
        applies are only plain writes nobody waits on (`_apply_holdable`) they join the held
        batch, which collects the applies of many turns and commits once: for a reader of
        the applied index, another writer of the environment, a non-plain apply, or
        apply_hold_max after it started (then in the background: the state machine stages
        each apply on top of the held ones, reading their writes from memory, so a turn
        never waits for a held batch). A crash loses only held applies, whose entries the
        WAL still holds: the restart replays them."""
        readies = await self._begin_turn()
        if not readies:
            return
        rbatch = WriteBatch()
        for group, rd in readies:
            if group.stopped:
                continue  # removed while this turn was staged (see _turn)
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                group.sm.stage_restore(rbatch, rd.snapshot)
                self.counters["snapshots_installed"] += 1
            self.raftlog.stage_ready(rbatch, group.group_id, rd.hard_state, rd.entries,
                                     rd.snapshot)
        self._send_before_persist([(g, rd) for g, rd in readies if not g.stopped])
        if rbatch:
            await self._persist(rbatch)
        else:
            self.counters["persist_skipped"] += 1
        self._drain_released()
        turn = [(g, rd) for g, rd in readies if not g.stopped]
        self._send_messages(turn)
        for group, rd in turn:
            self._after_raft_persist(group, rd)
        # The applies: staged now that their entries are durable here.
        staged: list[tuple[Group, Any, list[Entry], list[Any]]] = []
        held = self._deferred  # (None if another writer released it meanwhile)
        if held is not None:
            self._deferred = None
            abatch, applied = held
        else:
            abatch, applied = WriteBatch(), []
            self._held_since = trio.current_time()
        for group, rd in turn:
            ents = rd.committed_entries
            if not ents:
                continue
            _note_committed(group, ents)
            results = group.sm.stage_apply(abatch, ents)
            self._stage_conf_state(abatch, group, rd, ents)
            self._ack_durable(group, rd, ents, results, persisted=True)
            staged.append((group, rd, ents, results))
        applied.extend(staged)
        if applied or abatch:
            holdable = self._apply_holdable(staged)
            if (holdable and len(abatch) < self.apply_hold_ops
                    and trio.current_time() - self._held_since < self.apply_hold_max):
                self._deferred = (abatch, applied)
                if staged:
                    self.counters["applies_held"] += 1
            elif holdable:
                # Only age or size asks for a commit: in the background.
                self._deferred = (abatch, applied)
                self._release_deferred()
            else:
                self.counters["applies_committed"] += 1
                await self._commit_held(abatch, applied)
        self._end_turn(turn)

    async def _begin_turn(self) -> list[tuple[Group, Any]]:
        """Step queued input, collect the Readys, and commit the held batch first when this
        turn must not stage on top of it (see _needs_held_durable)."""
        self._feed()
        readies: list[tuple[Group, Any]] = []
        for gid in list(self._dirty):
            group = self.groups.get(gid)
            if group is None or group.stopped or not group.node.has_ready():
                self._dirty.discard(gid)
                continue
            readies.append((group, group.node.ready()))
        self._dirty.clear()
        held = self._deferred
        if held is not None and (self._flush_deferred or self._needs_held_durable(held, readies)):
            self._deferred, self._flush_deferred = None, False
            self.counters["applies_flushed"] += 1
            await self._commit_held(*held)
        return readies

    def _send_before_persist(self, pairs: list[tuple[Group, Any]]) -> None:
        """Send the messages that may leave before this turn is durable (and only those)."""
        early: list[tuple[int, int, Message, tuple[int, int]]] = []
        for group, rd in pairs:
            if rd.messages and _sendable_before_persist(group, rd):
                gid, epoch = group.group_id, group.epoch
                for m in rd.messages:
                    early.append((gid, m.to, m, epoch))
                rd.messages = []
        if early:
            self.send(early)
            self.counters["sent_before_persist"] += len(early)

    def _send_messages(self, pairs: list[tuple[Group, Any]]) -> None:
        out: list[tuple[int, int, Message, tuple[int, int]]] = []
        for group, rd in pairs:
            for m in rd.messages:
                out.append((group.group_id, m.to, m, group.epoch))
        if out:
            self.send(out)

    def _end_turn(self, pairs: list[tuple[Group, Any]]) -> None:
        """Advance every Ready of the turn; schedule the next turn if there is work."""
        for group, rd in pairs:
            group.node.advance(rd)
            if group.node.has_ready():
                self._dirty.add(group.group_id)
            self._note_commit_pending(group)
        if self.on_applied_batch:
            self.on_applied_batch()
        if self._dirty:
            self._wake.set()

    def _apply_holdable(self, turn: list[tuple[Group, Any, list[Entry], list[Any]]]) -> bool:
        """May this turn's applies be held back? Only plain writes (`apply_deferrable`) of
        normal entries with no proposer still waiting (early ack answered them) and no
        reader waiting on the applied index."""
        for group, _, ents, _ in turn:
            if not ents:
                continue
            if group.apply_waiters or group.reads:
                return False
            deferrable = getattr(group.sm, "apply_deferrable", None)
            if deferrable is None or not deferrable():
                return False
            waiters = group.waiters
            for e in ents:
                if e.type != EntryType.NORMAL or e.index in waiters:
                    return False
        return True

    def _note_commit_pending(self, group: Group) -> None:
        pending = self._commit_pending
        if group.node.commit_flush_pending():
            pending.add(group)
        elif pending:
            pending.discard(group)

    # ---- held (deferred) applies -------------------------------------------------------

    def _deferrable(self, applied: list[tuple[Group, Any, list[Entry], list[Any]]]) -> bool:
        """May this turn's batch be held back? Only when it is nothing but the apply of plain
        writes that nobody waits on: no entries, snapshot, term or vote to make durable, no
        role change, no read answers, no membership or admin entry, no compaction (the state
        machine's `apply_deferrable`), every proposer already answered (early ack), and no
        reader waiting on the applied index. The batch's commit callbacks (the raft log's
        in-memory view of the hard state) run when it commits."""
        for group, rd, _, _ in applied:
            if (rd.entries or rd.soft_state is not None or rd.read_states or rd.messages
                    or (rd.snapshot is not None and not rd.snapshot.is_empty())
                    or group.apply_waiters or group.reads):
                return False
            hs = rd.hard_state
            if hs is not None and (hs.term, hs.vote) != group.persisted_tv:
                return False
        return self._apply_holdable(applied)

    @staticmethod
    def _needs_held_durable(held: tuple[WriteBatch, list], readies: list[tuple[Group, Any]]) -> bool:
        """Must the held batch commit before this turn stages? Yes when the turn applies to a
        group whose apply is held (unless its state machine `stages_ahead`: it reads what its
        held applies wrote from memory), or installs a snapshot. Other groups' applies are
        staged into the same batch after the held writes: regions own disjoint keys, and
        staging reads only the region's own keys and in-memory state."""
        held_groups = {item[0] for item in held[1]}
        for group, rd in readies:
            if rd.snapshot is not None and not rd.snapshot.is_empty():
                return True
            if (rd.committed_entries and group in held_groups
                    and not getattr(group.sm, "stages_ahead", False)):
                return True
        return False

    def _release_deferred(self) -> None:
        """Another writer is about to queue a batch on the environment: queue the held one
        first (commit order = staging order) and finish it when it is durable."""
        held = self._deferred
        if held is None:
            return
        self._deferred, self._flush_deferred = None, False
        handle = self.env.enqueue(held[0])
        self._released.append((handle, held[1]))
        self.counters["applies_released"] += 1
        if self._nursery is not None:
            self._nursery.start_soon(self._await_released, handle)

    async def _await_released(self, handle: Any) -> None:
        await self.env.wait_committed(handle)  # a failed commit fails the loop (fail-stop)
        self._drain_released()

    def _drain_released(self) -> None:
        """Finish released batches that are durable, in commit order."""
        released = self._released
        while released and released[0][0].done:
            handle, items = released.popleft()
            if handle.error is not None:
                raise handle.error
            self._finish_held(items)

    async def _persist(self, batch: WriteBatch) -> None:
        """Commit a turn's batch (one fsynced transaction), with the failpoint hooks."""
        if self.before_persist:
            self.before_persist()
        commit = self.raftlog.commit if self._wal_mode else self.env.commit
        if self._timed:
            t0 = trio.current_time()
            await commit(batch)
            self.timing["persist_s"] += trio.current_time() - t0
        else:
            await commit(batch)
        self.counters["persist_batches"] += 1
        if self.after_persist:
            self.after_persist()

    async def _commit_held(self, batch: WriteBatch, items: list) -> None:
        await self._persist(batch)
        self._drain_released()
        self._finish_held(items)

    def _finish_held(self, items: list[tuple[Group, Any, list[Entry], list[Any]]]) -> None:
        """The held batch is durable: what `_after_persist` does, for Readys already advanced
        (in WAL mode: the apply part; the rest was done when the raft log was durable)."""
        finish = self._after_apply if self._wal_mode else self._after_persist
        for group, rd, ents, results in items:
            if group.stopped:
                continue
            finish(group, rd, ents, results)
        if self.on_applied_batch:
            self.on_applied_batch()

    def _ack_durable(self, group: Group, rd: Any, ents: list[Entry], results: list[Any],
                     persisted: bool = False) -> None:
        """Resolve proposal waiters before this turn's fsync when that is already safe.

        A committed entry that this node persisted in an earlier turn is durable on a quorum
        (the leader persists before it sends, so every follower ack counts a persisted copy)
        and its result was computed deterministically while staging; a crash before this
        batch commits replays it to the same result. Entries persisted in this very batch
        (a single-voter group commits on append) wait for the fsync as before. Readers still
        wait for the apply to be durable: `applied` only moves after the commit. With
        `persisted` (WAL mode: applies are staged once this turn's log is durable) entries of
        this turn qualify too. Opt-in per
        group (`early_ack`): callers must not expect the state machine's in-memory view to
        include the entry when the proposal returns (a store's reads go through ReadIndex and
        wait for the durable applied index; metaroot's Snapshot reads do not, so it keeps
        acking after the commit)."""
        if (not group.early_ack or not ents or not group.waiters
                or (rd.snapshot is not None and not rd.snapshot.is_empty())):
            return
        first_new = (rd.entries[0].index if rd.entries and not persisted
                     else ents[-1].index + 1)
        for e, res in zip(ents, results, strict=False):
            if e.index >= first_new:
                break
            if e.type != EntryType.NORMAL:
                continue
            w = group.waiters.get(e.index)
            if w is None or w.term != e.term:
                continue  # resolved (or failed as replaced) after the commit, as before
            del group.waiters[e.index]
            w.resolve(res)
            self.counters["early_acks"] += 1

    def _stage_conf_state(self, batch: Any, group: Group, rd: Any, ents: list[Entry]) -> None:
        """Persist the membership in force after `ents` in the batch that applies them: a
        restart resumes after the applied index and must not need to re-apply conf changes."""
        cs = None
        for e in ents:
            if e.type == EntryType.CONF_CHANGE:
                if cs is None:
                    snap = rd.snapshot
                    cs = (snap.metadata.conf_state if snap is not None and not snap.is_empty()
                          else group.conf_state)
                cs = next_conf_state(cs, ConfChange.decode(e.data))
                last = e.index
        if cs is not None and hasattr(self.raftlog, "stage_conf_state"):
            self.raftlog.stage_conf_state(batch, group.group_id, last, cs)

    def _after_persist(self, group: Group, rd: Any, ents: list[Entry], results: list[Any]) -> None:
        self._after_raft_persist(group, rd, notify=False)
        self._after_apply(group, rd, ents, results)

    def _after_raft_persist(self, group: Group, rd: Any, notify: bool = True) -> None:
        """This Ready's raft state is durable: snapshot, role, term and read answers."""
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            group.conf_state = rd.snapshot.metadata.conf_state
            group.applied = max(group.applied, rd.snapshot.metadata.index)
        if rd.soft_state is not None:
            ss = rd.soft_state
            changed = ss.lead != group.leader_id or ss.raft_state != group.role
            lost_lead = changed and ss.lead != group.leader_id
            group.leader_id, group.role = ss.lead, ss.raft_state
            if lost_lead and group.reads:
                err = ProposalError("not_leader", f"leader of group {group.group_id} changed "
                                    "while a read index was pending", ss.lead)
                for w in group.reads.values():
                    w.fail(err)
            if changed and self.on_role_change:
                self.on_role_change(group)
        if rd.hard_state is not None:
            group.term = rd.hard_state.term
            group.persisted_tv = (rd.hard_state.term, rd.hard_state.vote)
        for rs in rd.read_states:
            w = group.reads.get(rs.request_ctx)
            if w is not None:
                w.resolve(rs.index)
        if notify:
            group._notify_applied()

    def _after_apply(self, group: Group, rd: Any, ents: list[Entry], results: list[Any]) -> None:
        """The apply of `ents` is durable: move the applied index, answer the proposers."""
        if ents:
            if self.before_apply:
                self.before_apply()
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    cc = ConfChange.decode(e.data)
                    group.conf_state = group.node.apply_conf_change(cc)
                    group.sm.on_conf_change(cc, group.conf_state)
            group.sm.after_commit(ents, results)
            group.applied = ents[-1].index
            for e, res in zip(ents, results, strict=False):
                w = group.waiters.pop(e.index, None)
                if w is None:
                    continue
                if w.term == e.term:
                    w.resolve(res)
                else:
                    w.fail(ProposalError("dropped", f"entry {e.index} was replaced by a new "
                                         f"leader (term {e.term})", group.leader_id))
            if self.after_apply:
                self.after_apply()
        group._notify_applied()


def _note_committed(group: Group, ents: list[Entry]) -> None:
    """Tell the proposers of `ents` (those still waiting, of the same term) that their entry
    committed; apply comes later in the same turn or the next one."""
    waiters = group.waiters
    if not waiters:
        return
    for e in ents:
        w = waiters.get(e.index)
        if w is not None and w.on_commit is not None and w.term == e.term:
            callback, w.on_commit = w.on_commit, None
            callback(e.index)
