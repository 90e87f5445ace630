"""In-memory implementation of the `Storage` protocol, modelled on etcd's MemoryStorage.

Owns: a log of entries preceded by a dummy entry that stands for the last compacted entry (or
the snapshot), the hard state and the latest snapshot. It is both what the core reads its stable
log through and, in tests and the simulator, the "disk": a crash keeps exactly what the caller
wrote here. Never does I/O and never calls back into the core; the caller writes to it while
handling a Ready (`append`, `set_hard_state`, `apply_snapshot`) and compacts it
(`create_snapshot`, `compact`).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import attrgetter

from .types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)

_data = attrgetter("data")


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """Longest prefix of `ents` whose data fits in `max_size` bytes; never less than one entry."""
    if max_size is None or len(ents) <= 1:
        return ents
    # Hot path: sum in C; only walk the prefix sums when the limit is actually exceeded.
    if sum(map(len, map(_data, ents))) <= max_size:
        return ents
    n = bisect_right(list(accumulate(map(len, map(_data, ents)))), max_size)
    return ents[: max(n, 1)]


class MemoryStorage:
    __slots__ = ("_hard_state", "_snapshot", "_ents")

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        # Invariant: _ents[0] is a dummy whose (index, term) is the snapshot / last compacted
        # entry; _ents[i].index == _ents[0].index + i (contiguous).
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- Storage protocol ---------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        hs = self._hard_state
        return HardState(hs.term, hs.vote, hs.commit), self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise CompactedError(f"entries [{lo}, {hi}) compacted (offset {offset})")
        if hi > offset + len(ents):
            raise ValueError(f"entries hi {hi} out of bound, last index {self.last_index()}")
        if len(ents) == 1:
            raise UnavailableError("only the dummy entry is present")
        return limit_size(ents[lo - offset : hi - offset], max_size)

    def term(self, index: int) -> int:
        ents = self._ents
        offset = ents[0].index
        if index < offset:
            raise CompactedError(f"term of {index} compacted (offset {offset})")
        if index - offset >= len(ents):
            raise UnavailableError(f"term of {index} unavailable (last {self.last_index()})")
        return ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        ents = self._ents
        return ents[0].index + len(ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes by the caller -----------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = HardState(hs.term, hs.vote, hs.commit)

    def hard_state(self) -> HardState:
        return self._hard_state

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with `snap` (must be newer than the current snapshot)."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot {snap.metadata.index} <= {self._snapshot.metadata.index}"
            )
        self._snapshot = snap
        self._ents = [Entry(snap.metadata.term, snap.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state at `index` (does not compact the log)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(f"snapshot {index} <= {self._snapshot.metadata.index}")
        offset = self._ents[0].index
        if index > self.last_index():
            raise ValueError(f"snapshot {index} is out of bound, last index {self.last_index()}")
        term = self._ents[index - offset].term
        self._snapshot = Snapshot(SnapshotMetadata(index, term, conf_state), data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries before `compact_index`; it becomes the new dummy entry."""
        ents = self._ents
        offset = ents[0].index
        if compact_index <= offset:
            raise CompactedError(f"compact {compact_index} <= offset {offset}")
        if compact_index > self.last_index():
            raise ValueError(f"compact {compact_index} is out of bound, last {self.last_index()}")
        i = compact_index - offset
        self._ents = [Entry(ents[i].term, ents[i].index)] + ents[i + 1 :]

    def append(self, entries: list[Entry]) -> None:
        """Append entries, truncating any conflicting suffix first (entries must be contiguous
        and must not leave a gap after the last stored entry)."""
        if not entries:
            return
        ents = self._ents
        first = ents[0].index + 1
        e0 = entries[0].index
        last = e0 + len(entries) - 1
        if last < first:
            return  # entirely compacted already
        if first > e0:
            entries = entries[first - e0 :]
            e0 = first
        offset = e0 - ents[0].index
        n = len(ents)
        if n > offset:
            del ents[offset:]
            ents.extend(entries)
        elif n == offset:
            ents.extend(entries)
        else:
            raise ValueError(f"missing log entry [last: {self.last_index()}, append at: {e0}]")
