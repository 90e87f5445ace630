"""Payloads of store raft entries and snapshots (DESIGN 5). Tags 450-499.

Owns: the records a region's raft log carries (`KvCommand`, `AdminCommand`), the region
snapshot image a lagging or new peer installs (`RegionSnapshot`), and the tombstone record a
store keeps for a removed region. Every command carries the region epoch it was proposed
under so apply can refuse a command that a range change made stale. Never holds behaviour:
`raftstore.apply` interprets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.records import RegionDescriptor, RegionEpoch


class KvOpKind(IntEnum):
    PUT = 1
    DELETE = 2
    CAS = 3  # value = new value (None deletes); expected = required value (None = absent)


@wire_type(450)
@dataclass(slots=True, frozen=True)
class KvOp:
    kind: KvOpKind
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    lease: int = 0  # a PUT: the lease the key lives by (nokvpy.protocol.leases; 0: none)


@wire_type(451)
@dataclass(slots=True, frozen=True)
class KvCommand:
    """One client write (or a batch of them) for one region, as proposed on its leader."""

    region_id: int
    epoch: RegionEpoch
    ops: list[KvOp]


@wire_type(452)
@dataclass(slots=True, frozen=True)
class AdminCommand:
    """A topology command in a region's log (split, merge, ...). `payload` is the op's own
    record. Extension point for the topology issue: apply dispatches on `op`."""

    op: str
    region_id: int
    epoch: RegionEpoch
    transition_id: str = ""
    payload: object = None


@wire_type(453)
@dataclass(slots=True, frozen=True)
class RegionSnapshot:
    """A region's state at `applied_index`: descriptor plus every KV pair in its range, and
    its change log for watches (raftstore.changelog: the changes, as the change table reads
    them, and the floor they are whole above; None from a store that keeps none)."""

    descriptor: RegionDescriptor
    applied_index: int
    applied_term: int
    pairs: list[tuple[bytes, bytes]]
    changes: list[tuple[int, int, int, int, bytes, bytes | None, int]] | None = None
    change_floor: tuple[int, int] | None = None


@wire_type(454)
@dataclass(slots=True, frozen=True)
class RegionTombstone:
    """Why a region is gone from this store; raft traffic for it is dropped afterwards."""

    region_id: int
    epoch: RegionEpoch
    peer_id: int = 0
    reason: str = ""


@wire_type(455)
@dataclass(slots=True, frozen=True)
class KvResult:
    """The outcome of applying one KvCommand (kept in memory; not sent as is)."""

    ok: bool
    succeeded: bool = True  # CAS predicate held (all ops)
    current: bytes | None = None  # CAS: value seen when the predicate failed
    error: str = ""  # "epoch_mismatch" | "key_not_in_region" | "invalid" when not ok


# ---- topology (raftstore.topology): admin command payloads, outbox entries --------------


@wire_type(456)
@dataclass(slots=True, frozen=True)
class SplitPayload:
    """AdminCommand("split") payload: the parent keeps `left` (its id, version + 1), the new
    region `right` starts at `split_key` on the same stores. `base` is the parent as planned
    (apply refuses the command unless the parent is still exactly that)."""

    split_key: bytes
    left: RegionDescriptor
    right: RegionDescriptor
    base: RegionDescriptor
    executor_store: int = 0  # the store that planned it (publishes first; others back up)


@wire_type(457)
@dataclass(slots=True, frozen=True)
class MergePayload:
    """AdminCommand("prepare_merge" | "rollback_merge") in the source's log, or
    AdminCommand("commit_merge") in the target's log. `merged` is the target after the merge
    (its id, the union range, version above both)."""

    target: RegionDescriptor
    source: RegionDescriptor
    merged: RegionDescriptor
    left_region_id: int
    right_region_id: int
    executor_store: int = 0


@wire_type(458)
@dataclass(slots=True, frozen=True)
class PeerChangePayload:
    """Carried (encoded) in the context of a membership conf change. `step`: "add_learner"
    (no epoch bump), "promote" / "remove" (conf_ver + 1, the terminal step), or
    "remove_learner" (compensation of an unfinished addition, no epoch bump). `base` and
    `target` are the planned PeerChange descriptors."""

    step: str
    store_id: int
    peer_id: int
    base: RegionDescriptor
    target: RegionDescriptor
    executor_store: int = 0


@wire_type(459)
@dataclass(slots=True, frozen=True)
class OutboxEntry:
    """One durable outbox record: a rooted event this store still must publish. `role`:
    "primary" (this store executed the transition) or "backup" (it only applied it; it
    publishes after a grace period in case the executor cannot)."""

    transition_id: str
    event: object  # a nokvpy.protocol.records.RootEvent
    role: str = "primary"
    purpose: str = "terminal"  # terminal | recovery | descriptor
    region_id: int = 0
    created_at_ms: int = 0
