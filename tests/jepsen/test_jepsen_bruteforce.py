"""Cross-check the linearizability checker against brute-force enumeration.

Small concurrent histories (1-3 processes, 2-7 operations) are simulated against a real
register (or string, or list) with random real-time intervals and linearization points, then
randomly corrupted. The brute force enumerates every subset of indeterminate operations and
every order consistent with real time, using its own sequential semantics.
"""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jepsen_lite.history import History
from jepsen_lite.linearizable import check_linearizable

VALUES = [None, 1, 2, 3]


def apply(model: str, state, f: str, arg, out, determinate: bool):
    """Reference semantics: the new state, or ``"ILLEGAL"``."""
    if model == "register":
        if f == "read":
            return state if (not determinate or out == state) else "ILLEGAL"
        if f == "write":
            return arg
        expected, new = arg  # cas: happened means it swapped
        return new if state == expected else "ILLEGAL"
    if model == "kv":
        if f == "get":
            return state if (not determinate or out == state) else "ILLEGAL"
        return arg if f == "put" else (state or "") + arg
    if f == "read":
        return state if (not determinate or list(out or []) == list(state)) else "ILLEGAL"
    return state + (arg,)


def brute_force(model: str, events: list[dict]) -> bool:
    ops = [op for op in History(events).operations() if op.status != "fail"]
    det = [op for op in ops if not op.indeterminate]
    indet = [op for op in ops if op.indeterminate]
    init = () if model == "list-append" else None

    def precedes(a, b) -> bool:
        return a.ret is not None and a.ret < b.call

    def search(remaining: list, state) -> bool:
        if not remaining:
            return True
        for op in remaining:
            if any(precedes(other, op) for other in remaining if other is not op):
                continue
            new = apply(model, state, op.f, op.input, op.output, not op.indeterminate)
            if new == "ILLEGAL":
                continue
            if search([o for o in remaining if o is not op], new):
                return True
        return False

    for k in range(len(indet) + 1):
        for chosen in combinations(indet, k):
            if search(det + list(chosen), init):
                return True
    return False


@st.composite
def simulated_history(draw, model: str):
    n_procs = draw(st.integers(1, 3))
    n_ops = draw(st.integers(2, 7))
    clock = [0] * n_procs
    done = [False] * n_procs
    planned = []
    element = 0
    for _ in range(n_ops):
        live = [p for p in range(n_procs) if not done[p]]
        if not live:
            break
        p = draw(st.sampled_from(live))
        call = clock[p] + draw(st.integers(0, 3))
        ret = call + draw(st.integers(1, 6))
        clock[p] = ret + 1
        if model == "register":
            f = draw(st.sampled_from(["read", "write", "cas"]))
            arg = {
                "read": None,
                "write": draw(st.sampled_from(VALUES[1:])),
                "cas": [draw(st.sampled_from(VALUES)), draw(st.sampled_from(VALUES[1:]))],
            }[f]
        elif model == "kv":
            f = draw(st.sampled_from(["get", "put", "append"]))
            arg = {
                "get": None,
                "put": draw(st.sampled_from(["a", "b"])),
                "append": draw(st.sampled_from(["x", "y"])),
            }[f]
        else:
            f = draw(st.sampled_from(["read", "append"]))
            element += 1
            arg = element if f == "append" else None
        fate = draw(st.sampled_from(["ok"] * 6 + ["info", "pending"]))
        if fate == "pending":
            done[p] = True  # a never-completed op is its process's last
        applied = fate == "ok" or draw(st.booleans())
        lin = draw(st.integers(call, ret if fate == "ok" else ret + 10))
        planned.append([lin, call, ret, p, f, arg, fate, applied])
    state = () if model == "list-append" else None
    events = []
    for _lin, call, ret, p, f, arg, fate, applied in sorted(planned, key=lambda x: x[0]):
        ctype, out = "ok", arg
        if f == "get":
            out = state
        elif f == "append" and model == "kv":
            if applied:
                state = (state or "") + arg
        elif f == "read":
            out = state if model == "register" else list(state)
        elif f == "cas":
            if state == arg[0]:
                if applied:
                    state = arg[1]
            else:
                ctype = "fail"
        elif applied:
            state = arg if f in ("write", "put") else state + (arg,)
        if fate != "ok":
            ctype, out = fate, None
        base = {"process": p, "f": f, "key": "x"}
        events.append((call, 1, {"type": "invoke", **base, "value": arg}))
        if ctype != "pending":
            events.append((ret, 0, {"type": ctype, **base, "value": out}))
    # random corruptions
    for _ in range(draw(st.integers(0, 2))):
        completions = [e for _, _, e in events if e["type"] in ("ok", "fail")]
        if not completions:
            break
        victim = draw(st.sampled_from(completions))
        if victim["f"] == "get":
            victim["value"] = draw(st.sampled_from([None, "a", "ax", "axy", "ayx", "bx", "x"]))
        elif victim["f"] == "read":
            if model == "register":
                victim["value"] = draw(st.sampled_from(VALUES))
            else:
                victim["value"] = draw(st.permutations(victim["value"] + [99]))[
                    : len(victim["value"])
                ]
        elif victim["f"] == "cas":
            victim["type"] = "fail" if victim["type"] == "ok" else "ok"
        else:
            victim["type"] = draw(st.sampled_from(["ok", "fail", "info"]))
    events.sort(key=lambda x: (x[0], x[1]))
    return [{"index": i, **e, "time": t} for i, (t, _, e) in enumerate(events)]


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(simulated_history("register"))
def test_register_matches_brute_force(events):
    expected = brute_force("register", events)
    result = check_linearizable(events, "register", time_limit=10)
    assert result["valid"] is expected
    if expected is False:
        minimal = result["minimal_failing_subhistory"]
        assert brute_force("register", minimal) is False


@SETTINGS
@given(simulated_history("kv"))
def test_kv_matches_brute_force(events):
    assert check_linearizable(events, "kv", time_limit=10)["valid"] is brute_force("kv", events)


@SETTINGS
@given(simulated_history("list-append"))
def test_list_append_matches_brute_force(events):
    expected = brute_force("list-append", events)
    assert check_linearizable(events, "list-append", time_limit=10)["valid"] is expected


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["register", "kv", "list-append"]).flatmap(
        lambda m: st.tuples(st.just(m), simulated_history(m))
    )
)
def test_many_histories_match_brute_force(case):
    model, events = case
    assert check_linearizable(events, model, time_limit=10)["valid"] is brute_force(model, events)


def test_a_write_of_the_value_already_held_is_not_forced_first():
    """write 3; then write 3 and write 1 concurrently; then cas(3 -> 1): linearizable as
    w3, w1, w3, cas. The checker used to linearize the second write 3 at once because it left
    the state unchanged (a rule that holds for reads only), and then found no place for the
    cas. Found by test_register_matches_brute_force."""
    def op(i, t, p, typ, f, v):
        return {"index": i, "type": typ, "process": p, "f": f, "key": "x", "value": v, "time": t}

    events = [op(0, 0, 1, "invoke", "write", 3), op(1, 1, 1, "ok", "write", 3),
              op(2, 2, 1, "invoke", "write", 3), op(3, 2, 0, "invoke", "write", 1),
              op(4, 3, 1, "ok", "write", 3), op(5, 3, 0, "ok", "write", 1),
              op(6, 6, 1, "invoke", "cas", [3, 1]), op(7, 7, 1, "ok", "cas", [3, 1])]
    assert brute_force("register", events) is True
    assert check_linearizable(events, "register", time_limit=10)["valid"] is True
