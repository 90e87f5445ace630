"""Applying a transaction or a range delete: what one committed entry of each does to a region.

Owns: the apply of a `TxnCommand` (its compares read from the state the entry applies to,
the in-batch overlay and then LMDB, `compare_holds` picking the branch, the branch applied
in order into the entry's batch) and of a `DeleteRangeCommand` (the keys of its range the
region holds at that point, keys only, at most its limit and the cap per entry), with what
each answers the proposer (`TxnResult`, `RangeDeleteResult`); and which keys a transaction
reads (`txn_read_keys`, prefetched by the state machine). Never checks the epoch (the state
machine refuses a stale command before calling here), never commits a batch and never
raises on a malformed command: it answers a refusal (an apply must never fail the batch
that persists other groups' work). A refused command writes nothing.

Called by `RegionStateMachine` (raftstore.apply) with what it needs: the batch, the
region's descriptor, the overlay of this batch's writes, and the state machine's readers and
value packer (a key's stored bytes as the apply sees them, their unpacking, the stored form
of a value).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.store_rpc import (
    MAX_DELETE_RANGE_KEYS,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    CompareOp,
    CompareTarget,
    DeleteRangeCommand,
    TxnCommand,
    TxnCompare,
    TxnGetResult,
    TxnOpKind,
)
from nokvpy.storage import Env, WriteBatch
from raftstore.kvformat import INVALID, KEY_NOT_IN_REGION, in_range, valid_key

NO_MOD_INDEX = "mod_index_unsupported"  # a MOD compare on a region without VersionedKV

_MISSING = object()


@dataclass(slots=True, frozen=True)
class TxnResult:
    """The outcome of applying one TxnCommand (in memory, for the proposer)."""

    ok: bool
    succeeded: bool = False  # every compare held: the success branch ran
    gets: list[TxnGetResult] = field(default_factory=list)
    writes: int = 0
    error: str = ""


@dataclass(slots=True, frozen=True)
class RangeDeleteResult:
    """The outcome of applying one DeleteRangeCommand (in memory, for the proposer)."""

    ok: bool
    deleted: int = 0
    more: bool = False  # the limit cut it: keys remain in range in the region
    next_key: bytes = b""  # with `more`: the first key left
    error: str = ""


def compare_holds(cmp: TxnCompare, value: bytes | None, mod_region: int = 0,
                  mod_index: int = 0) -> bool:
    """Whether `cmp` holds for a key whose value is `value` (None: missing), last written
    by entry `mod_index` of region `mod_region` (see `TxnCompare`)."""
    target = cmp.target
    if target == CompareTarget.VALUE:
        equal = value is not None and value == cmp.value
    elif target == CompareTarget.EXISTS:
        equal = value is not None
    elif target == CompareTarget.MOD:
        if value is None or cmp.mod_index == 0:
            equal = value is None and cmp.mod_index == 0
        else:
            equal = mod_index == cmp.mod_index and cmp.mod_region in (0, mod_region)
    else:
        raise ValueError(f"unknown compare target {target!r}")
    if cmp.op == CompareOp.EQ:
        return equal
    if cmp.op == CompareOp.NE:
        return not equal
    raise ValueError(f"unknown compare op {cmp.op!r}")


def apply_txn(batch: WriteBatch, cmd: TxnCommand, index: int, desc: RegionDescriptor,
              overlay: dict[bytes, Any], *, versioned: bool,
              current: Callable[[bytes], bytes | None],
              unpack: Callable[[bytes], tuple[bytes, int, int]],
              stored: Callable[[bytes, int], bytes]) -> TxnResult:
    """Evaluate the compares against the state entry `index` applies to, then apply the
    branch they pick, in order (a GET sees the branch's earlier writes). Refused as a whole
    (nothing written) when malformed or reaching outside `desc`. `current(key)`: the stored
    bytes of a key as this apply sees them (None: missing); `unpack(raw)`: (value, region
    id, modification index) of stored bytes; `stored(value, index)`: what LMDB holds for
    `value` written by entry `index`; `versioned`: whether values carry their modification
    index (else MOD compares are refused)."""
    for key in _txn_keys(cmd):
        if not valid_key(key):
            return TxnResult(False, error=INVALID)
        if not in_range(desc, key):
            return TxnResult(False, error=KEY_NOT_IN_REGION)
    for c in cmd.compares:
        if c.target == CompareTarget.MOD and not versioned:
            return TxnResult(False, error=NO_MOD_INDEX)
        if c.target == CompareTarget.VALUE and c.value is None:
            return TxnResult(False, error=INVALID)
    for op in (*cmd.success, *cmd.failure):
        if op.kind == TxnOpKind.PUT and (op.value is None or len(op.value) > MAX_VALUE_SIZE):
            return TxnResult(False, error=INVALID)
    held = True
    for c in cmd.compares:
        raw = current(c.key)
        value, region_id, mod = (None, 0, 0) if raw is None else unpack(raw)
        if not compare_holds(c, value, region_id, mod):
            held = False
            break
    gets: list[TxnGetResult] = []
    writes = 0
    kv_db = "kv"
    for op in cmd.success if held else cmd.failure:
        if op.kind == TxnOpKind.PUT:
            raw = stored(op.value, index)
            overlay[op.key] = raw
            batch.put(kv_db, op.key, raw)
            writes += 1
        elif op.kind == TxnOpKind.DELETE:
            overlay[op.key] = None
            batch.delete(kv_db, op.key)
            writes += 1
        else:
            raw = current(op.key)
            if raw is None:
                gets.append(TxnGetResult(op.key, None))
            else:
                value, region_id, mod = unpack(raw)
                gets.append(TxnGetResult(op.key, value, mod, region_id))
    return TxnResult(True, held, gets, writes)


def apply_delete_range(batch: WriteBatch, cmd: DeleteRangeCommand, desc: RegionDescriptor,
                       overlay: dict[bytes, Any], env: Env,
                       max_keys: int = MAX_DELETE_RANGE_KEYS) -> RangeDeleteResult:
    """Delete the keys of [start, end) ∩ `desc` the region holds now (LMDB through `env`,
    as the overlay changes it), in key order, at most the limit (`max_keys` when 0 or above
    it)."""
    start, end = cmd.start_key, cmd.end_key
    if (end and start >= end) or cmd.limit < 0 or len(start) > MAX_KEY_SIZE \
            or len(end) > MAX_KEY_SIZE:
        return RangeDeleteResult(False, error=INVALID)
    lo = max(start, desc.start_key)
    hi = desc.end_key
    if end and (not hi or end < hi):
        hi = end
    if hi and lo >= hi:
        return RangeDeleteResult(True)
    cap = max_keys if cmd.limit == 0 else min(cmd.limit, max_keys)
    keys = live_keys(env, lo, hi, cap + 1, overlay)
    more = len(keys) > cap
    kv_db = "kv"
    for key in keys[:cap]:
        overlay[key] = None
        batch.delete(kv_db, key)
    return RangeDeleteResult(True, min(len(keys), cap), more, keys[cap] if more else b"")


def live_keys(env: Env, lo: bytes, hi: bytes, n: int, overlay: dict[bytes, Any]) -> list[bytes]:
    """The first `n` keys of [lo, hi) (hi b"": unbounded) as this apply sees them: LMDB's,
    less those a staged write deleted, plus those it created."""

    def inside(k: bytes) -> bool:
        return k >= lo and (not hi or k < hi)

    staged = sorted(k for k, raw in overlay.items() if raw is not None and inside(k))
    out: list[bytes] = []
    last = None
    for key in heapq.merge(stored_keys(env, lo, hi, n), staged):
        if key == last:
            continue
        last = key
        if overlay.get(key, _MISSING) is None:
            continue  # deleted by a staged write
        out.append(key)
        if len(out) >= n:
            break
    return out


def stored_keys(env: Env, lo: bytes, hi: bytes, chunk: int) -> Iterator[bytes]:
    """The keys LMDB holds in [lo, hi), in order, read `chunk` at a time (keys only: a
    range delete never copies the values it deletes)."""
    db = env.db("kv")

    def read(start: bytes):
        def fn(txn):
            out: list[bytes] = []
            with txn.cursor(db=db) as cur:
                if not cur.set_range(start or b"\x00"):
                    return out
                for key in cur.iternext(keys=True, values=False):
                    if hi and key >= hi:
                        break
                    out.append(key)
                    if len(out) >= chunk:
                        break
            return out
        return env.read(fn)

    start = lo
    while True:
        keys = read(start)
        yield from keys
        if len(keys) < chunk:
            return
        start = keys[-1] + b"\x00"


def _txn_keys(cmd: TxnCommand) -> list[bytes]:
    return ([c.key for c in cmd.compares] + [op.key for op in cmd.success]
            + [op.key for op in cmd.failure])


def txn_read_keys(cmd: TxnCommand) -> list[bytes]:
    """The keys whose current value applying `cmd` may read (compares and GETs)."""
    keys = [c.key for c in cmd.compares]
    keys += [op.key for op in (*cmd.success, *cmd.failure) if op.kind == TxnOpKind.GET]
    return [k for k in keys if valid_key(k)]
