"""The change table: each region's recent writes, for watches.

Owns: the `kv_changes` database and its layout (see schema). A record is one write an applied
entry made: key (region id, version, index, origin region id, seq), value (kind, user key,
value). All zero
after the region id is the region's floor record: the revision (version, index) above which
the region holds every change of its range. A change keeps the id of the region whose entry
made it (its origin): after a split both sides number their entries from their own logs at
the same version, so two changes handed into one region by a merge may share (version,
index, seq) and differ only in origin. Never knows what a revision means for a watch
(raftstore.changelog does) and never commits on its own: writes are staged into the apply's
`WriteBatch`, so a change is durable exactly when the write it records is.
"""

from __future__ import annotations

import struct
from typing import Any

from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.errors import CorruptMetadataError
from nokvpy.storage.schema import KV_CHANGES

_KEY = struct.Struct(">QIQQI")  # region, version, index, origin, seq
_REGION = struct.Struct(">Q")
_VAL = struct.Struct(">BH")  # kind, key length
_FLOOR = struct.Struct(">IQ")  # version, index

# (version, index, seq, kind, key, value, origin): value None for a delete
Change = tuple[int, int, int, int, bytes, bytes | None, int]
MAX_INDEX = (1 << 63) - 1  # the highest index a cursor may name
MAX_VERSION = (1 << 32) - 1
DELETE = 2


def change_key(region: int, version: int, index: int, seq: int, origin: int = 0) -> bytes:
    return _KEY.pack(region, version, index, origin or region, seq)


def encode_change(kind: int, key: bytes, value: bytes | None) -> bytes:
    head = _VAL.pack(kind, len(key)) + key
    return head if value is None else head + value


def decode_change(k: bytes, v: bytes) -> Change:
    _, version, index, origin, seq = _KEY.unpack(k)
    kind, n = _VAL.unpack_from(v)
    key = v[3:3 + n]
    return version, index, seq, kind, key, (None if kind == DELETE else v[3 + n:]), origin


class ChangeTable:
    """Staged writes and reads of the shared change table."""

    def __init__(self, env: Env):
        self._env = env
        self._db = env.db(KV_CHANGES)

    # ------------------------------------------------------------ writes

    def stage_change(self, batch: WriteBatch, region: int, version: int, index: int, seq: int,
                     kind: int, key: bytes, value: bytes | None) -> None:
        batch.put(KV_CHANGES, _KEY.pack(region, version, index, region, seq),
                  encode_change(kind, key, value))

    def stage_raw(self, batch: WriteBatch, region: int, changes: list[Change]) -> None:
        """Stage `changes` (as `read` returns them) under `region`."""
        batch.put_many(KV_CHANGES, [(_KEY.pack(region, c[0], c[1], c[6], c[2]),
                                     encode_change(c[3], c[4], c[5])) for c in changes])

    def stage_floor(self, batch: WriteBatch, region: int, version: int, index: int) -> None:
        batch.put(KV_CHANGES, _KEY.pack(region, 0, 0, 0, 0), _FLOOR.pack(version, index))

    def stage_trim(self, batch: WriteBatch, region: int, version: int, index: int) -> None:
        """Delete the region's changes below revision (version, index) (not its floor)."""
        batch.delete_range(KV_CHANGES, _KEY.pack(region, 0, 0, 0, 1),
                           _KEY.pack(region, version, index, 0, 0))

    def stage_drop(self, batch: WriteBatch, region: int) -> None:
        """Delete every record of the region, its floor too."""
        batch.delete_range(KV_CHANGES, _REGION.pack(region), _REGION.pack(region + 1))

    # ------------------------------------------------------------ reads

    def floor(self, region: int, *, txn: Any = None) -> tuple[int, int] | None:
        """The region's floor record, None when it has none."""
        k = _KEY.pack(region, 0, 0, 0, 0)
        raw = txn.get(k, db=self._db) if txn is not None else self._env.get(KV_CHANGES, k)
        if raw is None:
            return None
        if len(raw) != _FLOOR.size:
            raise CorruptMetadataError(f"region {region}: change floor record of {len(raw)} "
                                       f"bytes")
        version, index = _FLOOR.unpack(raw)
        return version, index

    def read(self, txn: Any, region: int, after: tuple[int, int], lo: bytes, hi: bytes,
             limit: int) -> tuple[list[Change], bool]:
        """The region's changes of keys in [lo, hi) (hi b"": unbounded) with a revision above
        `after`, in revision order, and whether more remain. At least `limit` unless fewer
        remain: a revision's changes are never split across two answers."""
        out: list[Change] = []
        if after[1] >= MAX_INDEX:  # nothing can be above it at this version
            start = _KEY.pack(region, min(after[0] + 1, MAX_VERSION), 0, 0, 0)
        else:
            start = _KEY.pack(region, after[0], after[1] + 1, 0, 0)
        end = _REGION.pack(region + 1)
        with txn.cursor(db=self._db) as cur:
            if not cur.set_range(start):
                return out, False
            for k, v in cur:
                if k >= end:
                    return out, False
                c = decode_change(k, v)
                if len(out) >= limit and (c[0], c[1]) != (out[-1][0], out[-1][1]):
                    return out, True
                key = c[4]
                if key >= lo and (not hi or key < hi):
                    out.append(c)
        return out, False

    def first_index_of(self, region: int, version: int) -> int | None:
        """The index of the region's oldest change at `version`, None when it has none."""
        def read(txn: Any) -> int | None:
            with txn.cursor(db=self._db) as cur:
                if not cur.set_range(_KEY.pack(region, version, 0, 0, 0)):
                    return None
                k = cur.key()
                r, v, index, _, _ = _KEY.unpack(k)
                return index if (r, v) == (region, version) else None

        return self._env.read(read)

    def export(self, region: int, lo: bytes, hi: bytes) -> list[Change]:
        """Every change the region holds of keys in [lo, hi), in revision order."""
        def read(txn: Any) -> list[Change]:
            out, _ = self.read(txn, region, (0, 0), lo, hi, 1 << 62)
            return out

        return self._env.read(read)
