"""Multi-key operations of the client: transactions and range deletes.

Owns: `Client.txn` and `Client.delete_range` (the `TxnOps` methods `Client` inherits), the
builders of a transaction (`Compare`, `Op`) and what each operation answers (`TxnResponse`;
`DeleteRangeResult` with a `RegionDeleted` per region). `txn` runs compares and two
branches of puts, deletes and gets atomically in the one region that holds every key
(routed by its first key; refused here, before anything is sent, when the routes already
show the keys span regions, and by the store otherwise); `delete_range` deletes per region
(one raft entry each), in key order, and says whether its limit cut it. Never routes,
retries or fails over by itself (the client's `_execute`, `_locate` and `_refresh_route`
do, with the retry policy of nokvpy.client.kv) and never resends a transaction whose
outcome is unknown; a range delete is not atomic across regions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from nokvpy.client.checks import check_key, check_value
from nokvpy.client.errors import DeadlineExceededError, InvalidRequestError, NokvError
from nokvpy.client.loopcheck import require_trio
from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.store_rpc import (
    MAX_DELETE_RANGE_KEYS,
    CompareOp,
    CompareTarget,
    DeleteRangeReply,
    DeleteRangeRequest,
    TxnCompare,
    TxnGetResult,
    TxnOp,
    TxnOpKind,
    TxnReply,
    TxnRequest,
)

_OPS = {"==": CompareOp.EQ, "!=": CompareOp.NE}


@dataclass(slots=True, frozen=True)
class TxnResponse:
    """What a transaction did: `succeeded` (every compare held, so the success branch ran;
    else the failure branch), `gets` (one `TxnGetResult` per GET of that branch, in order:
    key, value or None, and the entry that last wrote it), `applied_index` (its raft
    index)."""

    succeeded: bool
    gets: list[TxnGetResult]
    applied_index: int


@dataclass(slots=True, frozen=True)
class RegionDeleted:
    """One region's part of a `delete_range`: how many keys it deleted from [start, end)."""

    region_id: int
    start: bytes
    end: bytes  # b"": the end of the keyspace
    deleted: int
    applied_index: int


@dataclass(slots=True, frozen=True)
class DeleteRangeResult:
    """What a `delete_range` did: `deleted` keys in all, `more` (True when the limit cut
    it: keys remain in the range) with `next_key` (the first key left), and the part of each
    region (`regions`, in key order)."""

    deleted: int
    more: bool
    next_key: bytes | None
    regions: list[RegionDeleted] = field(default_factory=list)


class Compare:
    """Builders of transaction compares (`Client.txn`). Each is read when the transaction
    applies, from the region's state at that point."""

    @staticmethod
    def value(key: bytes, op: str, value: bytes) -> TxnCompare:
        """`op` "==": the key exists with this value; "!=": it does not (a missing key
        differs from every value)."""
        return TxnCompare(key, CompareTarget.VALUE, _op(op), value)

    @staticmethod
    def exists(key: bytes) -> TxnCompare:
        return TxnCompare(key, CompareTarget.EXISTS, CompareOp.EQ)

    @staticmethod
    def missing(key: bytes) -> TxnCompare:
        return TxnCompare(key, CompareTarget.EXISTS, CompareOp.NE)

    @staticmethod
    def mod(key: bytes, op: str, revision: TxnGetResult | int) -> TxnCompare:
        """The key's modification index (the raft index of the entry that last wrote it)
        is (`==`) / is not (`!=`) `revision`: a GET result of an earlier transaction
        (exact: its index and its region), or an index (0: the key is missing; another
        index compares the index only, which a key rewritten after its region split or
        merged may reuse)."""
        if isinstance(revision, TxnGetResult):
            return TxnCompare(key, CompareTarget.MOD, _op(op), None, revision.mod_index,
                              revision.mod_region)
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise InvalidRequestError(f"a mod compare takes a GET result or an index >= 0, "
                                      f"not {revision!r}")
        return TxnCompare(key, CompareTarget.MOD, _op(op), None, revision)


class Op:
    """Builders of transaction operations (`Client.txn`), applied in order."""

    @staticmethod
    def put(key: bytes, value: bytes) -> TxnOp:
        return TxnOp(TxnOpKind.PUT, key, value)

    @staticmethod
    def delete(key: bytes) -> TxnOp:
        return TxnOp(TxnOpKind.DELETE, key)

    @staticmethod
    def get(key: bytes) -> TxnOp:
        """The key's value and modification index, after the branch's earlier writes."""
        return TxnOp(TxnOpKind.GET, key)


def _op(op: str) -> CompareOp:
    try:
        return _OPS[op]
    except (KeyError, TypeError):
        raise InvalidRequestError(f"compare operator must be '==' or '!=', not {op!r}") from None


class TxnOps:
    """`txn` and `delete_range`, inherited by `Client` (nokvpy.client.kv): they run on its
    routes (`_locate`, `_refresh_route`), its execution with retries (`_execute`), its
    `scan` and its default deadline (`timeout`)."""

    async def txn(self, compare: Iterable[TxnCompare] = (), success: Iterable[TxnOp] = (),
                  failure: Iterable[TxnOp] = (), timeout: float | None = None) -> TxnResponse:
        """If every compare holds run `success`, else `failure`: atomically, in one raft
        entry of the region holding every key, with the compares read when it applies.
        Build compares with `Compare` and operations with `Op`. Every key must lie in one
        region: InvalidRequestError (reason "cross_region") when the routes show they do
        not, nothing sent. Not retried once sent (OutcomeUnknownError, as any write)."""
        compares, ok_ops, else_ops = list(compare), list(success), list(failure)
        for c in compares:
            if not isinstance(c, TxnCompare):
                raise InvalidRequestError(f"compares are built with Compare, not "
                                          f"{type(c).__name__}")
            check_key(c.key)
        for op in (*ok_ops, *else_ops):
            if not isinstance(op, TxnOp):
                raise InvalidRequestError(f"operations are built with Op, not "
                                          f"{type(op).__name__}")
            check_key(op.key)
            if op.kind == TxnOpKind.PUT:
                check_value(op.value)
        keys = [c.key for c in compares] + [op.key for op in (*ok_ops, *else_ops)]
        if not keys:
            raise InvalidRequestError("a transaction needs at least one compare or operation")
        await self._one_region(keys)
        reply: TxnReply = await self._execute(
            keys[0], lambda ctx: TxnRequest(ctx, compares, ok_ops, else_ops), write=True,
            timeout=timeout)
        return TxnResponse(reply.succeeded, list(reply.gets), reply.applied_index)

    async def _one_region(self, keys: list[bytes]) -> None:
        """Refuse a transaction whose keys the routes show in more than one region. A
        cached route that says so is checked with a coordinator first (it may predate a
        merge)."""
        route = await self._locate(keys[0])
        if all(route.descriptor.contains(k) for k in keys):
            return
        await self._refresh_route(keys[0], route, self.timeout)
        route = await self._locate(keys[0])
        d = route.descriptor
        outside = list(dict.fromkeys(k for k in keys if not d.contains(k)))
        if not outside:
            return
        where = []
        for k in outside[:8]:
            try:
                other = (await self._locate(k)).descriptor.region_id
                where.append(f"{k[:64]!r} (region {other})")
            except NokvError:
                where.append(f"{k[:64]!r}")
        more = " ..." if len(outside) > 8 else ""
        raise InvalidRequestError(
            f"cross_region: the first key {keys[0][:64]!r} is in region {d.region_id} "
            f"[{d.start_key[:64]!r}, {d.end_key[:64]!r}) but {', '.join(where)}{more} "
            f"{'is' if len(outside) == 1 else 'are'} not: a transaction's keys must all lie "
            "in one region", "cross_region",
            {"region_id": d.region_id, "outside": outside})

    async def delete_range(self, start: bytes, end: bytes, limit: int | None = None,
                           timeout: float | None = None) -> DeleteRangeResult:
        """Delete the keys of [start, end) (end b"": to the end of the keyspace), in key
        order, region by region: each region's part is one raft entry (atomic), at most
        10 000 keys an entry. `limit` caps the keys deleted by this call; the result says
        whether it cut the delete (`more`, `next_key`). Not atomic across regions; deleting
        is idempotent, so after OutcomeUnknownError (its details say how far it got) the
        same call may be repeated. `timeout` bounds the whole call."""
        check_key(start)
        check_key(end)
        if end and start == end:
            raise InvalidRequestError(f"empty range: start and end are both {start[:64]!r}")
        if end and start > end:
            raise InvalidRequestError(f"inverted range: start {start[:64]!r} is after end "
                                      f"{end[:64]!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise InvalidRequestError(f"limit must be a positive int or None, not {limit!r}")
        require_trio()
        deadline = trio.current_time() + (timeout or self.timeout)
        regions: list[RegionDeleted] = []
        total = 0
        cursor = start
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise DeadlineExceededError(f"deadline exceeded after deleting {total} keys "
                                            f"(resume from {cursor!r})", None,
                                            {"deleted": total, "resume_from": cursor})
            want = 0 if limit is None else min(limit - total, MAX_DELETE_RANGE_KEYS)
            used: list[RegionDescriptor] = []
            try:
                reply: DeleteRangeReply = await self._execute(
                    cursor, lambda ctx, c=cursor, w=want: DeleteRangeRequest(ctx, c, end, w),
                    write=True, timeout=remaining, seen=used.append)
            except NokvError as exc:
                exc.details.setdefault("deleted", total)
                exc.details.setdefault("resume_from", cursor)
                raise
            d = used[-1]
            total += reply.deleted
            if regions and regions[-1].region_id == d.region_id:
                last = regions[-1]
                regions[-1] = RegionDeleted(d.region_id, last.start, last.end,
                                            last.deleted + reply.deleted, reply.applied_index)
            else:
                clipped = d.end_key if not end or (d.end_key and d.end_key < end) else end
                regions.append(RegionDeleted(d.region_id, cursor, clipped, reply.deleted,
                                             reply.applied_index))
            cut = limit is not None and total >= limit
            if reply.more:
                if cut:
                    return DeleteRangeResult(total, True, reply.next_key, regions)
                cursor = reply.next_key  # the region's part was larger than one entry
                continue
            if not d.end_key or (end and d.end_key >= end):
                return DeleteRangeResult(total, False, None, regions)
            cursor = d.end_key
            if cut:  # the limit ran out at a region boundary: is anything left?
                left = await self.scan(cursor, end, 1, timeout=max(
                    deadline - trio.current_time(), 0.001))
                return DeleteRangeResult(total, bool(left), left[0][0] if left else None,
                                         regions)
