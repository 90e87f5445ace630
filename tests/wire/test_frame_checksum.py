"""The frame checksum: every frame carries a CRC-32 of its header and of its body; a damaged
frame is refused at once (never handed on, never waited on), and a decoder told not to
verify (the test-only unsafe switch) lets it through."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nokvpy.wire import (
    FRAME_HEADER_SIZE,
    DecodeError,
    FrameChecksumError,
    FrameDecoder,
    FrameTooLargeError,
    frame,
)

MAX = 1 << 20


def _flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_header_layout():
    data = frame(b"abc")
    assert FRAME_HEADER_SIZE == 12 and len(data) == 15
    length, body_crc, header_crc = struct.unpack(">III", data[:12])
    assert length == 3 and data[12:] == b"abc"
    assert body_crc == zlib.crc32(b"abc") and header_crc == zlib.crc32(data[:8])
    assert FrameDecoder(MAX).feed(data) == [b"abc"]


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 40))
def test_checksummed_frames_survive_arbitrary_chunking(payloads, chunk):
    data = b"".join(frame(p) for p in payloads)
    dec = FrameDecoder(MAX)
    out = []
    for i in range(0, len(data), chunk):
        out += dec.feed(data[i : i + chunk])
    assert out == payloads and dec.buffered == 0


@given(st.binary(max_size=300), st.data())
def test_any_single_flipped_bit_is_detected(payload, data):
    good = frame(payload)
    bit = data.draw(st.integers(0, len(good) * 8 - 1), label="bit")
    bad = _flip_bit(good, bit)
    dec = FrameDecoder(MAX)
    with pytest.raises(DecodeError) as err:  # at once: the frame is complete
        dec.feed(bad)
    if bit >= 32 or int.from_bytes(bad[:4], "big") <= MAX:
        assert isinstance(err.value, FrameChecksumError)
        assert err.value.part == ("header" if bit < 96 else "body")
    else:  # a high length bit: refused as oversized before anything else is read
        assert isinstance(err.value, FrameTooLargeError)
    with pytest.raises(DecodeError, match="unusable"):
        dec.feed(frame(b"next"))  # the stream is not trusted any more


@given(st.binary(min_size=1, max_size=300), st.data())
def test_any_single_damaged_byte_is_detected(payload, data):
    good = frame(payload)
    at = data.draw(st.integers(0, len(good) - 1), label="at")
    xor = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(good)
    bad[at] ^= xor
    with pytest.raises(DecodeError):
        FrameDecoder(MAX).feed(bytes(bad))


def test_every_bit_of_a_small_and_a_64k_frame():
    for payload in (b"\x93\x01\xa3abc" * 25, bytes(range(256)) * 256):  # 200 B, 64 KiB
        good = frame(payload)
        bits = range(len(good) * 8) if len(good) < 1000 else \
            [*range(FRAME_HEADER_SIZE * 8), *range(FRAME_HEADER_SIZE * 8, len(good) * 8, 97)]
        for bit in bits:
            with pytest.raises(DecodeError):
                FrameDecoder(MAX).feed(_flip_bit(good, bit))


def test_a_damaged_length_is_caught_on_the_header_not_waited_on():
    good = frame(b"x" * 100)
    bad = _flip_bit(good, 20)  # length 100 -> 2148: within the limit, body never comes
    dec = FrameDecoder(MAX)
    assert dec.feed(bad[:4]) == []  # only the length so far: nothing to check yet
    with pytest.raises(FrameChecksumError) as err:
        dec.feed(bad[4:12])
    assert err.value.part == "header"


def test_frames_before_the_damaged_one_are_delivered():
    dec = FrameDecoder(MAX)
    assert dec.feed(frame(b"one") + frame(b"two")) == [b"one", b"two"]
    with pytest.raises(FrameChecksumError):
        dec.feed(_flip_bit(frame(b"three"), 100))


def test_unverified_decoder_lets_damage_through_and_counts_it():
    dec = FrameDecoder(MAX, verify=False)
    damaged_body = _flip_bit(frame(b"abc"), 12 * 8 + 1)
    damaged_crc = _flip_bit(frame(b"def"), 5 * 8)
    assert dec.feed(damaged_body + damaged_crc + frame(b"ok")) == [b"cbc", b"def", b"ok"]
    assert dec.ignored_mismatches == 3  # body; header and body (its body crc field changed)
    with pytest.raises(FrameTooLargeError):  # the size limit still holds
        FrameDecoder(1024, verify=False).feed(_flip_bit(frame(b"abc"), 0))
