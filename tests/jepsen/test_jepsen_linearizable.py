"""Hand-built histories for the per-key linearizability checker, per model."""

from __future__ import annotations

import time

import pytest
from jepsen_lite.history import History
from jepsen_lite.linearizable import check_key, check_linearizable, shrink
from jepsen_lite.models import ModelError


def verdict(events, model="register", **kw):
    return check_linearizable(events, model, **kw)["valid"]


# -- register -----------------------------------------------------------------------------


def test_empty_history_is_valid():
    result = check_linearizable([], "register")
    assert result["valid"] is True and result["per_key"] == {}


def test_sequential_register(hb):
    o = hb.op
    events = hb(o(1, "write", 1, (0, 1)), o(1, "read", None, (2, 3), out=1))
    assert verdict(events) is True


def test_read_of_unset_register_is_nil(hb):
    o = hb.op
    assert verdict(hb(o(1, "read", None, (0, 1), out=None))) is True
    assert verdict(hb(o(1, "read", None, (0, 1), out=0))) is False


def test_stale_read_after_completed_write_is_invalid(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3)),
        o(2, "read", None, (4, 5), out=1),
    )
    assert verdict(events) is False


def test_read_concurrent_with_write_may_see_either_value(hb):
    o = hb.op
    for seen in (1, 2):
        events = hb(
            o(1, "write", 1, (0, 1)),
            o(1, "write", 2, (2, 6)),
            o(2, "read", None, (3, 5), out=seen),
        )
        assert verdict(events) is True, seen


def test_two_reads_concurrent_with_write_cannot_go_back(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 20)),
        o(2, "read", None, (3, 5), out=2),
        o(3, "read", None, (6, 8), out=1),
    )
    assert verdict(events) is False


def test_touching_intervals_are_concurrent(hb):
    o = hb.op
    # the read is invoked at the instant the write completes: it may precede it
    events = hb(o(1, "write", 1, (0, 5)), o(2, "read", None, (5, 6), out=None))
    assert verdict(events) is True


def test_cas_semantics(hb):
    o = hb.op
    ok = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "cas", [1, 2], (2, 3)),
        o(1, "read", None, (4, 5), out=2),
    )
    assert verdict(ok) is True
    wrong_expected = hb(o(1, "write", 1, (0, 1)), o(1, "cas", [3, 2], (2, 3)))
    assert verdict(wrong_expected) is False
    failed = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "cas", [1, 2], (2, 3), type="fail"),
        o(1, "read", None, (4, 5), out=2),
    )
    assert verdict(failed) is False  # a failed cas did not happen


def test_info_write_that_must_have_happened(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=2),
    )
    assert verdict(events) is True
    failed = [dict(e, type="fail") if e["type"] == "info" else e for e in events]
    assert verdict(failed) is False


def test_info_write_that_never_happened(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=1),
        o(2, "read", None, (12, 13), out=1),
    )
    assert verdict(events) is True


def test_info_write_may_take_effect_after_its_completion(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=1),
        o(2, "read", None, (12, 13), out=2),
    )
    assert verdict(events) is True


def test_info_write_cannot_take_effect_before_its_invocation(hb):
    o = hb.op
    events = hb(
        o(2, "read", None, (0, 1), out=2),
        o(1, "write", 2, (5, 6), type="info"),
    )
    assert verdict(events) is False


def test_info_write_cannot_happen_twice(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=2),
        o(2, "read", None, (12, 13), out=1),
        o(2, "read", None, (14, 15), out=2),
    )
    assert verdict(events) is False


def test_never_completed_op_is_indeterminate(hb):
    o = hb.op
    events = hb(
        o(1, "write", 7, (0, None)),
        o(2, "read", None, (5, 6), out=None),
        o(2, "read", None, (7, 8), out=7),
    )
    assert verdict(events) is True


def test_info_cas_applies_only_if_expected_matches(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "cas", [5, 2], (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=2),
    )
    assert verdict(events) is False
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "cas", [1, 2], (2, 3), type="info"),
        o(2, "read", None, (10, 11), out=2),
    )
    assert verdict(events) is True


# -- kv -----------------------------------------------------------------------------------


def test_kv_put_get_append(hb):
    o = hb.op
    events = hb(
        o(1, "put", "a", (0, 1)),
        o(1, "append", "b", (2, 3)),
        o(1, "get", None, (4, 5), out="ab"),
    )
    assert verdict(events, "kv") is True


def test_kv_append_to_unset_key(hb):
    o = hb.op
    events = hb(o(1, "append", "x", (0, 1)), o(1, "get", None, (2, 3), out="x"))
    assert verdict(events, "kv") is True


def test_kv_append_order(hb):
    o = hb.op
    sequential = hb(
        o(1, "append", "a", (0, 1)),
        o(2, "append", "b", (2, 3)),
        o(3, "get", None, (4, 5), out="ba"),
    )
    assert verdict(sequential, "kv") is False
    concurrent = hb(
        o(1, "append", "a", (0, 3)),
        o(2, "append", "b", (1, 2)),
        o(3, "get", None, (4, 5), out="ba"),
    )
    assert verdict(concurrent, "kv") is True


def test_kv_info_append(hb):
    o = hb.op
    events = hb(
        o(1, "put", "a", (0, 1)),
        o(1, "append", "b", (2, 3), type="info"),
        o(2, "get", None, (4, 5), out="a"),
        o(2, "get", None, (6, 7), out="ab"),
    )
    assert verdict(events, "kv") is True
    events[-1]["value"] = "abb"
    assert verdict(events, "kv") is False


# -- list-append --------------------------------------------------------------------------


def test_list_append(hb):
    o = hb.op
    events = hb(
        o(1, "append", 1, (0, 1)),
        o(1, "append", 2, (2, 3)),
        o(2, "read", None, (4, 5), out=[1, 2]),
    )
    assert verdict(events, "list-append") is True
    events[-1]["value"] = [2, 1]
    assert verdict(events, "list-append") is False
    events[-1]["value"] = [1]
    assert verdict(events, "list-append") is False


def test_list_append_read_of_unset_key(hb):
    o = hb.op
    for out in (None, []):
        assert verdict(hb(o(1, "read", None, (0, 1), out=out)), "list-append") is True


def test_list_append_concurrent_and_info(hb):
    o = hb.op
    events = hb(
        o(1, "append", 1, (0, 10)),
        o(2, "append", 2, (1, 9)),
        o(3, "append", 3, (2, 3), type="info"),
        o(4, "read", None, (11, 12), out=[2, 1]),
        o(4, "read", None, (13, 14), out=[2, 1, 3]),
    )
    assert verdict(events, "list-append") is True
    events[-1]["value"] = [2, 3, 1]
    assert verdict(events, "list-append") is False


# -- partitioning, errors, results --------------------------------------------------------


def test_keys_are_checked_independently(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1), key="a"),
        o(2, "write", 2, (0, 1), key="b"),
        o(1, "read", None, (2, 3), out=1, key="a"),
        o(2, "read", None, (2, 3), out=1, key="b"),
    )
    result = check_linearizable(events, "register")
    assert result["valid"] is False
    assert result["per_key"]["a"]["valid"] is True
    assert result["per_key"]["b"]["valid"] is False
    assert result["failing_key"] == "b"
    assert {e["key"] for e in result["minimal_failing_subhistory"]} == {"b"}


def test_other_functions_are_ignored_and_wrong_model_is_an_error(hb):
    o = hb.op
    events = hb(o(1, "write", 1, (0, 1)), o(2, "route", {"freshness": "STRONG"}, (0, 1)))
    result = check_linearizable(events, "register")
    assert result["valid"] is True and result["ignored_ops"] == 1
    with pytest.raises(ModelError):
        check_linearizable(events, "kv")
    with pytest.raises(ModelError):
        check_linearizable(events, "no-such-model")


def test_invalid_result_reports_partial_linearization(hb):
    o = hb.op
    events = hb(
        o(1, "write", 1, (0, 1)),
        o(1, "write", 2, (2, 3)),
        o(2, "read", None, (4, 5), out=1),
    )
    per_key = check_linearizable(events, "register")["per_key"]["x"]
    assert per_key["linearized_prefix"] == [0, 2]
    assert per_key["state_at_failure"] == 2
    assert per_key["stuck_op"] == 4


def test_minimal_failing_subhistory_is_small_and_still_invalid(hb):
    o = hb.op
    ops = [o(1, "write", i, (10 * i, 10 * i + 1)) for i in range(1, 30)]
    ops += [o(2, "read", None, (10 * i + 2, 10 * i + 3), out=i) for i in range(1, 30)]
    ops.append(o(2, "read", None, (1000, 1001), out=3))  # stale
    result = check_linearizable(hb(*ops), "register")
    assert result["valid"] is False
    minimal = result["minimal_failing_subhistory"]
    assert len(minimal) <= 6  # write 3, a later write, the stale read
    assert check_linearizable(minimal, "register")["valid"] is False
    values = {e["value"] for e in minimal if e["type"] == "ok" and e["f"] == "write"}
    assert 3 in values  # the write the stale read saw is kept


def test_shrink_returns_input_for_valid_history(hb):
    o = hb.op
    ops = History(hb(o(1, "write", 1, (0, 1)))).operations()
    assert shrink(ops, "register") == ops


def pathological(n_writes: int) -> list[dict]:
    """n concurrent writes, then two sequential reads of different values with no write
    between them: invalid, but only after trying every order of the writes."""
    events = []
    for i in range(n_writes):
        events.append({"type": "invoke", "process": i, "f": "write", "key": "x", "value": i})
    for i in range(n_writes):
        events.append({"type": "ok", "process": i, "f": "write", "key": "x", "value": i})
    for v in (0, 1):
        events.append({"type": "invoke", "process": "r", "f": "read", "key": "x", "value": None})
        events.append({"type": "ok", "process": "r", "f": "read", "key": "x", "value": v})
    return [dict(e, index=i, time=i) for i, e in enumerate(events)]


def test_time_budget_answers_unknown_not_valid():
    started = time.monotonic()
    result = check_linearizable(pathological(18), "register", time_limit=0.05)
    assert result["valid"] == "unknown"
    assert result["per_key"]["x"]["valid"] == "unknown"
    assert result["minimal_failing_subhistory"] is None
    assert time.monotonic() - started < 2.0


def test_configuration_budget_answers_unknown():
    result = check_linearizable(pathological(12), "register", max_configurations=100)
    assert result["valid"] == "unknown"
    assert result["per_key"]["x"]["reason"] == "configuration limit reached"


def test_small_pathological_history_is_invalid():
    assert verdict(pathological(6), time_limit=10) is False


def test_expired_budget_marks_remaining_keys_unknown(hb):
    o = hb.op
    events = hb(o(1, "write", 1, (0, 1), key="a"), o(2, "write", 1, (0, 1), key="b"))
    result = check_linearizable(events, "register", time_limit=-1)
    assert result["valid"] == "unknown"
    assert all(r["valid"] == "unknown" for r in result["per_key"].values())


def test_check_key_directly(hb):
    o = hb.op
    ops = History(hb(o(1, "write", 1, (0, 1)), o(2, "read", None, (2, 3), out=1))).operations()
    result = check_key(ops, "register")
    assert result["valid"] is True and result["ops"] == 2


def test_simulated_history_at_scale_and_a_stale_read_in_it():
    from jepsen_lite.bench import simulate_register_history

    history = simulate_register_history(n_ops=1500, n_keys=3, n_processes=8, info_rate=0.05)
    assert check_linearizable(history, "register", time_limit=30)["valid"] is True
    ops = [op for op in history.operations() if op.status == "ok"]
    for read in (op for op in ops if op.f == "read" and op.call > ops[len(ops) // 2].call):
        writes = [op for op in ops if op.f == "write" and op.key == read.key]
        stale = [
            old
            for old in writes
            for new in writes
            if old.ret < new.call and new.ret < read.call and old.input != read.output
        ]
        if stale:
            read.completion["value"] = stale[0].input
            break
    result = check_linearizable(history, "register", time_limit=30)
    assert result["valid"] is False
    assert len(result["minimal_failing_subhistory"]) <= 8
