"""Watch: the changes of a key range, in apply order, resumable from a revision (DESIGN 5).

Owns: the watch request and reply between a client and the store leading a region, and the
revision a watch resumes from. Never decides which events a region holds (that is
raftstore.changelog) nor how a client follows a range across regions (nokvpy.client.watch).

Revisions. An event is identified by `(version, index, seq)`: the region epoch version when
its entry applied, the entry's raft index, its position among the entry's writes. For one
key the revision only grows: within a region the index grows; a key changes region only at a
split (both sides get version + 1) or a merge (the merged region's version is above both
sources'), so its new owner's version is above its old owner's. A watch of a key range
therefore needs one cursor, the revision `(version, index)` through which it has every event,
whichever region holds the range now.
"""

from __future__ import annotations

from dataclasses import dataclass

from nokvpy.protocol.base import wire_type
from nokvpy.protocol.store_rpc import KvContext

PUT = 1
DELETE = 2

# The most events one reply carries (more: the client asks again from the reply's `head`).
MAX_WATCH_EVENTS = 1000
# The longest a store holds a watch request open waiting for an event.
MAX_WATCH_WAIT_MS = 5000


@wire_type(430)
@dataclass(slots=True, frozen=True)
class KvWatchRequest:
    """The events of [start_key, end_key) (clipped to the region) after revision
    (`after_version`, `after_index`): clients send it to the store leading the region.

    With no event yet the store waits up to `wait_ms` for one. `after_version` = -1 asks for
    no event, only the region's current head (a watch that starts now)."""

    ctx: KvContext
    start_key: bytes
    end_key: bytes
    after_version: int
    after_index: int
    limit: int = MAX_WATCH_EVENTS
    wait_ms: int = 0


@wire_type(431)
@dataclass(slots=True, frozen=True)
class KvWatchReply:
    """Answer to KvWatchRequest, read at one point of the region's applied state.

    `events`: (version, index, seq, kind, key, value, origin) tuples in revision order,
    value None for a delete, origin the region whose entry made the change (after a merge,
    two changes of different keys may share (version, index, seq) and differ in origin). The reply holds every event of the served range [served_start, served_end)
    (the request's range clipped to the region at the read point) with a revision up to
    (`head_version`, `head_index`); the client's cursor for that range moves there. When
    `compacted`, the region no longer holds the events after the requested revision (its
    oldest is (`floor_version`, `floor_index`)) and `events` is empty."""

    events: list[tuple[int, int, int, int, bytes, bytes | None, int]]
    head_version: int
    head_index: int
    served_start: bytes
    served_end: bytes
    region_id: int
    compacted: bool = False
    floor_version: int = 0
    floor_index: int = 0
