"""Persistent (immutable, structure-sharing) maps of the rooted state.

Owns: `PMap`, a hashed 32-way trie of small dicts keyed by int or str (process-independent
hashing, so iteration order is the same on every peer), and `RangeIndex`, the ordered
`start_key -> region_id` index of live regions stored as sorted chunks. An update copies
O(touched entries + a few short spines) and shares the rest, so applying one rooted event
never copies the whole cluster.
Never: knows what the values mean (regions, grants, requests), mutates a published version,
or does I/O.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from typing import Any


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
# (start, _AFTER_ANY_ID) sorts after every entry (start, region_id): bisecting with it finds
# the last entry whose start <= a key without a key function.
_AFTER_ANY_ID = float("inf")


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
        pos = max(bisect_right(chunk, (key, _AFTER_ANY_ID)) - 1, 0)
        yield from chunk[pos:]
        for c in self._chunks[ci + 1:]:
            yield from c

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        for c in self._chunks:
            yield from c

    def floor(self, key: bytes) -> int | None:
        """The region id of the greatest start <= key (None if every start is after it).
        The catalog's lookup path: no generator, no key function."""
        if not self._chunks:
            return None
        chunk = self._chunks[self._locate(key)]
        pos = bisect_right(chunk, (key, _AFTER_ANY_ID)) - 1
        return chunk[pos][1] if pos >= 0 else None


__all__ = ["PMap", "RangeIndex"]
