"""The trio driver around the pure raft core, shared by metaroot (one group) and stores (many).

Owns: one ready loop per process and its inputs. Any task queues typed commands (commands.py)
and incoming messages; each turn the loop feeds the ticks that elapsed (clock.py), steps the
queued input into the raw nodes, collects the Readys of every group and hands them to its
`Persister` (persist.py: LMDB group commit, or the write-ahead log), which stages, commits,
sends, applies and advances them in the order the raft core's Ready contract says. Held
applies (held.py) are committed when a reader, another writer or the flush delay needs them.
A hibernating group (the core's "hibernation") is not ticked; anything stepped into it wakes
it first, with the ticks it slept (`_wake_group`).
Never decides what may be sent before a persist or what must be synced (the raft core's
Ready says), never interprets entry payloads (a `StateMachine` does, statemachine.py), never
reads a raw node's internals (only `RawNode`'s API), and never mutates a raw node outside the
loop task, so a Ready is never interleaved with a step.

Proposal outcomes: see group.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import struct
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import trio

from nokvpy.raft import Config, ReadOnlyOption, Ready, next_conf_state
from nokvpy.raft.ticks import MAX_FEED
from nokvpy.raft.types import Message
from nokvpy.replication.clock import new_clock, run_ticker, take_ticks, unsafe_lease_from_env
from nokvpy.replication.commands import (
    Campaign,
    Command,
    Propose,
    ReadIndex,
    ReportSnapshot,
    ReportUnreachable,
    TransferLeader,
    Wake,
)
from nokvpy.replication.group import (
    Group,
    ProposalError,
    SnapshotStorage,
    Waiter,
    config_with_storage,
)
from nokvpy.replication.held import Held, HeldApplies, needs_durable
from nokvpy.replication.persist import Persister, persister_for
from nokvpy.replication.statemachine import StateMachine

__all__ = [
    "Driver",
    "Group",
    "ProposalError",
    "SnapshotStorage",
    "StateMachine",
    "config_with_storage",
    "next_conf_state",
    "unsafe_lease_from_env",
]

log = logging.getLogger("nokvpy.replication")

_CTX = struct.Struct(">Q")


# Test-only: a woken group keeps its lease clock where it stopped (a leader that slept
# trusts a lease older than the real time it slept). See "Hibernating regions" in
# docs/protocols.md; fault runs show they catch it.
UNSAFE_HIBERNATE = os.environ.get("NOKV_UNSAFE_HIBERNATE", "") not in ("", "0")


if os.environ.get("NOKV_UNSAFE_READINDEX", "") not in ("", "0"):
    # Test-only: ReadIndex acks matched by the caller's context again (the old rule), so
    # fault runs can show they catch it. See "ReadIndex rounds" in docs/protocols.md.
    from nokvpy.raft import read_only as _read_only

    _read_only.UNSAFE_MATCH_BY_CONTEXT = True


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


class Driver:
    """Hosts raft groups and runs their ready loop.

    `raftlog` stages Readys into a batch (`stage_ready`); `env.commit(batch)` (or, with a
    write-ahead log, `raftlog.commit(batch)`) makes a batch durable; `send(envelopes)` hands
    (group_id, to_node, message, epoch) tuples to the transport, which batches them per
    destination."""

    def __init__(self, env: Any, raftlog: Any,
                 send: Callable[[list[tuple[int, int, Message, tuple[int, int]]]], None], *,
                 tick_interval: float = 0.1, max_batch_proposals: int = 4096,
                 commit_flush_delay: float = 0.002, apply_hold_max: float = 0.01):
        self.env = env
        self.raftlog = raftlog
        self.send = send
        self.tick_interval = tick_interval
        self.max_batch_proposals = max_batch_proposals
        # Groups with lazy_commit_broadcast whose leader holds a commit index not yet sent:
        # flushed when no other work arrives within commit_flush_delay seconds.
        self.commit_flush_delay = commit_flush_delay
        self._commit_pending: set[Group] = set()
        self.groups: dict[int, Group] = {}
        # The groups that tick: every group but the hibernating ones (see _feed / _wake_group).
        self._ticking: dict[int, Group] = {}
        self._wake = trio.Event()
        self._dirty: set[int] = set()
        self._proposals: deque[Command] = deque()  # the input queue (any task appends)
        self._clock = new_clock(tick_interval)
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
        # WAL mode: held applies accumulate over several turns, committed at the latest
        # apply_hold_max seconds after the first was held (see persist.WalPersister).
        self.apply_hold_max = apply_hold_max
        self.apply_hold_ops = 4096
        self.timing = {"turn_s": 0.0, "persist_s": 0.0, "wait_s": 0.0}  # NOKV_PROFILE only
        self._timed = bool(os.environ.get("NOKV_PROFILE"))
        self._persister: Persister = persister_for(self)
        self._held = HeldApplies(env, self.counters, self._persister.finish_held)
        if hasattr(env, "before_submit"):
            env.before_submit = self._held.release

    # The held batch (held.py), under its old name.
    @property
    def _deferred(self) -> Held | None:
        return self._held.batch

    @_deferred.setter
    def _deferred(self, value: Held | None) -> None:
        self._held.batch = value

    _needs_held_durable = staticmethod(needs_durable)

    # ---- groups ----------------------------------------------------------------------

    def add_group(self, group_id: int, node_id: int, storage: Any, sm: StateMachine,
                  route: Callable[[int], int | None], *, election_tick: int = 10,
                  heartbeat_tick: int = 1, seed: int | None = None, lease_reads: bool = True,
                  lazy_commit_broadcast: bool = False, hibernate_tick: int = 0) -> Group:
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
            early_messages=True,  # the persisters send Ready.early_messages before the commit
            hibernate_tick=hibernate_tick,
            rng=random.Random(seed if seed is not None else (group_id * 1_000_003 + node_id)),
        )
        group = Group(group_id, node_id, storage, sm, route, config)
        self.groups[group_id] = group
        self._ticking[group_id] = group
        self.mark(group)
        return group

    def remove_group(self, group_id: int) -> Group | None:
        group = self.groups.pop(group_id, None)
        self._ticking.pop(group_id, None)
        if group is not None:
            self._commit_pending.discard(group)
            group.stop()
            self._dirty.discard(group_id)
        return group

    def mark(self, group: Group) -> None:
        self._dirty.add(group.group_id)
        self._wake.set()

    # ---- inputs (any task) -----------------------------------------------------------

    def _queue(self, cmd: Command) -> None:
        self._proposals.append(cmd)
        self.mark(cmd.group)

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
        waiter = Waiter(term=0, on_commit=on_commit)
        self._queue(Propose(group, data, waiter, conf_change))
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.index, waiter.result

    async def read_index(self, group: Group) -> int:
        """Linearizable read barrier: the index a read must wait for (ReadIndex; lease-based
        when configured). Raises ProposalError when no leader confirms it."""
        ctx = _CTX.pack(next(self._ctx))
        waiter = Waiter(term=0)
        group.reads[ctx] = waiter
        self._queue(ReadIndex(group, ctx))
        try:
            await waiter.done.wait()
        finally:
            group.reads.pop(ctx, None)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def lease_read_index(self, group: Group) -> int | None:
        """The leader's read index answered from its lease, without a loop turn, or None
        when only `read_index` can answer (see RawNode.lease_read_index), or when a tick
        elapsed that was not fed to the node yet: after a pause the first answer must come
        from a turn that fed the elapsed ticks."""
        # NOKV_UNSAFE_LEASE: the old check, a flag only the ticker task raises (a read handled
        # after a pause but before that task ran was answered from the lease).
        unfed = self._ticker_woke if self._clock.unsafe else self._clock.due(trio.current_time())
        if group.stopped or unfed:
            return None
        return group.node.lease_read_index()

    async def wait_applied(self, group: Group, index: int) -> None:
        ev = group.wait_applied_event(index)
        if ev is not None:
            if self._held.batch is not None:  # the apply it waits for may be held back
                self._persister.flush_held()
            await ev.wait()

    def campaign(self, group: Group) -> None:
        self._queue(Campaign(group))

    def transfer_leader(self, group: Group, to_node: int) -> None:
        self._queue(TransferLeader(group, to_node))

    def report_unreachable(self, group: Group, to_node: int) -> None:
        """The transport could not deliver to `to_node`: the leader probes it again."""
        self._queue(ReportUnreachable(group, to_node))

    def wake(self, group: Group) -> None:
        """Wake `group` if it hibernates (its leader may be gone: it ticks, so it elects)."""
        self._queue(Wake(group))

    def hibernating(self) -> int:
        """Groups that do not tick now (hibernating)."""
        return len(self.groups) - len(self._ticking)

    def report_snapshot(self, group: Group, to_node: int, failed: bool) -> None:
        """A snapshot sent to `to_node` was delivered (or lost): leave snapshot state."""
        self._queue(ReportSnapshot(group, to_node, failed))

    # ---- loop ------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        self._clock.origin, self._clock.fed = trio.current_time(), 0
        async with trio.open_nursery() as nursery:
            self._held.nursery = nursery
            nursery.start_soon(run_ticker, self._clock, self._on_tick_due)
            if os.environ.get("NOKV_PROFILE"):
                nursery.start_soon(_profile_dumper, os.environ["NOKV_PROFILE"], self)
            task_status.started()
            try:
                timed, timing, clock = self._timed, self.timing, trio.current_time
                while True:
                    if ((self._commit_pending or self._held.batch is not None)
                            and not self._wake.is_set()):
                        with trio.move_on_after(self.commit_flush_delay):
                            await self._wake.wait()
                        if not self._wake.is_set():
                            self._flush_commits()
                            if self._held.batch is not None:
                                self._persister.flush_held()
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
                self._held.nursery = None
                nursery.cancel_scope.cancel()

    def _on_tick_due(self) -> None:
        self._ticker_woke = True
        self._wake.set()

    def _flush_commits(self) -> None:
        """No append followed a commit within the delay: tell the followers now."""
        pending, self._commit_pending = self._commit_pending, set()
        for group in pending:
            if not group.stopped and group.node.flush_commit():
                self.counters["commit_flushes"] += 1
                self.mark(group)

    def _feed(self) -> None:
        """Step the elapsed ticks, the received messages and the queued commands."""
        self._ticker_woke = False
        ticks = take_ticks(self._clock)
        if ticks:
            self.counters["ticks_fed"] += ticks
            if ticks > 1:
                self.counters["ticks_late"] += ticks - 1
            fed, ticking = self._clock.fed, self._ticking
            for gid, group in list(ticking.items()):
                node = group.node
                if node.hibernating:  # it stopped ticking at the end of the last turn
                    del ticking[gid]
                    group.slept_at = fed - ticks
                    self.counters["hibernated"] += 1
                    continue
                for _ in range(min(ticks, MAX_FEED)):
                    node.tick()
                self._dirty.add(gid)
        for gid in list(self._dirty):
            group = self.groups.get(gid)
            if group is None:
                continue
            if group.pending_steps and group.node.hibernating:
                self._wake_group(group)
            steps, group.pending_steps = group.pending_steps, []
            for msg in steps:
                try:
                    group.node.step(msg)
                except Exception as exc:  # remote input never crashes the loop
                    self.counters["step_errors"] += 1
                    log.warning("group %d: step %s from %d failed: %s", gid, msg.type.name,
                                msg.frm, exc)
        queue, n = self._proposals, 0
        while queue and n < self.max_batch_proposals:
            cmd = queue.popleft()
            n += 1
            if cmd.group.stopped:
                cmd.drop()
                continue
            self._dirty.add(cmd.group.group_id)
            if cmd.group.node.hibernating:
                self._wake_group(cmd.group)
            cmd.apply()
        if queue:
            self._wake.set()

    def _wake_group(self, group: Group) -> None:
        """Before anything is stepped into a hibernating node: it ticks again, and learns
        how many ticks it slept (so a leader's lease clock moves on by the real time)."""
        slept = group.slept_at
        elapsed = 0 if slept is None else self._clock.fed - slept
        group.node.wake(min(elapsed, MAX_FEED), keep_lease_clock=UNSAFE_HIBERNATE)
        group.slept_at = None
        self._ticking[group.group_id] = group
        self.counters["woken"] += 1

    async def _turn(self) -> None:
        readies = await self._begin_turn()
        if readies:
            await self._persister.turn(readies)

    async def _begin_turn(self) -> list[tuple[Group, Ready]]:
        """Step queued input, collect the Readys, and commit the held batch first when this
        turn must not stage on top of it (see held.needs_durable)."""
        self._feed()
        readies: list[tuple[Group, Ready]] = []
        for gid in list(self._dirty):
            group = self.groups.get(gid)
            if group is None or group.stopped or not group.node.has_ready():
                self._dirty.discard(gid)
                continue
            readies.append((group, group.node.ready()))
        self._dirty.clear()
        held = self._held.batch
        if held is not None and (self._held.flush or needs_durable(held, readies)):
            self._held.take()
            self.counters["applies_flushed"] += 1
            await self._persister.commit_held(*held)
        return readies
