"""Leases: keys that live only while a lease is kept alive, as etcd's (DESIGN 5).

Owns: `Client.grant`, `keep_alive`, `revoke`, `leases` and the lease check of
`put(..., lease=)` (the `LeaseOps` methods `Client` inherits), and `LeaseNotFoundError`.

A lease is a record (nokvpy.protocol.leases: key `LEASE_PREFIX` + id, value its TTL) in
whichever region holds that key; that region's leader is its authority and expires it TTL
after the last keep-alive that reached it (a new authority extends by a TTL from when it took
over, never shortens). Keys written with the lease are deleted through raft once it is gone
(within about a second; a watch sees the deletes). Count a lease alive for TTL from when a
keep-alive was SENT: its deadline is at least that. Ids are random 63-bit numbers, never
reused. Never judges expiry here.
"""

from __future__ import annotations

import secrets
from typing import Any

from nokvpy.client.errors import InvalidRequestError, NokvError
from nokvpy.protocol.leases import (
    LEASE_PREFIX,
    LEASE_PREFIX_END,
    MAX_TTL_MS,
    MIN_TTL_MS,
    LeaseKeepAliveReply,
    LeaseKeepAliveRequest,
    decode_ttl,
    encode_ttl,
    lease_id_of,
    lease_key,
)


class LeaseNotFoundError(NokvError):
    """The lease expired or was revoked (its keys are deleted or about to be)."""

    reason = "lease_not_found"


class LeaseOps:
    """`grant`, `keep_alive`, `revoke` and `leases`, inherited by `Client`
    (nokvpy.client.kv): they run on its `put`, `get`, `delete`, `scan` and `_execute`."""

    async def grant(self, ttl: float, timeout: float | None = None) -> int:
        """A new lease of `ttl` seconds (1 s to 24 h); returns its id."""
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise InvalidRequestError(f"ttl must be seconds, not {ttl!r}")
        ttl_ms = int(round(ttl * 1000))
        if not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
            raise InvalidRequestError(f"ttl must be {MIN_TTL_MS // 1000} s to "
                                      f"{MAX_TTL_MS // 1000} s, not {ttl!r}")
        lease_id = secrets.randbits(63) or 1
        await self.put(lease_key(lease_id), encode_ttl(ttl_ms), timeout)
        return lease_id

    async def keep_alive(self, lease_id: int, timeout: float | None = None) -> float:
        """Extend the lease by its TTL from now; returns the TTL in seconds.
        LeaseNotFoundError when it is gone."""
        key = lease_key(_check_id(lease_id))
        reply: LeaseKeepAliveReply = await self._execute(
            key, lambda ctx: LeaseKeepAliveRequest(ctx, lease_id), write=False,
            timeout=timeout)
        if not reply.found:
            raise LeaseNotFoundError(f"lease {lease_id} expired or was revoked")
        return reply.ttl_ms / 1000.0

    async def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """End the lease now: its keys are deleted (through raft, within about a second)."""
        await self.delete(lease_key(_check_id(lease_id)), timeout)

    async def leases(self, timeout: float | None = None) -> dict[int, float]:
        """Every lease (id -> TTL in seconds) whose record exists now."""
        out: dict[int, float] = {}
        pairs = await self.scan(LEASE_PREFIX, LEASE_PREFIX_END, 100_000,
                                timeout)
        for key, raw in pairs:
            lid, ttl_ms = lease_id_of(key), decode_ttl(raw)
            if lid is not None and ttl_ms is not None:
                out[lid] = ttl_ms / 1000.0
        return out

    async def _check_lease(self, lease_id: int, timeout: float | None) -> None:
        raw = await self.get(lease_key(_check_id(lease_id)), timeout=timeout)
        if raw is None or decode_ttl(raw) is None:
            raise LeaseNotFoundError(f"lease {lease_id} expired or was revoked")


def _check_id(lease_id: Any) -> int:
    if isinstance(lease_id, bool) or not isinstance(lease_id, int) or \
            not 0 < lease_id < 1 << 63:
        raise InvalidRequestError(f"a lease id is a positive 63-bit int, not {lease_id!r}")
    return lease_id
