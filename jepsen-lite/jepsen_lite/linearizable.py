"""Per-key linearizability checking (Wing & Gong / Lowe, as in porcupine) and shrinking.

This module owns the search for a linearization of a history against a
:class:`~jepsen_lite.models.Model`, the time budget, and the shrinking of a failing history
to a small failing sub-history. It never defines operation semantics (``models``), never
parses files (``history``) and never prints (``cli``).

Algorithm. Operations of one key become call and return entries in a doubly linked list
sorted by time (a call sorts before a return at the same instant, so touching intervals are
concurrent). The search repeatedly linearizes a call that precedes the first remaining
return entry ("just in time"), lifting its call and return out of the list, and backtracks
when the first remaining entry is a return that cannot be passed. Configurations
``(bitmask of linearized ops, model state)`` already seen are skipped, which is what makes
the search practical (Lowe, "Testing for linearizability", 2017; porcupine). Indeterminate
operations are tracked in a separate bitmask, and a configuration is also skipped when the
same determinate set and state were seen with a *subset* of its indeterminate operations.

P-compositionality: a history is linearizable iff the sub-history of every key is, so each
key is checked on its own (Herlihy & Wing, locality).

Indeterminate operations (``info`` or never completed) have return time +infinity: they may
be linearized anywhere after their call, or never. "Never" is the same as "after every
other operation" because their step functions never fail, so the search stops as soon as
every determinate operation is linearized. Indeterminate reads are dropped up front, as are
indeterminate writes whose value no operation observed (``Model.relevant_indeterminate``;
with unique write values this removes most timed-out writes). An indeterminate step that
leaves the state unchanged is not explored (it is dominated by leaving the operation for
later). ``fail`` operations did not happen and are dropped.

Reads are linearized eagerly: a legal determinate step that leaves the state unchanged can
always come first among the current candidates, so when it leads nowhere the other
candidates at that level are not tried.

The result is ``True`` only when a linearization was found, ``False`` only when the search
was exhausted, and ``"unknown"`` when the time budget ran out first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .history import FAIL, History, Operation, operations_of
from .models import DATA_FUNCTIONS, ILLEGAL, Model, get_model

UNKNOWN = "unknown"
_NIL = -1
_DEADLINE_CHECK_EVERY = 512
MAX_CONFIGURATIONS = 3_000_000
"""Default cap on memoised configurations per key (a memory budget, roughly 1 GB for a
key of a thousand operations); past it the key is ``unknown``."""


class _OutOfTime(Exception):
    """The search budget (time or configurations) ran out; ``args[0]`` says which."""


def key_label(key: Any) -> str:
    """The string used for ``key`` in result dicts (JSON object keys must be strings)."""
    return key if isinstance(key, str) else json.dumps(key, default=str)


def _search(
    ops: Sequence[Operation],
    model: Model,
    deadline: float | None,
    max_configurations: int = MAX_CONFIGURATIONS,
) -> dict:
    """Search for a linearization of ``ops`` (one key, fail ops and indeterminate reads
    already removed). Returns ``{"valid": bool, ...details}``; raises :class:`_OutOfTime`."""
    n = len(ops)
    steps = [model.compile(op) for op in ops]
    determinate = [not op.indeterminate for op in ops]
    reads = [model.is_read(op) for op in ops]
    remaining = sum(determinate)
    if remaining == 0:
        return {"valid": True}

    # Entries: (time, 0=call/1=return, op). Indeterminate returns go last (time +inf).
    inf = float("inf")
    entries = []
    for i, op in enumerate(ops):
        entries.append((op.call, 0, i))
        entries.append((inf if op.ret is None else op.ret, 1, i))
    entries.sort()
    size = 2 * n + 1  # node 0 is the head sentinel
    nxt = [_NIL] * size
    prv = [_NIL] * size
    is_call = [False] * size
    node_op = [-1] * size
    call_node = [0] * n
    ret_node = [0] * n
    for pos, (_, kind, i) in enumerate(entries, 1):
        node_op[pos] = i
        if kind == 0:
            is_call[pos] = True
            call_node[i] = pos
        else:
            ret_node[i] = pos
    for node in range(size):
        nxt[node] = node + 1 if node + 1 < size else _NIL
        prv[node] = node - 1

    def candidates() -> tuple[list[int], int]:
        """Ops whose call precedes the first remaining return; determinate ones first."""
        first: list[int] = []
        later: list[int] = []
        node = nxt[0]
        while node != _NIL and is_call[node]:
            i = node_op[node]
            (first if determinate[i] else later).append(i)
            node = nxt[node]
        return first + later, node

    def lift(i: int) -> None:
        for node in (call_node[i], ret_node[i]):
            p, q = prv[node], nxt[node]
            nxt[p] = q
            if q != _NIL:
                prv[q] = p

    def unlift(i: int) -> None:
        for node in (ret_node[i], call_node[i]):
            p, q = prv[node], nxt[node]
            nxt[p] = node
            if q != _NIL:
                prv[q] = node

    # Determinate and indeterminate ops get bits in separate masks: a configuration is
    # pruned if the same (determinate set, state) was seen with a subset of the
    # indeterminate ops, since ops left out can still be linearized later or never.
    bit = [0] * n
    counts = [0, 0]
    for i in range(n):
        bit[i] = 1 << counts[determinate[i]]
        counts[determinate[i]] += 1
    state = model.init()
    det_mask = 0
    ind_mask = 0
    seen: dict[tuple[int, Any], list[int]] = {}
    configurations = 0
    frames: list[tuple[int, Any, list[int], int, bool, int]] = []
    cands, blocker = candidates()
    idx = 0
    best_depth = -1
    best_prefix: list[int] = []
    best_state: Any = state
    best_blocker = blocker
    iterations = 0
    while True:
        iterations += 1
        if deadline is not None and iterations % _DEADLINE_CHECK_EVERY == 0:
            if time.monotonic() > deadline:
                raise _OutOfTime("time limit reached")
        pushed = False
        while idx < len(cands):
            i = cands[idx]
            idx += 1
            new_state = steps[i](state)
            if new_state is ILLEGAL:
                continue
            unchanged = new_state == state
            if unchanged and not determinate[i]:
                continue  # dominated by leaving the indeterminate op for later / never
            if determinate[i]:
                new_det, new_ind = det_mask | bit[i], ind_mask
            else:
                new_det, new_ind = det_mask, ind_mask | bit[i]
            config = (new_det, new_state)
            prior = seen.get(config)
            if prior is None:
                seen[config] = [new_ind]
            elif any(m & ~new_ind == 0 for m in prior):
                continue  # seen with a subset of these indeterminate ops: dominated
            else:
                prior.append(new_ind)
            configurations += 1
            if configurations > max_configurations:
                raise _OutOfTime("configuration limit reached")
            # A legal determinate read can always be linearized first: it changes no state,
            # in any state, so every other candidate may follow it. If that fails, so does
            # every alternative at this level ("forced"). Not so for a write that merely
            # leaves the state unchanged here (writing the value already held): placed
            # later, after another write, it changes the state.
            forced = unchanged and reads[i]
            frames.append((i, state, cands, idx, forced, blocker))
            lift(i)
            state = new_state
            det_mask, ind_mask = new_det, new_ind
            if determinate[i]:
                remaining -= 1
                if remaining == 0:
                    return {"valid": True, "configurations": configurations}
            cands, blocker = candidates()
            idx = 0
            pushed = True
            break
        if pushed:
            continue
        # Dead end: nothing can be linearized before the first remaining return.
        if len(frames) > best_depth:
            best_depth = len(frames)
            best_prefix = [f[0] for f in frames]
            best_state = state
            best_blocker = blocker
        if not frames:
            stuck = node_op[best_blocker] if best_blocker != _NIL else None
            return {
                "valid": False,
                "configurations": configurations,
                "linearized_prefix": [ops[i].id for i in best_prefix],
                "state_at_failure": model.describe(best_state),
                "stuck_op": ops[stuck].id if stuck is not None else None,
                "_stuck_index": stuck,
            }
        i, state, cands, idx, forced, blocker = frames.pop()
        if forced:
            idx = len(cands)
        if determinate[i]:
            det_mask ^= bit[i]
            remaining += 1
        else:
            ind_mask ^= bit[i]
        unlift(i)


def _prepare(ops: Iterable[Operation], model: Model) -> list[Operation]:
    """Drop what cannot constrain a linearization (failed ops, indeterminate reads,
    indeterminate writes nobody could have observed); sort by call time."""
    kept = [op for op in ops if op.status != FAIL and not (op.indeterminate and model.is_read(op))]
    kept = model.relevant_indeterminate(kept)
    kept.sort(key=lambda op: (op.call, op.id))
    return kept


def check_key(
    ops: Sequence[Operation],
    model: str | Model,
    deadline: float | None = None,
    max_configurations: int = MAX_CONFIGURATIONS,
) -> dict:
    """Check the operations of one key. ``deadline`` is a ``time.monotonic()`` instant.

    Returns ``{"valid": True|False|"unknown", "ops": n, ...}``; an invalid result also has
    ``linearized_prefix`` (op ids of the longest partial linearization found),
    ``state_at_failure`` and ``stuck_op`` (the op whose return could not be passed there).
    """
    model = get_model(model)
    prepared = _prepare(ops, model)
    started = time.monotonic()
    try:
        result = _search(prepared, model, deadline, max_configurations)
    except _OutOfTime as exc:
        result = {"valid": UNKNOWN, "reason": str(exc)}
    result.pop("_stuck_index", None)
    result["ops"] = len(prepared)
    result["indeterminate"] = sum(op.indeterminate for op in prepared)
    result["elapsed_s"] = round(time.monotonic() - started, 6)
    return result


def _is_invalid(ops: Sequence[Operation], model: Model, deadline: float) -> bool:
    try:
        return _search(ops, model, deadline)["valid"] is False
    except _OutOfTime:
        return False


def shrink(
    ops: Sequence[Operation], model: str | Model, time_limit: float = 10.0
) -> list[Operation]:
    """A small sub-history of ``ops`` (one key) that is still not linearizable.

    Greedy delta debugging: drop chunks of operations (halving the chunk size down to single
    operations) while the remainder is still provably invalid. An operation whose written
    value a kept operation observed is never dropped, so the result does not fail merely
    because a read lost its write. Stops at ``time_limit`` and returns the smallest invalid
    sub-history found so far. ``ops`` should be invalid; otherwise they are returned as is.
    """
    model = get_model(model)
    deadline = time.monotonic() + time_limit
    current = _prepare(ops, model)
    try:
        first = _search(current, model, deadline)
    except _OutOfTime:
        return current
    if first["valid"] is not False:
        return current
    readers = model.readers_of(current)

    def removable(kept: list[Operation], dropped: Iterable[Operation]) -> bool:
        kept_ids = {op.id for op in kept}
        return not any(readers.get(op.id, set()) & kept_ids for op in dropped)

    # Heuristic first cut: ops invoked after the stuck op returned rarely matter.
    stuck = first.get("_stuck_index")
    if stuck is not None and current[stuck].ret is not None:
        cut = current[stuck].ret
        trial = [op for op in current if op.call <= cut]
        dropped = [op for op in current if op.call > cut]
        if dropped and removable(trial, dropped) and _is_invalid(trial, model, deadline):
            current = trial
    chunk = max(1, len(current) // 2)
    while True:
        removed_any = False
        i = 0
        while i < len(current):
            if time.monotonic() > deadline:
                return current
            trial = current[:i] + current[i + chunk :]
            if (
                trial
                and removable(trial, current[i : i + chunk])
                and _is_invalid(trial, model, deadline)
            ):
                current = trial
                removed_any = True
            else:
                i += chunk
        if chunk == 1 and not removed_any:
            return current  # a fixpoint: no single operation can be dropped
        chunk = max(1, chunk // 2)


def partition_by_key(
    ops: Iterable[Operation], model: Model
) -> tuple[dict[Any, list[Operation]], int]:
    """Group the model's operations by key; count ignored ones (txn, route, ...).

    Raises :class:`~jepsen_lite.models.ModelError` for a data operation (``read``, ``put``,
    ...) the model does not define, since that usually means the wrong ``--model``.
    """
    by_key: dict[Any, list[Operation]] = {}
    ignored = 0
    for op in ops:
        if op.f not in DATA_FUNCTIONS:
            ignored += 1
            continue
        if op.f not in model.functions:
            raise model._unknown(op)
        by_key.setdefault(_hashable_key(op.key), []).append(op)
    return by_key, ignored


def _hashable_key(key: Any) -> Any:
    return json.dumps(key, sort_keys=True) if isinstance(key, list | dict) else key


def check_linearizable(
    history: History | Iterable[dict] | Iterable[Operation],
    model: str | Model = "register",
    *,
    time_limit: float | None = 60.0,
    shrink_failures: bool = True,
    shrink_time_limit: float = 10.0,
    max_configurations: int = MAX_CONFIGURATIONS,
) -> dict:
    """Check that ``history`` is linearizable, key by key, against ``model``.

    ``history`` is a :class:`History`, a list of event dicts, or paired operations.
    ``time_limit`` (seconds, ``None`` = unlimited) bounds the whole search; keys not finished
    in time are ``"unknown"``, as are keys whose search memoised more than
    ``max_configurations`` configurations (a memory budget). Returns::

        {"valid": True | False | "unknown",
         "model": name,
         "per_key": {key_label: {"valid": ..., "ops": n, ...}},
         "failing_key": key_label | None,
         "minimal_failing_subhistory": [event dicts] | None,
         "ignored_ops": n, "elapsed_s": s}

    ``valid`` is ``False`` if any key is invalid, else ``"unknown"`` if any key is unknown,
    else ``True``. For the first invalid key, the failing sub-history is shrunk (within
    ``shrink_time_limit`` seconds) and returned as its raw events, invoke and completion.
    """
    model = get_model(model)
    started = time.monotonic()
    deadline = None if time_limit is None else started + time_limit
    by_key, ignored = partition_by_key(operations_of(history), model)
    per_key: dict[str, dict] = {}
    failing_key = None
    failing_ops: list[Operation] = []
    for key in sorted(by_key, key=key_label):
        label = key_label(key)
        ops = by_key[key]
        if deadline is not None and time.monotonic() > deadline:
            per_key[label] = {"valid": UNKNOWN, "reason": "time limit reached", "ops": len(ops)}
            continue
        per_key[label] = check_key(ops, model, deadline, max_configurations)
        if per_key[label]["valid"] is False and failing_key is None:
            failing_key, failing_ops = label, ops
    verdicts = [r["valid"] for r in per_key.values()]
    valid: bool | str
    if False in verdicts:
        valid = False
    elif UNKNOWN in verdicts:
        valid = UNKNOWN
    else:
        valid = True
    minimal = None
    if failing_key is not None:
        small = shrink(failing_ops, model, shrink_time_limit) if shrink_failures else failing_ops
        events = [event for op in small for event in op.events()]
        minimal = sorted(events, key=lambda e: e["index"])
    return {
        "valid": valid,
        "model": model.name,
        "per_key": per_key,
        "failing_key": failing_key,
        "minimal_failing_subhistory": minimal,
        "ignored_ops": ignored,
        "elapsed_s": round(time.monotonic() - started, 6),
    }
