"""Watch: every committed change of a key range, as it happens, resumable (DESIGN 5).

Owns: `Client.watch` (the `WatchOps` method `Client` inherits), the `Watch` it opens, the
events it yields (`WatchEvent`), its resume token (`Watch.segments()`, a list of
`WatchSegment`) and `WatchCompactedError`.

How a range is followed across regions: the range is kept as segments, each with one
cursor, the revision (version, index) through which it has every change (see
nokvpy.protocol.watch: a key's revisions only grow, whichever region holds it). One task per
segment long-polls the region holding the segment's start key (routed and retried by the
client's `_execute`: leader changes, store restarts and moved ranges are its retry reasons).
A reply serves the segment's part inside that region; when the region ends before the
segment does (a split, or a region that never covered it), the rest becomes a new segment
with the OLD cursor, followed by its own task. After a merge the segment's start routes to
the merged region, which holds the source's changes (raftstore.changelog), so the same
cursor goes on. Events of one segment come in revision order, so the changes of one key
come in order, once; changes of keys in different segments interleave.

A watch started without `since` / `resume` starts at each region's head when the watch
opens (`async with` returns once every part of the range has one): every change applied
after that is delivered. When a region no longer holds the changes after a segment's cursor
the watch fails with `WatchCompactedError` (its `floor` is the oldest revision the region
holds); nothing is ever skipped silently.

Never writes, never reorders one segment's events, never moves a cursor backwards.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import trio

from nokvpy.client.checks import check_key
from nokvpy.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NokvError,
    UnavailableError,
)
from nokvpy.client.loopcheck import require_trio
from nokvpy.protocol.watch import (
    DELETE,
    MAX_WATCH_EVENTS,
    MAX_WATCH_WAIT_MS,
    KvWatchReply,
    KvWatchRequest,
)

WAIT_MS = 500  # how long one poll waits at the store for a change
NOW = (-1, 0)  # the cursor of a segment that starts at its region's head


@dataclass(slots=True, frozen=True)
class WatchEvent:
    """One change: `kind` "put" or "delete" of `key` (`value` None for a delete), made by
    entry `index` of region `region_id` at epoch version `version`; `seq` orders the changes
    of one entry (a transaction or a range delete makes several). The revision (version,
    index, seq) grows with each change of one key; changes of different keys may share one
    (made by split siblings, which number their entries separately)."""

    kind: str
    key: bytes
    value: bytes | None
    region_id: int
    version: int
    index: int
    seq: int

    @property
    def revision(self) -> tuple[int, int, int]:
        return self.version, self.index, self.seq


@dataclass(slots=True, frozen=True)
class WatchSegment:
    """A part [start, end) of a watched range (end b"": unbounded) with every change through
    revision (version, index) delivered. A list of them is a watch's resume token."""

    start: bytes
    end: bytes
    version: int
    index: int


class WatchCompactedError(NokvError):
    """The region holding part of the range no longer has the changes after the watch's
    cursor there: `floor` (version, index) is the oldest revision it holds, `segment` the
    part that cannot go on. Start a new watch (after re-reading the range) to go on."""

    reason = "compacted"

    def __init__(self, message: str, region_id: int, floor: tuple[int, int],
                 segment: WatchSegment):
        super().__init__(message, "compacted", {"region_id": region_id, "floor": floor})
        self.region_id = region_id
        self.floor = floor
        self.segment = segment


@dataclass(slots=True)
class _Progress:
    """Segment updates a poll made, applied to the token when the consumer reaches them."""

    updates: list[tuple[int, WatchSegment]]


class Watch:
    """An open watch: `async for event in watch`. Open it with `Client.watch`."""

    def __init__(self, client: Any, segments: list[WatchSegment], wait_ms: int, buffer: int):
        self._client = client
        self._initial = segments
        self._wait_ms = wait_ms
        self._send, self._recv = trio.open_memory_channel(buffer)
        self._ids = itertools.count(1)
        self._token: dict[int, WatchSegment] = {}
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self.stats = {"polls": 0, "events": 0, "retries": 0, "segments": 0}

    # ---- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Watch:
        require_trio()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            for seg in self._initial:
                await self._establish(seg)
        except BaseException as exc:
            self._nursery.cancel_scope.cancel()
            await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return bool(await self._nursery_cm.__aexit__(*exc))

    def segments(self) -> list[WatchSegment]:
        """The resume token: the range's parts with the cursor of each, as far as the events
        consumed so far (pass it to `Client.watch(resume=...)`)."""
        return sorted(self._token.values(), key=lambda s: s.start)

    # ---- consuming -----------------------------------------------------------------------

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            item = await self._recv.receive()
            if isinstance(item, _Progress):
                for seg_id, seg in item.updates:
                    self._token[seg_id] = seg
                continue
            if isinstance(item, BaseException):
                raise item
            seg_id, done, event = item
            if done:  # every change of its revision consumed: the token may move past it
                seg = self._token[seg_id]
                self._token[seg_id] = WatchSegment(seg.start, seg.end, event.version,
                                                   event.index)
            return event

    async def next(self, timeout: float) -> WatchEvent | None:
        """The next event, or None when none came within `timeout` seconds."""
        with trio.move_on_after(timeout):
            return await self.__anext__()
        return None

    # ---- following -----------------------------------------------------------------------

    async def _establish(self, seg: WatchSegment) -> None:
        """Give every region of `seg` a cursor (its head, for a segment starting now) and a
        follower, before the watch is handed out."""
        start, end, cursor = seg.start, seg.end, (seg.version, seg.index)
        while True:
            if cursor != NOW:
                self._spawn(WatchSegment(start, end, *cursor))
                return
            reply = await self._poll(start, end, cursor, 0)
            head = (reply.head_version, reply.head_index)
            rest = _rest(reply, end)
            self._spawn(WatchSegment(start, reply.served_end if rest else end, *head))
            if not rest:
                return
            start = reply.served_end

    def _spawn(self, seg: WatchSegment) -> None:
        seg_id = next(self._ids)
        self._token[seg_id] = seg
        self.stats["segments"] += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._follow, seg_id, seg)

    async def _follow(self, seg_id: int, seg: WatchSegment) -> None:
        start, end, cursor = seg.start, seg.end, (seg.version, seg.index)
        try:
            while True:
                reply = await self._poll(start, end, cursor, self._wait_ms)
                if reply.compacted:
                    floor = (reply.floor_version, reply.floor_index)
                    raise WatchCompactedError(
                        f"region {reply.region_id} no longer holds the changes of "
                        f"[{start[:64]!r}, {end[:64]!r}) after revision {cursor} (its oldest "
                        f"is {floor}): start a new watch", reply.region_id, floor,
                        WatchSegment(start, end, *cursor))
                if reply.served_start != start or (reply.served_end
                                                   and reply.served_end <= start):
                    # a reply for a range that does not hold the segment's start (a store of
                    # another build, or a range that moved under the poll): never act on it
                    self.stats["retries"] += 1
                    await trio.sleep(0.05)
                    continue
                rest: WatchSegment | None = None
                if _rest(reply, end):  # the region ends inside the segment: the rest goes
                    # on by itself, from the old cursor (before this reply's events, so a
                    # token taken between them never claims them for the rest)
                    rest = WatchSegment(reply.served_end, end, *cursor)
                    end = reply.served_end
                    rest_id = next(self._ids)
                    await self._send.send(_Progress([(rest_id, rest),
                                                     (seg_id, WatchSegment(start, end,
                                                                           *cursor))]))
                events = reply.events
                for i, (version, index, seq, kind, key, value, origin) in enumerate(events):
                    done = i + 1 == len(events) or tuple(events[i + 1][:2]) != (version, index)
                    await self._send.send((seg_id, done, WatchEvent(
                        "delete" if kind == DELETE else "put", key,
                        None if kind == DELETE else value, origin, version, index, seq)))
                self.stats["events"] += len(events)
                cursor = max(cursor, (reply.head_version, reply.head_index))
                await self._send.send(_Progress([(seg_id, WatchSegment(start, end, *cursor))]))
                if rest is not None:
                    self.stats["segments"] += 1
                    assert self._nursery is not None
                    self._nursery.start_soon(self._follow, rest_id, rest)
        except NokvError as exc:
            await self._send.send(exc)

    async def _poll(self, start: bytes, end: bytes, cursor: tuple[int, int],
                    wait_ms: int) -> KvWatchReply:
        """One watch request to the region holding `start`, retried until it is answered
        (unreachable stores and deadlines are retried with backoff: a watch waits out
        failures; a refusal that is not a retry reason ends it)."""
        client = self._client
        if client.attempt_timeout is not None:  # a poll must answer within one read attempt
            wait_ms = min(wait_ms, int(client.attempt_timeout * 600))
        backoff = 0.05
        while True:
            self.stats["polls"] += 1
            try:
                return await client._execute(
                    start, lambda ctx: KvWatchRequest(ctx, start, end, cursor[0], cursor[1],
                                                      MAX_WATCH_EVENTS, wait_ms),
                    write=False, timeout=wait_ms / 1000.0 + client.timeout)
            except (DeadlineExceededError, UnavailableError):
                self.stats["retries"] += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)


def _rest(reply: KvWatchReply, end: bytes) -> bool:
    """Does the segment go on past the region that served it?"""
    return bool(reply.served_end) and (not end or reply.served_end < end)


class WatchOps:
    """`Client.watch` (mixed into `Client`)."""

    timeout: float

    def watch(self, start: bytes, end: bytes = b"", *, prefix: bool = False,
              since: tuple[int, int] | None = None,
              resume: list[WatchSegment] | None = None,
              wait_ms: int = WAIT_MS, buffer: int = 1024) -> Watch:
        """Watch [start, end) (end b"": to the end of the keyspace; `prefix`: every key
        starting with `start`): `async with client.watch(b"app/", prefix=True) as w:
        async for ev in w: ...`.

        Starts now (each region's head when the watch opens), or after revision `since`
        (version, index) for the whole range, or from a resume token (`Watch.segments()` of
        an earlier watch of the same range)."""
        if resume is not None:
            if since is not None:
                raise InvalidRequestError("pass since or resume, not both")
            segments = list(resume)
            if not segments or not all(isinstance(s, WatchSegment) for s in segments):
                raise InvalidRequestError("resume takes the list Watch.segments() returned")
        else:
            check_key(start)  # b"": from the start of the keyspace
            if prefix:
                if end:
                    raise InvalidRequestError("pass end or prefix=True, not both")
                end = prefix_end(start)
            elif end:
                check_key(end)
                if end <= start:
                    raise InvalidRequestError(f"empty or inverted range: {start[:64]!r} .. "
                                              f"{end[:64]!r}")
            cursor = NOW if since is None else since
            if since is not None and (len(since) != 2 or min(since) < 0):
                raise InvalidRequestError(f"since is a (version, index) revision, not {since!r}")
            segments = [WatchSegment(start, end, *cursor)]
        if not 1 <= wait_ms <= MAX_WATCH_WAIT_MS:
            raise InvalidRequestError(f"wait_ms must be 1..{MAX_WATCH_WAIT_MS}")
        return Watch(self, segments, wait_ms, buffer)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (b"": none, unbounded)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b""
