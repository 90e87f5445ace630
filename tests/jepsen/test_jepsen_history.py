"""History format: JSON Lines I/O, the Recorder, invoke/completion pairing, nemesis."""

from __future__ import annotations

import io
import itertools

import pytest
from jepsen_lite.history import History, HistoryError, Recorder


def fake_clock():
    counter = itertools.count(100, 10)
    return lambda: next(counter)


def test_recorder_pairs_operations():
    rec = Recorder(clock=fake_clock())
    w = rec.invoke(1, "write", "k", 5)
    r = rec.invoke(2, "read", "k")
    rec.ok(w)
    rec.ok(r, 5)
    c = rec.invoke(1, "cas", "k", [5, 6])
    rec.fail(c)
    t = rec.invoke(3, "write", "k", 7)
    rec.info(t, error="timeout")
    rec.invoke(4, "write", "k", 8)
    ops = rec.history.operations()
    assert [(op.f, op.status) for op in ops] == [
        ("write", "ok"),
        ("read", "ok"),
        ("cas", "fail"),
        ("write", "info"),
        ("write", "pending"),
    ]
    write, read, cas, timed_out, pending = ops
    assert write.input == 5 and write.output == 5 and write.call == 100 and write.ret == 120
    assert read.output == 5
    assert cas.ret is not None and not cas.indeterminate
    assert timed_out.ret is None and timed_out.indeterminate
    assert timed_out.completion["error"] == "timeout"
    assert pending.indeterminate and pending.completion is None
    assert [e["index"] for e in rec.history] == list(range(9))


def test_recorder_streams_to_sink_and_round_trips(tmp_path):
    sink = io.StringIO()
    rec = Recorder(sink=sink, clock=fake_clock())
    rec.ok(rec.invoke(1, "append", "k", "x"))
    rec.nemesis_start("kill", "store-2")
    rec.nemesis_stop("kill", "store-2")
    assert History.loads(sink.getvalue()).events == rec.history.events
    path = tmp_path / "h.jsonl"
    rec.history.save(path)
    loaded = History.load(path)
    assert loaded.events == rec.history.events
    assert len(loaded.dumps().splitlines()) == 4


def test_nemesis_events_are_not_operations():
    rec = Recorder(clock=fake_clock())
    rec.nemesis_start("kill", "store-2")
    op = rec.invoke(1, "write", "k", 1)
    rec.nemesis_stop("kill", "store-2")
    rec.ok(op)
    rec.nemesis_start("pause", "store-1")
    assert len(rec.history.operations()) == 1
    kill, pause = rec.history.nemesis_intervals()
    assert (kill.fault, kill.target, kill.start, kill.stop) == ("kill", "store-2", 100, 120)
    assert (pause.fault, pause.stop) == ("pause", None)
    assert rec.history.events[0]["process"] == "nemesis"
    assert rec.history.events[0]["type"] == "info"


def test_index_is_assigned_when_missing():
    h = History.loads('{"type":"invoke","process":1,"f":"read","key":"k","time":1}\n\n')
    assert h.events[0]["index"] == 0


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"type":"invoke"'], "invalid JSON"),
        (['{"type":"begin","process":1,"f":"read","time":1}'], "type must be"),
        (['{"type":"invoke","process":1,"f":"read","time":1.5}'], "time"),
        (['{"type":"invoke","f":"read","time":1}'], "process"),
        (['{"type":"ok","process":1,"f":"read","time":1}'], "no invoke"),
        (
            [
                '{"type":"invoke","process":1,"f":"read","time":1}',
                '{"type":"invoke","process":1,"f":"read","time":2}',
            ],
            "outstanding",
        ),
        (
            [
                '{"type":"invoke","process":1,"f":"read","time":1}',
                '{"type":"ok","process":1,"f":"write","time":2}',
            ],
            "completion f",
        ),
        (
            [
                '{"type":"invoke","process":1,"f":"read","time":5}',
                '{"type":"ok","process":1,"f":"read","time":2}',
            ],
            "before its invoke",
        ),
    ],
)
def test_malformed_histories_are_rejected(lines, message):
    with pytest.raises(HistoryError, match=message):
        History.loads("\n".join(lines)).operations()


def test_completion_type_is_checked():
    rec = Recorder(clock=fake_clock())
    with pytest.raises(ValueError):
        rec.complete(rec.invoke(1, "read", "k"), "done")
