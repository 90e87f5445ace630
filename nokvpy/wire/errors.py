"""Errors of the wire layer.

Owns: the two exception types the codec raises. Decoding anything malformed, oversized or
unknown raises `DecodeError` (blame: the remote peer); encoding something the codec cannot
represent raises `EncodeError` (blame: the local caller). Never lets a KeyError, TypeError or
ValueError from msgpack or a record constructor escape in their place.
"""

from __future__ import annotations


class DecodeError(Exception):
    """The bytes received are not a valid, known, in-bounds wire record.

    `reason` says which field or limit was violated, e.g. "RootEvent.kind: bad enum value 99".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLargeError(DecodeError):
    """A frame header announced more bytes than the receiver accepts (checked before reading)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class EncodeError(Exception):
    """The object (or one of its fields) cannot be encoded: not a registered record, an
    unsupported value type, or an integer outside the 64-bit range."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WireSchemaError(TypeError):
    """A registered record uses a field annotation the codec does not support (a local bug,
    found when the class is first encoded or decoded; `tests/wire` checks every record)."""
