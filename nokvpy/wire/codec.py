"""The record codec: registered records <-> msgpack bytes.

Owns: the only `import msgpack` of the code base, the public entry points (`encode`,
`decode`, `decode_as`, `peek_record`), the size and nesting bounds of one decoded message
(`DecodeLimits`), loading the protocol modules so that every record is registered, and raw
msgpack access for tests and tools. The wire shape of a record and its validation are
`nokvpy.wire.schema`'s (re-exported here: `register_custom`, `encode_record`,
`decode_record`, `encode_any`, `decode_any`). Never does I/O and never imports trio.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

import msgpack

from nokvpy.protocol.base import TAGS
from nokvpy.wire.errors import DecodeError, EncodeError, WireSchemaError
from nokvpy.wire.schema import (
    decode_any,
    decode_record,
    encode_any,
    encode_record,
    register_custom,
)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds enforced while decoding one message (each violation is a DecodeError)."""

    max_bytes_len: int = 64 * 1024 * 1024
    max_str_len: int = 16 * 1024 * 1024
    max_list_len: int = 4 * 1024 * 1024
    max_map_len: int = 1024 * 1024
    max_depth: int = 64


DEFAULT_LIMITS = DecodeLimits()

_protocol_loaded = False


# ---- registry ---------------------------------------------------------------------------


def load_protocol_modules() -> None:
    """Import `nokvpy.protocol` and every `nokvpy.protocol.*` submodule so their
    `@wire_type` records are registered. Runs once, lazily, on the first encode/decode;
    call it again after adding a module at runtime."""
    global _protocol_loaded
    import nokvpy.protocol as protocol

    for info in sorted(pkgutil.iter_modules(protocol.__path__), key=lambda m: m.name):
        importlib.import_module(f"{protocol.__name__}.{info.name}")
    _protocol_loaded = True


def registered_types() -> dict[int, type]:
    """Every record the codec knows, by tag (after loading the protocol modules)."""
    if not _protocol_loaded:
        load_protocol_modules()
    return dict(sorted(TAGS.items()))


# ---- public entry points ----------------------------------------------------------------


def encode(obj: object) -> bytes:
    """Encode a registered record to msgpack bytes. Raises EncodeError."""
    if not _protocol_loaded:
        load_protocol_modules()
    try:
        return msgpack.packb(encode_record(obj), use_bin_type=True)
    except EncodeError:
        raise
    except WireSchemaError:
        raise
    except Exception as e:  # msgpack TypeError / OverflowError, attribute errors
        raise EncodeError(f"cannot encode {type(obj).__name__}: {e}") from e


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> object:
    """Decode bytes produced by `encode`. Anything malformed raises DecodeError only."""
    if not _protocol_loaded:
        load_protocol_modules()
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_bin_len=limits.max_bytes_len,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_list_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except Exception as e:
        raise DecodeError(f"malformed msgpack: {type(e).__name__}: {e}") from None
    try:
        return decode_record(value, limits.max_depth)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("nesting too deep") from None
    except Exception as e:  # defensive: the contract is "only DecodeError escapes"
        raise DecodeError(f"invalid record: {type(e).__name__}: {e}") from None


def peek_record(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> list | None:
    """The raw wire array of an encoded record (tag first) without validating its fields, or
    None if `data` is not even an array with an int tag. Lets a server answer a request whose
    body fails to decode (it can still read the request id)."""
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=False, max_bin_len=limits.max_bytes_len,
            max_str_len=limits.max_str_len, max_array_len=limits.max_list_len,
            max_map_len=limits.max_map_len, max_ext_len=0,
        )
    except Exception:
        return None
    if type(value) is not list or not value or type(value[0]) is not int:
        return None
    return value


def decode_as(data: bytes, cls: type, limits: DecodeLimits = DEFAULT_LIMITS) -> Any:
    """Decode and require an instance of `cls` (DecodeError otherwise)."""
    obj = decode(data, limits)
    if not isinstance(obj, cls):
        raise DecodeError(f"expected {cls.__name__}, got {type(obj).__name__}")
    return obj


# ---- raw access (tests, tools) ------------------------------------------------------------


def pack_raw(value: object) -> bytes:
    """msgpack-pack a plain value without any record conversion (fuzz tests, tooling)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack_raw(data: bytes) -> object:
    """msgpack-unpack without record decoding or validation (fuzz tests, tooling)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


__all__ = [
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "decode",
    "decode_any",
    "decode_as",
    "decode_record",
    "encode",
    "encode_any",
    "encode_record",
    "load_protocol_modules",
    "pack_raw",
    "peek_record",
    "register_custom",
    "registered_types",
    "unpack_raw",
]
