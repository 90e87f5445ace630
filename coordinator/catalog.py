"""The standalone catalog: an immutable, token-stamped snapshot of rooted region truth.

Owns: the region descriptors ordered by start key (lookup by key in O(log n)), the region-id
index, the planned range changes (split/merge targets still pending), the rooted store view,
and the root token the snapshot reflects. `Catalog.advance(events)` derives the next snapshot
from a contiguous tail of committed rooted events with its own lenient fold (below). Also the
catalog vocabulary shared with `coordinator.rootcatalog`: `StoreView`, `AdvanceStats`,
`CatalogGapError`. The running coordinator serves a `RootCatalog` instead (the same queries
answered from its RootState mirror, so rooted events are folded once); a `Catalog` is built
from descriptors (tests, benchmarks, tools) and is the default of a standalone `RootView`.

Never: mutates a Catalog after construction (the service swaps whole snapshots atomically),
does I/O, reads a clock, or becomes a source of truth (it is rebuildable from metaroot).

Structure sharing. Both indexes are persistent B+trees (`_PMap`, fan-out 64, path copying):
an update copies one root-to-leaf path (about log_64(n) nodes of at most 64 slots), so
`advance` costs O(delta * log n) and the previous Catalog shares every untouched node.
sortedcontainers' SortedList/SortedDict are mutable; a copy per delta would be O(n), so they
are not used for the shared index. Micro-benchmark (CPython 3.11, 2 shared cores, load ~4):
on a 100k-region catalog (tree height 3), `from_descriptors` takes ~0.2-0.6 s; `advance` of
one upsert takes ~40-75 us copying 6 nodes, one planned split ~140-200 us copying 14 nodes,
one non-region event ~15 us (see `Catalog.last_advance`); `lookup` ~4-7 us.

Event effects (mirroring the rooted state, DESIGN 4.1):
- REGION_BOOTSTRAP / REGION_DESCRIPTOR_PUBLISHED (RegionUpsert): install the descriptor and
  clear its pending range change; a descriptor whose state is TOMBSTONE is removed instead.
- REGION_TOMBSTONED (RegionRemoval): remove the region and its pending entry.
- SPLIT_PLANNED: drop the parent, install left and right, mark both pending.
  MERGE_PLANNED: drop both sources, install merged, mark it pending.
  PEER_*_PLANNED: install the target (peer changes never make a range pending).
- Terminal (SPLIT_COMMITTED, MERGED, PEER_ADDED, PEER_REMOVED): install the targets (a terminal
  without a plan is accepted) and clear the pending entries.
- Cancel: restore the base descriptors only if every target is still installed unchanged
  (otherwise newer truth superseded the plan and the cancel is a no-op); clear pending.
- STORE_JOINED / STORE_RETIRED: update the store view. Every other kind only moves the token.
Revision: an installed descriptor gets revision = index of the event that installed it,
except that re-installing an identical descriptor (same truth) keeps its revision. Rooted
truth never overlaps; if an install finds another region at its start key, the newest
installer wins and the displaced region is dropped (counted in `overlap_evictions`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nokvpy.protocol.enums import EventKind, RegionState, StoreState
from nokvpy.protocol.records import (
    ZERO_TOKEN,
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
from nokvpy.protocol.transitions import merge_transition_id, split_transition_id

__all__ = [
    "AdvanceStats",
    "Catalog",
    "CatalogGapError",
    "StoreView",
    "merge_transition_id",
    "split_transition_id",
]

# ---- persistent B+tree ------------------------------------------------------------------

_MAX = 64  # a node splits above this many slots
_MIN = 16  # a node below this many slots is merged with a sibling
_BULK = 48  # leaf and node fill when bulk-building


class _Node:
    """One B+tree node. Leaves hold values in `slots`; inner nodes hold children.
    Invariant: keys is sorted and keys[i] is the smallest key under slots[i]."""

    __slots__ = ("keys", "slots", "leaf")

    def __init__(self, keys: tuple, slots: tuple, leaf: bool) -> None:
        self.keys = keys
        self.slots = slots
        self.leaf = leaf


_EMPTY_LEAF = _Node((), (), True)


class _Counter:
    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes = 0


def _make(keys: tuple, slots: tuple, leaf: bool, c: _Counter) -> _Node:
    c.nodes += 1
    return _Node(keys, slots, leaf)


def _split(keys: tuple, slots: tuple, leaf: bool, c: _Counter) -> tuple[_Node, ...]:
    if len(keys) <= _MAX:
        return (_make(keys, slots, leaf, c),)
    h = len(keys) // 2
    return (_make(keys[:h], slots[:h], leaf, c), _make(keys[h:], slots[h:], leaf, c))


def _insert(node: _Node, key: Any, value: Any, c: _Counter) -> tuple[tuple[_Node, ...], bool]:
    keys, slots = node.keys, node.slots
    if node.leaf:
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return (_make(keys, slots[:i] + (value,) + slots[i + 1:], True, c),), False
        return (_split(keys[:i] + (key,) + keys[i:], slots[:i] + (value,) + slots[i:], True, c),
                True)
    i = max(0, bisect_right(keys, key) - 1)
    parts, added = _insert(slots[i], key, value, c)
    nkeys = keys[:i] + tuple(p.keys[0] for p in parts) + keys[i + 1:]
    return _split(nkeys, slots[:i] + parts + slots[i + 1:], False, c), added


def _delete(node: _Node, key: Any, c: _Counter) -> _Node | None:
    """The node without `key`, or None when `key` is absent (nothing copied)."""
    keys, slots = node.keys, node.slots
    if node.leaf:
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return None
        return _make(keys[:i] + keys[i + 1:], slots[:i] + slots[i + 1:], True, c)
    i = bisect_right(keys, key) - 1
    if i < 0:
        return None
    child = _delete(slots[i], key, c)
    if child is None:
        return None
    if not child.keys:
        return _make(keys[:i] + keys[i + 1:], slots[:i] + slots[i + 1:], False, c)
    lo, hi, parts = i, i + 1, (child,)
    if len(child.keys) < _MIN and len(slots) > 1:
        # merge with a sibling, re-split if the union is too big
        if i > 0:
            left, right, lo = slots[i - 1], child, i - 1
        else:
            left, right, hi = child, slots[i + 1], i + 2
        parts = _split(left.keys + right.keys, left.slots + right.slots, child.leaf, c)
    nkeys = keys[:lo] + tuple(p.keys[0] for p in parts) + keys[hi:]
    return _make(nkeys, slots[:lo] + parts + slots[hi:], False, c)


def _iter_from(node: _Node, key: Any) -> Iterator[tuple[Any, Any]]:
    if node.leaf:
        i = bisect_left(node.keys, key)
        yield from zip(node.keys[i:], node.slots[i:], strict=True)
        return
    for child in node.slots[max(0, bisect_right(node.keys, key) - 1):]:
        yield from _iter_from(child, key)


class _PMap:
    """Immutable ordered map with O(log n) get/floor/set/delete sharing unchanged nodes."""

    __slots__ = ("root", "size")

    def __init__(self, root: _Node = _EMPTY_LEAF, size: int = 0) -> None:
        self.root = root
        self.size = size

    @classmethod
    def from_sorted(cls, items: list[tuple[Any, Any]]) -> _PMap:
        if not items:
            return cls()
        level = [_Node(tuple(k for k, _ in items[i:i + _BULK]),
                       tuple(v for _, v in items[i:i + _BULK]), True)
                 for i in range(0, len(items), _BULK)]
        while len(level) > 1:
            level = [_Node(tuple(n.keys[0] for n in level[i:i + _BULK]),
                           tuple(level[i:i + _BULK]), False)
                     for i in range(0, len(level), _BULK)]
        return cls(level[0], len(items))

    def get(self, key: Any, default: Any = None) -> Any:
        node = self.root
        while not node.leaf:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                return default
            node = node.slots[i]
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return node.slots[i]
        return default

    def floor(self, key: Any) -> tuple[Any, Any] | None:
        """The entry with the greatest key <= `key` (keys[i] is a subtree minimum, so the
        descent never dead-ends)."""
        node = self.root
        while True:
            i = bisect_right(node.keys, key) - 1
            if i < 0:
                return None
            if node.leaf:
                return node.keys[i], node.slots[i]
            node = node.slots[i]

    def items_from(self, key: Any) -> Iterator[tuple[Any, Any]]:
        return _iter_from(self.root, key)

    def items(self) -> Iterator[tuple[Any, Any]]:
        node = self.root
        while not node.leaf:
            node = node.slots[0]
        if not node.keys:
            return iter(())
        return _iter_from(self.root, node.keys[0])

    def set(self, key: Any, value: Any, c: _Counter) -> _PMap:
        parts, added = _insert(self.root, key, value, c)
        root = parts[0] if len(parts) == 1 else _make(
            tuple(p.keys[0] for p in parts), parts, False, c)
        return _PMap(root, self.size + added)

    def delete(self, key: Any, c: _Counter) -> _PMap:
        root = _delete(self.root, key, c)
        if root is None:
            return self
        while not root.leaf and len(root.slots) == 1:
            root = root.slots[0]
        if not root.leaf and not root.slots:
            root = _EMPTY_LEAF
        return _PMap(root, self.size - 1)

    def height(self) -> int:
        h, node = 1, self.root
        while not node.leaf:
            h, node = h + 1, node.slots[0]
        return h


# ---- catalog ----------------------------------------------------------------------------


class CatalogGapError(ValueError):
    """A delta does not continue the catalog's token: the caller must bootstrap or reload."""

    def __init__(self, expected_index: int, got_index: int) -> None:
        super().__init__(f"rooted event gap: expected index {expected_index}, got {got_index}")
        self.expected_index = expected_index
        self.got_index = got_index


@dataclass(slots=True, frozen=True)
class StoreView:
    """Rooted membership of one store (liveness comes from heartbeats, not from here)."""

    store_id: int
    address: str = ""
    state: StoreState = StoreState.UP
    revision: int = 0  # root index of the membership event


@dataclass(slots=True, frozen=True)
class AdvanceStats:
    """What producing this catalog from its predecessor cost (for tests and diagnostics)."""

    events: int = 0  # committed events consumed (including non-region kinds)
    entries_touched: int = 0  # index entries written or removed
    nodes_copied: int = 0  # persistent-tree nodes allocated by path copying


class Catalog:
    """Immutable snapshot of region truth at `token`. Build with `empty`, `from_descriptors`
    or `advance`; never mutate."""

    __slots__ = ("_token", "_by_start", "_by_id", "_pending", "_stores", "_max_revision",
                 "_overlap_evictions", "_last_advance")

    _token: RootToken
    _by_start: _PMap  # start_key -> RegionDescriptor (RUNNING only)
    _by_id: _PMap  # region_id -> RegionDescriptor
    _pending: _PMap  # region_id -> transition id of the planned split/merge that installed it
    _stores: _PMap  # store_id -> StoreView
    _max_revision: int  # >= every current descriptor revision; never decreases along advance
    _overlap_evictions: int
    _last_advance: AdvanceStats

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Catalog is immutable")

    @classmethod
    def _new(cls, token: RootToken, by_start: _PMap, by_id: _PMap, pending: _PMap,
             stores: _PMap, max_revision: int, evictions: int, stats: AdvanceStats) -> Catalog:
        cat = object.__new__(cls)
        for name, value in (("_token", token), ("_by_start", by_start), ("_by_id", by_id),
                            ("_pending", pending), ("_stores", stores),
                            ("_max_revision", max_revision), ("_overlap_evictions", evictions),
                            ("_last_advance", stats)):
            object.__setattr__(cat, name, value)
        return cat

    @classmethod
    def empty(cls) -> Catalog:
        return cls._new(ZERO_TOKEN, _PMap(), _PMap(), _PMap(), _PMap(), 0, 0, AdvanceStats())

    @classmethod
    def from_descriptors(
        cls,
        token: RootToken,
        descriptors: Iterable[RegionDescriptor],
        pending_range_region_ids: Iterable[int] | Mapping[int, str] = (),
        stores: Iterable[StoreView] | Mapping[int, StoreView] = (),
    ) -> Catalog:
        """A catalog from a rooted checkpoint. Descriptors keep their revisions; TOMBSTONE
        descriptors are skipped. Raises ValueError on duplicate ids or overlapping ranges."""
        live = sorted((d for d in descriptors if d.state != RegionState.TOMBSTONE),
                      key=lambda d: d.start_key)
        by_id: dict[int, RegionDescriptor] = {}
        for prev, d in zip([None, *live], live, strict=False):
            if d.region_id in by_id:
                raise ValueError(f"duplicate region id {d.region_id}")
            if prev is not None and (not prev.end_key or prev.end_key > d.start_key):
                raise ValueError(f"regions {prev.region_id} and {d.region_id} overlap")
            by_id[d.region_id] = d
        if isinstance(pending_range_region_ids, Mapping):
            pending = dict(pending_range_region_ids)
        else:
            pending = dict.fromkeys(pending_range_region_ids, "")
        store_map = dict(stores) if isinstance(stores, Mapping) else {s.store_id: s
                                                                      for s in stores}
        return cls._new(
            token,
            _PMap.from_sorted([(d.start_key, d) for d in live]),
            _PMap.from_sorted(sorted(by_id.items())),
            _PMap.from_sorted(sorted((rid, tid) for rid, tid in pending.items() if rid in by_id)),
            _PMap.from_sorted(sorted(store_map.items())),
            max((d.revision for d in live), default=0),
            0,
            AdvanceStats(),
        )

    # ---- reads ----

    @property
    def token(self) -> RootToken:
        return self._token

    @property
    def max_revision(self) -> int:
        return self._max_revision

    @property
    def last_advance(self) -> AdvanceStats:
        return self._last_advance

    @property
    def overlap_evictions(self) -> int:
        return self._overlap_evictions

    def __len__(self) -> int:
        return self._by_id.size

    def lookup(self, key: bytes) -> RegionDescriptor | None:
        """The region whose [start, end) contains `key`, in O(log n)."""
        hit = self._by_start.floor(key)
        if hit is None or not hit[1].contains(key):
            return None
        return hit[1]

    def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 0) -> list[RegionDescriptor]:
        """Regions intersecting [start, end) in key order (empty end = +infinity; limit 0 =
        unlimited)."""
        first = self._by_start.floor(start)
        begin = start if first is None or not first[1].contains(start) else first[0]
        out: list[RegionDescriptor] = []
        for k, d in self._by_start.items_from(begin):
            if end and k >= end:
                break
            out.append(d)
            if limit and len(out) >= limit:
                break
        return out

    def get(self, region_id: int) -> RegionDescriptor | None:
        return self._by_id.get(region_id)

    def regions(self) -> list[RegionDescriptor]:
        """Every region in start-key order."""
        return [d for _, d in self._by_start.items()]

    def stores(self) -> dict[int, StoreView]:
        return dict(self._stores.items())

    def store(self, store_id: int) -> StoreView | None:
        return self._stores.get(store_id)

    def is_range_change_pending(self, region_id: int) -> bool:
        return self._pending.get(region_id) is not None

    def pending_range_changes(self) -> dict[int, str]:
        """region id -> transition id ("" when unknown, e.g. from a checkpoint)."""
        return dict(self._pending.items())

    # ---- derivation ----

    def advance(self, committed_events: list[CommittedEvent]) -> Catalog:
        """The catalog after `committed_events`. Events at or below `token` are skipped
        (already incorporated); the rest must continue the token densely, else
        CatalogGapError. Cost is O(len(events) * log n); `self` is unchanged."""
        fresh = [ce for ce in committed_events if ce.token.index > self._token.index]
        if not fresh:
            return self
        b = _Builder(self)
        expected = self._token.index + 1
        for ce in fresh:
            if ce.token.index != expected:
                raise CatalogGapError(expected, ce.token.index)
            b.apply(ce)
            expected += 1
        return Catalog._new(
            fresh[-1].token, b.by_start, b.by_id, b.pending, b.stores, b.max_revision,
            b.evictions, AdvanceStats(len(fresh), b.touched, b.counter.nodes))


def _same_truth(a: RegionDescriptor, b: RegionDescriptor) -> bool:
    """RegionDescriptor.same_truth without building two copies (hot in advance)."""
    return (a.region_id == b.region_id and a.start_key == b.start_key
            and a.end_key == b.end_key and a.epoch == b.epoch and a.peers == b.peers
            and a.state == b.state)


class _Builder:
    """Accumulates one advance over persistent maps (each step is a new shared version)."""

    def __init__(self, cat: Catalog) -> None:
        self.by_start = cat._by_start
        self.by_id = cat._by_id
        self.pending = cat._pending
        self.stores = cat._stores
        self.max_revision = cat._max_revision
        self.evictions = cat._overlap_evictions
        self.counter = _Counter()
        self.touched = 0

    # primitive edits

    def remove(self, region_id: int) -> None:
        """Drop a region and its pending entry."""
        self.unpend(region_id)
        self.drop(region_id)

    def drop(self, region_id: int) -> None:
        """Drop a region's index entries (its pending entry, if any, stays)."""
        old = self.by_id.get(region_id)
        if old is None:
            return
        self.by_id = self.by_id.delete(region_id, self.counter)
        if self.by_start.get(old.start_key) is old:
            self.by_start = self.by_start.delete(old.start_key, self.counter)
        self.touched += 2

    def install(self, d: RegionDescriptor, rev: int) -> None:
        if d.state == RegionState.TOMBSTONE:
            self.remove(d.region_id)
            return
        old = self.by_id.get(d.region_id)
        if old is not None and _same_truth(old, d):
            return  # identical truth keeps its revision
        if old is not None and old.start_key != d.start_key:
            self.drop(d.region_id)
        occupant = self.by_start.get(d.start_key)
        if occupant is not None and occupant.region_id != d.region_id:
            self.remove(occupant.region_id)
            self.evictions += 1
        d = d.with_revision(rev)  # set() replaces in place when the keys already exist
        self.by_start = self.by_start.set(d.start_key, d, self.counter)
        self.by_id = self.by_id.set(d.region_id, d, self.counter)
        self.max_revision = max(self.max_revision, rev)
        self.touched += 2

    def pend(self, region_id: int, transition_id: str) -> None:
        self.pending = self.pending.set(region_id, transition_id, self.counter)
        self.touched += 1

    def unpend(self, region_id: int) -> None:
        if self.pending.get(region_id) is not None:
            self.pending = self.pending.delete(region_id, self.counter)
            self.touched += 1

    def installed(self, d: RegionDescriptor) -> bool:
        cur = self.by_id.get(d.region_id)
        return cur is not None and _same_truth(cur, d)

    # events

    def apply(self, ce: CommittedEvent) -> None:
        kind, p, rev = ce.event.kind, ce.event.payload, ce.token.index
        if kind in (EventKind.STORE_JOINED, EventKind.STORE_RETIRED):
            assert isinstance(p, StoreMembership)
            old = self.stores.get(p.store_id)
            address = p.address or (old.address if old else "")
            state = StoreState.UP if kind == EventKind.STORE_JOINED else StoreState.RETIRED
            self.stores = self.stores.set(
                p.store_id, StoreView(p.store_id, address, state, rev), self.counter)
            self.touched += 1
        elif kind in (EventKind.REGION_BOOTSTRAP, EventKind.REGION_DESCRIPTOR_PUBLISHED):
            assert isinstance(p, RegionUpsert)
            self.unpend(p.descriptor.region_id)
            self.install(p.descriptor, rev)
        elif kind == EventKind.REGION_TOMBSTONED:
            assert isinstance(p, RegionRemoval)
            self.remove(p.region_id)
        elif kind in (EventKind.SPLIT_PLANNED, EventKind.SPLIT_COMMITTED):
            assert isinstance(p, RangeSplit)
            if p.parent_region_id not in (p.left.region_id, p.right.region_id):
                self.remove(p.parent_region_id)
            self.install(p.left, rev)
            self.install(p.right, rev)
            for rid in (p.left.region_id, p.right.region_id):
                if kind == EventKind.SPLIT_PLANNED:
                    self.pend(rid, split_transition_id(p.parent_region_id, p.split_key))
                else:
                    self.unpend(rid)
        elif kind == EventKind.SPLIT_CANCELLED:
            assert isinstance(p, RangeSplit)
            if self.installed(p.left) and self.installed(p.right):
                self.remove(p.left.region_id)
                self.remove(p.right.region_id)
                self.install(p.base_parent, rev)
            self.unpend(p.left.region_id)
            self.unpend(p.right.region_id)
        elif kind in (EventKind.MERGE_PLANNED, EventKind.MERGED):
            assert isinstance(p, RangeMerge)
            for rid in (p.left_region_id, p.right_region_id):
                if rid != p.merged.region_id:
                    self.remove(rid)
            self.install(p.merged, rev)
            if kind == EventKind.MERGE_PLANNED:
                self.pend(p.merged.region_id,
                          merge_transition_id(p.left_region_id, p.right_region_id))
            else:
                self.unpend(p.merged.region_id)
        elif kind == EventKind.MERGE_CANCELLED:
            assert isinstance(p, RangeMerge)
            if self.installed(p.merged):
                self.remove(p.merged.region_id)
                self.install(p.base_left, rev)
                self.install(p.base_right, rev)
            self.unpend(p.merged.region_id)
        elif kind in (EventKind.PEER_ADDITION_PLANNED, EventKind.PEER_REMOVAL_PLANNED,
                      EventKind.PEER_ADDED, EventKind.PEER_REMOVED):
            assert isinstance(p, PeerChange)
            self.install(p.target, rev)
        elif kind in (EventKind.PEER_ADDITION_CANCELLED, EventKind.PEER_REMOVAL_CANCELLED):
            assert isinstance(p, PeerChange)
            if self.installed(p.target):
                self.install(p.base, rev)
        # every other kind (allocator fences, grants, recovery records) moves the token only
