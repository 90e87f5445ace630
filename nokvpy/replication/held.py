"""Held applies: a turn's apply writes kept out of the disk until a later commit takes them.

Owns: the held batch (`batch`: the staged writes and the Readys whose applies they are), the
batches released to another writer's commit (`released`, finished in commit order), and the
rules for holding: which turns may be held (`holdable`, `deferrable`), which must first make
the held batch durable (`needs_durable`). A turn that only applied plain writes nobody waits
on is not committed on its own: its batch waits for the next turn's commit (one fsync for
both), for a reader of the applied index, for another writer of the environment (which
queues it first: `release`), or for the flush delay; in WAL mode it collects the applies of
many turns. Invariant: while a batch is held, no other apply of a held group is staged
(see `needs_durable`). Never decides what a durable batch means for a group (the persister's
`finish_item` does) and never steps a raw node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from nokvpy.raft import Ready
from nokvpy.raft.types import Entry, EntryType
from nokvpy.replication.group import Group
from nokvpy.replication.statemachine import apply_deferrable, stages_ahead
from nokvpy.storage import WriteBatch

# One group's part of a turn: its Ready, the entries it applies and their results.
Applied = tuple[Group, Any, list[Entry], list[Any]]
Held = tuple[WriteBatch, list[Applied]]


def holdable(turn: list[Applied]) -> bool:
    """May this turn's applies be held back? Only plain writes (`apply_deferrable`) of
    normal entries with no proposer still waiting (early ack answered them) and no reader
    waiting on the applied index."""
    for group, _, ents, _ in turn:
        if not ents:
            continue
        if group.apply_waiters or group.reads:
            return False
        if not apply_deferrable(group.sm):
            return False
        waiters = group.waiters
        for e in ents:
            if e.type != EntryType.NORMAL or e.index in waiters:
                return False
    return True


def deferrable(applied: list[Applied]) -> bool:
    """May this turn's whole batch be held back (LMDB mode)? Only when it is nothing but the
    apply of plain writes that nobody waits on: nothing the Ready must sync (entries,
    snapshot, term or vote), no role change, no read answers, no message waiting for the
    persist, no membership or admin entry, no compaction (the state machine's
    `apply_deferrable`), every proposer already answered (early ack), and no reader waiting
    on the applied index. The batch's commit callbacks (the raft log's in-memory view of the
    hard state) run when it commits."""
    for group, rd, _, _ in applied:
        if (rd.must_sync or rd.soft_state is not None or rd.read_states or rd.messages
                or group.apply_waiters or group.reads):
            return False
    return holdable(applied)


def needs_durable(held: Held, readies: list[tuple[Group, Ready]]) -> bool:
    """Must the held batch commit before this turn stages? Yes when the turn applies to a
    group whose apply is held (unless its state machine `stages_ahead`: it reads what its
    held applies wrote from memory), or installs a snapshot. Other groups' applies are
    staged into the same batch after the held writes: regions own disjoint keys, and
    staging reads only the region's own keys and in-memory state."""
    held_groups = {item[0] for item in held[1]}
    for group, rd in readies:
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            return True
        if rd.committed_entries and group in held_groups and not stages_ahead(group.sm):
            return True
    return False


class HeldApplies:
    """The held batch of one driver and the batches released from it."""

    def __init__(self, env: Any, counters: Any, finish: Callable[[list[Applied]], None]):
        self.env = env
        self.counters = counters
        self._finish = finish  # the held items are durable: finish them (Driver)
        self.batch: Held | None = None
        self.flush = False  # commit the held batch at the start of the next turn
        self.since = 0.0  # WAL mode: when the held batch started collecting applies
        self.released: deque[tuple[Any, list[Applied]]] = deque()
        self.nursery: trio.Nursery | None = None

    def take(self) -> Held | None:
        held = self.batch
        if held is not None:
            self.batch, self.flush = None, False
        return held

    def release(self) -> None:
        """Another writer is about to queue a batch on the environment: queue the held one
        first (commit order = staging order) and finish it when it is durable."""
        held = self.take()
        if held is None:
            return
        handle = self.env.enqueue(held[0])
        self.released.append((handle, held[1]))
        self.counters["applies_released"] += 1
        if self.nursery is not None:
            self.nursery.start_soon(self._await_released, handle)

    async def _await_released(self, handle: Any) -> None:
        await self.env.wait_committed(handle)  # a failed commit fails the loop (fail-stop)
        self.drain()

    def drain(self) -> None:
        """Finish released batches that are durable, in commit order."""
        released = self.released
        while released and released[0][0].done:
            handle, items = released.popleft()
            if handle.error is not None:
                raise handle.error
            self._finish(items)
