"""The coordinator's served catalog as an index over its rooted state mirror (DESIGN 4.2, 4.3).

Owns: `RootCatalog`, an immutable, token-stamped snapshot answering the catalog's queries
(lookup by key, scan, region by id, the rooted store view, pending range changes, the
descriptor revision high-water mark) straight from one `metaroot.state.RootState`: its
`RangeIndex` orders regions by start key, its `PMap`s hold descriptors, pending transitions
and stores. `advance(events)` folds a contiguous tail of committed rooted events into that
RootState (`apply_committed`, exactly what metaroot did before it logged them) and records
the fold (`folded`: each event with the state before it and its rejection, if any), so the
subscription keeps one fold of rooted events and one persistent structure: the catalog it
serves and the RootState mirror it assesses transitions against are the same value.
What the catalog adds to the RootState: the StoreView of each rooted store (cached per
snapshot, rebuilt only when membership changed), which pending transitions make a range
pending (split and merge targets), `max_revision` (never decreasing along `advance`) and the
cost of the last advance (`AdvanceStats`).

Never: mutates a snapshot (the view swaps whole snapshots), does I/O, reads a clock,
validates beyond what `RootState.apply_committed` does (a committed event root refused is a
no-op that advances the token, as on metaroot), or becomes a source of truth (it is
rebuildable from a metaroot checkpoint).

`coordinator.catalog.Catalog` answers the same queries over its own persistent B+tree with a
lenient fold (no validation, newest installer wins); it serves standalone catalogs built from
descriptors. A `RootCatalog` is accepted wherever a `Catalog` is read (same query surface).
"""

from __future__ import annotations

from coordinator.catalog import AdvanceStats, CatalogGapError, StoreView
from metaroot.errors import RootEventRejected
from metaroot.state import RootState
from nokvpy.protocol.enums import StoreState, TransitionKind
from nokvpy.protocol.grants import StoreRecord
from nokvpy.protocol.records import (
    CommittedEvent,
    PeerChange,
    RangeMerge,
    RangeSplit,
    RegionDescriptor,
    RegionRemoval,
    RegionUpsert,
    RootToken,
    StoreMembership,
)

__all__ = ["CatalogFoldError", "Fold", "RootCatalog", "store_view"]

_RANGE_KINDS = (TransitionKind.SPLIT, TransitionKind.MERGE)

# One folded event: (the committed event, the RootState just before it, root's rejection or
# None). The before-state is shared structure, not a copy.
Fold = tuple[CommittedEvent, RootState, RootEventRejected | None]


class CatalogFoldError(CatalogGapError):
    """A committed event the RootState could not fold (it raised, not rejected): the view
    cannot follow the stream and must be rebuilt from a snapshot, like after a gap."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(index, index)
        self.args = (f"rooted event {index} could not be folded: "
                     f"{type(cause).__name__}: {cause}",)
        self.cause = cause


def store_view(s: StoreRecord) -> StoreView:
    """The catalog's view of one rooted store record."""
    return StoreView(s.store_id, s.address, StoreState.RETIRED if s.retired else StoreState.UP,
                     s.retired_index if s.retired else s.joined_index)


def _store_views(state: RootState) -> dict[int, StoreView]:
    return {s.store_id: store_view(s)
            for s in sorted(state.stores.values(), key=lambda s: s.store_id)}


def _region_ids(payload: object) -> tuple[int, ...]:
    """The region ids an event's payload names (the only regions it can change)."""
    if isinstance(payload, RegionUpsert):
        return (payload.descriptor.region_id,)
    if isinstance(payload, RangeSplit):
        return (payload.parent_region_id, payload.left.region_id, payload.right.region_id)
    if isinstance(payload, RangeMerge):
        return (payload.left_region_id, payload.right_region_id, payload.merged.region_id)
    if isinstance(payload, PeerChange | RegionRemoval):
        return (payload.region_id,)
    return ()


class RootCatalog:
    """Immutable catalog snapshot over a RootState at `token`. Build with `empty` or `of`,
    derive with `advance`; never mutate."""

    __slots__ = ("_root", "_stores", "_max_revision", "_last_advance", "_folded")

    _root: RootState
    _stores: dict[int, StoreView]  # never handed out (stores() copies)
    _max_revision: int
    _last_advance: AdvanceStats
    _folded: tuple[Fold, ...]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RootCatalog is immutable")

    @classmethod
    def _new(cls, root: RootState, stores: dict[int, StoreView], max_revision: int,
             stats: AdvanceStats, folded: tuple[Fold, ...]) -> RootCatalog:
        cat = object.__new__(cls)
        for name, value in (("_root", root), ("_stores", stores),
                            ("_max_revision", max_revision), ("_last_advance", stats),
                            ("_folded", folded)):
            object.__setattr__(cat, name, value)
        return cat

    @classmethod
    def of(cls, state: RootState) -> RootCatalog:
        """The catalog of a rooted state (a checkpoint, a reload): O(regions) once, for the
        revision high-water mark; nothing is copied."""
        return cls._new(state, _store_views(state), state.max_descriptor_revision(),
                        AdvanceStats(), ())

    @classmethod
    def empty(cls) -> RootCatalog:
        return cls.of(RootState())

    # ---- reads ----

    @property
    def root(self) -> RootState:
        """The RootState this snapshot indexes (the coordinator's mirror at `token`)."""
        return self._root

    @property
    def folded(self) -> tuple[Fold, ...]:
        """The events the last `advance` folded, each with the state before it."""
        return self._folded

    @property
    def token(self) -> RootToken:
        return self._root.token

    @property
    def max_revision(self) -> int:
        return self._max_revision

    @property
    def last_advance(self) -> AdvanceStats:
        return self._last_advance

    @property
    def overlap_evictions(self) -> int:
        return 0  # rooted truth never overlaps: root refuses an overlapping install

    def __len__(self) -> int:
        return len(self._root.descriptors)

    def lookup(self, key: bytes) -> RegionDescriptor | None:
        """The region whose [start, end) contains `key`."""
        return self._root.region_for_key(key)

    def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 0) -> list[RegionDescriptor]:
        """Regions intersecting [start, end) in key order (empty end = +infinity; limit 0 =
        unlimited)."""
        descriptors = self._root.descriptors
        out: list[RegionDescriptor] = []
        for k, rid in self._root.range_index.iter_from(start):
            if end and k >= end:
                break
            d = descriptors[rid]
            if k < start and d.end_key and d.end_key <= start:
                continue  # the region before `start` ends at or before it
            out.append(d)
            if limit and len(out) >= limit:
                break
        return out

    def get(self, region_id: int) -> RegionDescriptor | None:
        return self._root.descriptors.get(region_id)

    def regions(self) -> list[RegionDescriptor]:
        """Every region in start-key order."""
        return list(self._root.iter_descriptors())

    def stores(self) -> dict[int, StoreView]:
        return dict(self._stores)

    def store(self, store_id: int) -> StoreView | None:
        return self._stores.get(store_id)

    def is_range_change_pending(self, region_id: int) -> bool:
        """A planned split or merge installed this region and is not finished."""
        p = self._root.pending_for_region(region_id)
        return p is not None and p.kind in _RANGE_KINDS and any(
            t.region_id == region_id for t in p.targets)

    def pending_range_changes(self) -> dict[int, str]:
        """region id -> transition id of the planned split / merge that installed it."""
        pending = {t.region_id: p.transition_id for p in self._root.pending_transitions()
                   if p.kind in _RANGE_KINDS for t in p.targets}
        return dict(sorted(pending.items()))

    # ---- derivation ----

    def advance(self, committed_events: list[CommittedEvent]) -> RootCatalog:
        """The catalog after `committed_events`, folded into the RootState. Events at or
        below `token` are skipped (already incorporated); the rest must continue the token
        densely, else CatalogGapError; an event the state cannot fold (it raises instead of
        rejecting) raises CatalogFoldError. `self` is unchanged either way. Cost is the
        RootState fold's; `last_advance.entries_touched` counts the region, pending and store
        entries that changed (`nodes_copied` is not measured here: 0)."""
        state = self._root
        fresh = [ce for ce in committed_events if ce.token.index > state.token.index]
        if not fresh:
            return self
        stores, max_revision = self._stores, self._max_revision
        folded: list[Fold] = []
        touched = 0
        expected = state.token.index + 1
        for ce in fresh:
            if ce.token.index != expected:
                raise CatalogGapError(expected, ce.token.index)
            try:
                new, err = state.apply_committed(ce.token, ce.event)
            except Exception as exc:  # noqa: BLE001 - any failure: the view reloads
                raise CatalogFoldError(ce.token.index, exc) from exc
            folded.append((ce, state, err))
            if new.descriptors is not state.descriptors or \
                    new.pending_by_region is not state.pending_by_region:
                for rid in _region_ids(ce.event.payload):
                    d = new.descriptors.get(rid)
                    touched += (d is not state.descriptors.get(rid)) + (
                        new.pending_by_region.get(rid) != state.pending_by_region.get(rid))
                    if d is not None and d.revision > max_revision:
                        max_revision = d.revision
            if new.stores is not state.stores:
                stores = _store_views(new)
                if isinstance(ce.event.payload, StoreMembership):
                    touched += 1
            state = new
            expected += 1
        return RootCatalog._new(state, stores, max_revision,
                                AdvanceStats(len(fresh), touched, 0), tuple(folded))

