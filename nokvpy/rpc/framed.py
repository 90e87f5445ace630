"""A framed, record-level connection over any trio byte stream.

Owns: turning a `trio.abc.Stream` into decoded records (length-prefixed frames through the
wire codec) and the write side: callers `enqueue` encoded frames without blocking; on a TCP
socket with nothing queued and the writer idle, `enqueue` writes the frame itself (one task
wake-up less per message); otherwise one writer task flushes everything queued as ONE
`send_all` (write batching). Never interprets
records (that is the server/client) and never opens streams (that is the network).
`sole_error` picks the one real error out of a connection nursery's exception group.

Every frame carries CRC-32 checksums (`nokvpy.wire.framing`); a damaged frame raises
`FrameChecksumError` from `receive_batch` and the owner closes the connection.
TEST-ONLY: `NOKV_UNSAFE_SKIP_FRAME_CHECKSUM=1` in the environment (read once, when this
module is imported) makes every receiver of the process accept frames whose checksums do not
match, as a build without frame checksums would. It exists so that jepsen-lite can show
that its `corrupt` nemesis catches such a build; never set it anywhere else. A process with
it set logs a warning when its first connection is made.
"""

from __future__ import annotations

import logging
import os
from collections import deque

import trio

from nokvpy.wire import (
    DEFAULT_LIMITS,
    DecodeError,
    DecodeLimits,
    FrameDecoder,
    decode,
    encode,
    frame,
)

RECEIVE_SIZE = 64 * 1024
DEFAULT_HIGH_WATER = 4 * 1024 * 1024

UNSAFE_SKIP_FRAME_CHECKSUM = os.environ.get("NOKV_UNSAFE_SKIP_FRAME_CHECKSUM") == "1"
"""Test-only (module docstring): receivers ignore frame checksum mismatches."""
_warned_unsafe = False

logger = logging.getLogger("nokvpy.rpc")


class ConnectionClosedError(Exception):
    """The peer closed the stream (EOF) or the stream broke."""


class UndecodableFrame:
    """A well-framed record that failed to decode, handed to a lenient reader instead of
    raising (the frame boundary is intact, so the stream can go on)."""

    __slots__ = ("data", "error")

    def __init__(self, data: bytes, error: DecodeError):
        self.data = data
        self.error = error


class FramedStream:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame_size: int,
        limits: DecodeLimits = DEFAULT_LIMITS,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        self.stream = stream
        if UNSAFE_SKIP_FRAME_CHECKSUM:
            _warn_unsafe()
        self._decoder = FrameDecoder(max_frame_size, verify=not UNSAFE_SKIP_FRAME_CHECKSUM)
        self._limits = limits
        self._backlog: deque[object] = deque()
        self._outbox: list[bytes] = []
        # Invariant: _outbox_bytes == sum(map(len, _outbox))
        self._outbox_bytes = 0
        self._wake: trio.Event | None = None
        self._drained = trio.lowlevel.ParkingLot()
        self.high_water = high_water
        self.closed = False
        # Direct writes: with nothing queued and the writer task idle, `enqueue` writes the
        # frame to a TCP socket itself (saving the writer task's wake-up); whatever the
        # non-blocking write does not take is queued for the writer as usual, so bytes
        # always leave in enqueue order.
        self._sock = getattr(stream, "socket", None)
        self._writing = False  # the writer task is inside send_all
        self._writer_running = False

    @property
    def ignored_checksum_mismatches(self) -> int:
        """Damaged frames accepted anyway (only with the test-only unsafe switch)."""
        return self._decoder.ignored_mismatches

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted from now on (a larger header closes the stream)."""
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        # Applies to every header completed from now on (one already read keeps its frame).
        self._decoder.max_frame_size = value

    # ---- receiving ----------------------------------------------------------------------

    async def receive_batch(self, lenient: bool = False) -> list[object]:
        """Every record completed by the next chunk of bytes (never empty).

        Raises ConnectionClosedError on EOF, DecodeError on a malformed / oversized frame
        (FrameChecksumError, a DecodeError, on a damaged one).
        With `lenient`, a frame whose contents fail to decode comes back as an
        `UndecodableFrame` in its place (the caller decides whether the stream goes on).
        """
        if self._backlog:
            out = list(self._backlog)
            self._backlog.clear()
            return out
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise ConnectionClosedError(str(e) or type(e).__name__) from None
            if not data:
                raise ConnectionClosedError("end of stream")
            frames = self._decoder.feed(data)
            if frames:
                limits = self._limits
                if not lenient:
                    return [decode(f, limits) for f in frames]
                out: list[object] = []
                for f in frames:
                    try:
                        out.append(decode(f, limits))
                    except DecodeError as e:
                        out.append(UndecodableFrame(f, e))
                return out

    async def receive_one(self) -> object:
        """The next record (used by the handshake, before the read loop starts)."""
        if not self._backlog:
            self._backlog.extend(await self.receive_batch())
        return self._backlog.popleft()

    # ---- sending ------------------------------------------------------------------------

    async def send_now(self, record: object) -> None:
        """Encode and write one record directly (only before `writer_loop` runs)."""
        try:
            await self.stream.send_all(frame(encode(record)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ConnectionClosedError(str(e) or type(e).__name__) from None

    def enqueue(self, data: bytes) -> None:
        """Queue one encoded frame for the writer task (or write it now, see `_sock`);
        never blocks."""
        if self.closed:
            raise ConnectionClosedError("connection closed")
        if not self._outbox and self._writer_running and not self._writing and self._sock:
            data = self._write_now(data)
            if not data:
                return
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def _write_now(self, data: bytes) -> bytes:
        """Write what the socket takes without blocking; return the rest (b"" if all)."""
        try:
            fd = self._sock.fileno()
            if fd < 0:
                return data
            n = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            return data
        except OSError:
            return data  # the writer task meets the same error and closes the connection
        return data[n:] if n < len(data) else b""

    def send(self, record: object) -> None:
        self.enqueue(frame(encode(record)))

    def over_high_water(self) -> bool:
        return self._outbox_bytes > self.high_water

    async def wait_writable(self) -> None:
        """Block while more than `high_water` bytes are queued (backpressure for streams)."""
        while self._outbox_bytes > self.high_water and not self.closed:
            await self._drained.park()

    async def writer_loop(self) -> None:
        """Flush the outbox, batching every frame queued since the last write."""
        self._writer_running = True
        try:
            while True:
                if not self._outbox:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                chunks, self._outbox = self._outbox, []
                self._outbox_bytes = 0
                self._writing = True
                try:
                    await self.stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                finally:
                    self._writing = False
                if self._drained:
                    self._drained.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ConnectionClosedError(str(e) or type(e).__name__) from None
        finally:
            self._writer_running = False
            self.closed = True
            self._drained.unpark_all()


def _warn_unsafe() -> None:
    global _warned_unsafe
    if not _warned_unsafe:
        _warned_unsafe = True
        logger.warning("NOKV_UNSAFE_SKIP_FRAME_CHECKSUM=1: frame checksum mismatches are "
                       "IGNORED (a test-only switch: damaged frames are accepted)")


def sole_error(group: BaseExceptionGroup) -> BaseException:
    """The one real error inside a nursery's exception group (cancellations aside), so a
    connection handler classifies it (decode error, closed connection ...) by its own type
    under trio's strict exception groups; the group itself when there is no single one."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        elif not isinstance(e, trio.Cancelled):
            leaves.append(e)
    return leaves[0] if len(leaves) == 1 else group
