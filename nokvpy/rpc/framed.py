"""A framed, record-level connection over any trio byte stream.

Owns: turning a `trio.abc.Stream` into decoded records (length-prefixed frames through the
wire codec) and the write side: callers `enqueue` encoded frames without blocking and one
writer task flushes everything queued as ONE `send_all` (write batching). Never interprets
records (that is the server/client) and never opens streams (that is the network).
"""

from __future__ import annotations

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
        self._decoder = FrameDecoder(max_frame_size)
        self._limits = limits
        self._backlog: deque[object] = deque()
        self._outbox: list[bytes] = []
        # Invariant: _outbox_bytes == sum(map(len, _outbox))
        self._outbox_bytes = 0
        self._wake: trio.Event | None = None
        self._drained = trio.lowlevel.ParkingLot()
        self.high_water = high_water
        self.closed = False

    # ---- receiving ----------------------------------------------------------------------

    async def receive_batch(self, lenient: bool = False) -> list[object]:
        """Every record completed by the next chunk of bytes (never empty).

        Raises ConnectionClosedError on EOF, DecodeError on a malformed / oversized frame.
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
        """Queue one encoded frame for the writer task; never blocks."""
        if self.closed:
            raise ConnectionClosedError("connection closed")
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

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
        try:
            while True:
                if not self._outbox:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                chunks, self._outbox = self._outbox, []
                self._outbox_bytes = 0
                await self.stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                if self._drained:
                    self._drained.unpark_all()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ConnectionClosedError(str(e) or type(e).__name__) from None
        finally:
            self.closed = True
            self._drained.unpark_all()
