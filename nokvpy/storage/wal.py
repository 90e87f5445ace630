"""An append-only, checksummed, fsynced log of opaque frames (the raft log's write-ahead log).

Owns: the segment files of one directory, frame encoding and validation, the log sequence
numbers (LSNs), group commit (one write and one fdatasync for everything queued), torn-tail
repair at open, and segment rotation. Never knows what a frame means (`raftlog` encodes
entries and hard states into frames) and never retries a failed fsync.

Layout: `<dir>/<first lsn as 16 hex digits>.wal`. A frame is a 20-byte header (payload length,
CRC-32 of the LSN and payload, LSN, the 4-byte MAGIC) followed by the payload. LSNs strictly increase across
frames and segments (the sequence may skip numbers).

Durability: `append(payloads)` returns once a write() and fdatasync() of every frame queued so
far has succeeded. `append(payloads, sync=False)` only queues: the frames reach the file with
the next synced append (or `flush()`), in order. A failed write or fsync marks the log failed
and every later append raises `StorageFailedError` (the page cache may have dropped the data).

Open: the frames of every segment are read in order. In the newest segment, a short frame or
a checksum mismatch with nothing valid after it is a torn write from a crash: the file is cut
there (counted in `stats.torn_bytes`). Anything else that does not decode - a bad frame in an
older segment, a bad frame followed by a valid one, LSNs that do not increase - raises
`CorruptLogError` and nothing is changed on disk.

Rotation: `rotate(payloads)` starts a new segment holding `payloads` (the caller's restatement
of everything still live), makes it durable, then deletes the older segments. A crash at any
point leaves either the old segments, or the old ones plus the new one (replaying both gives
the same state, the restatement coming last).

Syncing: in a worker thread by default. With `inline_stall` > 0 (stores use 20 ms) the write
and fdatasync run on the event loop, which saves a thread round trip per frame (about as
long as the fdatasync itself here); an fdatasync slower than `inline_stall` moves the next
ones to the worker thread for STALL_BACKOFF seconds, so a stalling disk freezes the process
once, not continuously (counted in `stats.stalls`).

Synced mark: after every successful fdatasync the WAL records, in the file `SYNCED` of its
directory, which segment it synced and how many bytes of it (a 20-byte record with its own
CRC, written with pwrite and not itself fsynced: it is written only after the data it names
is durable, so it can lag behind the data after a power loss but never run ahead of it). At
open, a frame that fails its checksum inside the synced part of the newest segment, or a
newest segment shorter than its synced part, is damage to durable data, not a torn write: open
raises `CorruptLogError` instead of cutting (cutting would silently drop a frame this log had
acknowledged, for example a raft vote or an entry counted toward a commit).

Losing unsynced writes (fault injection): with `lose_unsynced` (or `NOKV_LOSE_UNSYNCED=1` in
the environment), open first throws away everything past the synced mark, as a power loss
would: segments newer than the mark's are deleted and the mark's segment is cut to its synced
length. A process killed and restarted this way loses exactly what it never fsynced.

Failpoints: `storage.wal_write` (before write(); `return(ENOSPC)` or `return(EIO)` fails it
with that errno), `storage.wal_before_sync` (after write(), before fdatasync; `raise` or
`return(EIO)` simulates a failed fsync, `exit` a crash with written, unsynced bytes) and
`storage.wal_after_sync` (durable, not yet acknowledged).

Test-only switches, read at import, that break the log on purpose so that fault runs can show
they catch it: `NOKV_UNSAFE_WAL_SKIP_CHECKSUM=1` (frames are read without checking their
CRC) and `NOKV_UNSAFE_WAL_ACK_BEFORE_SYNC=1` (an append returns after write(), with no
fdatasync).
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from nokvpy import failpoints
from nokvpy.storage.diskfaults import raise_injected
from nokvpy.storage.errors import CorruptLogError, StorageFailedError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IIQ4s")  # payload length, crc32(lsn + payload), lsn, magic
HEADER_SIZE = _HEADER.size
MAGIC = b"\x9eWAL"  # ends every header: after a bad frame, a later one is found by search
_MAGIC_AT = HEADER_SIZE - len(MAGIC)
_LSN = struct.Struct(">Q")
MAX_FRAME = 1 << 30
SUFFIX = ".wal"
DEFAULT_SEGMENT_BYTES = 64 << 20
STALL_BACKOFF = 5.0  # seconds of threaded syncs after a slow inline one
MARK_FILE = "SYNCED"
_MARK = struct.Struct(">QQ")  # first lsn of the synced segment, synced bytes; then a crc32
MARK_SIZE = _MARK.size + 4
LOSE_UNSYNCED_ENV = "NOKV_LOSE_UNSYNCED"
# Test-only: deliberately unsafe builds (see the module docstring).
UNSAFE_SKIP_CHECKSUM = os.environ.get("NOKV_UNSAFE_WAL_SKIP_CHECKSUM") == "1"
UNSAFE_ACK_BEFORE_SYNC = os.environ.get("NOKV_UNSAFE_WAL_ACK_BEFORE_SYNC") == "1"


@dataclass(slots=True)
class WalStats:
    appends: int = 0  # synced appends that wrote something (= fdatasyncs)
    frames: int = 0  # frames queued (a restatement counts as one)
    bytes: int = 0
    sync_seconds: float = 0.0
    rotations: int = 0  # segments started by rotate()
    torn_bytes: int = 0  # cut from the newest segment at open
    unsynced_bytes_lost: int = 0  # thrown away at open by lose_unsynced
    stalls: int = 0  # inline fdatasyncs slower than inline_stall (then threaded for a while)


def _segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016x}{SUFFIX}"


def _crc(lsn: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_LSN.pack(lsn)))


def encode_frame(lsn: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"WAL frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(payload), _crc(lsn, payload), lsn, MAGIC) + payload


def _scan(data: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (offset, lsn, payload) per frame; a payload of None marks the first frame that
    does not decode (short, oversized or failing its checksum), and scanning stops there."""
    off, n = 0, len(data)
    view = memoryview(data)
    while off < n:
        if n - off < HEADER_SIZE:
            yield off, 0, None
            return
        length, crc, lsn, magic = _HEADER.unpack_from(data, off)
        end = off + HEADER_SIZE + length
        if magic != MAGIC or length > MAX_FRAME or end > n:
            yield off, lsn, None
            return
        payload = view[off + HEADER_SIZE:end]
        if _crc(lsn, payload) != crc and not UNSAFE_SKIP_CHECKSUM:
            yield off, lsn, None
            return
        yield off, lsn, bytes(payload)
        off = end


def _valid_frame_at(data: bytes, off: int) -> bool:
    if len(data) - off < HEADER_SIZE:
        return False
    length, crc, lsn, magic = _HEADER.unpack_from(data, off)
    end = off + HEADER_SIZE + length
    return (magic == MAGIC and length <= MAX_FRAME and end <= len(data)
            and _crc(lsn, data[off + HEADER_SIZE:end]) == crc)


class Wal:
    """One directory of WAL segments, opened for appending."""

    def __init__(self, path: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 inline_stall: float = 0.0):
        self.path = path
        self.segment_bytes = segment_bytes
        # > 0: sync on the event loop while fdatasyncs take at most this long (see sync_to).
        self.inline_stall = inline_stall
        self._threaded_until = 0.0
        self.stats = WalStats()
        self._fd = -1
        self._segments: list[str] = []  # file names, oldest first
        self._size = 0  # bytes in the newest segment
        self._rotate_at = segment_bytes
        self._next_lsn = 1
        self._durable_lsn = 0
        self._buf: list[bytes] = []  # encoded frames queued, not yet written
        self._buf_last = 0  # lsn of the newest queued frame
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._failed: BaseException | None = None
        self._closed = False
        self._mark_fd = -1

    # ------------------------------------------------------------------ open / replay

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             inline_stall: float = 0.0, lose_unsynced: bool | None = None,
             ) -> tuple[Wal, list[tuple[int, bytes]]]:
        """Open (creating if needed) the WAL in `path`; return it and every durable frame as
        (lsn, payload), oldest first. Repairs a torn tail; raises CorruptLogError otherwise.
        `lose_unsynced` (default: `NOKV_LOSE_UNSYNCED=1`) first drops every byte written after
        the last fdatasync, as a power loss would."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        for on, switch in ((UNSAFE_SKIP_CHECKSUM, "NOKV_UNSAFE_WAL_SKIP_CHECKSUM"),
                           (UNSAFE_ACK_BEFORE_SYNC, "NOKV_UNSAFE_WAL_ACK_BEFORE_SYNC")):
            if on:
                log.warning("WAL %s: %s=1: TEST-ONLY UNSAFE MODE, the log is deliberately "
                            "not durable or not checked", path, switch)
        wal = cls(path, segment_bytes=segment_bytes, inline_stall=inline_stall)
        names = sorted(n for n in os.listdir(path) if n.endswith(SUFFIX))
        mark = _read_mark(path)
        if lose_unsynced is None:
            lose_unsynced = os.environ.get(LOSE_UNSYNCED_ENV) == "1"
        if lose_unsynced and mark is not None:
            names = wal._lose_unsynced(names, mark)
        frames: list[tuple[int, bytes]] = []
        last_lsn = 0
        for i, name in enumerate(names):
            newest = i == len(names) - 1
            full = os.path.join(path, name)
            with open(full, "rb") as f:
                data = f.read()
            synced = mark[1] if mark is not None and _segment_name(mark[0]) == name else 0
            if newest and len(data) < synced:
                raise CorruptLogError(
                    f"WAL segment {full} is {len(data)} bytes, shorter than the {synced} bytes "
                    f"synced before the last shutdown or crash: durable data was lost")
            for off, lsn, payload in _scan(data):
                if payload is None:
                    if not newest:
                        raise CorruptLogError(f"WAL segment {full}: bad frame at byte {off}")
                    if off < synced:
                        raise CorruptLogError(
                            f"WAL segment {full}: the frame at byte {off} is damaged inside the "
                            f"{synced} bytes synced before the last shutdown or crash (not a "
                            f"torn write): durable data was damaged")
                    if _valid_frame_follows(data, off):
                        raise CorruptLogError(
                            f"WAL segment {full}: bad frame at byte {off} followed by valid data")
                    torn = len(data) - off
                    log.warning("WAL %s: cutting a torn tail of %d bytes at byte %d",
                                full, torn, off)
                    wal.stats.torn_bytes += torn
                    with open(full, "r+b") as f:
                        f.truncate(off)
                        f.flush()
                        os.fsync(f.fileno())
                    data = data[:off]
                    break
                if lsn <= last_lsn:
                    raise CorruptLogError(
                        f"WAL segment {full}: LSN {lsn} at byte {off} does not follow {last_lsn}")
                last_lsn = lsn
                frames.append((lsn, payload))
            if newest:
                wal._size = len(data)
        wal._segments = names
        # An empty newest segment (a rotation that restated nothing) still names an LSN.
        floor = int(names[-1][: -len(SUFFIX)], 16) if names else 1
        wal._next_lsn = max(last_lsn + 1, floor)
        wal._durable_lsn = last_lsn
        wal._buf_last = last_lsn
        if not names:
            wal._segments = [_segment_name(1)]
            wal._size = 0
        wal._fd = os.open(os.path.join(path, wal._segments[-1]),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        wal._mark_fd = os.open(os.path.join(path, MARK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        # What was just replayed may still be only in the page cache (a crashed process's
        # last write): make it durable before anything acts on it, and mark it synced.
        os.fdatasync(wal._fd)
        wal._write_mark(wal._segments[-1], wal._size)
        if not names:
            _fsync_dir(path)
        return wal, frames

    def _lose_unsynced(self, names: list[str], mark: tuple[int, int]) -> list[str]:
        """Throw away what was written after the last fdatasync (see `open`)."""
        synced_name, synced = _segment_name(mark[0]), mark[1]
        if synced_name not in names:
            return names
        kept = []
        for name in names:
            full = os.path.join(self.path, name)
            if name > synced_name:
                self.stats.unsynced_bytes_lost += os.path.getsize(full)
                os.unlink(full)
                continue
            if name == synced_name and os.path.getsize(full) > synced:
                self.stats.unsynced_bytes_lost += os.path.getsize(full) - synced
                with open(full, "r+b") as f:
                    f.truncate(synced)
            kept.append(name)
        if self.stats.unsynced_bytes_lost:
            log.warning("WAL %s: %s=1: dropped %d unsynced bytes (simulated power loss)",
                        self.path, LOSE_UNSYNCED_ENV, self.stats.unsynced_bytes_lost)
        return kept

    # ------------------------------------------------------------------ appends

    @property
    def next_lsn(self) -> int:
        """The LSN the next queued frame will get: every frame queued so far has a lower one."""
        return self._next_lsn

    def ensure_next_lsn(self, lsn: int) -> None:
        """Make the next frame's LSN at least `lsn` (a caller stamped records with LSNs that
        frames lost in a crash had been given)."""
        if lsn > self._next_lsn:
            self._next_lsn = lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def size(self) -> int:
        """Bytes in the newest segment (written, plus queued)."""
        return self._size + sum(len(b) for b in self._buf)

    def queue(self, payload: bytes) -> int:
        """Queue one frame (not yet written); return its LSN."""
        self._check()
        lsn = self._next_lsn
        self._next_lsn = lsn + 1
        self._buf.append(encode_frame(lsn, payload))
        self._buf_last = lsn
        self.stats.frames += 1
        return lsn

    async def append(self, payloads: list[bytes], sync: bool = True) -> int:
        """Queue one frame per payload; with sync, return once they (and everything queued
        before them) are durable. Returns the LSN of the last frame (or of the last one queued
        before, when payloads is empty). Not cancellable once the write has started."""
        upto = self._buf_last
        for p in payloads:
            upto = self.queue(p)
        if sync:
            await self.sync_to(upto)
        return upto

    async def flush(self) -> None:
        """Make every queued frame durable."""
        await self.sync_to(self._buf_last)

    async def sync_to(self, lsn: int) -> None:
        self._check()
        if lsn <= self._durable_lsn:
            return
        async with self._lock:
            if lsn <= self._durable_lsn:
                return
            self._check()
            data, upto = self._take()
            if self.inline_stall and time.monotonic() >= self._threaded_until:
                # Write and fdatasync on the event loop: a thread round trip costs about as
                # much as the fdatasync itself. A stalled disk then freezes the process, so
                # one slow sync moves the next ones to a worker thread for a while.
                t0 = time.monotonic()
                self._write(data, upto)
                if time.monotonic() - t0 > self.inline_stall:
                    self._threaded_until = time.monotonic() + STALL_BACKOFF
                    self.stats.stalls += 1
                    log.warning("WAL %s: an fdatasync took %.0f ms; syncing in a worker "
                                "thread for %.0f s", self.path,
                                (time.monotonic() - t0) * 1000, STALL_BACKOFF)
                return
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._write, data, upto, limiter=self._limiter)

    def _take(self) -> tuple[bytes, int]:
        data = b"".join(self._buf)
        self._buf.clear()
        return data, self._buf_last

    def _write(self, data: bytes, upto: int) -> None:
        """Writer thread: write and fdatasync; mark the log failed on any error."""
        try:
            t0 = time.perf_counter()
            raise_injected("storage.wal_write")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            raise_injected("storage.wal_before_sync")
            if not UNSAFE_ACK_BEFORE_SYNC:
                os.fdatasync(self._fd)
                self._write_mark(self._segments[-1], self._size + len(data))
            self.stats.sync_seconds += time.perf_counter() - t0
        except BaseException as exc:
            self._failed = exc
            log.critical("WAL %s: write or fsync failed (%r); the log now refuses appends",
                         self.path, exc)
            raise StorageFailedError(f"WAL {self.path}: write/fsync failed: {exc!r}") from exc
        self._size += len(data)
        self._durable_lsn = upto
        self.stats.appends += 1
        self.stats.bytes += len(data)
        failpoints.check("storage.wal_after_sync")

    def _check(self) -> None:
        if self._failed is not None:
            raise StorageFailedError(
                f"WAL {self.path} refuses appends after a failed write: {self._failed!r}"
            ) from self._failed
        if self._closed:
            raise StorageFailedError(f"WAL {self.path} is closed")

    # ------------------------------------------------------------------ rotation

    def wants_rotation(self) -> bool:
        """Is the newest segment full? (At least `segment_bytes`, and at least twice what the
        last rotation restated, so restating stays a bounded share of what is written.)"""
        return self._size >= self._rotate_at

    async def rotate(self, payloads: list[bytes]) -> None:
        """Start a new segment with `payloads` (a restatement of all live state, which must
        account for every frame queued so far) and delete the older segments."""
        self._check()
        async with self._lock:
            self._check()
            pending, upto = self._take()
            lsns = [self.queue(p) for p in payloads]
            data, last = self._take()
            first = lsns[0] if lsns else self._next_lsn
            if not lsns:
                self._next_lsn += 1  # the new segment's name must exceed every LSN so far
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._rotate, pending, upto, first, data,
                                              last if lsns else upto, limiter=self._limiter)

    def _rotate(self, pending: bytes, upto: int, first: int, data: bytes, last: int) -> None:
        if pending:
            self._write(pending, upto)
        name = _segment_name(first)
        full = os.path.join(self.path, name)
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
            _fsync_dir(self.path)
            self._write_mark(name, len(data))
        except BaseException as exc:
            self._failed = exc
            raise StorageFailedError(f"WAL {self.path}: rotation failed: {exc!r}") from exc
        old_fd, old = self._fd, self._segments
        self._fd, self._segments, self._size = fd, [name], len(data)
        self._rotate_at = max(self.segment_bytes, 2 * len(data))
        self._durable_lsn = max(self._durable_lsn, last)
        os.close(old_fd)
        for n in old:
            if n != name:
                try:
                    os.unlink(os.path.join(self.path, n))
                except FileNotFoundError:
                    pass
        _fsync_dir(self.path)
        self.stats.rotations += 1

    def _write_mark(self, segment: str, synced: int) -> None:
        """Record that `synced` bytes of `segment` are durable (after their fdatasync)."""
        first = int(segment[: -len(SUFFIX)], 16)
        body = _MARK.pack(first, synced)
        os.pwrite(self._mark_fd, body + zlib.crc32(body).to_bytes(4, "big"), 0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._mark_fd >= 0:
                os.close(self._mark_fd)
                self._mark_fd = -1


def _read_mark(path: str) -> tuple[int, int] | None:
    """The synced mark (first lsn of the segment, synced bytes), or None if absent or bad."""
    try:
        with open(os.path.join(path, MARK_FILE), "rb") as f:
            raw = f.read(MARK_SIZE)
    except FileNotFoundError:
        return None
    body = raw[: _MARK.size]
    if len(raw) != MARK_SIZE or zlib.crc32(body) != int.from_bytes(raw[_MARK.size:], "big"):
        return None
    first, synced = _MARK.unpack(body)
    return first, synced


def _valid_frame_follows(data: bytes, off: int) -> bool:
    """Is there a valid frame anywhere after the bad one at `off`? Then it is damage, not a
    torn write (a crash can only cut the last write short). Every header ends with MAGIC,
    so candidates are found by search whatever field of the bad frame is damaged."""
    pos = data.find(MAGIC, off + _MAGIC_AT + 1)
    while pos != -1:
        start = pos - _MAGIC_AT
        if start > off and _valid_frame_at(data, start):
            return True
        pos = data.find(MAGIC, pos + 1)
    return False


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
