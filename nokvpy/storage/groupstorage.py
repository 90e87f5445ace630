"""One raft group's log as the raft core reads it: the read-only `GroupStorage` view.

Owns: the in-memory view of a group's durable log (hard state, truncation boundary, snapshot
metadata, conf state, the terms of the live entries as runs, the most recent entries), the
`Storage` protocol answers the raft core reads through, loading the view from LMDB, and the
view updates a raft log backend runs once a staged change is durable (`on_*`). Semantics
follow etcd's MemoryStorage: a group's log is [first_index, last_index] with a boundary
(truncated index, truncated term) just below it; first_index = truncated index + 1;
term(truncated index) answers the boundary term; term(i) below it raises CompactedError and
above last_index raises UnavailableError; entries(lo, hi) below first_index raise
CompactedError. Applying a snapshot resets the boundary to the snapshot's (index, term).
Never writes: the raft log store (raftlog.py, with its backends) stages changes into a
batch, and never changes the view before the transaction (or WAL frame) that persists the
change committed.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from typing import Any

from nokvpy.raft.types import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from nokvpy.storage.env import Env
from nokvpy.storage.errors import CorruptLogError
from nokvpy.storage.raftlog_codec import (
    ENT,
    ENT_SIZE,
    GID,
    HS,
    HS_LSN,
    ITEM_HS,
    KEY,
    LSN,
    TAG_CONF,
    TAG_HS,
    TAG_SNAP,
    TAG_TRUNC,
    TAG_VOID,
    TRUNC,
    decode_conf,
    decode_entry,
    decode_snapshot_meta,
    group_hi,
    group_lo,
)
from nokvpy.storage.schema import RAFT_LOG, RAFT_STATE

DEFAULT_CACHE_ENTRIES = 1024


class GroupStorage:
    """One raft group's log as the raft core sees it (the `Storage` protocol), read from an
    in-memory view that mirrors what is durable.

    The view: hard state, boundary (truncated index/term), snapshot metadata, conf state, the
    terms of [first_index, last_index] as runs (start index -> term), and the most recent
    entries. Older entries are read from LMDB on demand.
    """

    __slots__ = (
        "group_id",
        "_env",
        "_log_db",
        "_hs",
        "_trunc_index",
        "_trunc_term",
        "_snap",
        "_conf",
        "_last",
        "_run_idx",
        "_run_term",
        "_cache",
        "_cache_max",
        "snapshot_provider",
    )

    def __init__(self, env: Env, group_id: int, cache_entries: int = DEFAULT_CACHE_ENTRIES):
        self.group_id = group_id
        self._env = env
        self._log_db = env.db(RAFT_LOG)
        self._cache_max = max(1, cache_entries)
        # Called by snapshot() with the stored metadata; the raftstore installs one that
        # attaches KV data (and may raise SnapshotTemporarilyUnavailableError).
        self.snapshot_provider: Callable[[SnapshotMetadata], Snapshot] | None = None
        self.reset()

    def reset(self) -> None:
        self._hs = HardState()
        self._trunc_index = 0
        self._trunc_term = 0
        self._snap = SnapshotMetadata()
        self._conf: tuple[int, ConfState] | None = None  # (valid-at index, conf state)
        # Invariant: _trunc_index <= _last; the log holds exactly (_trunc_index, _last].
        self._last = 0
        # Invariant: _run_idx ascending, _run_idx[0] <= _trunc_index + 1 when non-empty; the
        # term of index i in the log is _run_term[bisect_right(_run_idx, i) - 1].
        self._run_idx: list[int] = []
        self._run_term: list[int] = []
        # Invariant: _cache holds entries (_last - len(_cache), _last], in order.
        self._cache: list[Entry] = []

    # ------------------------------------------------------------ loading

    def load(self) -> tuple[int, int]:
        """Load the LMDB records; return (void mark, LSN of the LMDB hard state) for WAL
        replay (0 when absent)."""
        gid = self.group_id
        state_db = self._env.db(RAFT_STATE)
        log_db = self._log_db
        cache_max = self._cache_max

        def read(txn):
            get = txn.get
            hs = get(GID.pack(gid) + TAG_HS, db=state_db)
            trunc = get(GID.pack(gid) + TAG_TRUNC, db=state_db)
            snap = get(GID.pack(gid) + TAG_SNAP, db=state_db)
            conf = get(GID.pack(gid) + TAG_CONF, db=state_db)
            void = get(GID.pack(gid) + TAG_VOID, db=state_db)
            runs_idx: list[int] = []
            runs_term: list[int] = []
            tail: deque[tuple[int, bytes]] = deque(maxlen=cache_max)
            first = last = None
            hi = group_hi(gid)
            with txn.cursor(db=log_db) as cur:
                if cur.set_range(group_lo(gid)):
                    for key, value in cur:
                        if hi is not None and key >= hi:
                            break
                        if len(key) != 16 or len(value) < ENT_SIZE:
                            raise CorruptLogError(f"group {gid}: malformed log record {key!r}")
                        index = KEY.unpack(key)[1]
                        if last is not None and index != last + 1:
                            raise CorruptLogError(f"group {gid}: gap after index {last}")
                        if first is None:
                            first = index
                        last = index
                        term = ENT.unpack_from(value)[0]
                        if not runs_term or runs_term[-1] != term:
                            if runs_term and term < runs_term[-1]:
                                raise CorruptLogError(f"group {gid}: term decreases at {index}")
                            runs_idx.append(index)
                            runs_term.append(term)
                        tail.append((index, value))
            return hs, trunc, snap, conf, void, first, last, runs_idx, runs_term, tail

        void_lsn = hs_lsn = 0
        try:
            (hs, trunc, snap, conf, void, first, last, runs_idx, runs_term,
             tail) = self._env.read(read)
            self.reset()
            if void is not None:
                void_lsn = LSN.unpack(void)[0]
            if hs is not None and len(hs) == HS_LSN.size:
                hs_lsn = HS_LSN.unpack(hs)[3]
            if hs is not None:
                self._hs = HardState(*(HS.unpack(hs) if len(hs) == HS.size
                                       else HS_LSN.unpack(hs)[:3]))
            if trunc is not None:
                self._trunc_index, self._trunc_term = TRUNC.unpack(trunc)
            if snap is not None:
                self._snap = decode_snapshot_meta(snap)
            if conf is not None:
                self._conf = decode_conf(conf)
        except struct.error as exc:
            raise CorruptLogError(f"group {gid}: undecodable state record: {exc}") from None
        self._last = self._trunc_index
        if first is not None:
            if first != self._trunc_index + 1:
                raise CorruptLogError(
                    f"group {gid}: first entry {first} does not follow boundary "
                    f"{self._trunc_index}"
                )
            self._last = last
            self._run_idx, self._run_term = runs_idx, runs_term
            self._cache = [decode_entry(i, v) for i, v in tail]
        return void_lsn, hs_lsn

    def replay_wal(self, items: list[tuple[int, int, Any]], void_lsn: int, hs_lsn: int) -> None:
        """Apply this group's WAL items (lsn, kind, value), oldest first, on top of the LMDB
        records `load` read (it returned `void_lsn` and `hs_lsn`): entries replace any
        conflicting suffix, entries at or below the boundary are dropped, a hard state
        replaces the one before it (WAL mode)."""
        for lsn, kind, value in items:
            if lsn < void_lsn:
                continue
            if kind == ITEM_HS:
                if lsn >= hs_lsn:
                    self._hs = value
                continue
            entries: list[Entry] = value
            if entries[-1].index <= self._trunc_index:
                # The log ended at or below the boundary then: nothing above it survived
                # (whatever is above now was appended later and comes in later items).
                self._last = self._trunc_index
                self._run_idx, self._run_term, self._cache = [], [], []
                continue
            if entries[0].index <= self._trunc_index:
                entries = entries[self._trunc_index + 1 - entries[0].index:]
            if entries[0].index > self._last + 1:
                raise CorruptLogError(
                    f"group {self.group_id}: WAL frame {lsn} starts at entry "
                    f"{entries[0].index} after last entry {self._last}")
            self.on_append(entries)

    # ------------------------------------------------------------ Storage protocol

    def initial_state(self) -> tuple[HardState, ConfState]:
        hs = self._hs
        conf = self._conf
        cs = conf[1] if conf is not None and conf[0] >= self._snap.index else self._snap.conf_state
        return HardState(hs.term, hs.vote, hs.commit), cs

    def first_index(self) -> int:
        return self._trunc_index + 1

    def last_index(self) -> int:
        return self._last

    def term(self, index: int) -> int:
        if index == self._last:
            return self._run_term[-1] if self._last > self._trunc_index else self._trunc_term
        if index <= self._trunc_index:
            if index == self._trunc_index:
                return self._trunc_term
            raise CompactedError(
                f"group {self.group_id}: term({index}) compacted (first index "
                f"{self._trunc_index + 1})"
            )
        if index > self._last:
            raise UnavailableError(
                f"group {self.group_id}: term({index}) beyond last index {self._last}"
            )
        return self._run_term[bisect_right(self._run_idx, index) - 1]

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi), limited to max_size bytes of data (always at least one)."""
        if lo <= self._trunc_index:
            raise CompactedError(
                f"group {self.group_id}: entries from {lo} compacted (first index "
                f"{self._trunc_index + 1})"
            )
        if hi > self._last + 1:
            raise UnavailableError(
                f"group {self.group_id}: entries up to {hi - 1} beyond last index {self._last}"
            )
        if lo >= hi:
            if lo > hi:
                raise ValueError(f"invalid entries range [{lo}, {hi})")
            return []
        cache = self._cache
        cache_lo = self._last + 1 - len(cache)
        if lo >= cache_lo:
            ents = cache[lo - cache_lo : hi - cache_lo]
            return ents if max_size is None else _limit_size(ents, max_size)
        ents = self._read_entries(lo, min(hi, cache_lo), max_size)
        if hi > cache_lo and ents and ents[-1].index == cache_lo - 1:
            if max_size is None:
                ents.extend(cache[: hi - cache_lo])
            else:
                size = sum(len(e.data) for e in ents)
                for e in cache[: hi - cache_lo]:
                    size += len(e.data)
                    if size > max_size:
                        break
                    ents.append(e)
        return ents

    def snapshot(self) -> Snapshot:
        provider = self.snapshot_provider
        if provider is not None:
            return provider(self._snap)
        return Snapshot(self._snap)

    # ------------------------------------------------------------ extra reads

    @property
    def hard_state(self) -> HardState:
        hs = self._hs
        return HardState(hs.term, hs.vote, hs.commit)

    def restore_commit(self, applied: int) -> None:
        """Raise the commit index to `applied` in memory: what the state machine applied was
        committed (in WAL mode a hard state that only moved the commit index may not have
        reached the disk before a crash, while the apply did)."""
        if applied <= self._hs.commit:
            return
        if applied > self._last:
            raise CorruptLogError(f"group {self.group_id}: applied index {applied} is beyond "
                                  f"the last log entry {self._last}")
        self._hs = HardState(self._hs.term, self._hs.vote, applied)

    @property
    def snapshot_metadata(self) -> SnapshotMetadata:
        return self._snap

    @property
    def boundary_index(self) -> int:
        """The truncated index: the log holds (boundary_index, last_index()]."""
        return self._trunc_index

    def term_vote(self) -> tuple[int, int]:
        """The persisted (term, vote)."""
        return self._hs.term, self._hs.vote

    def cached_entries(self) -> list[Entry]:
        """The cached tail of the log (in WAL mode every live entry); the list itself: only
        read it, and not across a view update."""
        return self._cache

    def is_empty(self) -> bool:
        """True if nothing was ever persisted for this group (or it was destroyed)."""
        return (
            self._last == 0
            and self._snap.index == 0
            and self._hs == HardState()
            and self._conf is None
        )

    def _read_entries(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        gid = self.group_id
        db = self._log_db
        end_key = KEY.pack(gid, hi)

        def read(txn):
            out: list[Entry] = []
            size = 0
            with txn.cursor(db=db) as cur:
                if not cur.set_key(KEY.pack(gid, lo)):
                    raise CorruptLogError(f"group {gid}: entry {lo} missing from disk")
                for key, value in cur:
                    if key >= end_key:
                        break
                    if max_size is not None:
                        size += len(value) - ENT_SIZE
                        if out and size > max_size:
                            break
                    out.append(decode_entry(KEY.unpack(key)[1], value))
            return out

        return self._env.read(read)

    # ------------------------------------------------------------ view updates (on commit)
    # Run by the raft log backends once the change they staged is durable.

    def on_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self._last:  # overwrite a conflicting suffix
            k = bisect_left(self._run_idx, first)
            del self._run_idx[k:]
            del self._run_term[k:]
            cache_lo = self._last + 1 - len(self._cache)
            if first <= cache_lo:
                self._cache = []
            else:
                del self._cache[first - cache_lo :]
        run_idx, run_term = self._run_idx, self._run_term
        last_term = run_term[-1] if run_term else -1
        for e in entries:
            if e.term != last_term:
                last_term = e.term
                run_idx.append(e.index)
                run_term.append(last_term)
        self._last = entries[-1].index
        cache = self._cache
        cache.extend(entries)
        if len(cache) > self._cache_max + (self._cache_max >> 2):
            del cache[: len(cache) - self._cache_max]

    def on_hard_state(self, hs: HardState) -> None:
        self._hs = HardState(hs.term, hs.vote, hs.commit)

    def on_compact(self, index: int, term: int) -> None:
        if index <= self._trunc_index:
            return
        self._trunc_index, self._trunc_term = index, term
        if index >= self._last:
            self._last = index
            self._run_idx, self._run_term, self._cache = [], [], []
            return
        k = bisect_right(self._run_idx, index + 1) - 1
        if k > 0:
            del self._run_idx[:k]
            del self._run_term[:k]
        cache_lo = self._last + 1 - len(self._cache)
        if index >= cache_lo:
            del self._cache[: index - cache_lo + 1]

    def on_snapshot(self, meta: SnapshotMetadata) -> None:
        self._trunc_index, self._trunc_term = meta.index, meta.term
        self._snap = meta
        self._conf = None
        self._last = meta.index
        self._run_idx, self._run_term, self._cache = [], [], []

    def on_snapshot_meta(self, meta: SnapshotMetadata) -> None:
        if meta.index > self._snap.index:
            self._snap = meta

    def on_conf_state(self, index: int, cs: ConfState) -> None:
        self._conf = (index, cs)


def _limit_size(ents: list[Entry], max_size: int) -> list[Entry]:
    size = 0
    for i, e in enumerate(ents):
        size += len(e.data)
        if size > max_size and i > 0:
            return ents[:i]
    return ents
