"""Which peers of a region a store's tombstone keeps out (TiKV's rule); pure.

Owns: the rule every gate of a store applies before it lets a region's raft traffic reach a
peer, creates a replica (from a raft message, the coordinator's `should_host` or a restart)
or keeps hosting one: a tombstone (`RegionTombstone`: region id, the destroyed peer's id and
the epoch it had) blocks its own peer id and every lower one, and anything addressed at an
epoch older than the tombstone's; a later peer of the same region (a replica added here
again: peer ids are never reused and only grow) passes. A region merged away, or a
tombstone that names no peer (unknown), blocks every peer: the region id is dead here.
Used by the store's gates (raftstore.store) and restart derivation (raftstore.restart).
Never does I/O, never decides to destroy anything (the `tombstone` admin
operation that asks root to remove a region is in raftstore.topology.service).
"""

from __future__ import annotations

from nokvpy.protocol import RegionEpoch
from nokvpy.protocol.raftstore_cmds import RegionTombstone
from nokvpy.wire import DecodeError, decode

UNKNOWN_EPOCH = RegionEpoch(0, 0)


def blocks(tomb: RegionTombstone | None, peer_id: int, epoch: RegionEpoch | None) -> str:
    """Why `tomb` keeps peer `peer_id` (addressed at `epoch`, None: not known) of its region
    out of this store ("" when it does not)."""
    if tomb is None:
        return ""
    if tomb.reason.startswith("merged"):
        return "merged"
    if tomb.peer_id <= 0:
        return "unknown_peer"
    if peer_id <= tomb.peer_id:
        return "old_peer"
    if epoch is not None and epoch.is_stale_against(tomb.epoch):
        return "stale_epoch"
    return ""


def decode_tombstone(region_id: int, raw: bytes | None) -> RegionTombstone:
    """The stored tombstone of `region_id`; an unreadable one blocks every peer."""
    try:
        tomb = decode(raw) if raw is not None else None
    except DecodeError:
        tomb = None
    if isinstance(tomb, RegionTombstone) and tomb.region_id == region_id:
        return tomb
    return RegionTombstone(region_id, UNKNOWN_EPOCH, 0, "unreadable tombstone")


def newer(old: RegionTombstone | None, new: RegionTombstone) -> RegionTombstone:
    """The tombstone to keep when `new` is written over `old`: the higher peer id wins (a
    region merged away stays merged)."""
    if old is None:
        return new
    if old.reason.startswith("merged") and not new.reason.startswith("merged"):
        return old
    if new.peer_id and old.peer_id > new.peer_id:
        return old
    return new
