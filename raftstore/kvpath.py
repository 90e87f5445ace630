"""The KV read and write paths of a store (DESIGN 5, 8).

Owns: the `GetRequest` / `BatchGetRequest` / `ScanRequest` handlers (admission, the read
barrier of the read mode (raftstore.reads), the epoch re-check after it, the read from the
region's state machine) and the `PutRequest` / `DeleteRequest` / `CasRequest` / `TxnRequest`
/ `DeleteRangeRequest` handlers (admission, the proposal, its outcome from QUEUED to APPLIED
or FAILED, the answer; a transaction's compares are evaluated when its entry applies, never
here), and the line of writes waiting for a proposal slot: a write finding its region's
proposal queue full waits, first come first served, in a line of at most `queue_limit` writes
per region, until just before its deadline (`admit_write`).

Uses of its store only what `KvStore` names (hosted peers, driver, tracker, limits, config,
admission, refusal). Never: answers a refusal without an admission reason (refusals are built
by raftstore.admission through the store's `refuse`), reads before the read barrier (except
the TEST-ONLY `unsafe_reads` mode), acknowledges a write before it applied (except the
TEST-ONLY `unsafe_ack` mode), or writes to LMDB (the apply path does).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio

from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    AdmissionReason,
    ExecutionOutcome,
    RegionDescriptor,
)
from nokvpy.protocol.raftstore_cmds import KvOp, KvOpKind, KvResult
from nokvpy.protocol.store_rpc import (
    BatchGetReply,
    BatchGetRequest,
    CasRequest,
    DeleteRangeReply,
    DeleteRangeRequest,
    DeleteRequest,
    GetReply,
    GetRequest,
    KvContext,
    PutRequest,
    ReadMode,
    ScanReply,
    ScanRequest,
    TxnOpKind,
    TxnReply,
    TxnRequest,
    WriteReply,
)
from nokvpy.replication.driver import Driver, ProposalError
from nokvpy.rpc import RemoteError
from raftstore.admission import (
    RegionView,
    cross_region_refusal,
    delete_range_refusal,
    refusal,
    rejection,
    txn_keys,
    txn_refusal,
)
from raftstore.commands import delete_range_command, kv_command, txn_command
from raftstore.execution import ExecutionTracker
from raftstore.peer import Peer
from raftstore.reads import ReadPoint, ReadRefusedError, read_barrier

if TYPE_CHECKING:
    from raftstore.admission import Limits
    from raftstore.store import StoreConfig

OUT = ExecutionOutcome
R = AdmissionReason
# A write waiting for a proposal slot gives up this long (at most 10 % of its budget) before
# the caller's deadline, so its TIMED_OUT answer still reaches the caller.
REPLY_MARGIN = 0.1


class KvStore(Protocol):
    """The store as the KV paths see it (raftstore.store.Store)."""

    store_id: int
    cfg: StoreConfig
    peers: dict[int, Peer]
    driver: Driver
    tracker: ExecutionTracker
    limits: Limits
    counters: Counter[str]

    def decide(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
               keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
               scan_start: bytes | None = None, ahead: int = 0) -> Admission: ...

    def admit(self, cls: AdmissionClass, kvctx: KvContext | None, deadline: float, *,
              keys: tuple[bytes, ...] = (), values: tuple[bytes | None, ...] = (),
              scan_start: bytes | None = None, scan_limit: int | None = None) -> Admission: ...

    def refuse(self, cls: AdmissionClass, reason: AdmissionReason, detail: str,
               peer: Peer | None = None) -> RemoteError: ...

    def spawn(self, fn: Callable[[], Any]) -> bool: ...


class KvPath:
    """The read and write handlers of one store."""

    def __init__(self, store: KvStore):
        self.store = store
        # region id -> writes waiting for a proposal slot, first come first served (bounded
        # by the queue limit; see admit_write)
        self.waiting: dict[int, deque[_Waiter]] = {}

    # ================================================================= reads

    async def _read(self, kvctx: KvContext, ctx: Any, keys: tuple[bytes, ...], *,
                    scan_start: bytes | None = None, scan_limit: int | None = None):
        store = self.store
        deadline = _deadline(ctx)
        adm = store.admit(AdmissionClass.READ, kvctx, deadline, keys=keys,
                          scan_start=scan_start, scan_limit=scan_limit)
        if not adm.accepted:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(adm)
        peer = store.peers[kvctx.region_id]
        try:
            if store.cfg.unsafe_reads and kvctx.read_mode == ReadMode.LINEARIZABLE:
                point = ReadPoint(peer.sm.applied)  # TEST-ONLY broken mode: no barrier
            else:
                point = await read_barrier(store.driver, peer, kvctx.read_mode, deadline)
        except ReadRefusedError as exc:
            store.tracker.outcomes["FAILED"] += 1
            raise store.refuse(AdmissionClass.READ, exc.reason, exc.detail, peer) from None
        desc = peer.descriptor
        if store.peers.get(kvctx.region_id) is not peer or desc is None:
            raise store.refuse(AdmissionClass.READ, R.NOT_HOSTED,
                               f"region {kvctx.region_id} was removed during the read")
        if desc.epoch.version != kvctx.epoch.version:  # the range moved (see admission)
            raise store.refuse(AdmissionClass.READ, R.EPOCH_MISMATCH,
                               f"region {desc.region_id} moved to epoch {desc.epoch} during "
                               "the read", peer)
        store.tracker.outcomes["APPLIED"] += 1
        return peer, point

    async def on_get(self, req: GetRequest, ctx: Any) -> GetReply:
        peer, point = await self._read(req.ctx, ctx, (req.key,))
        return GetReply(peer.sm.get(req.key), point.read_index, point.stale_by_index,
                        point.stale_by_ms)

    async def on_batch_get(self, req: BatchGetRequest, ctx: Any) -> BatchGetReply:
        keys = tuple(req.keys) if isinstance(req.keys, list | tuple) else ()
        if not keys:
            raise self.store.refuse(AdmissionClass.READ, R.INVALID, "batch get needs keys")
        peer, point = await self._read(req.ctx, ctx, keys)
        return BatchGetReply(peer.sm.batch_get(list(keys)), point.read_index)

    async def on_scan(self, req: ScanRequest, ctx: Any) -> ScanReply:
        peer, point = await self._read(req.ctx, ctx, (), scan_start=req.start_key,
                                       scan_limit=req.limit)
        pairs, more, next_key = peer.sm.scan_page(req.start_key, req.end_key, req.limit)
        return ScanReply(pairs, more, point.read_index, next_key)

    # ================================================================= writes

    async def on_put(self, req: PutRequest, ctx: Any) -> WriteReply:
        lease = req.lease
        if isinstance(lease, bool) or not isinstance(lease, int) or not 0 <= lease < 1 << 63:
            raise self.store.refuse(AdmissionClass.WRITE, R.INVALID, f"bad lease id {lease!r}")
        return await self._write(req.ctx, ctx, (req.key,), (req.value,),
                                 [KvOp(KvOpKind.PUT, req.key, req.value, None, lease)])

    async def on_delete(self, req: DeleteRequest, ctx: Any) -> WriteReply:
        return await self._write(req.ctx, ctx, (req.key,), (),
                                 [KvOp(KvOpKind.DELETE, req.key)])

    async def on_cas(self, req: CasRequest, ctx: Any) -> WriteReply:
        return await self._write(req.ctx, ctx, (req.key,), (req.new_value, req.expected),
                                 [KvOp(KvOpKind.CAS, req.key, req.new_value, req.expected)])

    async def on_txn(self, req: TxnRequest, ctx: Any) -> TxnReply:
        """One transaction of the region holding every key: refused INVALID when malformed
        or when its keys span regions; its compares are read when its entry applies."""
        store = self.store
        bad = txn_refusal(req)
        if bad is not None:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(store.tracker.admitted(bad))
        rid = req.ctx.region_id
        keys = txn_keys(req)
        peer = store.peers.get(rid)
        view = peer.view(trio.current_time()) if peer is not None else None
        bad = cross_region_refusal(req.ctx, keys, store.store_id, view)
        if bad is not None:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(store.tracker.admitted(bad))
        values = tuple(op.value for op in (*req.success, *req.failure)
                       if op.kind == TxnOpKind.PUT)
        index, result = await self._replicate(
            req.ctx, ctx, (keys[0],), values,
            lambda desc: txn_command(rid, desc.epoch, req.compares, req.success, req.failure))
        return TxnReply(index, result.succeeded, list(result.gets))

    async def on_delete_range(self, req: DeleteRangeRequest, ctx: Any) -> DeleteRangeReply:
        """Delete the keys of [start, end) in the region, at most `limit`, in one entry."""
        store = self.store
        bad = delete_range_refusal(req)
        if bad is not None:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(store.tracker.admitted(bad))
        rid = req.ctx.region_id
        index, result = await self._replicate(
            req.ctx, ctx, (), (),
            lambda desc: delete_range_command(rid, desc.epoch, req.start_key, req.end_key,
                                              req.limit),
            range_start=req.start_key)
        return DeleteRangeReply(index, result.deleted, result.more, result.next_key)

    async def _write(self, kvctx: KvContext, ctx: Any, keys: tuple[bytes, ...],
                     values: tuple[bytes | None, ...], ops: list[KvOp]) -> WriteReply:
        rid = kvctx.region_id if isinstance(kvctx, KvContext) else 0
        index, result = await self._replicate(
            kvctx, ctx, keys, values, lambda desc: kv_command(rid, desc.epoch, ops),
            unsafe_ack=True)
        return WriteReply(index, result.succeeded, result.current)

    async def _replicate(self, kvctx: KvContext, ctx: Any, keys: tuple[bytes, ...],
                         values: tuple[bytes | None, ...],
                         build: Callable[[RegionDescriptor], bytes], *,
                         range_start: bytes | None = None,
                         unsafe_ack: bool = False) -> tuple[int, Any]:
        """Admit a write, propose the entry `build(descriptor)` makes, and wait until it
        applied: (its index, the apply result). Refusals at apply become refusals."""
        store = self.store
        deadline = _deadline(ctx)
        adm = await self.admit_write(kvctx, deadline, keys, values, range_start)
        if not adm.accepted:
            store.tracker.outcomes["REJECTED"] += 1
            raise rejection(adm)
        rid = kvctx.region_id
        peer = store.peers[rid]
        desc: RegionDescriptor | None = peer.descriptor
        assert desc is not None and peer.group is not None
        tracker = store.tracker
        target = tracker.new_target("write", rid)
        tracker.advance(target, OUT.QUEUED)
        data = build(desc)
        if deadline == float("inf"):
            deadline = trio.current_time() + store.cfg.default_write_timeout
        driver = store.driver
        if unsafe_ack and store.cfg.unsafe_ack and store.spawn(
                partial(_propose_quietly, driver, peer.group, data)):
            # TEST-ONLY broken mode: acknowledge before the write is even committed.
            tracker.advance(target, OUT.PROPOSED, "unsafe ack")
            return peer.sm.applied, KvResult(True)
        result: Any = None
        index = 0
        peer.in_flight += 1
        try:
            with trio.move_on_at(deadline):
                tracker.advance(target, OUT.PROPOSED)
                index, result = await driver.propose_at(
                    peer.group, data,
                    on_commit=lambda _index: tracker.advance(target, OUT.COMMITTED))
        except ProposalError as exc:
            tracker.advance(target, OUT.FAILED, f"{exc.reason}: {exc}")
            if exc.reason == "stopped":
                raise store.refuse(AdmissionClass.WRITE, R.NOT_HOSTED, str(exc)) from None
            # not_leader / dropped / refused: known not applied, so safe to retry elsewhere.
            raise store.refuse(AdmissionClass.WRITE, R.NOT_LEADER, str(exc), peer) from None
        finally:
            peer.in_flight -= 1
            self.wake(rid)
        if result is None:
            tracker.advance(target, OUT.FAILED, "deadline passed after proposing")
            store.counters["writes_outcome_unknown"] += 1
            # not a refusal: the write may still apply
            raise RemoteError("timeout", "outcome_unknown",
                              f"the deadline passed after the write was proposed to region "
                              f"{rid}; it may or may not apply",
                              {"region_id": rid, "target": target.id})
        if not getattr(result, "ok", False):
            err = getattr(result, "error", "") or "invalid"
            tracker.advance(target, OUT.FAILED, err)
            reason = {"epoch_mismatch": R.EPOCH_MISMATCH,
                      "key_not_in_region": R.KEY_NOT_IN_REGION}.get(err, R.INVALID)
            raise store.refuse(AdmissionClass.WRITE, reason,
                               f"write refused at apply: {err}", peer)
        tracker.advance(target, OUT.APPLIED)
        return index, result

    # ================================================================= the line for a slot

    async def admit_write(self, kvctx: KvContext, deadline: float, keys: tuple[bytes, ...],
                          values: tuple[bytes | None, ...],
                          range_start: bytes | None = None) -> Admission:
        """Admission of a write. When the region has `queue_limit` proposals in flight the
        write waits for a slot, first come first served, in a line of at most `queue_limit`
        writes per region (a write finding the line full is QUEUE_SATURATED at once). A
        waiting write is answered TIMED_OUT shortly before its deadline (so the answer still
        reaches the caller), and recorded CANCELED when the caller cancels it."""
        store = self.store
        rid = kvctx.region_id if isinstance(kvctx, KvContext) else 0
        line = self.waiting.get(rid)
        ahead = len(line) if line else 0
        adm = store.decide(AdmissionClass.WRITE, kvctx, deadline, keys=keys, values=values,
                           scan_start=range_start, ahead=ahead)
        if adm.reason != R.QUEUE_SATURATED:
            return store.tracker.admitted(adm)
        limit = store.limits.queue_limit
        if ahead >= limit:
            return store.tracker.admitted(replace(
                adm, detail=f"region {rid} has {self._in_flight(rid)} proposals in flight and "
                            f"{ahead} writes waiting for a slot (limit {limit} each)"))
        return await self._wait_for_slot(rid, kvctx, deadline, keys, values, range_start)

    async def _wait_for_slot(self, rid: int, kvctx: KvContext, deadline: float,
                             keys: tuple[bytes, ...], values: tuple[bytes | None, ...],
                             range_start: bytes | None = None) -> Admission:
        store = self.store
        start = trio.current_time()
        end = deadline if deadline != float("inf") else start + store.cfg.default_write_timeout
        give_up = end - min(REPLY_MARGIN, max(0.0, end - start) * 0.1)
        line = self.waiting.setdefault(rid, deque())
        me = _Waiter()
        line.append(me)
        store.counters["writes_waited_for_slot"] += 1
        try:
            while True:
                with trio.move_on_at(give_up):
                    await me.wake.wait()
                    me.wake = trio.Event()
                    adm = store.decide(AdmissionClass.WRITE, kvctx, deadline, keys=keys,
                                       values=values, scan_start=range_start,
                                       ahead=line.index(me))
                    if adm.reason != R.QUEUE_SATURATED:
                        return store.tracker.admitted(adm)
                    continue
                now = trio.current_time()
                return store.tracker.admitted(refusal(
                    AdmissionClass.WRITE, R.TIMED_OUT,
                    f"waited {now - start:.2f}s behind {self._in_flight(rid)} proposals in "
                    f"flight on region {rid} (queue limit {store.limits.queue_limit}); "
                    "answered before the request's deadline", self._view(rid, now)))
        except trio.Cancelled:
            waited = trio.current_time() - start
            store.tracker.admitted(refusal(
                AdmissionClass.WRITE, R.CANCELED,
                f"the caller cancelled the write after it waited {waited:.2f}s for a "
                f"proposal slot on region {rid}"))
            raise
        finally:
            line.remove(me)
            if not line and self.waiting.get(rid) is line:
                del self.waiting[rid]
            self.wake(rid)

    def wake(self, rid: int) -> None:
        """A slot of region `rid` may be free (or its leadership changed): the first write
        waiting for one looks again."""
        line = self.waiting.get(rid)
        if line:
            line[0].wake.set()

    def _in_flight(self, rid: int) -> int:
        peer = self.store.peers.get(rid)
        return peer.in_flight if peer is not None else 0

    def _view(self, rid: int, now: float) -> RegionView | None:
        peer = self.store.peers.get(rid)
        return peer.view(now) if peer is not None else None


class _Waiter:
    """A write waiting for a proposal slot of its region."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = trio.Event()


async def _propose_quietly(driver: Driver, group: Any, data: bytes) -> None:
    try:
        await driver.propose(group, data)
    except ProposalError:
        pass


def _deadline(ctx: Any) -> float:
    d = getattr(ctx, "deadline", None)
    return float("inf") if d is None else d
