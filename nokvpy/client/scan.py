"""Scan paging of the client: a key range read across regions, a page at a time.

Owns: `Client.scan` (the `ScanOps` method `Client` inherits) and what it answers
(`ScanResult`: the pairs, and whether the limit cut the scan with where the rest starts).
A scan reads region by region in key order, each region at its own point (linearizable per
region, not one snapshot across regions), asking a store for at most `MAX_SCAN_PAGE` keys at
a time. Never routes, retries or fails over by itself (the client's `_execute` does, with
the retry policy of nokvpy.client.kv), and never does I/O of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from nokvpy.client.checks import check_key
from nokvpy.client.errors import InvalidRequestError
from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.store_rpc import ScanRequest

MAX_SCAN_PAGE = 10_000  # keys one ScanRequest asks for at most (the store's limit)


class ScanResult(list):
    """The (key, value) pairs of a scan, in key order: a list, plus `more` (True when the
    limit cut the scan: keys remain in the range) and `next_key` (with `more`, the first key
    not returned: scan again from there; None otherwise)."""

    __slots__ = ("more", "next_key")

    def __init__(self, pairs: Iterable[tuple[bytes, bytes]] = (), more: bool = False,
                 next_key: bytes | None = None):
        super().__init__(pairs)
        self.more = more
        self.next_key = next_key


class ScanOps:
    """`scan`, inherited by `Client` (nokvpy.client.kv): it runs on the client's execution
    with retries (`_execute`)."""

    async def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 100,
                   timeout: float | None = None) -> ScanResult:
        """Keys in [start, end) in order (end b"": to the end), across region boundaries,
        at most `limit`. The result is a list of (key, value) whose `more` says whether the
        limit cut it, and `next_key` where the rest starts. Each region is read at its own
        point (linearizable per region, not one snapshot across regions)."""
        check_key(start)
        check_key(end)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequestError(f"scan limit must be a positive int, not {limit!r}")
        out: list[tuple[bytes, bytes]] = []
        cursor = start
        while True:
            used: list[RegionDescriptor] = []
            # once the page is full, one more key says whether the limit cut the scan
            want = min(max(limit - len(out), 1), MAX_SCAN_PAGE)
            reply = await self._execute(
                cursor, lambda ctx, c=cursor, w=want: ScanRequest(ctx, c, end, w),
                write=False, timeout=timeout, seen=used.append)
            if len(out) >= limit:
                if reply.pairs:
                    return ScanResult(out, True, reply.pairs[0][0])
            else:
                out.extend(reply.pairs)
                if reply.more:
                    next_key = reply.next_key or out[-1][0] + b"\x00"
                    if len(out) >= limit:
                        return ScanResult(out, True, next_key)
                    cursor = next_key
                    continue
            region_end = used[-1].end_key
            if not region_end or (end and region_end >= end):
                return ScanResult(out, False, None)
            cursor = region_end
