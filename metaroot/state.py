"""Rooted state: the pure, deterministic fold of rooted events (DESIGN 4.1, 4.2, 4.6, 6, 7).

Owns: `RootState` (cluster truth at one `RootToken`), event validation (`RootEventRejected`
with a stable reason and a retry class), the transition situation classifier shared with the
coordinator's assessment, the cancel guard (a plan is cancelled only once its region leader
recorded a fence for it, never after it reported it applied), request-id idempotency, and
lossless conversion to and from `RootCheckpoint`.
Never: I/O, clocks (time arrives as integer milliseconds inside events and fences), global
random, or half-applied events (a `RootState` is immutable; a rejected event changes nothing).

Cost model: every map is a small persistent structure (`PMap`, `RangeIndex`), so applying one
event copies O(touched entries + a few short spines), never the whole cluster.
"""

from __future__ import annotations

import hashlib
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import replace
from enum import IntEnum
from typing import Any

from metaroot import grants as _grants
from nokvpy.protocol.enums import (
    CANCEL_KINDS,
    PLANNED_KINDS,
    TERMINAL_KINDS,
    AllocatorKind,
    Duty,
    EventKind,
    RegionState,
    RetryClass,
    TransitionKind,
)
from nokvpy.protocol.grants import (
    NO_FENCES,
    AppendFences,
    AppliedRequest,
    AuthorityGrant,
    EraFloor,
    PendingTransition,
    RootCheckpoint,
    StoreRecord,
    Violation,
)
from nokvpy.protocol.records import (
    ZERO_TOKEN,
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
from nokvpy.protocol.transitions import (  # noqa: F401 - re-exported
    PAYLOAD_TYPES,
    TRANSITION_KINDS,
    shape,
    transition_id,
    transition_kind,
)

DEFAULT_REQUEST_WINDOW = 10_000  # rooted events whose request ids are remembered

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
# it from a `sitecustomize` keyed on UNSAFE_CANCEL_ENV, see tests/metaroot).
FENCE_ACTION = "fenced"
APPLIED_ACTIONS = frozenset({"compensation_refused_applied", "reconciled_forward"})
UNSAFE_CANCEL_ENV = "NOKV_UNSAFE_ROOT_CANCEL"
_cancel_guard = [True]


def set_cancel_guard(enabled: bool) -> None:
    """Turn the cancel guard on or off in this process (tests only)."""
    _cancel_guard[0] = bool(enabled)


def unsafe_cancel() -> bool:
    return not _cancel_guard[0]


class RootEventRejected(Exception):
    """An event refused by the rooted state: nothing was applied.

    `reason` is a stable snake_case code, `retry_class` tells the caller what to do, and
    `violation` names the broken authority guarantee ("" when none)."""

    def __init__(self, reason: str, retry_class: RetryClass = RetryClass.PERMANENT,
                 detail: str = "", violation: str = Violation.NONE):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry_class = retry_class
        self.detail = detail
        self.violation = violation


def _reject(reason: str, detail: str = "", retry: RetryClass = RetryClass.PERMANENT,
            violation: str = Violation.NONE) -> RootEventRejected:
    return RootEventRejected(reason, retry, detail, violation)


# ---- persistent structures ----------------------------------------------------------------


def _stable_hash(key: object) -> int:
    """Process-independent hash (str hashing is salted per process; crc32 is not)."""
    if isinstance(key, int):
        return (key * 0x9E3779B1) & 0xFFFFFFFF
    if isinstance(key, str):
        return zlib.crc32(key.encode())
    raise TypeError(f"PMap keys are int or str, not {type(key).__name__}")


_FAN = 32
_EMPTY_SPINE: tuple = (None,) * _FAN


class PMap:
    """A persistent map: a two-level, 32-way hashed trie of small dicts.

    `set`/`delete` copy two 32-slot spines and one leaf (~n/1024 entries) and share the rest.
    Iteration order is by stable hash, not sorted: callers sort where order matters."""

    __slots__ = ("_root", "_len")

    def __init__(self, root: tuple = _EMPTY_SPINE, length: int = 0):
        self._root = root
        self._len = length

    @classmethod
    def from_items(cls, items: Iterable[tuple[Any, Any]]) -> PMap:
        m = cls()
        for k, v in items:
            m = m.set(k, v)
        return m

    def _leaf(self, key: object) -> tuple[int, int, dict | None]:
        h = _stable_hash(key)
        i, j = h % _FAN, (h // _FAN) % _FAN
        mid = self._root[i]
        return i, j, (mid[j] if mid is not None else None)

    def get(self, key: object, default: Any = None) -> Any:
        _, _, leaf = self._leaf(key)
        return leaf.get(key, default) if leaf else default

    def __contains__(self, key: object) -> bool:
        _, _, leaf = self._leaf(key)
        return bool(leaf) and key in leaf

    def __getitem__(self, key: object) -> Any:
        _, _, leaf = self._leaf(key)
        if not leaf or key not in leaf:
            raise KeyError(key)
        return leaf[key]

    def __len__(self) -> int:
        return self._len

    def _with_leaf(self, i: int, j: int, leaf: dict | None, length: int) -> PMap:
        mid = self._root[i] or _EMPTY_SPINE
        mid = mid[:j] + (leaf or None,) + mid[j + 1:]
        if not any(mid):
            mid = None
        return PMap(self._root[:i] + (mid,) + self._root[i + 1:], length)

    def set(self, key: object, value: Any) -> PMap:
        i, j, leaf = self._leaf(key)
        if leaf is not None and key in leaf and leaf[key] is value:
            return self
        new = dict(leaf) if leaf else {}
        grow = 0 if key in new else 1
        new[key] = value
        return self._with_leaf(i, j, new, self._len + grow)

    def delete(self, key: object) -> PMap:
        i, j, leaf = self._leaf(key)
        if not leaf or key not in leaf:
            return self
        new = dict(leaf)
        del new[key]
        return self._with_leaf(i, j, new, self._len - 1)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for mid in self._root:
            if mid is None:
                continue
            for leaf in mid:
                if leaf:
                    yield from leaf.items()

    def keys(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def values(self) -> Iterator[Any]:
        return (v for _, v in self.items())

    __iter__ = keys

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PMap) or len(self) != len(other):
            return False
        return all(k in other and other[k] == v for k, v in self.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PMap({dict(sorted(self.items(), key=lambda kv: kv[0]))!r})"


_CHUNK = 64


class RangeIndex:
    """Persistent ordered index `start_key -> region_id` of the live (non-overlapping) regions,
    stored as a tuple of sorted chunks. An update copies one chunk and the chunk spine."""

    __slots__ = ("_chunks", "_firsts")

    def __init__(self, chunks: tuple[tuple[tuple[bytes, int], ...], ...] = ()):
        self._chunks = chunks
        self._firsts = tuple(c[0][0] for c in chunks)

    def _locate(self, start: bytes) -> int:
        return max(bisect_right(self._firsts, start) - 1, 0)

    def insert(self, start: bytes, region_id: int) -> RangeIndex:
        if not self._chunks:
            return RangeIndex((((start, region_id),),))
        ci = self._locate(start)
        chunk = self._chunks[ci]
        pos = bisect_left(chunk, start, key=lambda e: e[0])
        new = chunk[:pos] + ((start, region_id),) + chunk[pos:]
        parts = (new,) if len(new) <= 2 * _CHUNK else (new[:_CHUNK], new[_CHUNK:])
        return RangeIndex(self._chunks[:ci] + parts + self._chunks[ci + 1:])

    def remove(self, start: bytes, region_id: int) -> RangeIndex:
        ci = self._locate(start)
        chunk = self._chunks[ci] if self._chunks else ()
        pos = bisect_left(chunk, start, key=lambda e: e[0])
        if pos >= len(chunk) or chunk[pos] != (start, region_id):
            raise KeyError((start, region_id))  # internal invariant broken
        new = chunk[:pos] + chunk[pos + 1:]
        parts = (new,) if new else ()
        return RangeIndex(self._chunks[:ci] + parts + self._chunks[ci + 1:])

    def iter_from(self, key: bytes) -> Iterator[tuple[bytes, int]]:
        """Entries in key order, starting at the greatest start <= key (or the first)."""
        if not self._chunks:
            return
        ci = self._locate(key)
        chunk = self._chunks[ci]
        pos = max(bisect_right(chunk, key, key=lambda e: e[0]) - 1, 0)
        yield from chunk[pos:]
        for c in self._chunks[ci + 1:]:
            yield from c

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        for c in self._chunks:
            yield from c

    def floor(self, key: bytes) -> int | None:
        for start, rid in self.iter_from(key):
            return rid if start <= key else None
        return None


# ---- transition shapes and situations --------------------------------------------------------


class Situation(IntEnum):
    """Where a transition event stands against the rooted state (DESIGN 4.6)."""

    OPEN = 1  # bases are current, nothing pending touches the regions
    MATCHING = 2  # a pending entry with this transition id matches the event exactly
    COMPLETED = 3  # the target is already the current truth (and nothing pending for it)
    CONFLICTING = 4  # another pending transition touches the regions
    SUPERSEDED = 5  # the current truth is neither the base nor the target


class EventClass(IntEnum):
    PLANNED = 1
    CANCEL = 2
    TERMINAL = 3
    TOMBSTONE = 4
    OTHER = 5


def event_class(kind: EventKind) -> EventClass:
    if kind in PLANNED_KINDS:
        return EventClass.PLANNED
    if kind in CANCEL_KINDS:
        return EventClass.CANCEL
    if kind in TERMINAL_KINDS:
        return EventClass.TERMINAL
    if kind == EventKind.REGION_TOMBSTONED:
        return EventClass.TOMBSTONE
    return EventClass.OTHER


class Effect(IntEnum):
    APPLY = 1
    NOOP = 2  # accepted; already reflected in root (advances the token only)
    REJECT = 3


# (event class, situation) -> (effect, retry class, reason). The coordinator's assessment table
# (coordinator/assessment.py) adds phases on top and must agree with this column.
TRANSITION_EFFECTS: dict[tuple[EventClass, Situation], tuple[Effect, RetryClass, str]] = {
    (EventClass.PLANNED, Situation.OPEN): (Effect.APPLY, RetryClass.NONE, "open_apply"),
    (EventClass.PLANNED, Situation.MATCHING): (Effect.NOOP, RetryClass.NONE, "matching_pending"),
    (EventClass.PLANNED, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE, "already_completed"),
    (EventClass.PLANNED, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                  "pending_conflict"),
    (EventClass.PLANNED, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.REFRESH, "superseded"),
    (EventClass.CANCEL, Situation.MATCHING): (Effect.APPLY, RetryClass.NONE, "cancel_pending"),
    (EventClass.CANCEL, Situation.OPEN): (Effect.NOOP, RetryClass.NONE, "nothing_to_cancel"),
    (EventClass.CANCEL, Situation.COMPLETED): (Effect.REJECT, RetryClass.PERMANENT,
                                               "can_no_longer_be_cancelled"),
    (EventClass.CANCEL, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                 "pending_conflict"),
    (EventClass.CANCEL, Situation.SUPERSEDED): (Effect.NOOP, RetryClass.NONE, "superseded"),
    (EventClass.TERMINAL, Situation.MATCHING): (Effect.APPLY, RetryClass.NONE,
                                                "finalize_pending"),
    (EventClass.TERMINAL, Situation.OPEN): (Effect.APPLY, RetryClass.NONE,
                                            "terminal_without_plan"),
    (EventClass.TERMINAL, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE,
                                                 "already_completed"),
    (EventClass.TERMINAL, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                   "pending_conflict"),
    (EventClass.TERMINAL, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.PERMANENT,
                                                  "superseded_before_apply"),
    (EventClass.TOMBSTONE, Situation.OPEN): (Effect.APPLY, RetryClass.NONE, "open_apply"),
    (EventClass.TOMBSTONE, Situation.COMPLETED): (Effect.NOOP, RetryClass.NONE,
                                                  "already_tombstoned"),
    (EventClass.TOMBSTONE, Situation.CONFLICTING): (Effect.REJECT, RetryClass.CONFLICT,
                                                    "pending_conflict"),
    (EventClass.TOMBSTONE, Situation.SUPERSEDED): (Effect.REJECT, RetryClass.REFRESH,
                                                   "stale_base"),
}

def _same_all(a: tuple[RegionDescriptor, ...], b: tuple[RegionDescriptor, ...]) -> bool:
    return len(a) == len(b) and all(x.same_truth(y) for x, y in zip(a, b, strict=True))


def _touched_ids(bases, targets) -> tuple[int, ...]:
    return tuple(sorted({d.region_id for d in bases} | {d.region_id for d in targets}))


def classify(state: RootState, event: RootEvent) -> Situation:
    """The transition situation of a well-formed topology event (see `Situation`).

    Order: matching pending, completed, conflicting pending, open, superseded."""
    tid = transition_id(event)
    if isinstance(event.payload, RegionRemoval):
        p = event.payload
        cur = state.descriptors.get(p.region_id)
        if cur is None:
            return Situation.COMPLETED
        if state.pending_by_region.get(p.region_id) is not None:
            return Situation.CONFLICTING
        if p.base is None or p.base.same_truth(cur):
            return Situation.OPEN
        return Situation.SUPERSEDED
    bases, targets = shape(event)
    entry = state.pending.get(tid)
    if entry is not None and _same_all(entry.targets, targets) and _same_all(entry.bases, bases):
        return Situation.MATCHING
    target_ids = {t.region_id for t in targets}
    current = state.descriptors
    if all((c := current.get(t.region_id)) is not None and c.same_truth(t) for t in targets) and \
            all(b.region_id in target_ids or b.region_id not in current for b in bases):
        if entry is None and not any(state.pending_by_region.get(t.region_id) for t in targets):
            return Situation.COMPLETED
    if any(state.pending_by_region.get(r) for r in _touched_ids(bases, targets)):
        return Situation.CONFLICTING
    if all((c := current.get(b.region_id)) is not None and c.same_truth(b) for b in bases):
        return Situation.OPEN
    return Situation.SUPERSEDED


# ---- the rooted state ---------------------------------------------------------------------


def fingerprint(event: RootEvent) -> str:
    """Identity of an event for request-id idempotency (repr of frozen records is stable)."""
    return hashlib.sha256(repr(event).encode()).hexdigest()[:32]


_FIELDS = (
    "token", "cluster_epoch", "membership_epoch", "stores", "descriptors", "range_index",
    "pending", "pending_by_region", "id_fence", "tso_fence", "grants", "duty_grants",
    "retirements", "inheritances", "uninherited", "era_floors", "max_era", "requests",
    "request_by_index", "request_window", "recovery_records", "recovery_index",
)


class RootState:
    """Cluster truth at `token`. Immutable: `apply` returns a new state sharing structure.

    Fields (read-only):
      token: RootToken                    last applied rooted event (ZERO_TOKEN when empty)
      cluster_epoch: int                  +1 on every topology change (DESIGN 4.1)
      membership_epoch: int               +1 on every store membership change
      stores: PMap[int, StoreRecord]
      descriptors: PMap[int, RegionDescriptor]   live regions; revision = installing index
      range_index: RangeIndex             start_key -> region_id of live regions
      pending: PMap[str, PendingTransition]      keyed by TransitionID
      pending_by_region: PMap[int, str]   region id -> TransitionID of the pending owning it
      id_fence, tso_fence: int            allocator fences, never lowered
      grants: PMap[str, AuthorityGrant]   unretired grants (live or expired, not yet retired)
      duty_grants: dict[Duty, str]        duty -> the unretired grant holding it (primacy)
      retirements: PMap[str, GrantRetirement]
      inheritances: PMap[str, GrantInheritance]  keyed by predecessor grant id
      uninherited: tuple[str, ...]        retirements pending audit (sorted grant ids)
      era_floors: dict[Duty, int]         retired-era floors, never lowered (silence)
      max_era: int                        greatest era ever issued
      requests: PMap[str, AppliedRequest] request ids of the last `request_window` events
      request_by_index: PMap[int, str]    token index -> request id (eviction order)
      request_window: int
      recovery_records: PMap[int, RecoveryRecord]  append-only, keyed 0, 1, 2 ...
      recovery_index: PMap[str, tuple[tuple[str, int], ...]]  TransitionID -> (action,
                                          observed_root_index) of its recovery records, in
                                          order; derived from recovery_records (not in the
                                          checkpoint), read by the cancel guard

    Invariants: live descriptors never overlap; a region is owned by at most one pending
    transition; at most one unretired grant holds a duty; era_floors[d] <= max_era.
    """

    __slots__ = _FIELDS

    token: RootToken
    cluster_epoch: int
    membership_epoch: int
    stores: PMap
    descriptors: PMap
    range_index: RangeIndex
    pending: PMap
    pending_by_region: PMap
    id_fence: int
    tso_fence: int
    grants: PMap
    duty_grants: dict[Duty, str]
    retirements: PMap
    inheritances: PMap
    uninherited: tuple[str, ...]
    era_floors: dict[Duty, int]
    max_era: int
    requests: PMap
    request_by_index: PMap
    request_window: int
    recovery_records: PMap
    recovery_index: PMap

    def __init__(self, request_window: int = DEFAULT_REQUEST_WINDOW):
        if request_window < 1:
            raise ValueError("request_window must be >= 1")
        self.token = ZERO_TOKEN
        self.cluster_epoch = 0
        self.membership_epoch = 0
        self.stores = self.descriptors = self.pending = self.pending_by_region = PMap()
        self.range_index = RangeIndex()
        self.id_fence = self.tso_fence = 0
        self.grants = self.retirements = self.inheritances = PMap()
        self.duty_grants = {}
        self.uninherited = ()
        self.era_floors = {}
        self.max_era = 0
        self.requests = self.request_by_index = self.recovery_records = PMap()
        self.recovery_index = PMap()
        self.request_window = request_window

    def _evolve(self, changes: dict[str, Any]) -> RootState:
        new = object.__new__(RootState)
        for name in _FIELDS:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS and hasattr(self, "request_window"):
            raise AttributeError("RootState is immutable")
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootState) and self.to_checkpoint() == other.to_checkpoint()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"RootState(token={self.token}, cluster_epoch={self.cluster_epoch}, "
                f"regions={len(self.descriptors)}, pending={len(self.pending)}, "
                f"stores={len(self.stores)}, grants={len(self.grants)})")

    # ---- queries ---------------------------------------------------------------------------

    def descriptor(self, region_id: int) -> RegionDescriptor | None:
        return self.descriptors.get(region_id)

    def region_for_key(self, key: bytes) -> RegionDescriptor | None:
        rid = self.range_index.floor(key)
        d = self.descriptors.get(rid) if rid is not None else None
        return d if d is not None and d.contains(key) else None

    def iter_descriptors(self) -> Iterator[RegionDescriptor]:
        """Live descriptors in start-key order."""
        for _, rid in self.range_index:
            yield self.descriptors[rid]

    def pending_for_region(self, region_id: int) -> PendingTransition | None:
        tid = self.pending_by_region.get(region_id)
        return self.pending.get(tid) if tid else None

    def pending_transitions(self) -> list[PendingTransition]:
        return sorted(self.pending.values(), key=lambda p: p.transition_id)

    def store(self, store_id: int) -> StoreRecord | None:
        return self.stores.get(store_id)

    def live_store_ids(self) -> list[int]:
        return sorted(s.store_id for s in self.stores.values() if not s.retired)

    def duty_grant(self, duty: Duty) -> AuthorityGrant | None:
        gid = self.duty_grants.get(duty)
        return self.grants.get(gid) if gid else None

    def era_floor(self, duty: Duty) -> int:
        return self.era_floors.get(duty, 0)

    def recovery_list(self) -> list[RecoveryRecord]:
        return [self.recovery_records[i] for i in range(len(self.recovery_records))]

    def fence_witness(self, tid: str, source_index: int) -> int | None:
        """The observed root index of a FENCE_ACTION record of plan (`tid`, `source_index`),
        or None when its region leader never recorded a fence for it."""
        return _last_record(self, tid, source_index, lambda a: a == FENCE_ACTION)

    def applied_report(self, tid: str, source_index: int) -> int | None:
        """The observed root index of a record by which the region leader reported plan
        (`tid`, `source_index`) applied, or None."""
        return _last_record(self, tid, source_index, lambda a: a in APPLIED_ACTIONS)

    def max_descriptor_revision(self) -> int:
        return max((d.revision for d in self.descriptors.values()), default=0)

    # ---- idempotency -----------------------------------------------------------------------

    def lookup_request(self, request_id: str, event: RootEvent) -> RootToken | None:
        """The token an identical event with `request_id` was applied at (None if unknown).

        Raises RootEventRejected("request_id_mismatch") if the id was used by another event."""
        if not request_id:
            return None
        seen = self.requests.get(request_id)
        if seen is None:
            return None
        if seen.fingerprint != fingerprint(event):
            raise _reject("request_id_mismatch",
                          f"request {request_id!r} was applied at {seen.token} with another event")
        return seen.token

    # ---- validation and apply --------------------------------------------------------------

    def validate(self, event: RootEvent, fences: AppendFences | None = None) -> None:
        """Pre-append check: raises RootEventRejected if `event` would be refused by `apply`
        at the next token. With `fences`, they are checked too, and an allocator fence event
        of a duty under grant must carry that duty's era (silence); `fences=None` means the
        caller checked them already (`check_fences`)."""
        self._derive(self._next_token(), event, fences or NO_FENCES,
                     require_duty_fence=fences is not None)

    def check_fences(self, fences: AppendFences | None, event: RootEvent | None = None) -> None:
        """Check append fences alone (cluster epoch; era of a duty-gated write), raising
        RootEventRejected. With `event`, also require an era for governed allocator fences."""
        kind = EventKind.RECOVERY_RECORDED
        if event is not None and event.kind in (EventKind.ID_ALLOCATOR_FENCED,
                                                EventKind.TSO_ALLOCATOR_FENCED):
            kind = EventKind(event.kind)
        self._check_fences(kind, fences or NO_FENCES, require_duty=event is not None)

    def precheck(self, event: RootEvent) -> None:
        """State-independent shape check (kind, payload type, fields), raising
        RootEventRejected; cheap enough to run before a raft round."""
        _check_shape(event)

    def apply(self, token: RootToken, event: RootEvent,
              fences: AppendFences | None = None) -> RootState:
        """Apply one event at `token` (index must be this state's index + 1).

        Deterministic. An identical re-application of an already applied request id is a
        no-op that only advances the token; invalid events raise RootEventRejected and leave
        nothing applied. `fences` are rechecked only if they were persisted with the event."""
        self._check_token(token)
        return self._derive(token, event, fences or NO_FENCES, require_duty_fence=False)

    def apply_committed(self, token: RootToken, event: RootEvent,
                        fences: AppendFences | None = None,
                        ) -> tuple[RootState, RootEventRejected | None]:
        """Apply a committed log entry: never raises for an invalid event. A rejected entry
        (e.g. two racing proposals, each valid alone) becomes a no-op that advances the token,
        and the rejection is returned so the proposer can be told."""
        self._check_token(token)
        try:
            return self._derive(token, event, fences or NO_FENCES, False), None
        except RootEventRejected as e:
            return self._advance(token, {}), e

    def apply_all(self, committed: Iterable[tuple[RootToken, RootEvent]]) -> RootState:
        state = self
        for token, event in committed:
            state, _ = state.apply_committed(token, event)
        return state

    def _next_token(self) -> RootToken:
        return RootToken(self.token.term, self.token.index + 1)

    def _check_token(self, token: RootToken) -> None:
        if token.index != self.token.index + 1 or token.term < self.token.term:
            raise ValueError(f"token {token} does not follow {self.token}")

    def _advance(self, token: RootToken, changes: dict[str, Any],
                 request: AppliedRequest | None = None) -> RootState:
        changes["token"] = token
        requests, by_index = self.requests, self.request_by_index
        old = token.index - self.request_window
        old_id = by_index.get(old) if old > 0 else None
        if old_id is not None:
            by_index = by_index.delete(old)
            seen = requests.get(old_id)
            if seen is not None and seen.token.index == old:
                requests = requests.delete(old_id)
        if request is not None:
            requests = requests.set(request.request_id, request)
            by_index = by_index.set(token.index, request.request_id)
        if requests is not self.requests:
            changes["requests"], changes["request_by_index"] = requests, by_index
        return self._evolve(changes)

    def _derive(self, token: RootToken, event: RootEvent, fences: AppendFences,
                require_duty_fence: bool) -> RootState:
        kind = _check_kind(event)
        request = None
        if event.request_id:
            if self.lookup_request(event.request_id, event) is not None:
                return self._advance(token, {})  # identical re-application: no-op
            request = AppliedRequest(event.request_id, token, fingerprint(event))
        self._check_fences(kind, fences, require_duty_fence)
        changes = _HANDLERS[kind](self, token, event)
        return self._advance(token, changes, request)

    def _check_fences(self, kind: EventKind, fences: AppendFences, require_duty: bool) -> None:
        if not isinstance(fences, AppendFences):
            raise _reject("invalid_fences", type(fences).__name__)
        if fences.expected_cluster_epoch is not None and \
                fences.expected_cluster_epoch != self.cluster_epoch:
            raise _reject("cluster_epoch_mismatch",
                          f"expected {fences.expected_cluster_epoch}, root has "
                          f"{self.cluster_epoch}", RetryClass.REFRESH)
        gated = {EventKind.ID_ALLOCATOR_FENCED: Duty.ALLOC_ID,
                 EventKind.TSO_ALLOCATOR_FENCED: Duty.TSO}.get(kind)
        if require_duty and gated is not None and fences.duty is None and (
                gated in self.duty_grants or self.era_floor(gated) > 0):
            raise _reject("grant_era_required", f"{gated} is under grant; fence the write by era",
                          RetryClass.PERMANENT, Violation.SILENCE)
        if fences.duty is None:
            if fences.grant_era is not None:
                raise _reject("invalid_fences", "grant_era without duty")
            return
        reason = _grants.fence_violation(self, fences.duty, fences.grant_era, fences.now_ms)
        if reason is not None:
            code, detail, violation = reason
            retry = RetryClass.PERMANENT if violation == Violation.SILENCE else RetryClass.REFRESH
            raise _reject(code, detail, retry, violation)

    # ---- checkpoint ------------------------------------------------------------------------

    def to_checkpoint(self) -> RootCheckpoint:
        return RootCheckpoint(
            token=self.token,
            cluster_epoch=self.cluster_epoch,
            membership_epoch=self.membership_epoch,
            stores=tuple(sorted(self.stores.values(), key=lambda s: s.store_id)),
            descriptors=tuple(sorted(self.descriptors.values(), key=lambda d: d.region_id)),
            pending=tuple(self.pending_transitions()),
            id_fence=self.id_fence,
            tso_fence=self.tso_fence,
            grants=tuple(sorted(self.grants.values(), key=lambda g: g.grant_id)),
            retirements=tuple(sorted(self.retirements.values(), key=lambda r: r.grant_id)),
            inheritances=tuple(sorted(self.inheritances.values(), key=lambda i: i.predecessor)),
            era_floors=tuple(EraFloor(d, e) for d, e in sorted(self.era_floors.items())),
            max_era=self.max_era,
            applied_requests=tuple(sorted(self.requests.values(), key=lambda r: r.token.index)),
            request_window=self.request_window,
            recovery_records=tuple(self.recovery_list()),
        )

    @classmethod
    def from_checkpoint(cls, cp: RootCheckpoint) -> RootState:
        state = cls(cp.request_window)
        index = RangeIndex()
        for d in sorted(cp.descriptors, key=lambda d: d.start_key):
            index = index.insert(d.start_key, d.region_id)
        by_region: list[tuple[int, str]] = []
        for p in cp.pending:
            by_region.extend((r, p.transition_id) for r in p.region_ids)
        duty_grants = {d.duty: g.grant_id for g in cp.grants for d in g.duties}
        return state._evolve({
            "token": cp.token,
            "cluster_epoch": cp.cluster_epoch,
            "membership_epoch": cp.membership_epoch,
            "stores": PMap.from_items((s.store_id, s) for s in cp.stores),
            "descriptors": PMap.from_items((d.region_id, d) for d in cp.descriptors),
            "range_index": index,
            "pending": PMap.from_items((p.transition_id, p) for p in cp.pending),
            "pending_by_region": PMap.from_items(by_region),
            "id_fence": cp.id_fence,
            "tso_fence": cp.tso_fence,
            "grants": PMap.from_items((g.grant_id, g) for g in cp.grants),
            "duty_grants": dict(sorted(duty_grants.items())),
            "retirements": PMap.from_items((r.grant_id, r) for r in cp.retirements),
            "inheritances": PMap.from_items((i.predecessor, i) for i in cp.inheritances),
            "uninherited": tuple(sorted(r.grant_id for r in cp.retirements
                                        if not r.inherited_by)),
            "era_floors": {f.duty: f.era for f in cp.era_floors},
            "max_era": cp.max_era,
            "requests": PMap.from_items((r.request_id, r) for r in cp.applied_requests),
            "request_by_index": PMap.from_items((r.token.index, r.request_id)
                                                for r in cp.applied_requests),
            "recovery_records": PMap.from_items(enumerate(cp.recovery_records)),
            "recovery_index": _index_records(cp.recovery_records),
        })


# ---- field checks -------------------------------------------------------------------------


def _check_kind(event: RootEvent) -> EventKind:
    if not isinstance(event, RootEvent):
        raise _reject("invalid_event", f"not a RootEvent: {type(event).__name__}")
    try:
        kind = EventKind(event.kind)
    except (ValueError, TypeError):
        raise _reject("unknown_kind", f"event kind {event.kind!r}") from None
    expected = PAYLOAD_TYPES[kind]
    if not isinstance(event.payload, expected):
        raise _reject("payload_type", f"{kind.name} needs {expected.__name__}, got "
                      f"{type(event.payload).__name__}")
    if not isinstance(event.request_id, str):
        raise _reject("invalid_request_id", repr(event.request_id))
    return kind


def _check_shape(event: RootEvent) -> EventKind:
    """Kind, payload type and the state-independent field checks of `event`."""
    kind = _check_kind(event)
    p = event.payload
    if isinstance(p, RegionUpsert):
        check_descriptor(p.descriptor)
    elif isinstance(p, RangeSplit):
        _check_split(p)
    elif isinstance(p, RangeMerge):
        _check_merge(p)
    elif isinstance(p, PeerChange):
        _check_peer_change(p, TRANSITION_KINDS[kind] == TransitionKind.PEER_ADDITION)
    elif isinstance(p, StoreMembership):
        _need(_is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    elif isinstance(p, AllocatorFence):
        _need(_is_int(p.minimum) and p.minimum >= 0, "invalid_fence", f"minimum {p.minimum!r}")
    elif isinstance(p, RegionRemoval):
        _need(_is_int(p.region_id) and p.region_id > 0, "invalid_region", "region_id")
    return kind


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(cond: bool, reason: str, detail: str = "") -> None:
    if not cond:
        raise _reject(reason, detail)


def check_descriptor(d: object, what: str = "descriptor") -> RegionDescriptor:
    """Structural validity of a descriptor (missing or mistyped fields, empty range, peers)."""
    _need(isinstance(d, RegionDescriptor), "invalid_descriptor", f"{what}: not a descriptor")
    assert isinstance(d, RegionDescriptor)
    _need(_is_int(d.region_id) and d.region_id > 0, "invalid_descriptor", f"{what}: region_id")
    _need(isinstance(d.start_key, bytes) and isinstance(d.end_key, bytes),
          "invalid_descriptor", f"{what}: keys must be bytes")
    _need(not d.end_key or d.start_key < d.end_key, "invalid_descriptor",
          f"{what}: empty range [{d.start_key!r}, {d.end_key!r})")
    e = d.epoch
    _need(isinstance(e, RegionEpoch) and _is_int(e.version) and _is_int(e.conf_ver)
          and e.version >= 1 and e.conf_ver >= 1, "invalid_descriptor", f"{what}: epoch")
    _need(isinstance(d.peers, tuple | list) and len(d.peers) > 0, "invalid_descriptor",
          f"{what}: needs at least one peer")
    for p in d.peers:
        _need(isinstance(p, PeerMeta) and _is_int(p.store_id) and _is_int(p.peer_id)
              and p.store_id > 0 and p.peer_id > 0, "invalid_descriptor", f"{what}: peer {p!r}")
    _need(len({p.store_id for p in d.peers}) == len(d.peers)
          and len({p.peer_id for p in d.peers}) == len(d.peers), "invalid_descriptor",
          f"{what}: duplicate store or peer id")
    _need(any(not p.learner for p in d.peers), "invalid_descriptor", f"{what}: no voter")
    _need(d.state == RegionState.RUNNING, "invalid_descriptor", f"{what}: state must be RUNNING")
    return d


def _check_new_peers(state: RootState, target: RegionDescriptor,
                     olds: tuple[RegionDescriptor, ...]) -> None:
    """Peers a descriptor places on stores the old descriptors did not use must sit on
    joined, live stores."""
    known = {p.store_id for o in olds for p in o.peers}
    for p in target.peers:
        if p.store_id in known:
            continue
        s = state.stores.get(p.store_id)
        if s is None or s.retired:
            raise _reject("store_not_live", f"region {target.region_id} peer on store "
                          f"{p.store_id} which is {'retired' if s else 'not joined'}",
                          RetryClass.REFRESH)


def _overlap(a_start: bytes, a_end: bytes, b_start: bytes, b_end: bytes) -> bool:
    return (not b_end or a_start < b_end) and (not a_end or b_start < a_end)


def _check_no_overlap(state: RootState, d: RegionDescriptor, exclude: set[int]) -> None:
    for start, rid in state.range_index.iter_from(d.start_key):
        if d.end_key and start >= d.end_key:
            return
        if rid in exclude:
            continue
        other = state.descriptors[rid]
        if _overlap(d.start_key, d.end_key, other.start_key, other.end_key):
            raise _reject("range_overlap", f"region {d.region_id} [{d.start_key!r}, "
                          f"{d.end_key!r}) overlaps region {rid}", RetryClass.REFRESH)


def _check_fresh_ids(state: RootState, targets, bases) -> None:
    base_ids = {b.region_id for b in bases}
    for t in targets:
        if t.region_id not in base_ids and t.region_id in state.descriptors:
            raise _reject("region_id_in_use", f"region {t.region_id} already exists")


# ---- region mutation helpers --------------------------------------------------------------


class _Regions:
    """Accumulates descriptor / index / pending changes for one event."""

    def __init__(self, state: RootState):
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

    def changes(self, state: RootState, bump: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"descriptors": self.descriptors, "range_index": self.index,
                               "pending": self.pending, "pending_by_region": self.by_region}
        if bump:
            out["cluster_epoch"] = state.cluster_epoch + 1
        return out


# ---- handlers: each returns the changed fields (empty dict = accepted no-op) ----------------


def _on_store_joined(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: StoreMembership = event.payload
    _need(_is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    _need(isinstance(p.address, str), "invalid_store", "address must be str")
    cur = state.stores.get(p.store_id)
    if cur is not None and cur.retired:
        raise _reject("store_retired", f"store {p.store_id} retired at {cur.retired_index}")
    if cur is not None and cur.address == p.address:
        return {}  # rejoin at the same address: nothing changes
    rec = StoreRecord(p.store_id, p.address, False,
                      cur.joined_index if cur else token.index, 0)
    return {"stores": state.stores.set(p.store_id, rec),
            "membership_epoch": state.membership_epoch + 1}


def _on_store_retired(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: StoreMembership = event.payload
    _need(_is_int(p.store_id) and p.store_id > 0, "invalid_store", "store_id must be > 0")
    cur = state.stores.get(p.store_id)
    if cur is None:
        raise _reject("unknown_store", f"store {p.store_id} never joined")
    if cur.retired:
        return {}
    return {"stores": state.stores.set(p.store_id, replace(cur, retired=True,
                                                           retired_index=token.index)),
            "membership_epoch": state.membership_epoch + 1}


def _on_fence(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: AllocatorFence = event.payload
    want = AllocatorKind.ID if event.kind == EventKind.ID_ALLOCATOR_FENCED else AllocatorKind.TSO
    _need(p.kind == want, "payload_mismatch", f"{EventKind(event.kind).name} carries {p.kind!r}")
    _need(_is_int(p.minimum) and p.minimum >= 0, "invalid_fence", f"minimum {p.minimum!r}")
    field = "id_fence" if want == AllocatorKind.ID else "tso_fence"
    current = getattr(state, field)
    if p.minimum < current:
        raise _reject("fence_regression", f"{field} is {current}; refusing to lower it to "
                      f"{p.minimum}", RetryClass.REFRESH)
    return {field: p.minimum} if p.minimum > current else {}


def _on_upsert(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    d = check_descriptor(event.payload.descriptor)
    cur = state.descriptors.get(d.region_id)
    if cur is not None:
        if state.pending_by_region.get(d.region_id):
            raise _reject("range_change_pending", f"region {d.region_id} is owned by "
                          f"{state.pending_by_region.get(d.region_id)}", RetryClass.CONFLICT)
        if cur.same_truth(d):
            return {}
        if event.kind == EventKind.REGION_BOOTSTRAP:
            raise _reject("region_exists", f"region {d.region_id} already bootstrapped")
        if d.epoch.is_stale_against(cur.epoch):
            raise _reject("stale_epoch", f"region {d.region_id} epoch {d.epoch} is behind "
                          f"{cur.epoch}", RetryClass.REFRESH)
        if d.epoch == cur.epoch:
            raise _reject("epoch_not_advanced", f"region {d.region_id} changed without an "
                          f"epoch bump ({d.epoch})", RetryClass.REFRESH)
    _check_no_overlap(state, d, {d.region_id})
    _check_new_peers(state, d, (cur,) if cur else ())
    regions = _Regions(state)
    regions.install(d, token.index)
    return regions.changes(state, bump=True)


def _on_tombstone(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    p: RegionRemoval = event.payload
    _need(_is_int(p.region_id) and p.region_id > 0, "invalid_region", "region_id must be > 0")
    if p.base is not None:
        check_descriptor(p.base, "base")
        _need(p.base.region_id == p.region_id, "payload_mismatch", "base.region_id")
    effect, _ = _effect(state, event)
    if effect == Effect.NOOP:
        return {}
    regions = _Regions(state)
    regions.remove(p.region_id)
    return regions.changes(state, bump=True)


def _check_split(p: RangeSplit) -> None:
    base = check_descriptor(p.base_parent, "base_parent")
    left, right = check_descriptor(p.left, "left"), check_descriptor(p.right, "right")
    _need(_is_int(p.parent_region_id) and base.region_id == p.parent_region_id,
          "payload_mismatch", "base_parent.region_id != parent_region_id")
    _need(isinstance(p.split_key, bytes) and len(p.split_key) > 0, "invalid_split",
          "split_key must be non-empty bytes")
    _need(base.start_key < p.split_key and (not base.end_key or p.split_key < base.end_key),
          "invalid_split", f"split key {p.split_key!r} outside parent range")
    _need(left.start_key == base.start_key and left.end_key == p.split_key
          and right.start_key == p.split_key and right.end_key == base.end_key,
          "invalid_split", "children must partition the parent range at the split key")
    _need(left.region_id != right.region_id, "invalid_split", "children share a region id")
    _need(left.epoch.version > base.epoch.version and right.epoch.version > base.epoch.version,
          "invalid_split", "children must have a higher epoch version than the parent")


def _check_merge(p: RangeMerge) -> None:
    bl, br = check_descriptor(p.base_left, "base_left"), check_descriptor(p.base_right, "base_right")
    m = check_descriptor(p.merged, "merged")
    _need(bl.region_id == p.left_region_id and br.region_id == p.right_region_id,
          "payload_mismatch", "base ids must equal left/right region ids")
    _need(bl.region_id != br.region_id, "invalid_merge", "cannot merge a region with itself")
    _need(bool(bl.end_key) and bl.end_key == br.start_key, "invalid_merge",
          "regions are not adjacent")
    _need(m.start_key == bl.start_key and m.end_key == br.end_key, "invalid_merge",
          "merged range must be the union of the sources")
    _need(m.epoch.version > max(bl.epoch.version, br.epoch.version), "invalid_merge",
          "merged epoch version must exceed both sources")


def _check_peer_change(p: PeerChange, adding: bool) -> None:
    base, target = check_descriptor(p.base, "base"), check_descriptor(p.target, "target")
    _need(_is_int(p.store_id) and _is_int(p.peer_id) and p.store_id > 0 and p.peer_id > 0,
          "invalid_peer_change", "store_id / peer_id must be > 0")
    _need(base.region_id == target.region_id == p.region_id, "payload_mismatch",
          "base/target region ids must equal region_id")
    _need(base.start_key == target.start_key and base.end_key == target.end_key
          and base.epoch.version == target.epoch.version, "invalid_peer_change",
          "a peer change keeps the range and epoch version")
    _need(target.epoch.conf_ver > base.epoch.conf_ver, "invalid_peer_change",
          "target conf_ver must exceed base conf_ver")
    base_peers = {(q.store_id, q.peer_id): q for q in base.peers}
    target_peers = {(q.store_id, q.peer_id): q for q in target.peers}
    key = (p.store_id, p.peer_id)
    if adding:
        _need(key not in base_peers and key in target_peers and
              all(q.store_id != p.store_id for q in base.peers), "invalid_peer_change",
              f"addition of {key} must add exactly that peer")
        _need({k: v for k, v in target_peers.items() if k != key} == base_peers,
              "invalid_peer_change", "a peer addition changes nothing else")
    else:
        _need(key in base_peers and key not in target_peers, "invalid_peer_change",
              f"removal of {key} must remove exactly that peer")
        _need({k: v for k, v in base_peers.items() if k != key} == target_peers,
              "invalid_peer_change", "a peer removal changes nothing else")


def _effect(state: RootState, event: RootEvent) -> tuple[Effect, Situation]:
    cls = event_class(EventKind(event.kind))
    situation = classify(state, event)
    effect, retry, reason = TRANSITION_EFFECTS[(cls, situation)]
    if effect == Effect.REJECT:
        raise _reject(reason, f"{transition_id(event)} is {situation.name.lower()}", retry)
    return effect, situation


def _on_transition(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    kind = EventKind(event.kind)
    p = event.payload
    if isinstance(p, RangeSplit):
        _check_split(p)
    elif isinstance(p, RangeMerge):
        _check_merge(p)
    else:
        _check_peer_change(p, TRANSITION_KINDS[kind] == TransitionKind.PEER_ADDITION)
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
    _check_fresh_ids(state, targets, bases)
    for t in targets:
        _check_new_peers(state, t, bases)
    current_bases = tuple(state.descriptors[b.region_id] for b in bases)
    for b in bases:
        regions.remove(b.region_id)
    for t in targets:
        regions.install(t, token.index)
    if cls == EventClass.PLANNED:
        regions.add_pending(PendingTransition(
            transition_id=tid, kind=TRANSITION_KINDS[kind], planned_kind=kind,
            region_ids=_touched_ids(bases, targets),
            targets=tuple(regions.descriptors[t.region_id] for t in targets),
            bases=current_bases, source_token=token))
    return regions.changes(state, bump=True)


def _on_recovery(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    r: RecoveryRecord = event.payload
    _need(isinstance(r.transition_id, str) and isinstance(r.action, str) and bool(r.action)
          and isinstance(r.failure_evidence, str), "invalid_recovery_record",
          "transition_id, action and failure_evidence are strings; action non-empty")
    _need(_is_int(r.observed_root_index), "invalid_recovery_record",
          "observed_root_index must be an int")
    if r.action == FENCE_ACTION:
        _check_fence_witness(state, token, r)
    n = len(state.recovery_records)
    entry = (r.action, r.observed_root_index)
    return {"recovery_records": state.recovery_records.set(n, r),
            "recovery_index": state.recovery_index.set(
                r.transition_id, state.recovery_index.get(r.transition_id, ()) + (entry,))}


def _check_fence_witness(state: RootState, token: RootToken, r: RecoveryRecord) -> None:
    """A fence witness names a plan pending now, observed between its plan and this event,
    and not one its leader already reported applied."""
    entry = state.pending.get(r.transition_id)
    if entry is None:
        raise _reject("fence_not_pending", f"{r.transition_id!r} has no pending plan to fence",
                      RetryClass.REFRESH)
    source = entry.source_token.index
    if not source <= r.observed_root_index < token.index:
        raise _reject("invalid_recovery_record",
                      f"fence of {r.transition_id} observed at root index "
                      f"{r.observed_root_index}, outside [{source}, {token.index - 1}] (its "
                      "plan's index .. the last applied event)")
    seen = state.applied_report(r.transition_id, source)
    if seen is not None:
        raise _reject("fence_after_apply",
                      f"the region leader reported {r.transition_id} (planned at index "
                      f"{source}) applied at root index {seen}: it cannot be fenced")


def _guard_cancel(state: RootState, tid: str, entry: PendingTransition) -> None:
    """Refuse a matching cancel the region leader has not fenced, or reported applied."""
    if unsafe_cancel():
        return
    source = entry.source_token.index
    seen = state.applied_report(tid, source)
    if seen is not None:
        raise _reject("cancel_after_apply",
                      f"{tid} (planned at root index {source}) was reported applied by its "
                      f"region leader (recovery record observed at index {seen}): it can only "
                      "complete; reconcile forward", RetryClass.PERMANENT)
    if state.fence_witness(tid, source) is None:
        raise _reject("cancel_not_fenced",
                      f"{tid} (planned at root index {source}) was not fenced by its region "
                      f"leader: root cancels a plan only after a {FENCE_ACTION!r} recovery "
                      "record shows it can no longer apply; ask the region leader to "
                      "compensate it", RetryClass.PERMANENT)


def _last_record(state: RootState, tid: str, source_index: int, wanted) -> int | None:
    """The observed index of the latest record of `tid` whose action is `wanted`, made for
    the plan at `source_index` (observed at or after it), or None."""
    for action, observed in reversed(state.recovery_index.get(tid, ())):
        if observed >= source_index and wanted(action):
            return observed
    return None


def _index_records(records: Iterable[RecoveryRecord]) -> PMap:
    index: dict[str, tuple[tuple[str, int], ...]] = {}
    for r in records:
        observed = r.observed_root_index if _is_int(r.observed_root_index) else 0
        index[r.transition_id] = index.get(r.transition_id, ()) + ((r.action, observed),)
    return PMap.from_items(index.items())


def _on_grant(state: RootState, token: RootToken, event: RootEvent) -> dict[str, Any]:
    try:
        return _grants.grant_event_changes(state, event)
    except _grants.GrantEventError as e:
        retry = RetryClass.CONFLICT if e.violation == Violation.PRIMACY else RetryClass.PERMANENT
        raise _reject(e.reason, e.detail, retry, e.violation) from None


_HANDLERS = {
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

__all__ = [
    "APPLIED_ACTIONS",
    "DEFAULT_REQUEST_WINDOW",
    "FENCE_ACTION",
    "PAYLOAD_TYPES",
    "TRANSITION_EFFECTS",
    "Effect",
    "EventClass",
    "PMap",
    "RangeIndex",
    "RootEventRejected",
    "RootState",
    "Situation",
    "check_descriptor",
    "classify",
    "event_class",
    "fingerprint",
    "shape",
    "transition_id",
    "transition_kind",
]
