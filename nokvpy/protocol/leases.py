"""Leases: keys that live only while their lease is kept alive (DESIGN 5).

Owns: where a lease lives (its record, key `LEASE_PREFIX` + the lease id as u64 big-endian,
value its TTL in milliseconds as u32 big-endian, in whichever region holds that key: that
region's leader is the lease's authority), the keep-alive and liveness requests to that
authority, and the raft entry a region uses to delete the keys of a lease that is gone. Never
judges expiry (raftstore.leases does, on the authority, with its monotonic clock).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.records import RegionEpoch
from nokvpy.protocol.store_rpc import KvContext

LEASE_PREFIX = b"\xff\xfflease/"  # reserved: lease records live under it
LEASE_PREFIX_END = b"\xff\xfflease0"
MIN_TTL_MS = 1000
MAX_TTL_MS = 24 * 3600 * 1000
MAX_LEASE_ID = (1 << 63) - 1
_TTL = struct.Struct(">I")


def lease_key(lease_id: int) -> bytes:
    return LEASE_PREFIX + lease_id.to_bytes(8, "big")


def lease_id_of(key: bytes) -> int | None:
    """The lease id of a record key (None: not one)."""
    if len(key) != len(LEASE_PREFIX) + 8 or not key.startswith(LEASE_PREFIX):
        return None
    return int.from_bytes(key[len(LEASE_PREFIX):], "big")


def encode_ttl(ttl_ms: int) -> bytes:
    return _TTL.pack(ttl_ms)


def decode_ttl(raw: bytes) -> int | None:
    """A record's TTL in ms (None: not a record value)."""
    if len(raw) != _TTL.size:
        return None
    (ttl,) = _TTL.unpack(raw)
    return ttl if MIN_TTL_MS <= ttl <= MAX_TTL_MS else None


@wire_type(436)
@dataclass(slots=True, frozen=True)
class LeaseKeepAliveRequest:
    """Extend lease `lease_id` by its TTL from now: to the leader of the region holding its
    record (`ctx`)."""

    ctx: KvContext
    lease_id: int


@wire_type(437)
@dataclass(slots=True, frozen=True)
class LeaseKeepAliveReply:
    """`found` False: the lease expired or was revoked (its keys go or are gone)."""

    found: bool
    ttl_ms: int = 0


@wire_type(438)
@dataclass(slots=True, frozen=True)
class LeaseAliveRequest:
    """Is lease `lease_id` alive (its record exists, read linearizably)? A store asks the
    lease's authority before deleting the keys attached to it."""

    ctx: KvContext
    lease_id: int


@wire_type(439)
@dataclass(slots=True, frozen=True)
class LeaseAliveReply:
    alive: bool


@wire_type(440)
@dataclass(slots=True, frozen=True)
class LeaseSweepCommand:
    """The raft entry a region's leader proposes once lease `lease_id` is gone: at apply,
    each of `keys` still attached to that lease is deleted (a key written since without it
    stays), and the keys leave the region's lease index."""

    region_id: int
    epoch: RegionEpoch
    lease_id: int
    keys: list[bytes]
