"""Length-prefixed, checksummed framing, sans-I/O.

Owns: the 12-byte frame header and the incremental `FrameDecoder`. Never touches a socket
(that is `nokvpy.rpc`) and never looks inside a frame (that is the codec).

A frame is `length | body_crc | header_crc | body`, three big-endian u32 then `length` bytes:
`body_crc` is the CRC-32 (zlib) of the body and `header_crc` the CRC-32 of the 8 bytes before
it. The length comes first so that an oversized announcement is refused as soon as 4 bytes
are in, before anything else is buffered. The header check covers the length: a damaged
length is caught on the 12 header bytes, instead of making the receiver wait for a body that
never ends (the stream would stall silently). The body check catches damage to the body.
A CRC-32 detects every error of up to 32 consecutive bits (every single-bit and single-byte
error) and any other damage but for one in 2**32. It is an integrity check against accidents,
not an authentication: the handshake and TLS are what keep a hostile peer out.

On a mismatch `FrameDecoder.feed` raises `FrameChecksumError` (a `DecodeError`) and the
decoder is unusable from then on: the receiver must close the connection, since nothing read
after a damaged frame can be trusted. `verify=False` (a test-only switch of the RPC layer:
`nokvpy.rpc.framed`, `NOKV_UNSAFE_SKIP_FRAME_CHECKSUM=1`) accepts frames whatever their
checksums, as a build without checksums would, and counts them in `ignored_mismatches`.
"""

from __future__ import annotations

import struct
from zlib import crc32

from nokvpy.wire.errors import DecodeError, FrameTooLargeError

HEADER_SIZE = 12
FRAME_HEADER_SIZE = HEADER_SIZE  # the name the package exports
LENGTH_SIZE = 4
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
_MAX_ENCODABLE = (1 << 32) - 1
_LENGTH_AND_CRC = struct.Struct(">II")
_HEADER = struct.Struct(">III")


class FrameChecksumError(DecodeError):
    """A frame's header or body does not match its CRC-32: the bytes were damaged on the way
    (or by a fault rule). `part` is "header" or "body"."""

    def __init__(self, part: str, expected: int, actual: int) -> None:
        super().__init__(f"frame {part} checksum mismatch (expected {expected:08x}, "
                         f"computed {actual:08x}): the stream is damaged")
        self.part = part
        self.expected = expected
        self.actual = actual


def frame(payload: bytes) -> bytes:
    """`payload` behind its 12-byte header (length, body CRC-32, header CRC-32)."""
    n = len(payload)
    if n > _MAX_ENCODABLE:
        raise FrameTooLargeError(n, _MAX_ENCODABLE)
    body_crc = crc32(payload)
    return _HEADER.pack(n, body_crc, crc32(_LENGTH_AND_CRC.pack(n, body_crc))) + payload


class FrameDecoder:
    """Feed it bytes as they arrive; it hands back complete, verified frame payloads.

    A header announcing more than `max_frame_size` bytes raises `FrameTooLargeError` as soon as
    the 4 length bytes are seen, before any of the body is buffered; a header or body whose
    checksum does not match raises `FrameChecksumError`. After an error the decoder is
    unusable (the stream is out of sync or damaged); close the connection. Frames completed
    by the same `feed` before the damaged one are not returned either.
    """

    __slots__ = ("max_frame_size", "verify", "ignored_mismatches", "_buf", "_need", "_crc",
                 "_broken")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *,
                 verify: bool = True) -> None:
        self.max_frame_size = max_frame_size
        self.verify = verify
        self.ignored_mismatches = 0  # checksum mismatches let through (verify=False only)
        self._buf = bytearray()
        self._need = -1  # body length of the frame being assembled, -1 while reading a header
        self._crc = 0  # the body CRC-32 its header announced
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
                if end - pos < LENGTH_SIZE:
                    break
                n = int.from_bytes(buf[pos : pos + LENGTH_SIZE], "big")
                if n > self.max_frame_size:
                    self._fail()
                    raise FrameTooLargeError(n, self.max_frame_size)
                if end - pos < HEADER_SIZE:
                    break
                n, self._crc, header_crc = _HEADER.unpack_from(buf, pos)
                actual = crc32(buf[pos : pos + 8])
                if actual != header_crc:
                    self._mismatch("header", header_crc, actual)
                need = n
                pos += HEADER_SIZE
            if end - pos < need:
                break
            body = bytes(buf[pos : pos + need])
            actual = crc32(body)
            if actual != self._crc:
                self._mismatch("body", self._crc, actual)
            frames.append(body)
            pos += need
            need = -1
        self._need = need
        if pos:
            del buf[:pos]
        return frames

    def _mismatch(self, part: str, expected: int, actual: int) -> None:
        if not self.verify:
            self.ignored_mismatches += 1
            return
        self._fail()
        raise FrameChecksumError(part, expected, actual)

    def _fail(self) -> None:
        self._broken = True
        self._buf.clear()
        self._need = -1
