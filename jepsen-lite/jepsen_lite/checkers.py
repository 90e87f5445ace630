"""Non-linearizability checkers: route-read contract, transition outcomes, lost writes.

This module owns three history checks that need no search:

* :func:`check_route_reads`: every ``route`` reply honours the freshness contract it was
  asked for, no coordinator's served root token goes backward, and STRONG route reads and
  ``root-confirm`` reads (``ConfirmToken`` at a metaroot peer) cover every root index seen
  committed before they were invoked;
* :func:`check_transitions`: every transition reached exactly one outcome and none finished
  without a plan (or a recovery record that explains it);
* :func:`check_acknowledged_writes`: no acknowledged write is missing from the final state.

Every checker returns ``{"valid": bool, "violations": [ {"kind": ..., ...}, ... ], ...}``.
This module never searches for linearizations (that is :mod:`jepsen_lite.linearizable`,
used by :func:`check_with_final_reads`) and never runs a cluster.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

from .history import INVOKE, OK, History, Operation, operations_of
from .linearizable import check_linearizable, key_label
from .models import freeze

STRONG = "STRONG"
BOUNDED = "BOUNDED"
BEST_EFFORT = "BEST_EFFORT"
AUTHORITATIVE = "AUTHORITATIVE"
FRESHNESS_LEVELS = frozenset({STRONG, BOUNDED, BEST_EFFORT})

_REPLY_FIELDS = (
    "served_freshness",
    "served_root_token",
    "current_root_token",
    "root_lag",
    "serving_class",
    "coordinator",
)


def _result(violations: list[dict], **extra) -> dict:
    return {"valid": not violations, "violations": violations, **extra}


# -- route reads --------------------------------------------------------------------------


def check_route_reads(history: History | Iterable[dict] | Iterable[Operation]) -> dict:
    """Check every ``ok`` ``route`` operation against the route-read contract.

    The invoke value carries ``{"freshness", "max_root_lag", "required_root_token"}``; the ok
    value carries ``{"freshness", "served_freshness", "served_root_token",
    "current_root_token", "root_lag", "serving_class", "coordinator"}``. Violation kinds:

    * ``malformed``: a field is missing or the requested freshness is unknown;
    * ``silent_downgrade``: STRONG/BOUNDED requested but another freshness served;
    * ``strong_not_fresh``: STRONG served with ``root_lag != 0`` or a serving class other
      than AUTHORITATIVE;
    * ``bounded_lag_exceeded``: BOUNDED with ``root_lag > max_root_lag``;
    * ``required_token_not_met``: BOUNDED with ``served_root_token < required_root_token``;
    * ``stale_labelled_authoritative``: BEST_EFFORT with ``root_lag > 0`` labelled
      AUTHORITATIVE;
    * ``root_lag_mismatch``: ``root_lag != current_root_token - served_root_token``;
    * ``token_regression``: a reply served a lower root token than an earlier reply of the
      same coordinator that completed before this one was invoked;
    * ``strong_stale`` / ``confirm_stale``: a STRONG reply's served root token, or a
      ``root-confirm`` operation's confirmed index (its ok value), is below a root index that
      an operation completed before it was invoked had already seen committed (any route
      reply's served token, any root-confirm's index): a linearizable read of the root that
      missed a committed event (a deposed metaroot leader trusting its lease, a coordinator
      serving STRONG without a current confirmation).

    ``fail`` and ``info`` route operations promise nothing and are skipped.
    """
    violations: list[dict] = []
    replies: list[tuple[Operation, dict]] = []
    confirms: list[Operation] = []
    checked = 0
    all_ops = operations_of(history)
    for op in all_ops:
        if op.f == "root-confirm" and op.status == OK:
            checked += 1
            if isinstance(op.output, int) and not isinstance(op.output, bool):
                confirms.append(op)
            else:
                violations.append({"kind": "malformed", "op": op.id,
                                   "detail": f"root-confirm value {op.output!r} is not an index"})
            continue
        if op.f != "route" or op.status != OK:
            continue
        checked += 1
        request = op.input if isinstance(op.input, dict) else {}
        reply = op.output if isinstance(op.output, dict) else {}

        def violation(kind: str, detail: str, op: Operation = op) -> None:
            violations.append({"kind": kind, "op": op.id, "detail": detail})

        requested = request.get("freshness", reply.get("freshness"))
        missing = [f for f in _REPLY_FIELDS if f not in reply]
        if requested not in FRESHNESS_LEVELS or missing:
            violation("malformed", f"requested={requested!r}, missing reply fields {missing}")
            continue
        served = reply["served_freshness"]
        lag = reply["root_lag"]
        token = reply["served_root_token"]
        current = reply["current_root_token"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lag, token, current)):
            violation("malformed", f"non-integer tokens: {token!r}, {current!r}, lag {lag!r}")
            continue
        serving_class = reply["serving_class"]
        if requested in (STRONG, BOUNDED) and served != requested:
            violation("silent_downgrade", f"requested {requested}, served {served}")
        if requested == STRONG and (lag != 0 or serving_class != AUTHORITATIVE):
            violation("strong_not_fresh", f"root_lag={lag}, serving_class={serving_class}")
        if requested == BOUNDED:
            max_lag = request.get("max_root_lag")
            if max_lag is not None and lag > max_lag:
                violation("bounded_lag_exceeded", f"root_lag={lag} > max_root_lag={max_lag}")
            required = request.get("required_root_token")
            if required is not None and token < required:
                violation(
                    "required_token_not_met",
                    f"served_root_token={token} < required_root_token={required}",
                )
        if requested == BEST_EFFORT and lag > 0 and serving_class == AUTHORITATIVE:
            violation("stale_labelled_authoritative", f"root_lag={lag} but AUTHORITATIVE")
        if lag != current - token:
            violation(
                "root_lag_mismatch",
                f"root_lag={lag} != current_root_token {current} - served_root_token {token}",
            )
        replies.append((op, reply))
    violations.extend(_token_regressions(replies))
    violations.extend(_stale_root_reads(replies, confirms))
    violations.sort(key=lambda v: v["op"])
    return _result(violations, checked=checked)


def _stale_root_reads(replies: list[tuple[Operation, dict]], confirms: list[Operation]
                      ) -> list[dict]:
    """STRONG replies and root-confirms must cover every root index some operation completed
    before their invocation had seen committed (a served token is a committed index)."""
    seen: list[tuple[int, int, Operation]] = []  # (ret, index, op)
    for op, reply in replies:
        seen.append((op.ret, reply["served_root_token"], op))
    for op in confirms:
        seen.append((op.ret, op.output, op))
    seen.sort(key=lambda item: item[0])
    completions = [ret for ret, _, _ in seen]
    best: list[tuple[int, Operation]] = []  # prefix maximum of seen indexes
    for _, index, op in seen:
        best.append((index, op) if not best or index > best[-1][0] else best[-1])
    checks = [(op, reply["served_root_token"], "strong_stale") for op, reply in replies
              if reply.get("freshness") == STRONG]
    checks += [(op, op.output, "confirm_stale") for op in confirms]
    out = []
    for op, index, kind in checks:
        earlier = bisect.bisect_left(completions, op.call)  # completed strictly before
        if earlier == 0:
            continue
        high, high_op = best[earlier - 1]
        if index < high:
            what = ("STRONG route read served" if kind == "strong_stale"
                    else "root-confirm confirmed")
            out.append({"kind": kind, "op": op.id, "earlier_op": high_op.id,
                        "detail": f"{what} root index {index} after op {high_op.id} "
                                  f"({high_op.f}) had seen index {high} committed"})
    return out


def _token_regressions(replies: list[tuple[Operation, dict]]) -> list[dict]:
    """Per coordinator: a reply must not serve a lower token than any reply that completed
    before it was invoked (replies that overlap in time may be served in either order)."""
    by_coordinator: dict[Any, list[tuple[Operation, dict]]] = {}
    for op, reply in replies:
        by_coordinator.setdefault(reply["coordinator"], []).append((op, reply))
    out = []
    for coordinator, items in by_coordinator.items():
        items.sort(key=lambda item: item[0].ret)
        completions = [op.ret for op, _ in items]
        # prefix maximum of served tokens, and which reply holds it
        best: list[tuple[int, Operation]] = []
        for op, reply in items:
            token = reply["served_root_token"]
            if not best or token > best[-1][0]:
                best.append((token, op))
            else:
                best.append(best[-1])
        for op, reply in items:
            earlier = bisect.bisect_left(completions, op.call)  # completed strictly before
            if earlier == 0:
                continue
            high, high_op = best[earlier - 1]
            if reply["served_root_token"] < high:
                out.append(
                    {
                        "kind": "token_regression",
                        "op": op.id,
                        "detail": (
                            f"coordinator {coordinator!r} served root token "
                            f"{reply['served_root_token']} after op {high_op.id} had served "
                            f"{high}"
                        ),
                        "earlier_op": high_op.id,
                    }
                )
    return out


# -- transitions --------------------------------------------------------------------------

OUTCOMES = frozenset({"terminal", "cancelled", "compensated"})
TRANSITION_EVENTS = OUTCOMES | {"planned", "recovery"}


def check_transitions(events: Iterable[Mapping]) -> dict:
    """Check transition events ``{"transition_id", "event"}`` given in the order recorded.

    Violation kinds:

    * ``no_outcome``: a transition that appears never reached terminal/cancelled/compensated;
    * ``multiple_outcomes``: it reached more than one (or the same one twice);
    * ``terminal_without_plan``: a ``terminal`` with no earlier ``planned`` for that id and no
      earlier ``recovery`` record for that id to explain it;
    * ``malformed``: an event without ``transition_id`` or with an unknown ``event``.
    """
    violations: list[dict] = []
    planned: set = set()
    recovered: set = set()
    outcomes: dict[Any, list[str]] = {}
    order: list = []
    for position, record in enumerate(events):
        tid = record.get("transition_id")
        kind = record.get("event")
        if tid is None or kind not in TRANSITION_EVENTS:
            violations.append(
                {"kind": "malformed", "position": position, "detail": f"{dict(record)!r}"}
            )
            continue
        tid = freeze(tid)
        if tid not in outcomes:
            outcomes[tid] = []
            order.append(tid)
        if kind == "planned":
            planned.add(tid)
        elif kind == "recovery":
            recovered.add(tid)
        else:
            outcomes[tid].append(kind)
            if kind == "terminal" and tid not in planned and tid not in recovered:
                violations.append(
                    {
                        "kind": "terminal_without_plan",
                        "transition_id": tid,
                        "position": position,
                        "detail": "terminal recorded with no plan and no recovery record",
                    }
                )
    for tid in order:
        reached = outcomes[tid]
        if not reached:
            violations.append(
                {"kind": "no_outcome", "transition_id": tid, "detail": "no outcome recorded"}
            )
        elif len(reached) > 1:
            violations.append(
                {
                    "kind": "multiple_outcomes",
                    "transition_id": tid,
                    "detail": f"outcomes {reached}",
                }
            )
    return _result(violations, transitions=len(order))


# -- acknowledged writes ------------------------------------------------------------------

_WRITE_FUNCTIONS = {
    "register": ("write", "cas"),
    "kv": ("put", "append"),
    "list-append": ("append",),
}


def check_acknowledged_writes(
    history: History | Iterable[dict] | Iterable[Operation],
    final_reads: Mapping[Any, Any],
    model: str = "list-append",
) -> dict:
    """Check that no acknowledged write is missing from ``final_reads`` (key -> value).

    This is a direct, search-free check; for ``register`` and ``kv`` it is necessary but not
    sufficient, and :func:`check_with_final_reads` is the complete check.

    * ``list-append``: every ``ok`` append's element is in its key's final list
      (``lost_write``), and every element of a final list was appended by an ``ok`` or
      indeterminate append (``phantom_value``).
    * ``register``: if a key has any ``ok`` write/cas, its final value must be the value of
      some ``ok`` or indeterminate write/cas of that key (``lost_write``).
    * ``kv``: if a key has any ``ok`` put/append, its final value must be non-null; if the
      key has no indeterminate put, every ``ok`` append invoked after the last ``ok`` put
      returned must be in it (``lost_write``).

    Keys that had an ``ok`` write but are absent from ``final_reads`` are ``missing_final_read``.
    """
    if model not in _WRITE_FUNCTIONS:
        raise ValueError(f"unknown model {model!r}")
    writes: dict[Any, list[Operation]] = {}
    for op in operations_of(history):
        if op.f in _WRITE_FUNCTIONS[model] and (op.status == OK or op.indeterminate):
            writes.setdefault(op.key, []).append(op)
    violations: list[dict] = []
    for key, ops in writes.items():
        acked = [op for op in ops if op.status == OK]
        if not acked:
            continue
        label = key_label(key)
        if key not in final_reads:
            violations.append({"kind": "missing_final_read", "key": label})
            continue
        final = final_reads[key]

        def lost(op: Operation, detail: str, label: str = label) -> None:
            violations.append({"kind": "lost_write", "key": label, "op": op.id, "detail": detail})

        if model == "list-append":
            present = {freeze(v) for v in (final or [])}
            for op in acked:
                if freeze(op.input) not in present:
                    lost(op, f"appended element {op.input!r} missing from final list")
            possible = {freeze(op.input) for op in ops}
            for value in final or []:
                if freeze(value) not in possible:
                    violations.append(
                        {
                            "kind": "phantom_value",
                            "key": label,
                            "detail": f"final list has {value!r}, never appended",
                        }
                    )
        elif model == "register":
            candidates = {
                freeze(op.input[1] if op.f == "cas" else op.input)
                for op in ops
                if op.f == "write" or (isinstance(op.input, list) and len(op.input) == 2)
            }
            if freeze(final) not in candidates:
                lost(acked[-1], f"final value {final!r} is not the value of any write")
        else:
            if final is None:
                lost(acked[-1], "final value is null")
                continue
            if any(op.f == "put" and op.indeterminate for op in ops):
                continue  # a put that may land at any time can clobber any append
            after = max((op.ret for op in acked if op.f == "put"), default=-1)
            for op in acked:
                if op.f == "append" and op.call > after and op.input not in final:
                    lost(op, f"appended {op.input!r} missing from final value")
    return _result(violations, keys=len(writes))


def append_final_reads(
    history: History | Iterable[dict], final_reads: Mapping[Any, Any], model: str = "register"
) -> History:
    """A copy of ``history`` with one ``ok`` final read per key appended after every event.

    Read ``f`` is ``read`` (register, list-append) or ``get`` (kv). Each key gets its own
    fresh integer process, and the reads are sequential, invoked after the last event.
    """
    base = history if isinstance(history, History) else History(history)
    events = [dict(e) for e in base.events]
    read_f = "get" if model == "kv" else "read"
    procs = [e["process"] for e in events if isinstance(e["process"], int)]
    process = max(procs, default=-1) + 1
    t = max((e["time"] for e in events), default=0) + 1
    index = max((e["index"] for e in events), default=-1) + 1
    for key, value in final_reads.items():
        common = {"process": process, "f": read_f, "key": key, "final": True}
        events.append({"index": index, "type": INVOKE, **common, "value": None, "time": t})
        events.append({"index": index + 1, "type": OK, **common, "value": value, "time": t + 1})
        index, t, process = index + 2, t + 2, process + 1
    return History(events)


def check_with_final_reads(
    history: History | Iterable[dict],
    final_reads: Mapping[Any, Any],
    model: str = "register",
    **linearizable_options,
) -> dict:
    """The complete "no acknowledged write lost" check for any model: append the final
    reads to the history (:func:`append_final_reads`) and check linearizability.

    An ``ok`` write that the final read does not reflect, and that no later write can
    explain, makes the history non-linearizable. ``info`` writes may or may not be
    reflected. Options are passed to :func:`~jepsen_lite.linearizable.check_linearizable`.
    """
    return check_linearizable(
        append_final_reads(history, final_reads, model), model, **linearizable_options
    )


__all__ = [
    "append_final_reads",
    "check_acknowledged_writes",
    "check_route_reads",
    "check_transitions",
    "check_with_final_reads",
]
