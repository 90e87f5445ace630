"""The lease index: which keys were written with which lease.

Owns: the `kv_leased` database (key: lease id u64 big-endian + user key; empty value). An
entry is added when a key is written with a lease and removed when that lease's sweep
applies; a key written again without the lease keeps its entry until then (the sweep
checks the stored value, so such an entry deletes nothing). Never knows whether a lease is
alive (raftstore.leases asks its authority) and never commits on its own.
"""

from __future__ import annotations

import struct
from typing import Any

from nokvpy.storage.env import Env, WriteBatch
from nokvpy.storage.schema import KV_LEASED

_ID = struct.Struct(">Q")


class LeaseIndex:
    """Staged writes and reads of the lease index."""

    def __init__(self, env: Env):
        self._env = env
        self._db = env.db(KV_LEASED)

    def stage_attach(self, batch: WriteBatch, lease: int, key: bytes) -> None:
        batch.put(KV_LEASED, _ID.pack(lease) + key, b"")

    def stage_detach(self, batch: WriteBatch, lease: int, key: bytes) -> None:
        batch.delete(KV_LEASED, _ID.pack(lease) + key)

    def leases_in(self, lo: bytes, hi: bytes, *, limit: int = 10_000,
                  txn: Any = None) -> dict[int, list[bytes]]:
        """lease id -> its indexed keys in [lo, hi) (hi b"": unbounded), at most `limit`
        keys in all."""
        def read(t: Any) -> dict[int, list[bytes]]:
            out: dict[int, list[bytes]] = {}
            n = 0
            with t.cursor(db=self._db) as cur:
                for k, _ in cur:
                    key = k[_ID.size:]
                    if key >= lo and (not hi or key < hi):
                        out.setdefault(_ID.unpack_from(k)[0], []).append(key)
                        n += 1
                        if n >= limit:
                            break
            return out

        return read(txn) if txn is not None else self._env.read(read)

    def stage_forget_range(self, batch: WriteBatch, lo: bytes, hi: bytes) -> None:
        """Remove every entry of a key in [lo, hi) (a snapshot replaces the range)."""
        for lease, keys in self.leases_in(lo, hi, limit=1 << 62).items():
            for key in keys:
                self.stage_detach(batch, lease, key)
