"""The rooted facts: what `RootState` holds and how it is read (DESIGN 4.1, 4.2, 6, 7).

Owns: `RootFacts`, the immutable record of cluster truth at one `RootToken` (stores, live
descriptors and their range index, pending transitions, allocator fences, authority grants,
request-id window, recovery records), its read-only queries (including the recovery evidence
the cancel guard reads: `fence_witness`, `applied_report`) and its lossless conversion to and
from `RootCheckpoint`. Validation, classification, the event handlers and grant rules read a
`RootFacts` and return changed fields; `metaroot.state.RootState` is the subclass that folds
events (`apply`), so none of those modules needs to import `metaroot.state`.
Never: applies or validates an event, does I/O, reads a clock, or mutates a published value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from metaroot.errors import is_int
from metaroot.persistent import PMap, RangeIndex
from nokvpy.protocol.enums import Duty
from nokvpy.protocol.grants import (
    AppendFences,
    AuthorityGrant,
    EraFloor,
    PendingTransition,
    RootCheckpoint,
    StoreRecord,
)
from nokvpy.protocol.records import (
    ZERO_TOKEN,
    RecoveryRecord,
    RegionDescriptor,
    RootEvent,
    RootToken,
)

DEFAULT_REQUEST_WINDOW = 10_000  # rooted events whose request ids are remembered

# Recovery evidence the cancel guard reads (see metaroot.handlers): a RECOVERY_RECORDED event
# with action FENCE_ACTION says the region leader fenced a plan; one with an APPLIED_ACTIONS
# action says it reported the plan applied.
FENCE_ACTION = "fenced"
APPLIED_ACTIONS = frozenset({"compensation_refused_applied", "reconciled_forward"})

_FIELDS = (
    "token", "cluster_epoch", "membership_epoch", "stores", "descriptors", "range_index",
    "pending", "pending_by_region", "id_fence", "tso_fence", "grants", "duty_grants",
    "retirements", "inheritances", "uninherited", "era_floors", "max_era", "requests",
    "request_by_index", "request_window", "recovery_records", "recovery_index",
)


class RootFacts:
    """Cluster truth at `token`: the fields and the reads. Immutable; the fold that derives the
    next truth (`apply`) is `metaroot.state.RootState`, the only subclass.

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

    def _evolve(self, changes: dict[str, Any]) -> RootFacts:
        new = object.__new__(type(self))
        for name in _FIELDS:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS and hasattr(self, "request_window"):
            raise AttributeError("RootState is immutable")
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootFacts) and self.to_checkpoint() == other.to_checkpoint()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(token={self.token}, cluster_epoch={self.cluster_epoch}, "
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

    # ---- the fold (implemented by metaroot.state.RootState) ---------------------------------

    def apply(self, token: RootToken, event: RootEvent,
              fences: AppendFences | None = None) -> RootFacts:
        """Apply one event at `token`; see `metaroot.state.RootState.apply`."""
        raise NotImplementedError("the fold is metaroot.state.RootState")

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
    def from_checkpoint(cls, cp: RootCheckpoint) -> RootFacts:
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



def _last_record(state: RootFacts, tid: str, source_index: int, wanted) -> int | None:
    """The observed index of the latest record of `tid` whose action is `wanted`, made for
    the plan at `source_index` (observed at or after it), or None."""
    for action, observed in reversed(state.recovery_index.get(tid, ())):
        if observed >= source_index and wanted(action):
            return observed
    return None


def _index_records(records: Iterable[RecoveryRecord]) -> PMap:
    index: dict[str, tuple[tuple[str, int], ...]] = {}
    for r in records:
        observed = r.observed_root_index if is_int(r.observed_root_index) else 0
        index[r.transition_id] = index.get(r.transition_id, ()) + ((r.action, observed),)
    return PMap.from_items(index.items())


__all__ = ["APPLIED_ACTIONS", "DEFAULT_REQUEST_WINDOW", "FENCE_ACTION", "RootFacts"]
