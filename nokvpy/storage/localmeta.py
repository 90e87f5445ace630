"""localmeta: what this store is and hosts, where replay resumes, what it still must publish.

Owns: the `meta_*` databases (layout in `schema.py`): store identity (cluster id, store id,
stamped on first start), hosted regions (region id -> opaque descriptor), replay pointers
(region id -> applied index, applied term), the durable publish outbox (seq -> opaque event)
and its blocked table (seq -> error text + event), and tombstones (region id -> opaque bytes).
Every value is stored as crc32 + payload and verified on every read; `verify()` checks every
record. Never interprets descriptors, events or tombstones (the raftstore encodes them), never
commits on its own: writes are staged into a `WriteBatch` so they join the apply transaction.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.errors import CorruptMetadataError, IdentityMismatchError
from nokvpy.storage.schema import (
    META_BLOCKED,
    META_DBS,
    META_OUTBOX,
    META_REGIONS,
    META_REPLAY,
    META_STORE,
    META_TOMBSTONES,
)

_CRC = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_REPLAY = struct.Struct(">QQ")
_ERRLEN = struct.Struct(">I")

_CLUSTER_ID = b"cluster_id"
_STORE_ID = b"store_id"
_DATA_FORMAT = b"data_format"  # the format of the store's values (the caller's number)
_STORE_KEYS = (_CLUSTER_ID, _STORE_ID, _DATA_FORMAT)


@dataclass(slots=True, frozen=True)
class StoreIdentity:
    cluster_id: int
    store_id: int


@dataclass(slots=True, frozen=True)
class ReplayPointer:
    applied_index: int
    applied_term: int


@dataclass(slots=True, frozen=True)
class BlockedEvent:
    seq: int
    event: bytes
    error: str


def seal(payload: bytes) -> bytes:
    """crc32(payload) + payload: the stored form of every localmeta value."""
    return _CRC.pack(zlib.crc32(payload)) + payload


def unseal(table: str, key: bytes, raw: bytes) -> bytes:
    if len(raw) < 4:
        raise CorruptMetadataError(f"{table}[{key.hex()}]: record of {len(raw)} bytes is too short")
    payload = raw[4:]
    if _CRC.unpack_from(raw)[0] != zlib.crc32(payload):
        raise CorruptMetadataError(f"{table}[{key.hex()}]: checksum mismatch (corrupt record)")
    return payload


def _u64_key(table: str, key: bytes) -> int:
    if len(key) != 8:
        raise CorruptMetadataError(f"{table}: undecodable key {key.hex()} (expected 8 bytes)")
    return _U64.unpack(key)[0]


def _check_id(what: str, value: int) -> int:
    if not 0 < value < 1 << 64:
        raise ValueError(f"{what} must be a positive u64, got {value}")
    return value


def _decode_replay(table: str, key: bytes, payload: bytes) -> ReplayPointer:
    if len(payload) != _REPLAY.size:
        raise CorruptMetadataError(f"{table}[{key.hex()}]: replay pointer of {len(payload)} bytes")
    return ReplayPointer(*_REPLAY.unpack(payload))


def _decode_blocked(table: str, key: bytes, payload: bytes) -> BlockedEvent:
    if len(payload) < 4 or len(payload) < 4 + _ERRLEN.unpack_from(payload)[0]:
        raise CorruptMetadataError(f"{table}[{key.hex()}]: truncated blocked event")
    n = _ERRLEN.unpack_from(payload)[0]
    try:
        error = payload[4 : 4 + n].decode()
    except UnicodeDecodeError:
        raise CorruptMetadataError(f"{table}[{key.hex()}]: error text is not UTF-8") from None
    return BlockedEvent(_u64_key(table, key), payload[4 + n :], error)


class LocalMeta:
    """Typed access to the localmeta tables; writes are staged into WriteBatches."""

    def __init__(self, env: Env):
        self._env = env
        self._dbs = {name: env.db(name) for name in META_DBS}
        self._next_seq: int | None = None  # next outbox seq, loaded lazily

    # ------------------------------------------------------------ generic helpers

    def _get(self, table: str, key: bytes, txn: Any = None) -> bytes | None:
        db = self._dbs[table]
        raw = txn.get(key, db=db) if txn is not None else self._env.read(
            lambda t: t.get(key, db=db)
        )
        return None if raw is None else unseal(table, key, raw)

    def _items(self, table: str, txn: Any = None) -> list[tuple[bytes, bytes]]:
        db = self._dbs[table]

        def read(t):
            with t.cursor(db=db) as cur:
                return [(k, unseal(table, k, v)) for k, v in cur]

        return read(txn) if txn is not None else self._env.read(read)

    # ------------------------------------------------------------ store identity

    def identity(self, *, txn: Any = None) -> StoreIdentity | None:
        cluster = self._get(META_STORE, _CLUSTER_ID, txn)
        store = self._get(META_STORE, _STORE_ID, txn)
        if cluster is None and store is None:
            return None
        if cluster is None or store is None or len(cluster) != 8 or len(store) != 8:
            raise CorruptMetadataError("meta_store: store identity is incomplete or malformed")
        return StoreIdentity(_U64.unpack(cluster)[0], _U64.unpack(store)[0])

    def data_format(self, *, txn: Any = None) -> int | None:
        """The data format stamped with the identity (None: a store stamped before formats
        were recorded, or not stamped yet)."""
        raw = self._get(META_STORE, _DATA_FORMAT, txn)
        if raw is None:
            return None
        if len(raw) != 8:
            raise CorruptMetadataError("meta_store: data format is malformed")
        return _U64.unpack(raw)[0]

    def stage_identity(self, batch: WriteBatch, cluster_id: int, store_id: int,
                       data_format: int | None = None) -> None:
        batch.put(META_STORE, _CLUSTER_ID, seal(_U64.pack(_check_id("cluster id", cluster_id))))
        batch.put(META_STORE, _STORE_ID, seal(_U64.pack(_check_id("store id", store_id))))
        if data_format is not None:
            batch.put(META_STORE, _DATA_FORMAT,
                      seal(_U64.pack(_check_id("data format", data_format))))

    async def stamp_identity(self, cluster_id: int, store_id: int,
                             data_format: int | None = None) -> StoreIdentity:
        """Stamp the identity (and the data format the caller writes) on first start;
        afterwards require that the identity matches."""
        wanted = StoreIdentity(cluster_id, store_id)
        current = self.identity()
        if current is not None:
            if current != wanted:
                raise IdentityMismatchError(current, wanted)
            return current
        batch = WriteBatch()
        self.stage_identity(batch, cluster_id, store_id, data_format)
        await self._env.commit(batch)
        return wanted

    # ------------------------------------------------------------ hosted regions

    def region(self, region_id: int, *, txn: Any = None) -> bytes | None:
        return self._get(META_REGIONS, _U64.pack(region_id), txn)

    def regions(self, *, txn: Any = None) -> dict[int, bytes]:
        return {_u64_key(META_REGIONS, k): v for k, v in self._items(META_REGIONS, txn)}

    def stage_region(self, batch: WriteBatch, region_id: int, descriptor: bytes) -> None:
        batch.put(META_REGIONS, _U64.pack(_check_id("region id", region_id)), seal(descriptor))

    def stage_delete_region(self, batch: WriteBatch, region_id: int) -> None:
        batch.delete(META_REGIONS, _U64.pack(region_id))

    # ------------------------------------------------------------ replay pointers

    def replay_pointer(self, region_id: int, *, txn: Any = None) -> ReplayPointer | None:
        key = _U64.pack(region_id)
        payload = self._get(META_REPLAY, key, txn)
        return None if payload is None else _decode_replay(META_REPLAY, key, payload)

    def replay_pointers(self, *, txn: Any = None) -> dict[int, ReplayPointer]:
        return {
            _u64_key(META_REPLAY, k): _decode_replay(META_REPLAY, k, v)
            for k, v in self._items(META_REPLAY, txn)
        }

    def stage_replay_pointer(
        self, batch: WriteBatch, region_id: int, applied_index: int, applied_term: int
    ) -> None:
        batch.put(
            META_REPLAY,
            _U64.pack(_check_id("region id", region_id)),
            seal(_REPLAY.pack(applied_index, applied_term)),
        )

    def stage_delete_replay_pointer(self, batch: WriteBatch, region_id: int) -> None:
        batch.delete(META_REPLAY, _U64.pack(region_id))

    # ------------------------------------------------------------ publish outbox

    def _alloc_seq(self) -> int:
        if self._next_seq is None:
            def read(txn):
                last = 0
                for name in (META_OUTBOX, META_BLOCKED):
                    with txn.cursor(db=self._dbs[name]) as cur:
                        if cur.last():
                            last = max(last, _u64_key(name, cur.key()))
                return last + 1

            self._next_seq = self._env.read(read)
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    def stage_outbox_append(self, batch: WriteBatch, event: bytes) -> int:
        """Append an event to the outbox; returns its seq (allocated now, monotonic; a batch
        that fails to commit leaves a gap)."""
        seq = self._alloc_seq()
        batch.put(META_OUTBOX, _U64.pack(seq), seal(event))
        return seq

    def outbox(self, *, txn: Any = None) -> list[tuple[int, bytes]]:
        """Pending events in seq order."""
        return [(_u64_key(META_OUTBOX, k), v) for k, v in self._items(META_OUTBOX, txn)]

    def stage_outbox_remove(self, batch: WriteBatch, seq: int) -> None:
        batch.delete(META_OUTBOX, _U64.pack(seq))

    def stage_outbox_block(self, batch: WriteBatch, seq: int, event: bytes, error: str) -> None:
        """Move an event from the outbox to the blocked table with its (permanent) error."""
        err = error.encode()
        batch.delete(META_OUTBOX, _U64.pack(seq))
        batch.put(META_BLOCKED, _U64.pack(seq), seal(_ERRLEN.pack(len(err)) + err + event))

    def blocked(self, *, txn: Any = None) -> list[BlockedEvent]:
        return [
            _decode_blocked(META_BLOCKED, k, v) for k, v in self._items(META_BLOCKED, txn)
        ]

    def stage_blocked_remove(self, batch: WriteBatch, seq: int) -> None:
        batch.delete(META_BLOCKED, _U64.pack(seq))

    # ------------------------------------------------------------ tombstones

    def tombstone(self, region_id: int, *, txn: Any = None) -> bytes | None:
        return self._get(META_TOMBSTONES, _U64.pack(region_id), txn)

    def tombstones(self, *, txn: Any = None) -> dict[int, bytes]:
        return {_u64_key(META_TOMBSTONES, k): v for k, v in self._items(META_TOMBSTONES, txn)}

    def stage_tombstone(self, batch: WriteBatch, region_id: int, payload: bytes) -> None:
        batch.put(META_TOMBSTONES, _U64.pack(_check_id("region id", region_id)), seal(payload))

    def stage_delete_tombstone(self, batch: WriteBatch, region_id: int) -> None:
        batch.delete(META_TOMBSTONES, _U64.pack(region_id))

    # ------------------------------------------------------------ verification

    def verify(self) -> dict[str, int]:
        """Check every localmeta record (key shape, checksum, decodability) in one read
        transaction; return record counts per table or raise CorruptMetadataError."""
        checks: dict[str, Callable[[bytes, bytes], object]] = {
            META_REGIONS: lambda k, v: _u64_key(META_REGIONS, k),
            META_REPLAY: lambda k, v: (
                _u64_key(META_REPLAY, k),
                _decode_replay(META_REPLAY, k, v),
            ),
            META_OUTBOX: lambda k, v: _u64_key(META_OUTBOX, k),
            META_BLOCKED: lambda k, v: _decode_blocked(META_BLOCKED, k, v),
            META_TOMBSTONES: lambda k, v: _u64_key(META_TOMBSTONES, k),
        }

        def read(txn):
            counts: dict[str, int] = {}
            for k, _ in self._items(META_STORE, txn):
                if k not in _STORE_KEYS:
                    raise CorruptMetadataError(f"meta_store: unknown key {k!r}")
            self.identity(txn=txn)
            counts[META_STORE] = len(self._items(META_STORE, txn))
            for table, check in checks.items():
                items = self._items(table, txn)
                for k, v in items:
                    check(k, v)
                counts[table] = len(items)
            return counts

        return self._env.read(read)
