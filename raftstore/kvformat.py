"""The KV data of a region as LMDB holds it: the stored-value format and the key checks.

Owns: the stored form of a value in a `VersionedKV` (format byte, the id of the region whose
log wrote it, the raft index of that entry, then the value: `pack_stored` / `unpack_stored`,
the key's modification index), `VersionedKV` (the store's KV table, values behind that
header; the header travels in snapshots, and splits and merges move no data, so every
replica of a key answers the same index), and the key checks every apply makes before it
writes (`valid_key`, `in_range`) with the refusals they answer (`INVALID`,
`KEY_NOT_IN_REGION`). Never decides what an entry does (raftstore.apply and
raftstore.txnapply do), never commits a batch and never migrates data: bytes stored before
the format existed are read best effort (see `unpack_stored`).
"""

from __future__ import annotations

import struct
from typing import Any

from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.store_rpc import MAX_KEY_SIZE
from nokvpy.storage import KV, WriteBatch

KEY_NOT_IN_REGION = "key_not_in_region"
INVALID = "invalid"

# The stored form of a value in a VersionedKV: format byte 1, the id of the region whose log
# wrote it and the raft index of that entry (both u64 big-endian), then the value. A value
# written with a lease: format byte 2, the same two fields and the lease id (u64), then the
# value (the lease travels with the value: in snapshots, across splits and merges; a later
# write without the lease drops it).
STORED_FORMAT = 1
LEASED_FORMAT = 2
_HEADER = struct.Struct(">BQQ")
_LEASED = struct.Struct(">BQQQ")
HEADER_SIZE = _HEADER.size
LEASED_SIZE = _LEASED.size


def pack_stored(value: bytes, region_id: int, index: int, lease: int = 0) -> bytes:
    if lease:
        return _LEASED.pack(LEASED_FORMAT, region_id, index, lease) + value
    return _HEADER.pack(STORED_FORMAT, region_id, index) + value


def stored_lease(raw: bytes) -> int:
    """The lease a stored value is attached to (0: none)."""
    if len(raw) >= LEASED_SIZE and raw[0] == LEASED_FORMAT:
        return _LEASED.unpack_from(raw)[3]
    return 0


def unpack_stored(raw: bytes) -> tuple[bytes, int, int]:
    """(value, region id, raft index) of a stored value. Bytes without the header (written
    before the format existed) read as the value itself, index 0 of no region: best effort,
    such a value of 17 bytes or more that begins with byte 1 is misread (there is no
    migration; a store's data directory from before the format is to be rebuilt)."""
    if len(raw) >= HEADER_SIZE and raw[0] == STORED_FORMAT:
        _, region_id, index = _HEADER.unpack_from(raw)
        return raw[HEADER_SIZE:], region_id, index
    if len(raw) >= LEASED_SIZE and raw[0] == LEASED_FORMAT:
        _, region_id, index, _ = _LEASED.unpack_from(raw)
        return raw[LEASED_SIZE:], region_id, index
    return raw, 0, 0


class VersionedKV(KV):
    """The store's KV table as its regions keep it: each value stored behind the header of
    `pack_stored` (which entry last wrote it: the key's modification index). `get`, `scan`
    and `iter_range` answer values; `get_stored`, `scan_stored` and `export_range` (what a
    snapshot carries, so the headers travel with the data) the stored bytes. `range_stats`
    counts stored bytes; `stage_import_range` takes stored pairs."""

    def get(self, key: bytes, *, txn: Any = None) -> bytes | None:
        raw = super().get(key, txn=txn)
        return None if raw is None else unpack_stored(raw)[0]

    def get_stored(self, key: bytes, *, txn: Any = None) -> bytes | None:
        return super().get(key, txn=txn)

    def scan(self, start: bytes, end: bytes | None = None, limit: int | None = None, *,
             reverse: bool = False, txn: Any = None) -> list[tuple[bytes, bytes]]:
        pairs = super().scan(start, end, limit, reverse=reverse, txn=txn)
        return [(k, unpack_stored(v)[0]) for k, v in pairs]

    def scan_stored(self, start: bytes, end: bytes | None = None, limit: int | None = None, *,
                    txn: Any = None) -> list[tuple[bytes, bytes]]:
        return super().scan(start, end, limit, txn=txn)

    def export_range(self, start: bytes, end: bytes | None, *,
                     txn: Any = None) -> list[tuple[bytes, bytes]]:
        return self.scan_stored(start, end, txn=txn)

    def stage_put(self, batch: WriteBatch, key: bytes, value: bytes, *, region_id: int = 0,
                  index: int = 0) -> None:
        super().stage_put(batch, key, pack_stored(value, region_id, index))


def in_range(desc: RegionDescriptor, key: bytes) -> bool:
    return desc.start_key <= key and (not desc.end_key or key < desc.end_key)


def valid_key(key: bytes) -> bool:
    return isinstance(key, bytes) and 0 < len(key) <= MAX_KEY_SIZE
