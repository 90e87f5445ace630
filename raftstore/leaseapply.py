"""A lease sweep at apply time: the keys of a lease that is gone, deleted through raft.

Owns: what every replica does when a `LeaseSweepCommand` applies in its region: each listed
key still attached to the swept lease (its stored value carries that lease: raftstore.kvformat)
is deleted, in this apply's overlay and batch (so a watch sees the delete); a key written
since without that lease stays; every listed key leaves the lease index. Deterministic: it
reads only the region's own state as this entry applies. Never judges whether the lease is
gone (raftstore.leases asks the lease's authority before proposing) and never commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.leases import LeaseSweepCommand
from nokvpy.protocol.raftstore_cmds import KvResult
from nokvpy.storage import LeaseIndex, WriteBatch
from raftstore.kvformat import INVALID, in_range, stored_lease, valid_key

OK = KvResult(True)


def apply_sweep(batch: WriteBatch, cmd: LeaseSweepCommand, desc: RegionDescriptor,
                overlay: dict[bytes, Any], leases: LeaseIndex | None,
                current: Callable[[bytes], bytes | None]) -> KvResult:
    """Apply the sweep against `desc`'s range; refused whole (nothing written) when
    malformed, reaching outside the range, or on a store without a lease index."""
    if not isinstance(cmd.keys, list) or not isinstance(cmd.lease_id, int) or \
            leases is None or not all(valid_key(k) and in_range(desc, k) for k in cmd.keys):
        return KvResult(False, error=INVALID)
    for key in cmd.keys:
        raw = current(key)
        if raw is not None and stored_lease(raw) == cmd.lease_id:
            overlay[key] = None
            batch.delete("kv", key)
        leases.stage_detach(batch, cmd.lease_id, key)
    return OK


def restore_lease_index(batch: WriteBatch, leases: LeaseIndex, desc: RegionDescriptor,
                        pairs: list[tuple[bytes, bytes]]) -> None:
    """A snapshot replaces `desc`'s range: its lease index, rebuilt from the values' headers."""
    leases.stage_forget_range(batch, desc.start_key, desc.end_key)
    for key, raw in pairs:
        lease = stored_lease(raw)
        if lease:
            leases.stage_attach(batch, lease, key)
