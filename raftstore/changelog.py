"""A region's change log: the writes its applied entries made, kept for watches (DESIGN 5).

Owns: recording each applied write as a change at its revision (version, index, seq:
nokvpy.protocol.watch) in the SAME write batch as the write (durable exactly when the write
is, replayed idempotently after a crash), the region's floor (the revision above which it
holds every change of its range), trimming, and handing changes on when keys change region.
Never serves a watch (raftstore.watchpath does) and never commits.

The rule that makes one cursor per key range enough: a region holds every change, above its
floor, of every key in its CURRENT range, whichever region made it.
- A split child starts with the parent's changes of the child's range and the parent's floor.
- A merge target takes the source's changes (the source is frozen and every replica of it
  applied everything before the commit: raftstore.topology.merge) and the higher floor.
  Without a local source replica to copy from, the target's floor rises to the merge.
- A replica filled by a snapshot takes the change log and floor the snapshot carries (read
  in the snapshot's read transaction); from a store without one, its floor is the snapshot.
- Trimming keeps at least `keep` indexes of the current version, and older versions until
  then (so a split does not cut the history of a range that just moved).
TEST-ONLY: `NOKV_UNSAFE_WATCH_HANDOFF=1` in a store's environment makes `hand_on` copy nothing
(the floor still claims a whole history): a split child or merge target then misses the
changes its range had before, for the watch tests to catch. Never set it anywhere else.

A region without a floor record (created before the table, or never applied) starts its floor
at its first apply. Every replica applies the same entries, so replicas agree on changes
above the highest of their floors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

from nokvpy.protocol.watch import DELETE, PUT
from nokvpy.storage import ChangeTable, WriteBatch
from nokvpy.storage.changes import Change

WATCH_KEEP = 4096  # indexes of the current version a region keeps changes of
TRIM_EVERY = 512  # applied indexes between two trim checks

Rev = tuple[int, int]

# TEST-ONLY deliberately broken hand-on (see the module docstring).
UNSAFE_HANDOFF = os.environ.get("NOKV_UNSAFE_WATCH_HANDOFF", "") not in ("", "0")


class RecordingOverlay(dict):
    """The apply's overlay of staged writes (key -> stored value, None: deleted) that also
    lists, while `log` is a list, the writes made to it (a region's change log records them)."""

    __slots__ = ("log",)

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[bytes, bytes | None]] | None = None

    def __setitem__(self, key: bytes, value: bytes | None) -> None:
        dict.__setitem__(self, key, value)
        if self.log is not None:
            self.log.append((key, value))

class RegionChanges:
    """One region's change log on this store (owned by its RegionStateMachine)."""

    def __init__(self, table: ChangeTable, region_id: int, keep: int = WATCH_KEEP):
        self.table = table
        self.region_id = region_id
        self.keep = keep
        self.floor: Rev | None = table.floor(region_id)
        # staged and not yet durable (the state machine clears them when its applies are)
        self.pending: dict[tuple[int, int, int, int], Change] = {}
        self._trim_checked = 0
        self._waiters: trio.Event | None = None
        self.recorded = 0
        self.trims = 0

    # ---- apply (never awaits) ---------------------------------------------------------

    def record(self, batch: WriteBatch, version: int, index: int,
               writes: list[tuple[bytes, bytes | None]],
               unpack: Callable[[bytes], bytes]) -> None:
        """Stage the writes of entry `index` (key, stored value or None: deleted)."""
        if self.floor is None:  # the first apply this region records: history starts here
            self._stage_floor(batch, (version, index - 1))
        rid, stage, pending = self.region_id, self.table.stage_change, self.pending
        for seq, (key, raw) in enumerate(writes):
            if raw is None:
                kind, value = DELETE, None
            else:
                kind, value = PUT, unpack(raw)
            stage(batch, rid, version, index, seq, kind, key, value)
            pending[(version, index, rid, seq)] = (version, index, seq, kind, key, value, rid)
        self.recorded += len(writes)

    def applied(self, batch: WriteBatch, version: int, applied: int) -> None:
        """After an apply up to `applied` at `version`: start the history if it has none,
        trim it now and then."""
        if self.floor is None:  # nothing recorded in this batch: history starts after it
            self._stage_floor(batch, (version, applied))
        if applied - self._trim_checked < TRIM_EVERY:
            return
        self._trim_checked = applied
        target = applied - self.keep
        if target <= 0:
            return
        first = self.table.first_index_of(self.region_id, version)
        if first is None or first > target:
            return  # fewer than `keep` indexes at this version: older versions stay too
        self.table.stage_trim(batch, self.region_id, version, target)
        self._stage_floor(batch, (version, target - 1))
        self.trims += 1

    def committed(self) -> None:
        """Everything staged is durable: forget the in-memory copies, wake waiting watches."""
        self.after_commit(drained=True)

    def after_commit(self, drained: bool) -> None:
        """An apply became durable (the state machine's head moves): wake waiting watches;
        with `drained` (no apply staged any more) forget the in-memory copies too. Waking on
        every apply, not only when drained: under steady load the staged queue is seldom
        empty, and watches waited for a gap (p50 100 ms from a put to its event)."""
        if drained:
            self.pending.clear()
        self.wake()

    def restore(self, batch: WriteBatch, version: int, index: int,
                changes: list[Change] | None = None, floor: Rev | None = None) -> None:
        """A snapshot at (version, index) replaces the region's state: its change log is the
        one the snapshot carries (`changes`, whole above `floor`), or nothing below it."""
        self.table.stage_drop(batch, self.region_id)
        self.pending.clear()
        self.floor = None
        if changes is not None and floor is not None:
            self.table.stage_raw(batch, self.region_id, [tuple(c) for c in changes])
            self._stage_floor(batch, (int(floor[0]), int(floor[1])))
            return
        self._stage_floor(batch, (version, index))

    def snapshot(self, txn: Any) -> tuple[list[Change], Rev | None]:
        """What a region snapshot carries (from the caller's read transaction): every change
        this region holds and its floor (None: it has none yet)."""
        return (self.table.read(txn, self.region_id, (0, 0), b"", b"", 1 << 62)[0],
                self.table.floor(self.region_id, txn=txn))

    def stage_drop(self, batch: WriteBatch) -> None:
        """The replica leaves this store: its change log goes with it."""
        self.table.stage_drop(batch, self.region_id)
        self.pending.clear()

    def hand_on(self, batch: WriteBatch, dst: int, lo: bytes, hi: bytes,
                dst_floor: Rev | None, cut: Rev) -> tuple[Rev, list[Change]]:
        """Stage this region's changes of [lo, hi) under region `dst` (a split child or a
        merge target) and its floor: the higher of ours and `dst_floor` (what `dst` already
        holds); `cut` (the revision the hand-on applies at) when we have no floor, so know
        nothing of our history. Returns that floor and the changes handed on."""
        have = {_ident(c): c for c in self.table.export(self.region_id, lo, hi)}
        for k, c in self.pending.items():
            if c[4] >= lo and (not hi or c[4] < hi):
                have[k] = c
        changes = [] if UNSAFE_HANDOFF else sorted(have.values(), key=_ident)
        if changes:
            self.table.stage_raw(batch, dst, changes)
        mine = self.floor if self.floor is not None else cut
        floor = max(mine, dst_floor) if dst_floor is not None else mine
        self.table.stage_floor(batch, dst, *floor)
        return floor, changes

    def took_over(self, floor: Rev, changes: list[Change]) -> None:
        """`hand_on` staged `changes` and `floor` under this region (a merge target)."""
        self.floor = floor
        for c in changes:
            self.pending[_ident(c)] = c

    def cut(self, batch: WriteBatch, rev: Rev) -> None:
        """The region's history of its range is whole only above `rev` (a merge whose source
        left no change log here)."""
        self._stage_floor(batch, rev)

    def _stage_floor(self, batch: WriteBatch, rev: Rev) -> None:
        if self.floor is None or rev > self.floor:
            self.floor = rev
            self.table.stage_floor(batch, self.region_id, *rev)

    # ---- watches ------------------------------------------------------------------------

    def wake(self) -> None:
        if self._waiters is not None:
            self._waiters.set()
            self._waiters = None

    async def wait_applied(self, timeout: float) -> None:
        """Until the region's next apply is durable, or `timeout` seconds."""
        if self._waiters is None:
            self._waiters = trio.Event()
        ev = self._waiters
        with trio.move_on_after(timeout):
            await ev.wait()


def _ident(c: Change) -> tuple[int, int, int, int]:
    """What tells two changes apart: (version, index, origin region, seq)."""
    return c[0], c[1], c[6], c[2]
