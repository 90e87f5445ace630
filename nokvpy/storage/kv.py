"""The KV data table shared by every region of a store.

Owns: the `kv` database. Keys are user keys in one shared keyspace; regions partition it by
range, so a split moves no data. Values are opaque bytes (the caller encodes them). Never
knows about regions, epochs or raft; never commits on its own: writes are staged into a
`WriteBatch` so they join the same transaction as the raft persistence and localmeta updates
of an apply.

Ranges are [start, end) with end None or b"" meaning +infinity. Reads take an optional `txn`
so a caller can read KV data and localmeta in one consistent read transaction
(`env.read(lambda txn: ...)`), e.g. to build a snapshot at a known applied index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.errors import InvalidKeyError
from nokvpy.storage.schema import KV as KV_DB
from nokvpy.storage.schema import MAX_KEY_SIZE

Pair = tuple[bytes, bytes]


def check_key(key: bytes) -> bytes:
    if not key or len(key) > MAX_KEY_SIZE:
        raise InvalidKeyError(f"key must be 1..{MAX_KEY_SIZE} bytes, got {len(key)}")
    return key


class KV:
    """Point reads, range scans and staged writes on the shared KV table."""

    def __init__(self, env: Env):
        self._env = env
        self._db = env.db(KV_DB)

    # ------------------------------------------------------------ reads

    def get(self, key: bytes, *, txn: Any = None) -> bytes | None:
        if txn is not None:
            return txn.get(key, db=self._db)
        db = self._db
        return self._env.read(lambda t: t.get(key, db=db))

    def scan(
        self,
        start: bytes,
        end: bytes | None = None,
        limit: int | None = None,
        *,
        reverse: bool = False,
        txn: Any = None,
    ) -> list[Pair]:
        """Pairs with start <= key < end in key order (descending if reverse), at most limit."""
        if txn is not None:
            return self._scan(txn, start, end or None, limit, reverse)
        return self._env.read(lambda t: self._scan(t, start, end or None, limit, reverse))

    def _scan(
        self, txn: Any, start: bytes, end: bytes | None, limit: int | None, reverse: bool
    ) -> list[Pair]:
        out: list[Pair] = []
        if limit is not None and limit <= 0:
            return out
        with txn.cursor(db=self._db) as cur:
            if not reverse:
                if not cur.set_range(start or b"\x00"):
                    return out
                for k, v in cur:
                    if end is not None and k >= end:
                        break
                    out.append((k, v))
                    if limit is not None and len(out) >= limit:
                        break
                return out
            # Descending: position on the last key < end.
            if end is None:
                ok = cur.last()
            elif cur.set_range(end):
                ok = cur.prev()  # the last key < end
            else:
                ok = cur.last()  # every key is < end
            while ok:
                k = cur.key()
                if k < start:
                    break
                out.append((k, cur.value()))
                if limit is not None and len(out) >= limit:
                    break
                ok = cur.prev()
            return out

    def export_range(self, start: bytes, end: bytes | None, *, txn: Any = None) -> list[Pair]:
        """Every pair in [start, end) from one consistent read transaction (a range snapshot)."""
        return self.scan(start, end, txn=txn)

    def iter_range(
        self, start: bytes, end: bytes | None, *, chunk: int = 1024
    ) -> Iterator[list[Pair]]:
        """[start, end) in chunks, each from its own short read transaction. Not a consistent
        snapshot across chunks; for large scans that must not hold one transaction long."""
        end = end or None
        cursor_start = start
        while True:
            pairs = self.scan(cursor_start, end, chunk)
            if not pairs:
                return
            yield pairs
            if len(pairs) < chunk:
                return
            cursor_start = pairs[-1][0] + b"\x00"

    def walk_range(self, txn: Any, start: bytes, end: bytes | None) -> Iterator[Pair]:
        """Every pair in [start, end) in key order, read lazily from the caller's read
        transaction `txn` (consume it inside that transaction: `env.read(lambda txn: ...)`),
        as LMDB holds it (no decoding, even in a subclass). For a pass over a range that
        must agree with other reads of the same transaction without holding it all in
        memory (a digest of a region at its applied index)."""
        end = end or None
        with txn.cursor(db=self._db) as cur:
            if not cur.set_range(start or b"\x00"):
                return
            for k, v in cur:
                if end is not None and k >= end:
                    return
                yield k, v

    def range_stats(self, start: bytes, end: bytes | None) -> tuple[int, int]:
        """(number of keys, bytes of keys + values) in [start, end); a full range scan."""
        end = end or None
        db = self._db

        def read(txn):
            n = size = 0
            with txn.cursor(db=db) as cur:
                if cur.set_range(start or b"\x00"):
                    for k, v in cur:
                        if end is not None and k >= end:
                            break
                        n += 1
                        size += len(k) + len(v)
            return n, size

        return self._env.read(read)

    # ------------------------------------------------------------ staged writes

    def stage_put(self, batch: WriteBatch, key: bytes, value: bytes) -> None:
        batch.put(KV_DB, check_key(key), value)

    def stage_delete(self, batch: WriteBatch, key: bytes) -> None:
        batch.delete(KV_DB, check_key(key))

    def stage_delete_range(self, batch: WriteBatch, start: bytes, end: bytes | None) -> None:
        batch.delete_range(KV_DB, start or b"\x00", end or None)

    def stage_import_range(
        self, batch: WriteBatch, start: bytes, end: bytes | None, pairs: Iterable[Pair]
    ) -> int:
        """Replace [start, end) with `pairs` (a range snapshot); returns the pair count.
        Every key must fall inside the range."""
        end = end or None
        items = []
        for k, v in pairs:
            check_key(k)
            if k < start or (end is not None and k >= end):
                raise InvalidKeyError(f"snapshot key {k!r} outside range [{start!r}, {end!r})")
            items.append((k, v))
        self.stage_delete_range(batch, start, end)
        batch.put_many(KV_DB, items)
        return len(items)
