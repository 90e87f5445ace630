"""Event handlers of the rooted state: what each accepted event changes (DESIGN 4.1, 6, 7).

Owns: one handler per event kind (`HANDLERS`), each taking the current `RootFacts`, the
token and the event, and returning the fields it changes (an empty dict is an accepted no-op);
the region mutation helper `_Regions` (descriptors, range index and pending entries of one
event); the application of the transition decision table (`_effect`); and the cancel guard
(a plan is cancelled only once its region leader recorded a fence for it, never after it
reported it applied) with its test-only switch.
Never: builds a new state (metaroot.state.RootState does, from the returned changes), checks
append fences or request ids, half-applies an event (a handler raises before returning
anything), or does I/O.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from metaroot import grants as _grants
from metaroot.classify import (
    TRANSITION_EFFECTS,
    Effect,
    EventClass,
    Situation,
    classify,
    event_class,
    touched_ids,
)
from metaroot.errors import is_int, need, reject
from metaroot.facts import FENCE_ACTION, RootFacts
from metaroot.validate import (
    check_descriptor,
    check_fence_witness,
    check_fresh_ids,
    check_merge,
    check_new_peers,
    check_no_overlap,
    check_peer_change,
    check_split,
)
from nokvpy.protocol.enums import (
    CANCEL_KINDS,
    PLANNED_KINDS,
    TERMINAL_KINDS,
    AllocatorKind,
    EventKind,
    RetryClass,
    TransitionKind,
)
from nokvpy.protocol.grants import PendingTransition, StoreRecord, Violation
from nokvpy.protocol.records import (
    AllocatorFence,
    RangeMerge,
    RangeSplit,
    RecoveryRecord,
    RegionDescriptor,
    RegionRemoval,
    RootEvent,
    RootToken,
    StoreMembership,
)
from nokvpy.protocol.transitions import TRANSITION_KINDS, shape, transition_id

# ---- the cancel guard (DESIGN 7: root guards its own truth) ---------------------------------
#
# Root restores a plan's bases (a MATCHING cancel) only when the plan's region leader has
# fenced it first: a RECOVERY_RECORDED event with action FENCE_ACTION for the TransitionID,
# observed at or after the plan's source index, says "the leader's log holds a fence that
# makes this plan impossible to apply, and it had not applied". A cancel of a plan whose
# leader reported it applied (a record with an APPLIED_ACTIONS action for the same plan) is
# refused even when fenced; a cancel of a plan whose terminal event is recorded is refused by
# the decision table (COMPLETED). Whoever sends the cancel, through a coordinator or a raw
# Append, gets the same refusal.
#
# Test-only switch: `set_cancel_guard(False)` turns the guard off in this process (this module
# is pure and reads no environment; a test process that wants it off for a real metaroot sets
# it from a `sitecustomize` keyed on UNSAFE_CANCEL_ENV, see tests/metaroot). It is
# re-exported by metaroot.state, where such shims import it from.
UNSAFE_CANCEL_ENV = "NOKV_UNSAFE_ROOT_CANCEL"
_cancel_guard = [True]


def set_cancel_guard(enabled: bool) -> None:
    """Turn the cancel guard on or off in this process (tests only)."""
    _cancel_guard[0] = bool(enabled)


def unsafe_cancel() -> bool:
    return not _cancel_guard[0]


# ---- region mutation helpers --------------------------------------------------------------


class _Regions:
    """Accumulates descriptor / index / pending changes for one event."""

    def __init__(self, state: RootFacts):
        self.descriptors = state.descriptors
        self.index = state.range_index
        self.pending = state.pending
        self.by_region = state.pending_by_region

    def remove(self, region_id: int) -> None:
        cur = self.descriptors.get(region_id)
        if cur is not None:
            self.index = self.index.remove(cur.start_key, region_id)
            self.descriptors = self.descriptors.delete(region_id)

    def install(self, d: RegionDescriptor, revision: int) -> None:
        self.remove(d.region_id)
        self.descriptors = self.descriptors.set(d.region_id, d.with_revision(revision))
        self.index = self.index.insert(d.start_key, d.region_id)

    def add_pending(self, entry: PendingTransition) -> None:
        self.pending = self.pending.set(entry.transition_id, entry)
        for r in entry.region_ids:
            self.by_region = self.by_region.set(r, entry.transition_id)

    def clear_pending(self, tid: str) -> None:
        entry = self.pending.get(tid)
        if entry is None:
            return
        self.pending = self.pending.delete(tid)
        for r in entry.region_ids:
            if self.by_region.get(r) == tid:
                self.by_region = self.by_region.delete(r)

    def changes(self, state: RootFacts, bump: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"descriptors": self.descriptors, "range_index": self.index,
                               "pending": self.pending, "pending_by_region": self.by_region}
        if bump:
            out["cluster_epoch"] = state.cluster_epoch + 1
        return out


# ---- handlers: each returns the changed fields (empty dict = accepted no-op) ----------------


def _on_store_joined(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: StoreMembership = event.payload
    need(is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    need(isinstance(p.address, str), "invalid_store", "address must be str")
    cur = state.stores.get(p.store_id)
    if cur is not None and cur.retired:
        raise reject("store_retired", f"store {p.store_id} retired at {cur.retired_index}")
    if cur is not None and cur.address == p.address:
        return {}  # rejoin at the same address: nothing changes
    rec = StoreRecord(p.store_id, p.address, False,
                      cur.joined_index if cur else token.index, 0)
    return {"stores": state.stores.set(p.store_id, rec),
            "membership_epoch": state.membership_epoch + 1}


def _on_store_retired(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: StoreMembership = event.payload
    need(is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    cur = state.stores.get(p.store_id)
    if cur is None:
        raise reject("unknown_store", f"store {p.store_id} never joined")
    if cur.retired:
        return {}
    return {"stores": state.stores.set(p.store_id, replace(cur, retired=True,
                                                           retired_index=token.index)),
            "membership_epoch": state.membership_epoch + 1}


def _on_fence(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: AllocatorFence = event.payload
    want = AllocatorKind.ID if event.kind == EventKind.ID_ALLOCATOR_FENCED else AllocatorKind.TSO
    need(p.kind == want, "payload_mismatch", f"{EventKind(event.kind).name} carries {p.kind!r}")
    need(is_int(p.minimum) and p.minimum >= 0, "invalid_fence", f"minimum {p.minimum!r}")
    field = "id_fence" if want == AllocatorKind.ID else "tso_fence"
    current = getattr(state, field)
    if p.minimum < current:
        raise reject("fence_regression", f"{field} is {current}; refusing to lower it to "
                      f"{p.minimum}", RetryClass.REFRESH)
    return {field: p.minimum} if p.minimum > current else {}


def _on_upsert(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    d = check_descriptor(event.payload.descriptor)
    cur = state.descriptors.get(d.region_id)
    if cur is not None:
        if state.pending_by_region.get(d.region_id):
            raise reject("range_change_pending", f"region {d.region_id} is owned by "
                          f"{state.pending_by_region.get(d.region_id)}", RetryClass.CONFLICT)
        if cur.same_truth(d):
            return {}
        if event.kind == EventKind.REGION_BOOTSTRAP:
            raise reject("region_exists", f"region {d.region_id} already bootstrapped")
        if d.epoch.is_stale_against(cur.epoch):
            raise reject("stale_epoch", f"region {d.region_id} epoch {d.epoch} is behind "
                          f"{cur.epoch}", RetryClass.REFRESH)
        if d.epoch == cur.epoch:
            raise reject("epoch_not_advanced", f"region {d.region_id} changed without an "
                          f"epoch bump ({d.epoch})", RetryClass.REFRESH)
    check_no_overlap(state, d, {d.region_id})
    check_new_peers(state, d, (cur,) if cur else ())
    regions = _Regions(state)
    regions.install(d, token.index)
    return regions.changes(state, bump=True)


def _on_tombstone(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: RegionRemoval = event.payload
    need(is_int(p.region_id) and p.region_id > 0, "invalid_region", "region_id must be > 0")
    if p.base is not None:
        check_descriptor(p.base, "base")
        need(p.base.region_id == p.region_id, "payload_mismatch", "base.region_id")
    effect, _ = _effect(state, event)
    if effect == Effect.NOOP:
        return {}
    regions = _Regions(state)
    regions.remove(p.region_id)
    return regions.changes(state, bump=True)


def _effect(state: RootFacts, event: RootEvent) -> tuple[Effect, Situation]:
    cls = event_class(EventKind(event.kind))
    situation = classify(state, event)
    effect, retry, reason = TRANSITION_EFFECTS[(cls, situation)]
    if effect == Effect.REJECT:
        raise reject(reason, f"{transition_id(event)} is {situation.name.lower()}", retry)
    return effect, situation


def _on_transition(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    kind = EventKind(event.kind)
    p = event.payload
    if isinstance(p, RangeSplit):
        check_split(p)
    elif isinstance(p, RangeMerge):
        check_merge(p)
    else:
        check_peer_change(p, TRANSITION_KINDS[kind] == TransitionKind.PEER_ADDITION)
    cls = event_class(kind)
    effect, situation = _effect(state, event)
    if effect == Effect.NOOP:
        return {}
    bases, targets = shape(event)
    tid = transition_id(event)
    regions = _Regions(state)
    if cls == EventClass.CANCEL:  # matching pending: restore the bases
        entry = state.pending[tid]
        _guard_cancel(state, tid, entry)
        for t in entry.targets:
            regions.remove(t.region_id)
        for b in entry.bases:
            regions.install(b, token.index)
        regions.clear_pending(tid)
        return regions.changes(state, bump=True)
    if cls == EventClass.TERMINAL and situation == Situation.MATCHING:
        regions.clear_pending(tid)  # targets were installed (and the epoch bumped) at plan time
        return regions.changes(state, bump=False)
    # planned (open) or terminal without plan: install the targets
    check_fresh_ids(state, targets, bases)
    for t in targets:
        check_new_peers(state, t, bases)
    current_bases = tuple(state.descriptors[b.region_id] for b in bases)
    for b in bases:
        regions.remove(b.region_id)
    for t in targets:
        regions.install(t, token.index)
    if cls == EventClass.PLANNED:
        regions.add_pending(PendingTransition(
            transition_id=tid, kind=TRANSITION_KINDS[kind], planned_kind=kind,
            region_ids=touched_ids(bases, targets),
            targets=tuple(regions.descriptors[t.region_id] for t in targets),
            bases=current_bases, source_token=token))
    return regions.changes(state, bump=True)


def _on_recovery(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    r: RecoveryRecord = event.payload
    need(isinstance(r.transition_id, str) and isinstance(r.action, str) and bool(r.action)
          and isinstance(r.failure_evidence, str), "invalid_recovery_record",
          "transition_id, action and failure_evidence are strings; action non-empty")
    need(is_int(r.observed_root_index), "invalid_recovery_record",
          "observed_root_index must be an int")
    if r.action == FENCE_ACTION:
        check_fence_witness(state, token, r)
    n = len(state.recovery_records)
    entry = (r.action, r.observed_root_index)
    return {"recovery_records": state.recovery_records.set(n, r),
            "recovery_index": state.recovery_index.set(
                r.transition_id, state.recovery_index.get(r.transition_id, ()) + (entry,))}


def _guard_cancel(state: RootFacts, tid: str, entry: PendingTransition) -> None:
    """Refuse a matching cancel the region leader has not fenced, or reported applied."""
    if unsafe_cancel():
        return
    source = entry.source_token.index
    seen = state.applied_report(tid, source)
    if seen is not None:
        raise reject("cancel_after_apply",
                      f"{tid} (planned at root index {source}) was reported applied by its "
                      f"region leader (recovery record observed at index {seen}): it can only "
                      "complete; reconcile forward", RetryClass.PERMANENT)
    if state.fence_witness(tid, source) is None:
        raise reject("cancel_not_fenced",
                      f"{tid} (planned at root index {source}) was not fenced by its region "
                      f"leader: root cancels a plan only after a {FENCE_ACTION!r} recovery "
                      "record shows it can no longer apply; ask the region leader to "
                      "compensate it", RetryClass.PERMANENT)


def _on_grant(state: RootFacts, token: RootToken, event: RootEvent) -> dict[str, Any]:
    try:
        return _grants.grant_event_changes(state, event)
    except _grants.GrantEventError as e:
        retry = RetryClass.CONFLICT if e.violation == Violation.PRIMACY else RetryClass.PERMANENT
        raise reject(e.reason, e.detail, retry, e.violation) from None


HANDLERS = {
    EventKind.STORE_JOINED: _on_store_joined,
    EventKind.STORE_RETIRED: _on_store_retired,
    EventKind.ID_ALLOCATOR_FENCED: _on_fence,
    EventKind.TSO_ALLOCATOR_FENCED: _on_fence,
    EventKind.REGION_BOOTSTRAP: _on_upsert,
    EventKind.REGION_DESCRIPTOR_PUBLISHED: _on_upsert,
    EventKind.REGION_TOMBSTONED: _on_tombstone,
    EventKind.RECOVERY_RECORDED: _on_recovery,
    EventKind.GRANT_ISSUED: _on_grant,
    EventKind.GRANT_SEALED: _on_grant,
    EventKind.GRANT_RETIRED: _on_grant,
    EventKind.GRANT_INHERITED: _on_grant,
    **{k: _on_transition for k in PLANNED_KINDS | TERMINAL_KINDS | CANCEL_KINDS},
}


__all__ = ["UNSAFE_CANCEL_ENV", "set_cancel_guard", "unsafe_cancel"]
