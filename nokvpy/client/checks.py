"""The client's checks of a key or value before anything is sent.

Owns: `check_key` and `check_value` (bytes, within the store's size limits), which raise
`InvalidRequestError`; every client operation (nokvpy.client.kv, .scan, .txn) checks its
keys and values with them. Never does I/O and never retries: a refused key or value is the
caller's to fix.
"""

from __future__ import annotations

from nokvpy.client.errors import InvalidRequestError
from nokvpy.protocol.store_rpc import (
    MAX_KEY_SIZE as MAX_KEY,
)
from nokvpy.protocol.store_rpc import (
    MAX_VALUE_SIZE as MAX_VALUE,
)


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise InvalidRequestError(f"keys are bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY:
        raise InvalidRequestError(f"key of {len(key)} bytes exceeds the limit of {MAX_KEY}")


def check_value(value: bytes) -> None:
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"values are bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise InvalidRequestError(f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE}")
