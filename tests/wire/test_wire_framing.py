"""Framing: 4-byte big-endian length prefix (then the checksums), sans-I/O decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nokvpy.wire import FRAME_HEADER_SIZE, DecodeError, FrameDecoder, FrameTooLargeError, frame


@given(st.lists(st.binary(max_size=50), max_size=10), st.integers(1, 7))
def test_frames_survive_arbitrary_chunking(payloads, chunk):
    data = b"".join(frame(p) for p in payloads)
    dec = FrameDecoder(max_frame_size=100)
    out = []
    for i in range(0, len(data), chunk):
        out += dec.feed(data[i : i + chunk])
    assert out == payloads
    assert dec.buffered == 0


def test_oversize_length_is_rejected_before_the_body_arrives():
    dec = FrameDecoder(max_frame_size=1024)
    assert dec.feed(b"\x7f\xff") == []
    with pytest.raises(FrameTooLargeError) as exc:
        dec.feed(b"\xff\xff")  # header complete: 2 GiB announced, no body sent at all
    assert exc.value.size == 0x7FFFFFFF and exc.value.limit == 1024
    assert isinstance(exc.value, DecodeError)
    assert dec.buffered == 0  # nothing retained


def test_frame_header_is_big_endian():
    data = frame(b"abc")
    assert data[:4] == b"\x00\x00\x00\x03" and data[FRAME_HEADER_SIZE:] == b"abc"
