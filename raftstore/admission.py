"""Admission: may this store execute this request, and if not, exactly why (DESIGN 5).

Owns: the pure decision `admit(request, store_id, regions, now, limits)` -> `Admission`,
with the order in which the reasons are checked; and every refusal a store answers: `refusal`
attaches the hints a reason carries (the one place they are attached: leader peer and store
whenever the region is known, current epoch and descriptor for EPOCH_MISMATCH and
KEY_NOT_IN_REGION), `rejection` turns a recorded refusal into the `RemoteError` the caller
gets, and `refused` builds that error for the refusals that are not an admission decision (a
forward to the leader that failed, a transition already running). Every externally visible
refusal of a store maps to one of these reasons (the admission invariant). Never does I/O,
never reads a clock (`now` is an input), never records anything (the store's tracker does),
never looks at raft directly: the store summarizes each region as a `RegionView`.

Order: CANCELED / TIMED_OUT (the caller's context is already done) -> INVALID (shape, sizes)
-> STORE_NOT_MATCH -> NOT_HOSTED -> EPOCH_MISMATCH -> KEY_NOT_IN_REGION -> NOT_LEADER (writes,
linearizable reads, topology) -> QUEUE_SATURATED (writes, topology) -> SCHEDULER_DEGRADED
(topology) -> STALE (bounded-stale reads outside their budget) -> ACCEPTED.

Transactions and range deletes are checked first for their own shape (`txn_refusal`,
`delete_range_refusal`: INVALID), then, for a transaction, whether its keys share the region
of its first key (`cross_region_refusal`: INVALID "cross_region", decided only once the
request names this store, a hosted region at its current version and a first key inside it;
otherwise the order above answers), then by `admit` with the first key (a range delete: its
start key) as the key that must lie in the region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nokvpy.protocol import (
    Admission,
    AdmissionClass,
    AdmissionReason,
    RegionDescriptor,
)
from nokvpy.protocol.store_rpc import (
    MAX_KEY_SIZE,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_SIZE,
    CompareTarget,
    DeleteRangeRequest,
    KvContext,
    ReadMode,
    TxnOp,
    TxnOpKind,
    TxnRequest,
)

if TYPE_CHECKING:
    from nokvpy.rpc.errors import RemoteError

R = AdmissionReason

DEFAULT_QUEUE_LIMIT = 4096
KV_CLASSES = frozenset({AdmissionClass.READ, AdmissionClass.WRITE})
MAX_SCAN_LIMIT = 10_000
MAX_BATCH_KEYS = 10_000


@dataclass(slots=True, frozen=True)
class RegionView:
    """What admission needs to know about one hosted region peer."""

    descriptor: RegionDescriptor | None  # None: peer exists but is not initialized yet
    peer_id: int
    is_leader: bool
    leader_peer_id: int = 0
    leader_store_id: int = 0
    applied_index: int = 0
    commit_index: int = 0
    # Seconds since this peer last heard from its leader (0 on the leader; None: never).
    leader_contact_age: float | None = None
    queue_depth: int = 0  # proposals queued or in flight on this region


@dataclass(slots=True, frozen=True)
class AdmissionRequest:
    cls: AdmissionClass
    ctx: KvContext | None
    keys: tuple[bytes, ...] = ()
    values: tuple[bytes | None, ...] = ()
    scan_start: bytes | None = None  # scans, range deletes: the start must lie in the region
    scan_limit: int | None = None
    deadline: float = float("inf")  # the caller's deadline (same clock as `now`)
    cancelled: bool = False


@dataclass(slots=True, frozen=True)
class Limits:
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    scheduler_degraded: bool = False  # the publish outbox is failing (topology only)


DEFAULT_LIMITS = Limits()


# Refusals that also name the region's current epoch and descriptor (the caller re-routes).
EPOCH_HINTED = frozenset({R.EPOCH_MISMATCH, R.KEY_NOT_IN_REGION})


def refusal(cls: AdmissionClass, reason: AdmissionReason, detail: str,
            view: RegionView | None = None) -> Admission:
    """The refused `Admission` with the hints `reason` carries: none without the region's
    `view`; with it the leader peer and store, and for EPOCH_HINTED reasons the current epoch
    and descriptor (when the peer is initialized)."""
    if view is None:
        return Admission(cls, reason, detail)
    desc = view.descriptor if reason in EPOCH_HINTED else None
    return Admission(cls, reason, detail, leader_peer_id=view.leader_peer_id,
                     leader_store_id=view.leader_store_id,
                     current_epoch=desc.epoch if desc is not None else None, descriptor=desc)


def refused(reason: AdmissionReason, detail: str, *, kind: str = "rejected",
            **details: object) -> RemoteError:
    """The error a refused request is answered with: `kind` ("rejected" unless the refusal is
    about a peer that did not answer), the reason's name, the detail and machine hints."""
    # Imported here: the decision above stays importable without the rpc layer (and trio).
    from nokvpy.rpc.errors import RemoteError

    return RemoteError(kind, reason.name, detail, details)


def rejection(adm: Admission) -> RemoteError:
    """The error of a refused (and recorded) admission: its hints travel as `admission`."""
    return refused(adm.reason, adm.detail, admission=adm)


def admit(
    req: AdmissionRequest,
    store_id: int,
    regions: Mapping[int, RegionView],
    now: float,
    limits: Limits = DEFAULT_LIMITS,
) -> Admission:
    cls = req.cls
    # 1. The caller's context.
    if req.cancelled:
        return refusal(cls, R.CANCELED, "the caller cancelled the request")
    if now >= req.deadline:
        return refusal(cls, R.TIMED_OUT, "the request's deadline passed before admission")
    # 2. Shape.
    ctx = req.ctx
    bad = _invalid(req)
    if bad:
        return refusal(cls, R.INVALID, bad)
    assert ctx is not None
    # 3. Which store, which region.
    if ctx.store_id != store_id:
        return refusal(cls, R.STORE_NOT_MATCH,
                       f"request for store {ctx.store_id} reached store {store_id}")
    view = regions.get(ctx.region_id)
    if view is None:
        return refusal(cls, R.NOT_HOSTED, f"region {ctx.region_id} is not hosted on store "
                       f"{store_id}")
    desc = view.descriptor
    if desc is None:
        return refusal(cls, R.NOT_HOSTED, f"region {ctx.region_id} is being initialized on "
                       f"store {store_id} (waiting for a snapshot)", view)
    # 4. Epoch and keys. Reads and writes are checked against the version (the range) only,
    # as the apply path checks them: a peer change moves conf_ver, never which keys the
    # region holds, and a client routed by a catalog that already shows a planned peer
    # change (or one that has not seen an applied one) is served at the leader's epoch.
    # Topology commands must match the whole epoch.
    if (ctx.epoch.version != desc.epoch.version if cls in KV_CLASSES
            else ctx.epoch != desc.epoch):
        return refusal(cls, R.EPOCH_MISMATCH,
                       f"region {desc.region_id} is at epoch {desc.epoch}, request carries "
                       f"{ctx.epoch}", view)
    keys = req.keys if req.scan_start is None else (*req.keys, req.scan_start)
    for key in keys:
        if not desc.contains(key):
            return refusal(cls, R.KEY_NOT_IN_REGION,
                           f"key {key[:64]!r} is outside region {desc.region_id} "
                           f"[{desc.start_key[:64]!r}, {desc.end_key[:64]!r})", view)
    # 5. Leadership.
    mode = ctx.read_mode
    needs_leader = cls != AdmissionClass.READ or mode == ReadMode.LINEARIZABLE
    if needs_leader and not view.is_leader:
        hint = ""
        if view.leader_peer_id:
            hint = f"; leader is peer {view.leader_peer_id} on store {view.leader_store_id}"
        return refusal(cls, R.NOT_LEADER,
                       f"peer {view.peer_id} of region {desc.region_id} is not the leader" + hint,
                       view)
    # 6. Capacity.
    if cls != AdmissionClass.READ and view.queue_depth >= limits.queue_limit:
        return refusal(cls, R.QUEUE_SATURATED,
                       f"region {desc.region_id} has {view.queue_depth} proposals in flight "
                       f"(limit {limits.queue_limit})", view)
    if cls == AdmissionClass.TOPOLOGY and limits.scheduler_degraded:
        return refusal(cls, R.SCHEDULER_DEGRADED,
                       "the publish outbox is failing: topology changes are paused")
    # 7. Staleness budget.
    if cls == AdmissionClass.READ and mode == ReadMode.BOUNDED_STALE:
        stale = stale_violation(ctx, view)
        if stale:
            return refusal(cls, R.STALE, stale, view)
    return Admission(cls, R.ACCEPTED, leader_peer_id=view.leader_peer_id,
                     leader_store_id=view.leader_store_id)


def stale_by(view: RegionView) -> tuple[int, int]:
    """(index lag, age in ms) of a local read on this peer."""
    lag = max(0, view.commit_index - view.applied_index)
    if view.is_leader:
        return lag, 0
    age = view.leader_contact_age
    return lag, (1 << 31) if age is None else int(age * 1000)


def stale_violation(ctx: KvContext, view: RegionView) -> str:
    """Why a bounded-stale read on this peer would exceed the caller's budget ('' if not)."""
    lag, age_ms = stale_by(view)
    if ctx.max_stale_index > 0 and lag > ctx.max_stale_index:
        return (f"peer {view.peer_id} is {lag} entries behind commit (budget "
                f"{ctx.max_stale_index})")
    if ctx.max_stale_ms > 0 and age_ms > ctx.max_stale_ms:
        return (f"peer {view.peer_id} last heard from its leader {age_ms} ms ago (budget "
                f"{ctx.max_stale_ms} ms)")
    return ""


def _invalid(req: AdmissionRequest) -> str:
    ctx = req.ctx
    if ctx is None:
        return "the request carries no context"
    if not isinstance(ctx, KvContext):
        return f"the request context is a {type(ctx).__name__}, not a KvContext"
    if ctx.region_id <= 0:
        return "the request names no region"
    if ctx.epoch is None:
        return "the request carries no region epoch"
    try:
        mode = ReadMode(ctx.read_mode)
    except ValueError:
        return f"unknown read mode {ctx.read_mode!r}"
    if req.cls != AdmissionClass.READ and mode != ReadMode.LINEARIZABLE:
        return "only reads take a read mode"
    if ctx.max_stale_index < 0 or ctx.max_stale_ms < 0:
        return "staleness budgets must not be negative"
    if req.cls == AdmissionClass.WRITE and not req.keys and req.scan_start is None:
        return "a write needs at least one key"
    if len(req.keys) > MAX_BATCH_KEYS:
        return f"{len(req.keys)} keys exceed the limit of {MAX_BATCH_KEYS} per request"
    for key in req.keys:
        if not isinstance(key, bytes):
            return f"keys are bytes, not {type(key).__name__}"
        if not key:
            return "the empty key is not a valid key"
        if len(key) > MAX_KEY_SIZE:
            return f"key of {len(key)} bytes exceeds the limit of {MAX_KEY_SIZE}"
    for value in req.values:
        if value is not None and not isinstance(value, bytes):
            return f"values are bytes, not {type(value).__name__}"
        if value is not None and len(value) > MAX_VALUE_SIZE:
            return f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE_SIZE}"
    if req.scan_start is not None and not isinstance(req.scan_start, bytes):
        return "the scan start key must be bytes"
    if req.scan_limit is not None and not 0 < req.scan_limit <= MAX_SCAN_LIMIT:
        return f"scan limit must be 1..{MAX_SCAN_LIMIT}, got {req.scan_limit}"
    return ""


# ---- transactions and range deletes ----------------------------------------------------


def txn_keys(req: TxnRequest) -> list[bytes]:
    """Every key a transaction names, in order (compares, then success, then failure); the
    first is the one it is routed by."""
    return ([c.key for c in req.compares] + [op.key for op in req.success]
            + [op.key for op in req.failure])


def txn_refusal(req: TxnRequest) -> Admission | None:
    """INVALID when the transaction is malformed or too large (None: well formed)."""
    bad = txn_invalid(req)
    return refusal(AdmissionClass.WRITE, R.INVALID, bad) if bad else None


def txn_invalid(req: TxnRequest) -> str:
    """Why a transaction's shape is refused ('' if it is well formed)."""
    if not isinstance(req.ctx, KvContext):
        return "the request carries no KvContext"
    size = 0
    for name, items in (("compares", req.compares), ("success", req.success),
                        ("failure", req.failure)):
        if len(items) > MAX_TXN_OPS:
            return (f"{len(items)} {name} exceed the limit of {MAX_TXN_OPS} per transaction")
    if not (req.compares or req.success or req.failure):
        return "a transaction needs at least one compare or operation"
    for c in req.compares:
        bad = _key_invalid(c.key)
        if bad:
            return f"compare: {bad}"
        size += len(c.key)
        if c.target == CompareTarget.VALUE:
            if c.value is None:
                return f"compare on the value of {c.key[:64]!r} needs a value"
            if len(c.value) > MAX_VALUE_SIZE:
                return f"compare value of {len(c.value)} bytes exceeds the limit of {MAX_VALUE_SIZE}"
            size += len(c.value)
        elif c.target == CompareTarget.MOD:
            if c.mod_index < 0 or c.mod_region < 0:
                return f"compare on the mod index of {c.key[:64]!r}: negative index or region"
    for branch in (req.success, req.failure):
        for op in branch:
            bad = _op_invalid(op)
            if bad:
                return bad
            size += len(op.key) + (len(op.value) if op.value is not None else 0)
    if size > MAX_TXN_BYTES:
        return f"the transaction's keys and values ({size} bytes) exceed the limit of {MAX_TXN_BYTES}"
    return ""


def _op_invalid(op: TxnOp) -> str:
    bad = _key_invalid(op.key)
    if bad:
        return f"{op.kind.name.lower()}: {bad}"
    if op.kind == TxnOpKind.PUT:
        if op.value is None:
            return f"put of {op.key[:64]!r} needs a value"
        if len(op.value) > MAX_VALUE_SIZE:
            return f"value of {len(op.value)} bytes exceeds the limit of {MAX_VALUE_SIZE}"
    elif op.value is not None:
        return f"a {op.kind.name.lower()} of {op.key[:64]!r} carries no value"
    return ""


def _key_invalid(key: bytes) -> str:
    if not isinstance(key, bytes):
        return f"keys are bytes, not {type(key).__name__}"
    if not key:
        return "the empty key is not a valid key"
    if len(key) > MAX_KEY_SIZE:
        return f"key of {len(key)} bytes exceeds the limit of {MAX_KEY_SIZE}"
    return ""


def cross_region_refusal(ctx: KvContext, keys: list[bytes], store_id: int,
                         view: RegionView | None) -> Admission | None:
    """INVALID "cross_region" when the request reached the right store and region at its
    current version, its first key lies in the region and some other key does not: the
    keys span regions, and no retry can change that. None when that cannot be told here
    (`admit` then answers STORE_NOT_MATCH, NOT_HOSTED, EPOCH_MISMATCH or KEY_NOT_IN_REGION,
    which send the caller to a fresher route)."""
    desc = view.descriptor if view is not None else None
    if (desc is None or not keys or ctx.store_id != store_id or ctx.region_id != desc.region_id
            or ctx.epoch.version != desc.epoch.version or not desc.contains(keys[0])):
        return None
    outside = list(dict.fromkeys(k for k in keys if not desc.contains(k)))
    if not outside:
        return None
    shown = ", ".join(repr(k[:64]) for k in outside[:8]) + (" ..." if len(outside) > 8 else "")
    return refusal(AdmissionClass.WRITE, R.INVALID,
                   f"cross_region: key{'s' if len(outside) > 1 else ''} {shown} "
                   f"{'are' if len(outside) > 1 else 'is'} outside region {desc.region_id} "
                   f"[{desc.start_key[:64]!r}, {desc.end_key[:64]!r}), which holds the first "
                   f"key {keys[0][:64]!r}: a transaction's keys must all lie in one region",
                   view)


def delete_range_refusal(req: DeleteRangeRequest) -> Admission | None:
    """INVALID when the range is empty, inverted or malformed (None: well formed)."""
    bad = delete_range_invalid(req.start_key, req.end_key, req.limit)
    return refusal(AdmissionClass.WRITE, R.INVALID, bad) if bad else None


def delete_range_invalid(start: bytes, end: bytes, limit: int) -> str:
    """Why a range delete of [start, end) is refused ('' if it is well formed). An empty end
    means unbounded; an empty start, the beginning of the keyspace."""
    if not isinstance(start, bytes) or not isinstance(end, bytes):
        return "range bounds are bytes"
    if len(start) > MAX_KEY_SIZE or len(end) > MAX_KEY_SIZE:
        return f"a range bound exceeds the key limit of {MAX_KEY_SIZE} bytes"
    if end and start == end:
        return f"empty range: start and end are both {start[:64]!r}"
    if end and start > end:
        return f"inverted range: start {start[:64]!r} is after end {end[:64]!r}"
    if not isinstance(limit, int) or limit < 0:
        return f"the limit must be 0 (none) or positive, got {limit!r}"
    return ""
