"""TransitionIDs and the shape of topology events: one home for both (DESIGN 4.6, 7).

Owns: which transition kind each event kind belongs to, which payload type each event kind
carries, the deterministic TransitionID of a topology event (`split:<parent>:<key hex>`,
`merge:<left>:<right>`, `peer:<region>:<add|remove>:<store>:<peer>`, `tombstone:<region>`)
and a transition event's (bases, targets). Metaroot validates and folds with these, the
coordinator's catalog marks pending regions with them and stores name the transitions they
execute with them: all three format an id here, never by hand.
Never: I/O, state, or anything beyond looking at one event.
"""

from __future__ import annotations

from nokvpy.protocol.enums import EventKind, TransitionKind
from nokvpy.protocol.grants import GrantInherited, GrantIssued, GrantRetired, GrantSealed
from nokvpy.protocol.records import (
    AllocatorFence,
    PeerChange,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionRemoval,
    RegionUpsert,
    RootEvent,
    StoreMembership,
)

TRANSITION_KINDS: dict[EventKind, TransitionKind] = {
    EventKind.SPLIT_PLANNED: TransitionKind.SPLIT,
    EventKind.SPLIT_COMMITTED: TransitionKind.SPLIT,
    EventKind.SPLIT_CANCELLED: TransitionKind.SPLIT,
    EventKind.MERGE_PLANNED: TransitionKind.MERGE,
    EventKind.MERGED: TransitionKind.MERGE,
    EventKind.MERGE_CANCELLED: TransitionKind.MERGE,
    EventKind.PEER_ADDITION_PLANNED: TransitionKind.PEER_ADDITION,
    EventKind.PEER_ADDED: TransitionKind.PEER_ADDITION,
    EventKind.PEER_ADDITION_CANCELLED: TransitionKind.PEER_ADDITION,
    EventKind.PEER_REMOVAL_PLANNED: TransitionKind.PEER_REMOVAL,
    EventKind.PEER_REMOVED: TransitionKind.PEER_REMOVAL,
    EventKind.PEER_REMOVAL_CANCELLED: TransitionKind.PEER_REMOVAL,
    EventKind.REGION_TOMBSTONED: TransitionKind.TOMBSTONE,
}

PAYLOAD_TYPES: dict[EventKind, type] = {
    EventKind.STORE_JOINED: StoreMembership,
    EventKind.STORE_RETIRED: StoreMembership,
    EventKind.ID_ALLOCATOR_FENCED: AllocatorFence,
    EventKind.TSO_ALLOCATOR_FENCED: AllocatorFence,
    EventKind.REGION_BOOTSTRAP: RegionUpsert,
    EventKind.REGION_DESCRIPTOR_PUBLISHED: RegionUpsert,
    EventKind.REGION_TOMBSTONED: RegionRemoval,
    EventKind.GRANT_ISSUED: GrantIssued,
    EventKind.GRANT_SEALED: GrantSealed,
    EventKind.GRANT_RETIRED: GrantRetired,
    EventKind.GRANT_INHERITED: GrantInherited,
    EventKind.RECOVERY_RECORDED: RecoveryRecord,
    **{k: RangeSplit for k in (EventKind.SPLIT_PLANNED, EventKind.SPLIT_COMMITTED,
                               EventKind.SPLIT_CANCELLED)},
    **{k: RangeMerge for k in (EventKind.MERGE_PLANNED, EventKind.MERGED,
                               EventKind.MERGE_CANCELLED)},
    **{k: PeerChange for k in (EventKind.PEER_ADDITION_PLANNED, EventKind.PEER_ADDED,
                               EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_REMOVAL_PLANNED,
                               EventKind.PEER_REMOVED, EventKind.PEER_REMOVAL_CANCELLED)},
}


def transition_kind(event: RootEvent) -> TransitionKind | None:
    try:
        return TRANSITION_KINDS.get(EventKind(event.kind))
    except ValueError:
        return None


def transition_id(event: RootEvent) -> str:
    """Deterministic TransitionID of a topology event; "" for every other event."""
    try:
        kind = EventKind(event.kind)
    except (ValueError, TypeError):
        return ""
    p = event.payload
    if not isinstance(p, PAYLOAD_TYPES.get(kind, type(None))):
        return ""
    if isinstance(p, RangeSplit):
        if not isinstance(p.split_key, bytes):
            return f"split:{p.parent_region_id}:"
        return split_transition_id(p.parent_region_id, p.split_key)
    if isinstance(p, RangeMerge):
        return merge_transition_id(p.left_region_id, p.right_region_id)
    if isinstance(p, PeerChange):
        adding = TRANSITION_KINDS[kind] == TransitionKind.PEER_ADDITION
        return peer_transition_id(p.region_id, adding, p.store_id, p.peer_id)
    if isinstance(p, RegionRemoval):
        return tombstone_transition_id(p.region_id)
    return ""


def shape(event: RootEvent) -> tuple[tuple[RegionDescriptor, ...], tuple[RegionDescriptor, ...]]:
    """(bases, targets) of a range or peer transition event (payload assumed well typed)."""
    p = event.payload
    if isinstance(p, RangeSplit):
        return (p.base_parent,), (p.left, p.right)
    if isinstance(p, RangeMerge):
        return (p.base_left, p.base_right), (p.merged,)
    if isinstance(p, PeerChange):
        return (p.base,), (p.target,)
    raise TypeError(type(p).__name__)


def split_transition_id(parent_region_id: int, split_key: bytes) -> str:
    return f"split:{parent_region_id}:{split_key.hex()}"


def merge_transition_id(left_region_id: int, right_region_id: int) -> str:
    return f"merge:{left_region_id}:{right_region_id}"


def peer_transition_id(region_id: int, adding: bool, store_id: int, peer_id: int) -> str:
    return f"peer:{region_id}:{'add' if adding else 'remove'}:{store_id}:{peer_id}"


def tombstone_transition_id(region_id: int) -> str:
    return f"tombstone:{region_id}"
