"""Raft log storage for many raft groups in one LMDB environment.

Owns: the `raft_log` and `raft_state` databases (layout in `schema.py`), the compact struct
encoding of entries, hard state, truncation boundary, snapshot metadata and conf state, and
the per-group in-memory view (`GroupStorage`) the raft core reads through. Never stores
snapshot data (the raftstore builds it from the KV table), never imports msgpack, and never
changes the in-memory view before the transaction that persists the change has committed.

Semantics follow etcd's MemoryStorage: a group's log is [first_index, last_index] with a
boundary (truncated index, truncated term) just below it; first_index = truncated index + 1;
term(truncated index) answers the boundary term; term(i) below it raises CompactedError and
above last_index raises UnavailableError; entries(lo, hi) below first_index raise
CompactedError. Applying a snapshot resets the boundary to the snapshot's (index, term).

Write path: `stage_*` methods add operations to a `WriteBatch` and an `on_commit` callback
that updates the view; the caller commits the batch (possibly together with applied KV data
and localmeta updates of the same loop turn). Stage-time validation reads the committed view:
a group's next Ready must be staged after the previous one committed (persist, then advance).

WAL mode (`RaftLogStore(env, wal=...)`, the stores' default): entries and hard states go to
an append-only write-ahead log (`wal.Wal`) instead of LMDB, one frame per commit and one
fdatasync per frame, and every live entry stays in memory (the log is compacted a few
thousand entries behind the applied index). `stage_ready` puts them in the batch's
`journal`; `commit(batch)` commits the batch's LMDB part first (snapshots, boundaries), then
the frame. A hard state that only moves the commit index is queued without an fsync (it
reaches the disk with the next frame; a restart may resume with a lower commit index, never
below the applied index, which the caller raises it to). LMDB keeps the boundary, snapshot
and conf records, plus per group a void mark (`v`: WAL frames below this LSN no longer
belong to the group: written when a snapshot resets the log or the group is destroyed) and,
for hard states written through LMDB, the LSN they were written at. Replay at open applies,
per group, its LMDB records and then its WAL records at or above the void mark, in LSN order.
When the newest segment is full, the WAL is rotated: a new segment restates every group's
live entries and hard state, and the older segments are deleted.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
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
from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.errors import CorruptLogError, SnapshotOutOfDateError
from nokvpy.storage.schema import RAFT_LOG, RAFT_STATE
from nokvpy.storage.wal import Wal

_KEY = struct.Struct(">QQ")  # group id, index
_GID = struct.Struct(">Q")
_ENT = struct.Struct(">QB")  # term, type; data follows
_ENT_SIZE = _ENT.size
_HS = struct.Struct(">QQQ")  # term, vote, commit
_TRUNC = struct.Struct(">QQ")  # index, term
_SNAP = struct.Struct(">QQII")  # index, term, #voters, #learners; ids follow
_CONF = struct.Struct(">QII")  # index the conf state is valid at, #voters, #learners

_TAG_HS = b"h"
_TAG_TRUNC = b"t"
_TAG_SNAP = b"s"
_TAG_CONF = b"c"
_TAG_VOID = b"v"
_HS_LSN = struct.Struct(">QQQQ")  # term, vote, commit, lsn (WAL mode)
_LSN = struct.Struct(">Q")

# WAL frame items: kind, group id; then entries (first index, count; per entry term, type,
# data length, data) or a hard state (term, vote, commit).
_ITEM = struct.Struct(">BQ")
_ITEM_ENTRIES = 1
_ITEM_HS = 2
_EHEAD = struct.Struct(">QI")
_EENT = struct.Struct(">QBI")
_MAX_GID = (1 << 64) - 1

DEFAULT_CACHE_ENTRIES = 1024

ReadyItem = tuple[int, HardState | None, list[Entry], Snapshot | None]


def log_key(group_id: int, index: int) -> bytes:
    return _KEY.pack(group_id, index)


def _group_lo(group_id: int) -> bytes:
    return _KEY.pack(group_id, 0)


def _group_hi(group_id: int) -> bytes | None:
    return _GID.pack(group_id + 1) if group_id < _MAX_GID else None


def _encode_ids(voters: tuple[int, ...], learners: tuple[int, ...]) -> bytes:
    n = len(voters) + len(learners)
    return struct.pack(f">{n}Q", *voters, *learners) if n else b""


def encode_snapshot_meta(meta: SnapshotMetadata) -> bytes:
    cs = meta.conf_state
    head = _SNAP.pack(meta.index, meta.term, len(cs.voters), len(cs.learners))
    return head + _encode_ids(cs.voters, cs.learners)


def decode_snapshot_meta(raw: bytes) -> SnapshotMetadata:
    index, term, nv, nl = _SNAP.unpack_from(raw)
    ids = struct.unpack_from(f">{nv + nl}Q", raw, _SNAP.size)
    if len(raw) != _SNAP.size + 8 * (nv + nl):
        raise CorruptLogError(f"snapshot metadata record has {len(raw)} bytes")
    return SnapshotMetadata(index, term, ConfState(tuple(ids[:nv]), tuple(ids[nv:])))


def _encode_conf(index: int, cs: ConfState) -> bytes:
    return _CONF.pack(index, len(cs.voters), len(cs.learners)) + _encode_ids(
        cs.voters, cs.learners
    )


def _decode_conf(raw: bytes) -> tuple[int, ConfState]:
    index, nv, nl = _CONF.unpack_from(raw)
    if len(raw) != _CONF.size + 8 * (nv + nl):
        raise CorruptLogError(f"conf state record has {len(raw)} bytes")
    ids = struct.unpack_from(f">{nv + nl}Q", raw, _CONF.size)
    return index, ConfState(tuple(ids[:nv]), tuple(ids[nv:]))


def _decode_entry(index: int, raw: bytes) -> Entry:
    term, typ = _ENT.unpack_from(raw)
    return Entry(term, index, typ, raw[_ENT_SIZE:])


class _Journal:
    """A batch's WAL records: the frame's parts, the view updates to run once the frame is
    durable (or queued, when nothing in it needs an fsync), and whether it needs one."""

    __slots__ = ("parts", "callbacks", "sync")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.callbacks: list[Callable[[], object]] = []
        self.sync = False


def _journal(batch: WriteBatch) -> _Journal:
    j = batch.journal
    if j is None:
        j = batch.journal = _Journal()
    return j


def decode_wal_items(lsn: int, payload: bytes) -> list[tuple[int, int, Any]]:
    """The (group id, kind, value) items of one WAL frame; value is a list of entries or a
    HardState. Raises CorruptLogError on anything malformed."""
    out: list[tuple[int, int, Any]] = []
    off, n = 0, len(payload)
    try:
        while off < n:
            kind, gid = _ITEM.unpack_from(payload, off)
            off += _ITEM.size
            if kind == _ITEM_HS:
                out.append((gid, kind, HardState(*_HS.unpack_from(payload, off))))
                off += _HS.size
            elif kind == _ITEM_ENTRIES:
                first, count = _EHEAD.unpack_from(payload, off)
                off += _EHEAD.size
                ents: list[Entry] = []
                for i in range(count):
                    term, typ, size = _EENT.unpack_from(payload, off)
                    off += _EENT.size
                    if off + size > n:
                        raise CorruptLogError(f"WAL frame {lsn}: entry data runs past the frame")
                    ents.append(Entry(term, first + i, typ, payload[off:off + size]))
                    off += size
                if not ents:
                    raise CorruptLogError(f"WAL frame {lsn}: empty entries item")
                out.append((gid, kind, ents))
            else:
                raise CorruptLogError(f"WAL frame {lsn}: unknown item kind {kind}")
    except struct.error as exc:
        raise CorruptLogError(f"WAL frame {lsn}: truncated item: {exc}") from None
    return out


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
        self._reset()

    def _reset(self) -> None:
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

    def _load(self) -> tuple[int, int]:
        """Load the LMDB records; return (void mark, LSN of the LMDB hard state) for WAL
        replay (0 when absent)."""
        gid = self.group_id
        state_db = self._env.db(RAFT_STATE)
        log_db = self._log_db
        cache_max = self._cache_max

        def read(txn):
            get = txn.get
            hs = get(_GID.pack(gid) + _TAG_HS, db=state_db)
            trunc = get(_GID.pack(gid) + _TAG_TRUNC, db=state_db)
            snap = get(_GID.pack(gid) + _TAG_SNAP, db=state_db)
            conf = get(_GID.pack(gid) + _TAG_CONF, db=state_db)
            void = get(_GID.pack(gid) + _TAG_VOID, db=state_db)
            runs_idx: list[int] = []
            runs_term: list[int] = []
            tail: deque[tuple[int, bytes]] = deque(maxlen=cache_max)
            first = last = None
            hi = _group_hi(gid)
            with txn.cursor(db=log_db) as cur:
                if cur.set_range(_group_lo(gid)):
                    for key, value in cur:
                        if hi is not None and key >= hi:
                            break
                        if len(key) != 16 or len(value) < _ENT_SIZE:
                            raise CorruptLogError(f"group {gid}: malformed log record {key!r}")
                        index = _KEY.unpack(key)[1]
                        if last is not None and index != last + 1:
                            raise CorruptLogError(f"group {gid}: gap after index {last}")
                        if first is None:
                            first = index
                        last = index
                        term = _ENT.unpack_from(value)[0]
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
            self._reset()
            if void is not None:
                void_lsn = _LSN.unpack(void)[0]
            if hs is not None and len(hs) == _HS_LSN.size:
                hs_lsn = _HS_LSN.unpack(hs)[3]
            if hs is not None:
                self._hs = HardState(*(_HS.unpack(hs) if len(hs) == _HS.size
                                       else _HS_LSN.unpack(hs)[:3]))
            if trunc is not None:
                self._trunc_index, self._trunc_term = _TRUNC.unpack(trunc)
            if snap is not None:
                self._snap = decode_snapshot_meta(snap)
            if conf is not None:
                self._conf = _decode_conf(conf)
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
            self._cache = [_decode_entry(i, v) for i, v in tail]
        return void_lsn, hs_lsn

    def _replay(self, items: list[tuple[int, int, Any]], void_lsn: int, hs_lsn: int) -> None:
        """Apply this group's WAL items (lsn, kind, value), oldest first, on top of the LMDB
        records: entries replace any conflicting suffix, entries at or below the boundary are
        dropped, a hard state replaces the one before it."""
        for lsn, kind, value in items:
            if lsn < void_lsn:
                continue
            if kind == _ITEM_HS:
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
            self._on_append(entries)

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
        end_key = _KEY.pack(gid, hi)

        def read(txn):
            out: list[Entry] = []
            size = 0
            with txn.cursor(db=db) as cur:
                if not cur.set_key(_KEY.pack(gid, lo)):
                    raise CorruptLogError(f"group {gid}: entry {lo} missing from disk")
                for key, value in cur:
                    if key >= end_key:
                        break
                    if max_size is not None:
                        size += len(value) - _ENT_SIZE
                        if out and size > max_size:
                            break
                    out.append(_decode_entry(_KEY.unpack(key)[1], value))
            return out

        return self._env.read(read)

    # ------------------------------------------------------------ view updates (on commit)

    def _on_append(self, entries: list[Entry]) -> None:
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

    def _on_hard_state(self, hs: HardState) -> None:
        self._hs = HardState(hs.term, hs.vote, hs.commit)

    def _on_compact(self, index: int, term: int) -> None:
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

    def _on_snapshot(self, meta: SnapshotMetadata) -> None:
        self._trunc_index, self._trunc_term = meta.index, meta.term
        self._snap = meta
        self._conf = None
        self._last = meta.index
        self._run_idx, self._run_term, self._cache = [], [], []

    def _on_snapshot_meta(self, meta: SnapshotMetadata) -> None:
        if meta.index > self._snap.index:
            self._snap = meta

    def _on_conf_state(self, index: int, cs: ConfState) -> None:
        self._conf = (index, cs)


def _limit_size(ents: list[Entry], max_size: int) -> list[Entry]:
    size = 0
    for i, e in enumerate(ents):
        size += len(e.data)
        if size > max_size and i > 0:
            return ents[:i]
    return ents


class RaftLogStore:
    """The raft logs of every group hosted in one environment."""

    def __init__(self, env: Env, *, cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 wal: Wal | None = None, wal_frames: Iterable[tuple[int, bytes]] = ()):
        """`wal` (opened by `Wal.open`, with the frames it returned as `wal_frames`) puts
        entries and hard states in the write-ahead log; every live entry is then cached."""
        self._env = env
        self._state_db = env.db(RAFT_STATE)
        self._log_db = env.db(RAFT_LOG)
        self._wal = wal
        self._cache_entries = cache_entries if wal is None else 1 << 62
        self._groups: dict[int, GroupStorage] = {}
        # WAL items per group not loaded yet: gid -> [(lsn, kind, value)], oldest first.
        self._pending: dict[int, list[tuple[int, int, Any]]] = {}
        # Void marks and LMDB hard states staged but not committed: rotation waits for them
        # (a restatement taken before they commit would outrank them).
        self._resets_pending = 0
        # Per group: (batch, hard state) staged by stage_hard_state / stage_destroy_group and
        # not committed yet (a snapshot staged after them in the same batch keeps it).
        self._staged_hs: dict[int, tuple[WriteBatch, HardState]] = {}
        for lsn, payload in wal_frames:
            for gid, kind, value in decode_wal_items(lsn, payload):
                self._pending.setdefault(gid, []).append((lsn, kind, value))
        if wal is not None:
            # Void marks and LMDB hard states are stamped with the next LSN when staged; a
            # crash may lose frames queued before that (never fsynced), so new frames must
            # not reuse their LSNs.
            wal.ensure_next_lsn(self._max_stamp())

    def _max_stamp(self) -> int:
        """The highest LSN stamped on a void mark or an LMDB hard state."""

        def read(txn) -> int:
            top = 0
            with txn.cursor(db=self._state_db) as cur:
                for key, value in cur:
                    tag = key[8:]
                    if tag == _TAG_VOID and len(value) == _LSN.size:
                        top = max(top, _LSN.unpack(value)[0])
                    elif tag == _TAG_HS and len(value) == _HS_LSN.size:
                        top = max(top, _HS_LSN.unpack(value)[3])
            return top

        return self._env.read(read)

    @classmethod
    def open_wal(cls, env: Env, wal_dir: str, **wal_options: Any) -> RaftLogStore:
        """A WAL-mode store: opens (and replays) the WAL in `wal_dir`."""
        wal, frames = Wal.open(wal_dir, **wal_options)
        try:
            return cls(env, wal=wal, wal_frames=frames)
        except BaseException:
            wal.close()
            raise

    @property
    def wal(self) -> Wal | None:
        return self._wal

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()

    @property
    def env(self) -> Env:
        return self._env

    def group(self, group_id: int) -> GroupStorage:
        """The group's Storage view, loaded from disk on first use (empty if new)."""
        g = self._groups.get(group_id)
        if g is None:
            if not 0 < group_id <= _MAX_GID:
                raise ValueError(f"group id must be a positive u64, got {group_id}")
            g = GroupStorage(self._env, group_id, self._cache_entries)
            void_lsn, hs_lsn = g._load()
            items = self._pending.pop(group_id, None)
            if items:
                g._replay(items, void_lsn, hs_lsn)
            self._groups[group_id] = g
        return g

    def list_groups(self) -> list[int]:
        """Ids of every group with anything persisted, ascending."""

        def read(txn):
            found: set[int] = set()
            for db in (self._state_db, self._log_db):
                with txn.cursor(db=db) as cur:
                    ok = cur.first()
                    while ok:
                        gid = _GID.unpack_from(cur.key())[0]
                        found.add(gid)
                        hi = _group_hi(gid)
                        ok = hi is not None and cur.set_range(hi)
            return found

        found = self._env.read(read)
        if self._wal is None:
            return sorted(found)
        # A destroyed group keeps its void mark: load each candidate and keep the non-empty.
        found.update(self._pending)
        found.update(self._groups)
        return sorted(gid for gid in found if not self.group(gid).is_empty())

    # ------------------------------------------------------------ staging

    def stage_ready(
        self,
        batch: WriteBatch,
        group_id: int,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Add one Ready's persistence to `batch`: snapshot (if any, first), then entries
        (overwriting any conflicting suffix), then hard state. The view changes on commit."""
        g = self.group(group_id)
        trunc, last = g._trunc_index, g._last
        if snapshot is not None and snapshot.metadata.index:
            self.stage_apply_snapshot(batch, group_id, snapshot.metadata)
            trunc = last = snapshot.metadata.index
        if entries:
            self._stage_append(batch, g, entries, trunc, last)
        if hard_state is not None:
            if self._wal is None:
                self.stage_hard_state(batch, group_id, hard_state)
            else:
                hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)
                j = _journal(batch)
                j.parts.append(_ITEM.pack(_ITEM_HS, group_id)
                               + _HS.pack(hs.term, hs.vote, hs.commit))
                if (hs.term, hs.vote) != (g._hs.term, g._hs.vote):
                    j.sync = True
                j.callbacks.append(partial(g._on_hard_state, hs))

    def _stage_append(
        self, batch: WriteBatch, g: GroupStorage, entries: list[Entry], trunc: int, last: int
    ) -> None:
        gid = g.group_id
        first = entries[0].index
        new_last = entries[-1].index
        if new_last - first != len(entries) - 1:
            raise ValueError(f"group {gid}: entries {first}..{new_last} are not contiguous")
        if first > last + 1:
            raise ValueError(f"group {gid}: missing log entries {last + 1}..{first - 1}")
        if new_last <= trunc:
            return  # all already compacted (etcd ignores them too)
        if first <= trunc:
            entries = entries[trunc + 1 - first :]
            first = trunc + 1
        if self._wal is not None:
            j = _journal(batch)
            parts = j.parts
            parts.append(_ITEM.pack(_ITEM_ENTRIES, gid) + _EHEAD.pack(first, len(entries)))
            pack = _EENT.pack
            for e in entries:
                parts.append(pack(e.term, e.type, len(e.data)))
                parts.append(e.data)
            j.sync = True
            j.callbacks.append(partial(g._on_append, entries))
            return
        pack_key, pack_ent = _KEY.pack, _ENT.pack
        batch.put_many(
            RAFT_LOG, [(pack_key(gid, e.index), pack_ent(e.term, e.type) + e.data) for e in entries]
        )
        if new_last < last:
            batch.delete_range(RAFT_LOG, _KEY.pack(gid, new_last + 1), _group_hi(gid))
        batch.on_commit(partial(g._on_append, entries))

    def stage_hard_state(self, batch: WriteBatch, group_id: int, hs: HardState) -> None:
        g = self.group(group_id)
        if self._wal is not None:
            # In LMDB, stamped with the next LSN: WAL hard states before it are older.
            batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_HS,
                      _HS_LSN.pack(hs.term, hs.vote, hs.commit, self._wal.next_lsn))
            self._stage_reset(batch, group_id, HardState(hs.term, hs.vote, hs.commit))
        else:
            batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_HS,
                      _HS.pack(hs.term, hs.vote, hs.commit))
        batch.on_commit(partial(g._on_hard_state, HardState(hs.term, hs.vote, hs.commit)))

    def stage_compact(self, batch: WriteBatch, group_id: int, index: int) -> None:
        """Drop entries <= index, keeping (index, term(index)) as the boundary."""
        g = self.group(group_id)
        if index <= g._trunc_index:
            raise CompactedError(
                f"group {group_id}: compact({index}) at or below first index - 1 "
                f"({g._trunc_index})"
            )
        if index > g._last:
            raise UnavailableError(
                f"group {group_id}: compact({index}) beyond last index {g._last}"
            )
        term = g.term(index)
        batch.delete_range(RAFT_LOG, _group_lo(group_id), _KEY.pack(group_id, index + 1))
        batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_TRUNC, _TRUNC.pack(index, term))
        batch.on_commit(partial(g._on_compact, index, term))

    def stage_apply_snapshot(
        self, batch: WriteBatch, group_id: int, meta: SnapshotMetadata
    ) -> None:
        """Restore the group from a snapshot: drop its whole log; first_index = index + 1."""
        g = self.group(group_id)
        if meta.index <= g._snap.index:
            raise SnapshotOutOfDateError(
                f"group {group_id}: snapshot at {meta.index} is not newer than {g._snap.index}"
            )
        prefix = _GID.pack(group_id)
        batch.delete_range(RAFT_LOG, _group_lo(group_id), _group_hi(group_id))
        batch.put(RAFT_STATE, prefix + _TAG_TRUNC, _TRUNC.pack(meta.index, meta.term))
        batch.put(RAFT_STATE, prefix + _TAG_SNAP, encode_snapshot_meta(meta))
        batch.delete(RAFT_STATE, prefix + _TAG_CONF)
        if self._wal is not None:
            # The group's earlier WAL frames no longer belong to its log; its hard state
            # moves to LMDB (a later WAL hard state replaces it).
            lsn = self._wal.next_lsn
            staged = self._staged_hs.get(group_id)
            hs = staged[1] if staged is not None and staged[0] is batch else g._hs
            batch.put(RAFT_STATE, prefix + _TAG_VOID, _LSN.pack(lsn))
            batch.put(RAFT_STATE, prefix + _TAG_HS, _HS_LSN.pack(hs.term, hs.vote, hs.commit, lsn))
            self._stage_reset(batch)
        batch.on_commit(partial(g._on_snapshot, meta))

    def stage_create_snapshot(
        self, batch: WriteBatch, group_id: int, index: int, conf_state: ConfState
    ) -> SnapshotMetadata:
        """Record snapshot metadata at an applied `index` without touching the log (etcd's
        CreateSnapshot); snapshot() answers it from then on."""
        g = self.group(group_id)
        if index <= g._snap.index:
            raise SnapshotOutOfDateError(
                f"group {group_id}: snapshot at {index} is not newer than {g._snap.index}"
            )
        meta = SnapshotMetadata(index, g.term(index), conf_state)
        batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_SNAP, encode_snapshot_meta(meta))
        batch.on_commit(partial(g._on_snapshot_meta, meta))
        return meta

    def stage_conf_state(
        self, batch: WriteBatch, group_id: int, index: int, conf_state: ConfState
    ) -> None:
        """Persist the conf state in force at applied `index`; initial_state() prefers it over
        the snapshot's conf state when index >= snapshot index."""
        g = self.group(group_id)
        batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_CONF, _encode_conf(index, conf_state))
        batch.on_commit(partial(g._on_conf_state, index, conf_state))

    def stage_destroy_group(self, batch: WriteBatch, group_id: int) -> None:
        """Delete everything persisted for the group; its view becomes empty on commit."""
        g = self.group(group_id)
        batch.delete_range(RAFT_LOG, _group_lo(group_id), _group_hi(group_id))
        batch.delete_range(RAFT_STATE, _GID.pack(group_id), _group_hi(group_id))
        if self._wal is not None:
            batch.put(RAFT_STATE, _GID.pack(group_id) + _TAG_VOID, _LSN.pack(self._wal.next_lsn))
            self._stage_reset(batch, group_id, HardState())
        batch.on_commit(g._reset)

    def _stage_reset(self, batch: WriteBatch, group_id: int = 0,
                     hs: HardState | None = None) -> None:
        """Count a staged void mark / LMDB hard state until it commits (rotation waits), and
        remember a hard state it sets for a snapshot staged after it in the same batch."""
        self._resets_pending += 1
        if hs is not None:
            self._staged_hs[group_id] = (batch, hs)

        def done() -> None:  # committed, or failed: either way no longer pending
            self._resets_pending -= 1
            staged = self._staged_hs.get(group_id)
            if staged is not None and staged[0] is batch:
                del self._staged_hs[group_id]

        batch.on_commit(done)
        batch.on_abort(done)

    # ------------------------------------------------------------ committing helpers

    async def write_ready(
        self, items: Iterable[ReadyItem], batch: WriteBatch | None = None
    ) -> None:
        """Persist the Readys of many groups, items of (group_id, hard_state | None, entries,
        snapshot | None), in one fsynced transaction. If `batch` is given (holding e.g. applied
        KV data and localmeta updates of the same loop turn) the Readys are added to it and
        the whole batch commits atomically."""
        if batch is None:
            batch = WriteBatch()
        for group_id, hs, entries, snapshot in items:
            self.stage_ready(batch, group_id, hs, entries, snapshot)
        await self.commit(batch)

    async def commit(self, batch: WriteBatch) -> None:
        """Commit a batch staged here: its LMDB part (one fsynced transaction, if it has one),
        then its WAL records (one frame; fsynced unless all it holds is a commit index)."""
        j = batch.journal
        if j is None:
            await self._env.commit(batch)
            return
        batch.journal = None
        if batch:
            await self._env.commit(batch)
        wal = self._wal
        assert wal is not None
        lsn = wal.queue(b"".join(j.parts))
        if j.sync:
            await wal.sync_to(lsn)
        for cb in j.callbacks:
            cb()
        if wal.wants_rotation() and not self._resets_pending:
            await self.rotate_wal()

    async def rotate_wal(self) -> None:
        """Start a new WAL segment restating every group's live entries and hard state, and
        delete the older ones."""
        wal = self._wal
        assert wal is not None
        for gid in list(self._pending):
            self.group(gid)
        parts: list[bytes] = []
        for gid, g in self._groups.items():
            if g.is_empty():
                continue
            hs = g._hs
            parts.append(_ITEM.pack(_ITEM_HS, gid) + _HS.pack(hs.term, hs.vote, hs.commit))
            ents = g._cache
            if ents:
                parts.append(_ITEM.pack(_ITEM_ENTRIES, gid) + _EHEAD.pack(ents[0].index, len(ents)))
                for e in ents:
                    parts.append(_EENT.pack(e.term, e.type, len(e.data)))
                    parts.append(e.data)
        await wal.rotate([b"".join(parts)] if parts else [])

    async def compact(self, group_id: int, index: int) -> None:
        batch = WriteBatch()
        self.stage_compact(batch, group_id, index)
        await self.commit(batch)

    async def apply_snapshot(self, group_id: int, meta: SnapshotMetadata) -> None:
        batch = WriteBatch()
        self.stage_apply_snapshot(batch, group_id, meta)
        await self.commit(batch)

    async def create_snapshot(
        self, group_id: int, index: int, conf_state: ConfState
    ) -> SnapshotMetadata:
        batch = WriteBatch()
        meta = self.stage_create_snapshot(batch, group_id, index, conf_state)
        await self._env.commit(batch)
        return meta

    async def destroy_group(self, group_id: int) -> None:
        batch = WriteBatch()
        self.stage_destroy_group(batch, group_id)
        await self.commit(batch)
