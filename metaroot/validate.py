"""Validation of rooted events: the field checks and the state checks the handlers run.

Owns: the kind / payload-type check (`check_kind`), the state-independent shape check of an
event (`check_shape`, what `RootState.precheck` runs before a raft round), descriptor
validity (`check_descriptor`), the split / merge / peer-change payload rules, and the checks
against the current truth a handler needs before it installs anything: peers only on live
stores, no range overlap, fresh region ids, and the fence witness rule for recovery records.
Never: changes state (every check either returns or raises `RootEventRejected`), decides a
transition's situation (metaroot.classify does), or does I/O.
"""

from __future__ import annotations

from metaroot.errors import is_int, need, reject
from metaroot.facts import RootFacts
from nokvpy.protocol.enums import EventKind, RegionState, RetryClass, TransitionKind
from nokvpy.protocol.records import (
    AllocatorFence,
    PeerChange,
    PeerMeta,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionEpoch,
    RegionRemoval,
    RegionUpsert,
    RootEvent,
    RootToken,
    StoreMembership,
)
from nokvpy.protocol.transitions import PAYLOAD_TYPES, TRANSITION_KINDS


def check_kind(event: RootEvent) -> EventKind:
    if not isinstance(event, RootEvent):
        raise reject("invalid_event", f"not a RootEvent: {type(event).__name__}")
    try:
        kind = EventKind(event.kind)
    except (ValueError, TypeError):
        raise reject("unknown_kind", f"event kind {event.kind!r}") from None
    expected = PAYLOAD_TYPES[kind]
    if not isinstance(event.payload, expected):
        raise reject("payload_type", f"{kind.name} needs {expected.__name__}, got "
                      f"{type(event.payload).__name__}")
    if not isinstance(event.request_id, str):
        raise reject("invalid_request_id", repr(event.request_id))
    return kind


def check_shape(event: RootEvent) -> EventKind:
    """Kind, payload type and the state-independent field checks of `event`."""
    kind = check_kind(event)
    p = event.payload
    if isinstance(p, RegionUpsert):
        check_descriptor(p.descriptor)
    elif isinstance(p, RangeSplit):
        check_split(p)
    elif isinstance(p, RangeMerge):
        check_merge(p)
    elif isinstance(p, PeerChange):
        check_peer_change(p, TRANSITION_KINDS[kind] == TransitionKind.PEER_ADDITION)
    elif isinstance(p, StoreMembership):
        need(is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    elif isinstance(p, AllocatorFence):
        need(is_int(p.minimum) and p.minimum >= 0, "invalid_fence", f"minimum {p.minimum!r}")
    elif isinstance(p, RegionRemoval):
        need(is_int(p.region_id) and p.region_id > 0, "invalid_region", "region_id")
    return kind


def check_descriptor(d: object, what: str = "descriptor") -> RegionDescriptor:
    """Structural validity of a descriptor (missing or mistyped fields, empty range, peers)."""
    need(isinstance(d, RegionDescriptor), "invalid_descriptor", f"{what}: not a descriptor")
    assert isinstance(d, RegionDescriptor)
    need(is_int(d.region_id) and d.region_id > 0, "invalid_descriptor", f"{what}: region_id")
    need(isinstance(d.start_key, bytes) and isinstance(d.end_key, bytes),
          "invalid_descriptor", f"{what}: keys must be bytes")
    need(not d.end_key or d.start_key < d.end_key, "invalid_descriptor",
          f"{what}: empty range [{d.start_key!r}, {d.end_key!r})")
    e = d.epoch
    need(isinstance(e, RegionEpoch) and is_int(e.version) and is_int(e.conf_ver)
          and e.version >= 1 and e.conf_ver >= 1, "invalid_descriptor", f"{what}: epoch")
    need(isinstance(d.peers, tuple | list) and len(d.peers) > 0, "invalid_descriptor",
          f"{what}: needs at least one peer")
    for p in d.peers:
        need(isinstance(p, PeerMeta) and is_int(p.store_id) and is_int(p.peer_id)
              and p.store_id > 0 and p.peer_id > 0, "invalid_descriptor", f"{what}: peer {p!r}")
    need(len({p.store_id for p in d.peers}) == len(d.peers)
          and len({p.peer_id for p in d.peers}) == len(d.peers), "invalid_descriptor",
          f"{what}: duplicate store or peer id")
    need(any(not p.learner for p in d.peers), "invalid_descriptor", f"{what}: no voter")
    need(d.state == RegionState.RUNNING, "invalid_descriptor", f"{what}: state must be RUNNING")
    return d


def check_split(p: RangeSplit) -> None:
    base = check_descriptor(p.base_parent, "base_parent")
    left, right = check_descriptor(p.left, "left"), check_descriptor(p.right, "right")
    need(is_int(p.parent_region_id) and base.region_id == p.parent_region_id,
          "payload_mismatch", "base_parent.region_id != parent_region_id")
    need(isinstance(p.split_key, bytes) and len(p.split_key) > 0, "invalid_split",
          "split_key must be non-empty bytes")
    need(base.start_key < p.split_key and (not base.end_key or p.split_key < base.end_key),
          "invalid_split", f"split key {p.split_key!r} outside parent range")
    need(left.start_key == base.start_key and left.end_key == p.split_key
          and right.start_key == p.split_key and right.end_key == base.end_key,
          "invalid_split", "children must partition the parent range at the split key")
    need(left.region_id != right.region_id, "invalid_split", "children share a region id")
    need(left.epoch.version > base.epoch.version and right.epoch.version > base.epoch.version,
          "invalid_split", "children must have a higher epoch version than the parent")


def check_merge(p: RangeMerge) -> None:
    bl, br = check_descriptor(p.base_left, "base_left"), check_descriptor(p.base_right, "base_right")
    m = check_descriptor(p.merged, "merged")
    need(bl.region_id == p.left_region_id and br.region_id == p.right_region_id,
          "payload_mismatch", "base ids must equal left/right region ids")
    need(bl.region_id != br.region_id, "invalid_merge", "cannot merge a region with itself")
    need(bool(bl.end_key) and bl.end_key == br.start_key, "invalid_merge",
          "regions are not adjacent")
    need(m.start_key == bl.start_key and m.end_key == br.end_key, "invalid_merge",
          "merged range must be the union of the sources")
    need(m.epoch.version > max(bl.epoch.version, br.epoch.version), "invalid_merge",
          "merged epoch version must exceed both sources")


def check_peer_change(p: PeerChange, adding: bool) -> None:
    base, target = check_descriptor(p.base, "base"), check_descriptor(p.target, "target")
    need(is_int(p.store_id) and is_int(p.peer_id) and p.store_id > 0 and p.peer_id > 0,
          "invalid_peer_change", "store_id / peer_id must be > 0")
    need(base.region_id == target.region_id == p.region_id, "payload_mismatch",
          "base/target region ids must equal region_id")
    need(base.start_key == target.start_key and base.end_key == target.end_key
          and base.epoch.version == target.epoch.version, "invalid_peer_change",
          "a peer change keeps the range and epoch version")
    need(target.epoch.conf_ver > base.epoch.conf_ver, "invalid_peer_change",
          "target conf_ver must exceed base conf_ver")
    base_peers = {(q.store_id, q.peer_id): q for q in base.peers}
    target_peers = {(q.store_id, q.peer_id): q for q in target.peers}
    key = (p.store_id, p.peer_id)
    if adding:
        need(key not in base_peers and key in target_peers and
              all(q.store_id != p.store_id for q in base.peers), "invalid_peer_change",
              f"addition of {key} must add exactly that peer")
        need({k: v for k, v in target_peers.items() if k != key} == base_peers,
              "invalid_peer_change", "a peer addition changes nothing else")
    else:
        need(key in base_peers and key not in target_peers, "invalid_peer_change",
              f"removal of {key} must remove exactly that peer")
        need({k: v for k, v in base_peers.items() if k != key} == target_peers,
              "invalid_peer_change", "a peer removal changes nothing else")


def check_new_peers(state: RootFacts, target: RegionDescriptor,
                     olds: tuple[RegionDescriptor, ...]) -> None:
    """Peers a descriptor places on stores the old descriptors did not use must sit on
    joined, live stores."""
    known = {p.store_id for o in olds for p in o.peers}
    for p in target.peers:
        if p.store_id in known:
            continue
        s = state.stores.get(p.store_id)
        if s is None or s.retired:
            raise reject("store_not_live", f"region {target.region_id} peer on store "
                          f"{p.store_id} which is {'retired' if s else 'not joined'}",
                          RetryClass.REFRESH)


def _overlap(a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes) -> bool:
    return (not b_end or a_start < b_end) and (not a_end or b_start < a_end)


def check_no_overlap(state: RootFacts, d: RegionDescriptor, exclude: set[int]) -> None:
    for start, rid in state.range_index.iter_from(d.start_key):
        if d.end_key and start >= d.end_key:
            return
        if rid in exclude:
            continue
        other = state.descriptors[rid]
        if _overlap(d.start_key, d.end_key, other.start_key, other.end_key):
            raise reject("range_overlap", f"region {d.region_id} [{d.start_key!r}, "
                          f"{d.end_key!r}) overlaps region {rid}", RetryClass.REFRESH)


def check_fresh_ids(state: RootFacts, targets, bases) -> None:
    base_ids = {b.region_id for b in bases}
    for t in targets:
        if t.region_id not in base_ids and t.region_id in state.descriptors:
            raise reject("region_id_in_use", f"region {t.region_id} already exists")


def check_fence_witness(state: RootFacts, token: RootToken, r: RecoveryRecord) -> None:
    """A fence witness names a plan pending now, observed between its plan and this event,
    and not one its leader already reported applied."""
    entry = state.pending.get(r.transition_id)
    if entry is None:
        raise reject("fence_not_pending", f"{r.transition_id!r} has no pending plan to fence",
                      RetryClass.REFRESH)
    source = entry.source_token.index
    if not source <= r.observed_root_index < token.index:
        raise reject("invalid_recovery_record",
                      f"fence of {r.transition_id} observed at root index "
                      f"{r.observed_root_index}, outside [{source}, {token.index - 1}] (its "
                      "plan's index .. the last applied event)")
    seen = state.applied_report(r.transition_id, source)
    if seen is not None:
        raise reject("fence_after_apply",
                      f"the region leader reported {r.transition_id} (planned at index "
                      f"{source}) applied at root index {seen}: it cannot be fenced")


__all__ = ["check_descriptor"]
