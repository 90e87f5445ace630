"""Length-prefixed framing, sans-I/O.

Owns: the 4-byte big-endian length prefix and the incremental `FrameDecoder`. Never touches a
socket (that is `nokvpy.rpc`) and never looks inside a frame (that is the codec).
"""

from __future__ import annotations

from nokvpy.wire.errors import DecodeError, FrameTooLargeError

HEADER_SIZE = 4
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
_MAX_ENCODABLE = (1 << 32) - 1


def frame(payload: bytes) -> bytes:
    """Prefix `payload` with its length (4 bytes, big-endian)."""
    n = len(payload)
    if n > _MAX_ENCODABLE:
        raise FrameTooLargeError(n, _MAX_ENCODABLE)
    return n.to_bytes(4, "big") + payload


class FrameDecoder:
    """Feed it bytes as they arrive; it hands back complete frame payloads.

    A header announcing more than `max_frame_size` bytes raises `FrameTooLargeError` as soon as
    the 4 header bytes are seen, before any of the body is buffered. After an error the decoder
    is unusable (the stream is out of sync); close the connection.
    """

    __slots__ = ("max_frame_size", "_buf", "_need", "_broken")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._need = -1  # body length of the frame being assembled, -1 while reading a header
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every frame it completes (possibly none)."""
        if self._broken:
            raise DecodeError("frame decoder is unusable after a framing error")
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        need = self._need
        while True:
            if need < 0:
                if end - pos < HEADER_SIZE:
                    break
                need = int.from_bytes(buf[pos : pos + HEADER_SIZE], "big")
                if need > self.max_frame_size:
                    self._broken = True
                    buf.clear()
                    raise FrameTooLargeError(need, self.max_frame_size)
                pos += HEADER_SIZE
            if end - pos < need:
                break
            frames.append(bytes(buf[pos : pos + need]))
            pos += need
            need = -1
        self._need = need
        if pos:
            del buf[:pos]
        return frames
