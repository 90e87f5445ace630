"""The raft log as the core sees it: stable entries in `Storage` plus an unstable tail.

Owns: `Unstable` (entries and an incoming snapshot not yet handed to the caller for
persistence) and `RaftLog` (commit and apply cursors, conflict detection, slicing across the
stable/unstable boundary). Never writes to `Storage`: the caller persists what a Ready carries
and `RaftLog.stable_to` / `stable_snap_to` then drop it from the unstable part. Never does I/O.

Entry lists returned here are fresh lists (slices) but share `Entry` objects with the log;
nobody mutates an `Entry` after it is appended.
"""

from __future__ import annotations

from .storage import limit_size
from .types import CompactedError, Entry, Snapshot, Storage, UnavailableError


class Unstable:
    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        # Invariant: entries[i].index == offset + i.
        # Invariant: snapshot is None or snapshot.metadata.index == offset - 1 after restore.
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        offset = self.offset
        if i < offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == i:
                return snap.metadata.term
            return None
        ents = self.entries
        if i - offset < len(ents):
            return ents[i - offset].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        gt = self.maybe_term(i)
        if gt is None:
            return
        # Only drop entries if the term still matches: a newer append may have replaced them.
        if gt == t and i >= self.offset:
            del self.entries[: i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        offset = self.offset
        n = len(self.entries)
        if after == offset + n:
            self.entries.extend(ents)
        elif after <= offset:
            # Replace the whole unstable part (and possibly overlap the stable log).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    __slots__ = ("storage", "unstable", "committed", "applied", "max_next_ents_size")

    def __init__(self, storage: Storage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        # Invariant: applied <= committed <= last_index().
        # Invariant: committed entries are never truncated.
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, len(unstable)={len(self.unstable.entries)})"
        )

    # -- indices and terms ---------------------------------------------------------------

    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        if i is not None:
            return i
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry `i`; 0 outside [first_index - 1, last_index]. Raises CompactedError /
        UnavailableError when storage no longer has it."""
        u = self.unstable
        off = u.offset
        if i >= off:
            j = i - off
            if j < len(u.entries):
                return u.entries[j].term
            if i > self.last_index():
                return 0
        t = u.maybe_term(i)
        if t is not None:
            return t
        if i < self.first_index() - 1:
            return 0
        return self.storage.term(i)

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Raft section 5.4.1: a candidate's log is at least as up to date as ours."""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending -----------------------------------------------------------------------

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[Entry]
    ) -> tuple[int, bool]:
        """Follower side of AppendEntries: returns (last new index, accepted)."""
        if not self.match_term(index, log_term):
            return 0, False
        last_new = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                if ci <= self.committed:
                    raise AssertionError(
                        f"entry {ci} conflicts with committed entry (committed {self.committed})"
                    )
                self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new, True

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise AssertionError(f"after {after} is out of range [committed {self.committed}]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours, or 0 if all match."""
        last = self.last_index()
        for e in ents:
            if e.index > last:
                return e.index
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= `index` whose term is <= `term` (etcd's findConflictByTerm), with
        its term. Lets a leader skip a whole conflicting term per probe round trip."""
        if index > self.last_index():
            return index, 0
        while True:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1

    # -- commit / apply ------------------------------------------------------------------

    def commit_to(self, c: int) -> None:
        if c > self.committed:
            if c > self.last_index():
                raise AssertionError(f"commit {c} out of range [last {self.last_index()}]")
            self.committed = c

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Raft section 5.4.2: only entries of the current term commit by counting replicas."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if i > self.committed or i < self.applied:
            raise AssertionError(
                f"applied {i} out of range [prev applied {self.applied}, committed {self.committed}]"
            )
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def has_next_ents(self) -> bool:
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_ents(self) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snap: Snapshot) -> None:
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    # -- reading -------------------------------------------------------------------------

    def entries(self, i: int, max_size: int | None = None) -> list[Entry]:
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def all_entries(self) -> list[Entry]:
        """Everything still available (tests and debugging)."""
        while True:
            try:
                return self.entries(self.first_index())
            except CompactedError:  # raced with compaction; cannot happen single-threaded
                continue

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi), limited to max_size bytes of data (at least one entry)."""
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(f"slice [{lo}, {hi}) compacted (first {fi})")
        if lo > hi or hi > self.last_index() + 1:
            raise ValueError(f"slice [{lo}, {hi}) out of bound [{fi}, {self.last_index()}]")
        if lo == hi:
            return []
        u = self.unstable
        off = u.offset
        if lo >= off:
            return limit_size(u.entries[lo - off : hi - off], max_size)
        stored = self.storage.entries(lo, min(hi, off), max_size)
        if hi <= off or len(stored) < min(hi, off) - lo:
            return stored
        return limit_size(stored + u.entries[: hi - off], max_size)
