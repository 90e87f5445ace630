"""The durable publish outbox and its publisher (DESIGN 5: terminal truth after local apply;
part of the topology runtime).

Owns: turning an `OutboxEntry` (a rooted event this store must still publish: a terminal
event staged in the SAME write batch as the apply that made it true, or a recovery record)
into localmeta outbox bytes (`stage`), and the publisher task that drains the outbox in
sequence order through `PublishRootEvent`:

- accepted (applied, or SKIP because root already has it) -> removed from the outbox in one
  commit -> TERMINAL_PUBLISHED;
- refused permanently (retry class PERMANENT, invalid argument, or the failpoint
  `store.publish_terminal` with `return(...)`) -> moved to the blocked table with its error ->
  TERMINAL_BLOCKED, visible in ExecutionStatus and RestartState, never retried or dropped;
- anything else (coordinator unreachable, catalog behind, conflict, the failpoint with
  `raise`) -> TERMINAL_FAILED with the last error, retried with jittered exponential backoff
  (0.2 s doubling to 5 s, +-20 %).

While any entry is failing, the store's topology admission reports SCHEDULER_DEGRADED.

The operator path (`OutboxRequest`, `nokv outbox list|retry|resolve`): a blocked entry stays
until an operator decides. `retry` moves it back into the outbox under a new seq (after the
cause was fixed; the lifecycle goes TERMINAL_BLOCKED -> TERMINAL_PENDING and the publisher
tries again). `resolve` removes it for good and, in the SAME local write, stages a "recovery"
outbox entry holding a RecoveryRecord (`operator_resolved_published`: root already holds the
event or it was published out of band; `operator_abandoned`: this store will never publish
it) with the blocked error as its failure evidence and the operator's reason, so the decision
becomes rooted when the publisher drains it; the lifecycle leaves TERMINAL_BLOCKED for
TERMINAL_PUBLISHED (nothing left for this store to publish; the history note says which
resolution). A request naming no blocked entry, an unknown resolution or no reason raises
`OutboxRefusal` and writes nothing. The store's current (restart) state is derived from the
outbox and blocked tables, so it is READY again once both are empty.
Backup copies (a replica that applied a transition it did not plan) wait a grace period
before their first attempt, so the executor normally publishes first; a backup refused
because root moved past it (`superseded_before_apply`) is obsolete, not blocked: another
replica published the transition and root went on.

It uses of its store only what `StoreContext` names (localmeta, env, store id, the limits it
degrades and the backlog counts it refreshes).

Never: publishes planned events (the executor does, before proposing), drops an entry
without a terminal state (or, for a blocked one, without a rooted operator record), or reads a
wall clock.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import EventKind, RecoveryRecord, RootEvent, TopologyStage
from nokvpy.protocol.coordinator_rpc import PublishRootEventRequest
from nokvpy.protocol.raftstore_cmds import OutboxEntry
from nokvpy.rpc import RemoteError, RpcError
from nokvpy.storage import BlockedEvent, WriteBatch
from nokvpy.wire import DecodeError, decode, encode
from raftstore.topology.context import RootLink, StoreContext
from raftstore.topology.lifecycle import Lifecycle

log = logging.getLogger("nokvpy.raftstore.outbox")

S = TopologyStage
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
BACKUP_GRACE = 3.0
PERMANENT_KINDS = frozenset({"invalid_argument", "protocol_violation", "corruption"})
# operator resolutions of a blocked entry -> the action of the rooted RecoveryRecord
RESOLUTIONS = {"published": "operator_resolved_published", "abandoned": "operator_abandoned"}
MAX_REASON = 400


class OutboxRefusal(ValueError):
    """An operator request on the outbox that cannot be carried out (nothing was changed)."""


class PermanentPublishError(Exception):
    """A refusal that retrying cannot fix."""


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, PermanentPublishError):
        return True
    if isinstance(exc, RemoteError):
        return (exc.details.get("retry_class") == "PERMANENT" or exc.kind in PERMANENT_KINDS)
    return False


def describe(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"{exc.kind}/{exc.reason}: {exc.message}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def backoff_delay(attempts: int, rng: random.Random) -> float:
    """Jittered exponential backoff: 0.2 s doubling to 5 s, +-20 %."""
    base = min(BACKOFF_MAX, BACKOFF_MIN * (2 ** max(0, attempts - 1)))
    return base * (0.8 + 0.4 * rng.random())


class Publisher:
    """Drains the localmeta outbox into root. `await nursery.start(publisher.run)`."""

    def __init__(self, store: StoreContext, link: RootLink, lifecycle: Lifecycle,
                 rng: random.Random | None = None):
        self.store = store
        self.meta = store.meta
        self.env = store.env
        self.link = link
        self.lifecycle = lifecycle
        self.rng = rng or random.Random(store.store_id * 7919)
        self.counters: Counter[str] = Counter()
        self._wake = trio.Event()
        # seq -> (attempts, not before (trio time), last error)
        self._retry: dict[int, tuple[int, float, str]] = {}
        self._first_seen: dict[int, float] = {}
        self.failing = False
        self._operator = trio.Lock()  # one operator action at a time (check, then commit)

    # ---- staging (called inside apply / executor batches) ---------------------------------

    def stage(self, batch: WriteBatch, entry: OutboxEntry) -> int:
        """Append `entry` to the outbox in `batch` (the caller commits it)."""
        seq = self.meta.stage_outbox_append(batch, encode(entry))
        batch.on_commit(self.kick)
        return seq

    async def enqueue(self, entry: OutboxEntry) -> int:
        batch = WriteBatch()
        seq = self.stage(batch, entry)
        await self.env.commit(batch)
        return seq

    def kick(self) -> None:
        self._wake.set()

    # ---- restart -------------------------------------------------------------------------

    def restore(self) -> None:
        """Re-track what the outbox and blocked table hold after a restart."""
        for _seq, entry, _ in self._entries():
            if entry is None or entry.purpose != "terminal":
                continue
            role = "executor" if entry.role == "primary" else "replica"
            self.lifecycle.track(entry.transition_id, entry.region_id, _kind_of(entry), role,
                                 S.TERMINAL_PENDING, "restored from the outbox after restart")
        for blocked in self.meta.blocked():
            try:
                entry = decode(blocked.event)
            except DecodeError:
                continue
            if isinstance(entry, OutboxEntry) and entry.purpose == "terminal":
                self.lifecycle.track(entry.transition_id, entry.region_id, _kind_of(entry),
                                     "executor" if entry.role == "primary" else "replica",
                                     S.TERMINAL_BLOCKED, "restored from the blocked table")
                self.lifecycle.move(entry.transition_id, S.TERMINAL_BLOCKED,
                                    error=blocked.error)

    # ---- the task ------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            delay = await self.drain_once()
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()

    def _entries(self) -> list[tuple[int, OutboxEntry | None, bytes]]:
        out = []
        for seq, raw in self.meta.outbox():
            try:
                entry = decode(raw)
            except DecodeError:
                entry = None
            out.append((seq, entry if isinstance(entry, OutboxEntry) else None, raw))
        return out

    async def drain_once(self) -> float:
        """One pass over the outbox; returns how long to sleep before the next one."""
        now = trio.current_time()
        entries = self._entries()
        live = {seq for seq, _, _ in entries}
        for seq in list(self._retry):
            if seq not in live:
                del self._retry[seq]
        for seq in list(self._first_seen):
            if seq not in live:
                del self._first_seen[seq]
        next_wake = 5.0
        failing = False
        for seq, entry, raw in entries:
            if entry is None:
                await self._block(seq, raw, None, "undecodable outbox entry")
                continue
            first = self._first_seen.setdefault(seq, now)
            attempts, not_before, _ = self._retry.get(seq, (0, 0.0, ""))
            if entry.role == "backup" and now - first < BACKUP_GRACE:
                next_wake = min(next_wake, first + BACKUP_GRACE - now)
                continue
            if not_before > now:
                failing = True
                next_wake = min(next_wake, not_before - now)
                continue
            try:
                obsolete = await self._publish(entry)
            except trio.Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes a state
                err = describe(exc)
                if is_permanent(exc):
                    if entry.role == "backup" and _superseded(exc):
                        await self._remove(seq, entry, obsolete=True, note=err)
                        continue
                    await self._block(seq, raw, entry, err)
                    continue
                attempts += 1
                delay = backoff_delay(attempts, self.rng)
                self._retry[seq] = (attempts, now + delay, err)
                failing = True
                next_wake = min(next_wake, delay)
                self.counters["publish_failures"] += 1
                if entry.purpose == "terminal":
                    self.lifecycle.move(entry.transition_id, S.TERMINAL_FAILED,
                                        f"publish attempt {attempts} failed", error=err)
                    rec = self.lifecycle.get(entry.transition_id)
                    if rec is not None:
                        rec.publish_attempts, rec.next_retry_in = attempts, delay
                if attempts == 1 or attempts % 20 == 0:
                    log.warning("store %d: publishing %s (%s) failed %d time(s): %s",
                                self.store.store_id, entry.transition_id, entry.purpose,
                                attempts, err)
                continue
            await self._remove(seq, entry, obsolete=obsolete)
        self._set_failing(failing)
        self.store.outbox_backlog = len(self.meta.outbox())
        self.store.blocked_events = len(self.meta.blocked())
        return max(0.01, next_wake)

    async def _publish(self, entry: OutboxEntry) -> bool:
        """Publish one entry; True when root answered that it is obsolete (SKIP)."""
        if entry.purpose == "terminal":
            fp = failpoints.check("store.publish_terminal")
            if isinstance(fp, failpoints.Return):
                raise PermanentPublishError(f"failpoint store.publish_terminal: {fp.value}")
        self.counters[f"publish_attempts.{entry.purpose}"] += 1
        reply = await self.link.call(PublishRootEventRequest(entry.event, None))
        if not getattr(reply, "accepted", False):
            raise RpcError(f"publish of {entry.transition_id} not accepted: {reply!r}")
        return False

    async def _remove(self, seq: int, entry: OutboxEntry, *, obsolete: bool = False,
                      note: str = "") -> None:
        batch = WriteBatch()
        self.meta.stage_outbox_remove(batch, seq)
        await self.env.commit(batch)
        self._retry.pop(seq, None)
        self._first_seen.pop(seq, None)
        self.counters["published" if not obsolete else "obsolete_backups"] += 1
        if entry.purpose != "terminal":
            return
        rec = self.lifecycle.get(entry.transition_id)
        if rec is not None:
            rec.publish_attempts += 1
        if obsolete:
            self.lifecycle.move(entry.transition_id, S.TERMINAL_PUBLISHED,
                                "backup copy obsolete: another replica published it and root "
                                "moved on", error=note)
        else:
            self.lifecycle.move(entry.transition_id, S.TERMINAL_PUBLISHED,
                                f"published ({entry.role})", error="")

    async def _block(self, seq: int, raw: bytes, entry: OutboxEntry | None, err: str) -> None:
        batch = WriteBatch()
        self.meta.stage_outbox_block(batch, seq, raw, err)
        await self.env.commit(batch)
        self._retry.pop(seq, None)
        self._first_seen.pop(seq, None)
        self.counters["blocked"] += 1
        log.error("store %d: outbox entry %d blocked: %s", self.store.store_id, seq, err)
        if entry is not None and entry.purpose == "terminal":
            self.lifecycle.move(entry.transition_id, S.TERMINAL_BLOCKED,
                                "root refused it permanently", error=err)

    def _set_failing(self, failing: bool) -> None:
        if failing != self.failing:
            self.failing = failing
            self.counters["degraded_transitions"] += 1
        limits = self.store.limits
        if limits.scheduler_degraded != failing:
            self.store.limits = replace(limits, scheduler_degraded=failing)

    # ---- the operator path ---------------------------------------------------------------

    def _blocked_entry(self, seq: int) -> BlockedEvent:
        blocked = self.meta.blocked()
        for b in blocked:
            if b.seq == seq:
                return b
        if any(s == seq for s, _ in self.meta.outbox()):
            raise OutboxRefusal(f"outbox entry {seq} is pending, not blocked: only a blocked "
                                "entry can be retried or resolved")
        known = ", ".join(str(b.seq) for b in blocked[:20]) or "none"
        raise OutboxRefusal(f"no blocked outbox entry with seq {seq} on store "
                            f"{self.store.store_id} (blocked: {known})")

    async def retry_blocked(self, seq: int) -> str:
        """Move blocked entry `seq` back into the outbox (a new seq); returns what was done."""
        async with self._operator:
            blocked = self._blocked_entry(seq)
            entry = _decode_entry(blocked.event)
            if entry is None:
                raise OutboxRefusal(f"blocked entry {seq} does not decode: it cannot be "
                                    "published; resolve it as abandoned")
            batch = WriteBatch()
            self.meta.stage_blocked_remove(batch, seq)
            new_seq = self.meta.stage_outbox_append(batch, blocked.event)
            batch.on_commit(self.kick)
            await self.env.commit(batch)
            self.counters["operator_retries"] += 1
            self._refresh_counts()
            what = (f"blocked entry {seq} ({_event_kind(entry)} of {entry.transition_id}) moved "
                    f"back into the outbox as entry {new_seq}")
            if entry.purpose == "terminal":
                self.lifecycle.reopen(entry.transition_id, S.TERMINAL_PENDING,
                                      f"operator retry: {what}")
            log.warning("store %d: operator retry: %s", self.store.store_id, what)
            return what

    async def resolve_blocked(self, seq: int, resolution: str, reason: str) -> str:
        """Remove blocked entry `seq` for good and, in the same write, queue the rooted
        RecoveryRecord of that decision; returns what was done."""
        action = RESOLUTIONS.get(resolution)
        if action is None:
            raise OutboxRefusal(f"unknown resolution {resolution!r}: expected "
                                + " or ".join(RESOLUTIONS))
        reason = " ".join((reason or "").split())
        if not reason:
            raise OutboxRefusal("a resolution needs a reason (it is recorded in root)")
        reason = reason[:MAX_REASON]
        async with self._operator:
            blocked = self._blocked_entry(seq)
            entry = _decode_entry(blocked.event)
            sid = self.store.store_id
            tid = entry.transition_id if entry is not None else ""
            kind = _event_kind(entry) or "an undecodable event"
            what = ((f"{kind} of {tid}" if tid else kind)
                    + f" (blocked outbox entry {seq} of store {sid})")
            if resolution == "published":
                undone = ""
                remained = (f"{what}: not published by this store; the operator resolved it as "
                            f"published (root holds it, or it was published out of band): "
                            f"{reason}")
            else:
                undone = (f"{what}: dropped from the outbox without being published: "
                          f"{reason}")
                remained = ("the local apply stays; root keeps what it holds for the "
                            "transition")
            rec = RecoveryRecord(tid, action, blocked.error[:500], undone[:500], remained[:500])
            request_id = f"recovery:{tid}:{action}:{sid}:blocked-{seq}"
            batch = WriteBatch()
            self.meta.stage_blocked_remove(batch, seq)
            new_seq = self.stage(batch, OutboxEntry(
                tid, RootEvent(EventKind.RECOVERY_RECORDED, rec, request_id), "primary",
                "recovery", entry.region_id if entry is not None else 0))
            await self.env.commit(batch)
            self.counters[f"operator_{resolution}"] += 1
            self._refresh_counts()
            done = (f"blocked entry {seq} resolved as {resolution}; recovery record {action} "
                    f"queued as outbox entry {new_seq}")
            if entry is not None and entry.purpose == "terminal":
                self.lifecycle.reopen(entry.transition_id, S.TERMINAL_PUBLISHED,
                                      f"operator resolved the blocked terminal event as "
                                      f"{resolution} ({action} queued for root): {reason}")
            log.warning("store %d: operator resolve: %s: %s", sid, done, reason)
            return done

    def _refresh_counts(self) -> None:
        self.store.outbox_backlog = len(self.meta.outbox())
        self.store.blocked_events = len(self.meta.blocked())

    # ---- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        pending = []
        for seq, entry, raw in self._entries()[:100]:
            attempts, not_before, err = self._retry.get(seq, (0, 0.0, ""))
            pending.append({
                "seq": seq,
                "transition_id": entry.transition_id if entry else "",
                "purpose": entry.purpose if entry else "undecodable",
                "role": entry.role if entry else "",
                "event": _event_kind(entry),
                "attempts": attempts,
                "retry_in": round(max(0.0, not_before - now), 3),
                "last_error": err,
                "bytes": len(raw),
            })
        blocked = []
        for b in self.meta.blocked()[:100]:
            entry = _decode_entry(b.event)
            blocked.append({"seq": b.seq, "error": b.error,
                            "transition_id": entry.transition_id if entry else "",
                            "event": _event_kind(entry),
                            "purpose": entry.purpose if entry else "undecodable",
                            "role": entry.role if entry else "",
                            "region_id": entry.region_id if entry else 0})
        return {"pending": pending, "blocked": blocked, "failing": self.failing,
                "counters": dict(sorted(self.counters.items()))}


def _decode_entry(raw: bytes) -> OutboxEntry | None:
    try:
        entry = decode(raw)
    except DecodeError:
        return None
    return entry if isinstance(entry, OutboxEntry) else None


def _event_kind(entry: OutboxEntry | None) -> str:
    if entry is None:
        return ""
    try:
        return EventKind(entry.event.kind).name
    except (AttributeError, ValueError):
        return type(entry.event).__name__


def _kind_of(entry: OutboxEntry) -> str:
    tid = entry.transition_id
    if tid.startswith("peer:"):
        return "add_peer" if ":add:" in tid else "remove_peer"
    return tid.split(":", 1)[0]


def _superseded(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError) and exc.reason in (
        "superseded_before_apply", "superseded")
