"""How a driver turn becomes durable: the `Persister` protocol and its two implementations.

Owns: the body of a loop turn once the driver collected its Readys: staging (raft state, the
state machines' applies, the membership), obeying each Ready's contract (its
`early_messages` go out before the commit, its `messages` after), committing, finishing and
advancing; and what a durable held batch means (`finish_held`). `LmdbPersister`: the raft log
lives in LMDB and a turn's raft state and applies commit in one fsynced transaction.
`WalPersister`: the raft log lives in a write-ahead log, committed first; applies follow into
LMDB, held across turns. The driver picks one when it is built. Never decides what may be
sent early or must be synced (the raft core's Ready says), never reads its input queue and
never steps a raw node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from nokvpy.raft import Ready
from nokvpy.raft.types import Entry, Message
from nokvpy.replication.group import Group
from nokvpy.replication.held import Applied, deferrable, holdable
from nokvpy.storage import WriteBatch

if TYPE_CHECKING:
    from nokvpy.replication.driver import Driver


class Persister(Protocol):
    async def turn(self, readies: list[tuple[Group, Ready]]) -> None:
        """Persist, send, apply and advance the Readys the driver collected this turn."""

    async def commit_held(self, batch: WriteBatch, items: list[Applied]) -> None:
        """Commit a held batch now and finish its items."""

    def finish_held(self, items: list[Applied]) -> None:
        """A held batch is durable: finish its items (Readys already advanced)."""

    def flush_held(self) -> None:
        """A reader of the applied index waits, or the flush delay passed: get the held
        batch committed."""


class _Persister:
    """What both modes share: staging, committing with the failpoint hooks, sending a
    turn's messages per the Ready contract, and ending the turn."""

    def __init__(self, driver: Driver):
        self.d = driver
        self._stage_conf = getattr(driver.raftlog, "stage_conf_state", None)

    async def _commit(self, batch: WriteBatch) -> None:
        raise NotImplementedError

    async def commit(self, batch: WriteBatch) -> None:
        """Commit a turn's batch, with the failpoint hooks."""
        d = self.d
        if d.before_persist:
            d.before_persist()
        if d._timed:
            t0 = trio.current_time()
            await self._commit(batch)
            d.timing["persist_s"] += trio.current_time() - t0
        else:
            await self._commit(batch)
        d.counters["persist_batches"] += 1
        if d.after_persist:
            d.after_persist()

    async def commit_held(self, batch: WriteBatch, items: list[Applied]) -> None:
        await self.commit(batch)
        self.d._held.drain()
        self.finish_held(items)

    def finish_item(self, group: Group, rd: Ready, ents: list[Entry], results: list[Any]) -> None:
        raise NotImplementedError

    def finish_held(self, items: list[Applied]) -> None:
        for group, rd, ents, results in items:
            if group.stopped:
                continue
            self.finish_item(group, rd, ents, results)
        if self.d.on_applied_batch:
            self.d.on_applied_batch()

    def stage_ready(self, batch: WriteBatch, group: Group, rd: Ready) -> None:
        """Stage the raft part of a Ready: snapshot (restoring the state machine), entries,
        hard state."""
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            group.sm.stage_restore(batch, rd.snapshot)
            self.d.counters["snapshots_installed"] += 1
        self.d.raftlog.stage_ready(batch, group.group_id, rd.hard_state, rd.entries, rd.snapshot)

    def stage_apply(self, batch: WriteBatch, group: Group, rd: Ready,
                    ents: list[Entry]) -> list[Any]:
        """Stage the apply of a Ready's committed entries and the membership after them."""
        group.note_committed(ents)
        results = group.sm.stage_apply(batch, ents)
        conf = group.conf_state_to_stage(rd, ents)
        if conf is not None and self._stage_conf is not None:
            self._stage_conf(batch, group.group_id, conf[0], conf[1])
        return results

    def ack_durable(self, group: Group, rd: Ready, ents: list[Entry], results: list[Any],
                    persisted: bool = False) -> None:
        acked = group.ack_durable(rd, ents, results, persisted)
        if acked:
            self.d.counters["early_acks"] += acked

    def send_early(self, items: Sequence[tuple]) -> None:
        """Send what the Readys allow before they are durable (and only that)."""
        early: list[tuple[int, int, Message, tuple[int, int]]] = []
        for item in items:
            group, rd = item[0], item[1]
            if rd.early_messages and not group.stopped:
                gid, epoch = group.group_id, group.epoch
                for m in rd.early_messages:
                    early.append((gid, m.to, m, epoch))
        if early:
            self.d.send(early)
            self.d.counters["sent_before_persist"] += len(early)

    def send_late(self, items: Sequence[tuple]) -> None:
        """Send the messages that waited for the Readys to be durable."""
        out: list[tuple[int, int, Message, tuple[int, int]]] = []
        for item in items:
            group, rd = item[0], item[1]
            for m in rd.messages:
                out.append((group.group_id, m.to, m, group.epoch))
        if out:
            self.d.send(out)

    def end_turn(self, items: Sequence[tuple], notify: bool = True) -> None:
        """Advance every Ready of the turn; schedule the next turn if there is work."""
        d = self.d
        dirty, pending = d._dirty, d._commit_pending
        for item in items:
            group, rd = item[0], item[1]
            node = group.node
            node.advance(rd)
            if node.has_ready():
                dirty.add(group.group_id)
            if node.commit_flush_pending():
                pending.add(group)
            elif pending:
                pending.discard(group)
        if notify and d.on_applied_batch:
            d.on_applied_batch()
        if dirty:
            d._wake.set()


class LmdbPersister(_Persister):
    """The raft log in LMDB: one batch per turn holds the Readys' raft state and the applies
    of their committed entries, committed in one fsynced transaction (group commit). A turn
    that is only plain applies nobody waits on is held (see held.py) and merged into the
    next turn's batch."""

    async def _commit(self, batch: WriteBatch) -> None:
        await self.d.env.commit(batch)

    def finish_item(self, group: Group, rd: Ready, ents: list[Entry], results: list[Any]) -> None:
        d = self.d
        group.raft_persisted(rd, d.on_role_change, notify=False)
        group.apply_persisted(ents, results, d.before_apply, d.after_apply)

    def flush_held(self) -> None:
        self.d._held.flush = True
        self.d._wake.set()

    async def turn(self, readies: list[tuple[Group, Ready]]) -> None:
        d = self.d
        held = d._held.take()
        if held is not None:
            batch, applied = held[0], list(held[1])
            n_held = len(applied)
            d.counters["applies_merged"] += 1
        else:
            batch, applied, n_held = WriteBatch(), [], 0
        for group, rd in readies:
            if group.stopped:
                # Removed while this turn was staged (a topology apply replaced or tore down
                # its replica): its Ready is dropped, never persisted, sent or advanced.
                continue
            self.stage_ready(batch, group, rd)
            ents = rd.committed_entries
            results = self.stage_apply(batch, group, rd, ents) if ents else []
            applied.append((group, rd, ents, results))
        turn = applied[n_held:]
        for group, rd, ents, results in turn:
            self.ack_durable(group, rd, ents, results)
        self.send_early(turn)
        if not n_held and batch and deferrable(applied):
            # Nothing here has to be durable before anything else happens: hold the batch
            # and let raft move on now.
            d._held.batch = (batch, applied)
            d.counters["applies_held"] += 1
            self.end_turn(applied, notify=False)
            return
        if batch:
            await self.commit(batch)
        else:
            # Nothing to persist (heartbeats, read states): no write transaction, no fsync.
            d.counters["persist_skipped"] += 1
        d._held.drain()
        if n_held:
            self.finish_held(applied[:n_held])
        turn = [a for a in turn if not a[0].stopped]
        self.send_late(turn)
        for group, rd, ents, results in turn:
            self.finish_item(group, rd, ents, results)
        self.end_turn(turn)


class WalPersister(_Persister):
    """The raft log in a write-ahead log: a Ready splits in two.

    Its raft part (entries, hard state, snapshot) goes to the WAL, one fdatasync, before the
    turn's late messages go out. Its apply part (the committed entries' writes and replay
    pointers, LMDB's) is staged once that is durable - an apply never reaches LMDB before the
    entries it applies are in the WAL. When the applies are only plain writes nobody waits
    on (`holdable`) they join the held batch, which collects the applies of many turns and
    commits once: for a reader of the applied index, another writer of the environment, a
    non-plain apply, or apply_hold_max after it started (then in the background: the state
    machine stages each apply on top of the held ones, reading their writes from memory, so
    a turn never waits for a held batch). A crash loses only held applies, whose entries the
    WAL still holds: the restart replays them."""

    async def _commit(self, batch: WriteBatch) -> None:
        await self.d.raftlog.commit(batch)

    def finish_item(self, group: Group, rd: Ready, ents: list[Entry], results: list[Any]) -> None:
        # The raft part was finished when the WAL was durable.
        group.apply_persisted(ents, results, self.d.before_apply, self.d.after_apply)

    def flush_held(self) -> None:
        self.d._held.release()  # committed in the background

    async def turn(self, readies: list[tuple[Group, Ready]]) -> None:
        d = self.d
        rbatch = WriteBatch()
        for group, rd in readies:
            if group.stopped:
                continue  # removed while this turn was staged (see LmdbPersister.turn)
            self.stage_ready(rbatch, group, rd)
        self.send_early(readies)
        if rbatch:
            await self.commit(rbatch)
        else:
            d.counters["persist_skipped"] += 1
        d._held.drain()
        turn = [(g, rd) for g, rd in readies if not g.stopped]
        self.send_late(turn)
        for group, rd in turn:
            group.raft_persisted(rd, d.on_role_change)
        # The applies: staged now that their entries are durable here.
        staged: list[Applied] = []
        held = d._held.take()  # (None if another writer released it meanwhile)
        if held is not None:
            abatch, applied = held
        else:
            abatch, applied = WriteBatch(), []
            d._held.since = trio.current_time()
        for group, rd in turn:
            ents = rd.committed_entries
            if not ents:
                continue
            results = self.stage_apply(abatch, group, rd, ents)
            self.ack_durable(group, rd, ents, results, persisted=True)
            staged.append((group, rd, ents, results))
        applied.extend(staged)
        if applied or abatch:
            can_hold = holdable(staged)
            if (can_hold and len(abatch) < d.apply_hold_ops
                    and trio.current_time() - d._held.since < d.apply_hold_max):
                d._held.batch = (abatch, applied)
                if staged:
                    d.counters["applies_held"] += 1
            elif can_hold:
                # Only age or size asks for a commit: in the background.
                d._held.batch = (abatch, applied)
                d._held.release()
            else:
                d.counters["applies_committed"] += 1
                await self.commit_held(abatch, applied)
        self.end_turn(turn)


def persister_for(driver: Driver) -> Persister:
    """The persister of a driver's raft log: WAL mode when the log has a write-ahead log."""
    if getattr(driver.raftlog, "wal", None) is not None:
        return WalPersister(driver)
    return LmdbPersister(driver)
