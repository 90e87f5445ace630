"""Route-read contract, transition outcome and acknowledged-write checkers."""

from __future__ import annotations

import pytest
from jepsen_lite.checkers import (
    append_final_reads,
    check_acknowledged_writes,
    check_route_reads,
    check_transitions,
    check_with_final_reads,
)

# -- route reads --------------------------------------------------------------------------


def route(p, t, freshness="STRONG", max_lag=None, required=None, **reply):
    """A route op whose reply is consistent unless overridden by ``reply``."""
    served = reply.pop("served_root_token", 10)
    current = reply.pop("current_root_token", served)
    value = {
        "freshness": freshness,
        "served_freshness": freshness,
        "served_root_token": served,
        "current_root_token": current,
        "root_lag": current - served,
        "serving_class": "AUTHORITATIVE",
        "coordinator": "c1",
        **reply,
    }
    request = {"freshness": freshness, "max_root_lag": max_lag, "required_root_token": required}
    return {"p": p, "f": "route", "v": request, "t": t, "out": value, "key": None}


def kinds(result):
    return sorted(v["kind"] for v in result["violations"])


def test_honest_route_replies_pass(hb):
    events = hb(
        route(1, (0, 1)),
        route(
            2,
            (2, 3),
            "BOUNDED",
            max_lag=2,
            required=8,
            served_root_token=9,
            current_root_token=11,
            serving_class="FOLLOWER",
            coordinator="c2",
        ),
        route(
            3,
            (4, 5),
            "BEST_EFFORT",
            served_root_token=10,
            current_root_token=14,
            serving_class="CACHED",
            coordinator="c3",
        ),
        route(1, (6, 7), "BEST_EFFORT", served_root_token=12, current_root_token=12),
    )
    result = check_route_reads(events)
    assert result == {"valid": True, "violations": [], "checked": 4}


@pytest.mark.parametrize(
    "op, expected",
    [
        (route(1, (0, 1), served_freshness="BOUNDED"), ["silent_downgrade"]),
        (
            route(1, (0, 1), "BOUNDED", max_lag=5, served_freshness="BEST_EFFORT"),
            ["silent_downgrade"],
        ),
        (route(1, (0, 1), served_root_token=9, current_root_token=10), ["strong_not_fresh"]),
        (route(1, (0, 1), serving_class="FOLLOWER"), ["strong_not_fresh"]),
        (
            route(1, (0, 1), "BOUNDED", max_lag=1, served_root_token=7, current_root_token=10),
            ["bounded_lag_exceeded"],
        ),
        (route(1, (0, 1), "BOUNDED", max_lag=5, required=11), ["required_token_not_met"]),
        (
            route(1, (0, 1), "BEST_EFFORT", served_root_token=7, current_root_token=10),
            ["stale_labelled_authoritative"],
        ),
        (
            route(1, (0, 1), "BEST_EFFORT", root_lag=1, serving_class="CACHED"),
            ["root_lag_mismatch"],
        ),
        (
            route(1, (0, 1), "BEST_EFFORT", coordinator=None) | {"out": {"freshness": "STRONG"}},
            ["malformed"],
        ),
        (route(1, (0, 1), "SOMETIMES"), ["malformed"]),
    ],
)
def test_route_contract_violations(hb, op, expected):
    result = check_route_reads(hb(op))
    assert result["valid"] is False
    assert kinds(result) == expected


def test_failed_and_timed_out_route_ops_are_skipped(hb):
    bad = route(1, (0, 1), served_freshness="BEST_EFFORT")
    result = check_route_reads(hb(bad | {"type": "fail"}, route(2, (0, 1)) | {"type": "info"}))
    assert result["valid"] is True and result["checked"] == 0


def test_served_token_must_not_go_backward_per_coordinator(hb):
    events = hb(
        route(1, (0, 1), "BOUNDED", served_root_token=10),
        route(1, (2, 3), "BOUNDED", served_root_token=9, current_root_token=9),
    )
    result = check_route_reads(events)
    assert kinds(result) == ["token_regression"]
    assert result["violations"][0]["earlier_op"] == 0
    # a STRONG read going backward also missed a committed event (strong_stale)
    events = hb(
        route(1, (0, 1), served_root_token=10),
        route(1, (2, 3), served_root_token=9, current_root_token=9),
    )
    assert kinds(check_route_reads(events)) == ["strong_stale", "token_regression"]


def test_overlapping_or_other_coordinator_replies_may_be_lower(hb):
    events = hb(
        route(1, (0, 5), served_root_token=10),
        route(2, (1, 6), served_root_token=9, current_root_token=9),  # overlaps the first
        # (another coordinator may lag, except at STRONG: strong_stale, test_jepsen_lease.py)
        route(3, (7, 8), "BOUNDED", served_root_token=3, current_root_token=3, coordinator="c2"),
        route(3, (9, 10), served_root_token=10),
    )
    assert check_route_reads(events)["valid"] is True


# -- transitions --------------------------------------------------------------------------


def tx(tid, event):
    return {"transition_id": tid, "event": event}


def test_transitions_each_with_one_outcome_pass():
    events = [
        tx("t1", "planned"),
        tx("t2", "planned"),
        tx("t1", "terminal"),
        tx("t2", "cancelled"),
        tx("t3", "planned"),
        tx("t3", "compensated"),
        tx("t4", "recovery"),
        tx("t4", "terminal"),
    ]
    result = check_transitions(events)
    assert result == {"valid": True, "violations": [], "transitions": 4}


@pytest.mark.parametrize(
    "events, expected",
    [
        ([tx("t1", "planned")], ["no_outcome"]),
        ([tx("t1", "planned"), tx("t1", "terminal"), tx("t1", "cancelled")], ["multiple_outcomes"]),
        ([tx("t1", "planned"), tx("t1", "terminal"), tx("t1", "terminal")], ["multiple_outcomes"]),
        ([tx("t1", "terminal")], ["terminal_without_plan"]),
        ([tx("t1", "terminal"), tx("t1", "planned")], ["terminal_without_plan"]),
        ([tx("t1", "terminal"), tx("t1", "recovery")], ["terminal_without_plan"]),
        ([tx("t2", "recovery"), tx("t1", "terminal")], ["no_outcome", "terminal_without_plan"]),
        ([{"event": "planned"}], ["malformed"]),
        ([tx("t1", "exploded")], ["malformed"]),
    ],
)
def test_transition_violations(events, expected):
    result = check_transitions(events)
    assert result["valid"] is False
    assert kinds(result) == expected


# -- acknowledged writes ------------------------------------------------------------------


def test_list_append_lost_and_phantom_elements(hb):
    o = hb.op
    events = hb(
        o(1, "append", 1, (0, 1)),
        o(2, "append", 2, (0, 1), type="info"),
        o(3, "append", 3, (2, 3)),
        o(4, "append", 4, (2, 3), type="fail"),
    )
    ok = check_acknowledged_writes(events, {"x": [1, 3]}, "list-append")
    assert ok["valid"] is True
    assert check_acknowledged_writes(events, {"x": [3, 1, 2]}, "list-append")["valid"] is True
    lost = check_acknowledged_writes(events, {"x": [1, 2]}, "list-append")
    assert kinds(lost) == ["lost_write"] and lost["violations"][0]["op"] == 4
    phantom = check_acknowledged_writes(events, {"x": [1, 3, 4]}, "list-append")
    assert kinds(phantom) == ["phantom_value"]
    assert kinds(check_acknowledged_writes(events, {}, "list-append")) == ["missing_final_read"]


def test_register_final_value_must_come_from_a_write(hb):
    o = hb.op
    events = hb(o(1, "write", 1, (0, 1)), o(2, "write", 2, (2, 3), type="info"))
    assert check_acknowledged_writes(events, {"x": 1}, "register")["valid"] is True
    assert check_acknowledged_writes(events, {"x": 2}, "register")["valid"] is True
    assert kinds(check_acknowledged_writes(events, {"x": None}, "register")) == ["lost_write"]


def test_kv_appends_after_last_put_must_survive(hb):
    o = hb.op
    events = hb(
        o(1, "put", "a", (0, 1)),
        o(1, "append", "b", (2, 3)),
        o(1, "append", "c", (4, 5)),
    )
    assert check_acknowledged_writes(events, {"x": "abc"}, "kv")["valid"] is True
    assert kinds(check_acknowledged_writes(events, {"x": "ab"}, "kv")) == ["lost_write"]
    assert kinds(check_acknowledged_writes(events, {"x": None}, "kv")) == ["lost_write"]


def test_final_reads_through_linearizability(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3)),
        o(2, "write", 3, (4, 5), type="info"),
    )
    # the acked write 2 was overwritten by nothing that is certain: 1 means it was lost
    assert check_with_final_reads(events, {"x": 1}, "register")["valid"] is False
    assert check_with_final_reads(events, {"x": 2}, "register")["valid"] is True
    assert check_with_final_reads(events, {"x": 3}, "register")["valid"] is True
    # the direct check cannot see that 1 is stale: it was written
    assert check_acknowledged_writes(events, {"x": 1}, "register")["valid"] is True


def test_append_final_reads_adds_sequential_reads(hb):
    o = hb.op
    history = append_final_reads(hb(o(1, "put", "a", (0, 1))), {"x": "a", "y": None}, "kv")
    ops = history.operations()
    assert [(op.f, op.key, op.output) for op in ops[1:]] == [("get", "x", "a"), ("get", "y", None)]
    assert ops[1].call > ops[0].ret and ops[2].call > ops[1].ret
    assert all(op.invoke.get("final") for op in ops[1:])
