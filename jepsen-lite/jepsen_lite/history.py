"""The jepsen-lite history: events, JSON Lines I/O, recording, and invoke/completion pairing.

This module owns the on-disk history format (documented in ``docs/jepsen-history.md``),
the :class:`Recorder` a workload runner uses to write it, and the pairing of each
``invoke`` event with its completion into an :class:`Operation`.

It never interprets operation values (that is :mod:`jepsen_lite.models`) and never decides
whether a history is correct (that is :mod:`jepsen_lite.linearizable` and
:mod:`jepsen_lite.checkers`).

Event types:

* ``invoke``: a client started an operation;
* ``ok``: it definitely took effect, with this result;
* ``fail``: it definitely did not take effect;
* ``info``: unknown (timeout, connection lost): it may take effect at any time after the
  invocation, or never. An invocation with no completion at all is treated the same way.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
EVENT_TYPES = frozenset({INVOKE, OK, FAIL, INFO})
COMPLETION_TYPES = frozenset({OK, FAIL, INFO})

NEMESIS = "nemesis"
"""The ``process`` of nemesis (fault-injection) events."""

_UNSET: Any = object()


class HistoryError(ValueError):
    """A history is malformed: bad JSON, missing fields, or an impossible event order."""


@dataclass(slots=True)
class Operation:
    """One client operation: an ``invoke`` event paired with its completion (if any).

    ``call`` and ``ret`` are monotonic nanoseconds. ``ret`` is ``None`` when the operation is
    indeterminate (completed by ``info`` or never completed): it may take effect at any time
    after ``call``, or never.
    """

    id: int
    """The ``index`` of the invoke event; unique within a history."""
    process: Any
    f: str
    key: Any
    input: Any
    """The invoke event's ``value`` (what the client asked for)."""
    output: Any
    """The completion's ``value`` (what the client observed); ``None`` if indeterminate."""
    call: int
    ret: int | None
    status: str
    """``ok``, ``fail``, ``info``, or ``pending`` (never completed)."""
    invoke: dict
    completion: dict | None

    @property
    def indeterminate(self) -> bool:
        return self.status in (INFO, "pending")

    def events(self) -> list[dict]:
        """The raw events of this operation, invoke first."""
        return [self.invoke] if self.completion is None else [self.invoke, self.completion]


@dataclass(slots=True)
class NemesisInterval:
    """A fault window: ``start`` and (if recorded) ``stop`` times, in monotonic ns."""

    fault: Any
    target: Any
    start: int
    stop: int | None
    value: Any


def _check_event(event: Any, where: str) -> dict:
    if not isinstance(event, dict):
        raise HistoryError(f"{where}: an event must be a JSON object, got {type(event).__name__}")
    etype = event.get("type")
    if etype not in EVENT_TYPES:
        raise HistoryError(f"{where}: type must be one of {sorted(EVENT_TYPES)}, got {etype!r}")
    if "process" not in event:
        raise HistoryError(f"{where}: missing 'process'")
    if not isinstance(event.get("f"), str):
        raise HistoryError(f"{where}: 'f' must be a string")
    t = event.get("time")
    if not isinstance(t, int) or isinstance(t, bool):
        raise HistoryError(f"{where}: 'time' must be an integer (monotonic ns), got {t!r}")
    return event


def is_nemesis(event: dict) -> bool:
    return event.get("process") == NEMESIS or event.get("f") == NEMESIS


def json_safe(value: Any) -> Any:
    """`value` as JSON-serialisable data (bytes decoded, unknown objects as str): the values
    of nemesis events (the nemesis and the hostile nemesis record them)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class History:
    """An ordered list of events (plain dicts in the JSON Lines schema).

    Events are kept in file order; ``index`` is assigned from the position when absent.
    """

    def __init__(self, events: Iterable[dict] = ()):
        self.events: list[dict] = []
        for event in events:
            self.append(event)

    # -- construction / I/O -------------------------------------------------------------

    def append(self, event: dict) -> dict:
        _check_event(event, f"event {len(self.events)}")
        if "index" not in event:
            event = {"index": len(self.events), **event}
        self.events.append(event)
        return event

    @classmethod
    def loads(cls, text: str) -> History:
        return cls(_parse_lines(text.splitlines()))

    @classmethod
    def load(cls, path: str | Path) -> History:
        with open(path, encoding="utf-8") as fh:
            return cls(_parse_lines(fh))

    def dumps(self) -> str:
        return "".join(_dump_event(e) for e in self.events)

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.dumps())

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.events)

    # -- views ------------------------------------------------------------------------

    def operations(self, *, include_fail: bool = True) -> list[Operation]:
        """Pair every client invoke with its completion, in invoke order.

        A process has at most one outstanding operation; a completion must follow an invoke
        of the same process and ``f``. Nemesis events are skipped (see
        :meth:`nemesis_intervals`). Raises :class:`HistoryError` on a malformed order.
        """
        ops: list[Operation] = []
        open_ops: dict[Any, Operation] = {}
        for pos, event in enumerate(self.events):
            if is_nemesis(event):
                continue
            where = f"event {pos} (index {event.get('index')})"
            proc = event["process"]
            etype = event["type"]
            if etype == INVOKE:
                if proc in open_ops:
                    prev = open_ops[proc]
                    raise HistoryError(
                        f"{where}: process {proc!r} invoked while op {prev.id} is outstanding"
                    )
                op = Operation(
                    id=event["index"],
                    process=proc,
                    f=event["f"],
                    key=event.get("key"),
                    input=event.get("value"),
                    output=None,
                    call=event["time"],
                    ret=None,
                    status="pending",
                    invoke=event,
                    completion=None,
                )
                open_ops[proc] = op
                ops.append(op)
                continue
            op = open_ops.pop(proc, None)
            if op is None:
                raise HistoryError(f"{where}: {etype} for process {proc!r} with no invoke")
            if event["f"] != op.f:
                raise HistoryError(f"{where}: completion f={event['f']!r} != invoke f={op.f!r}")
            if event["time"] < op.call:
                raise HistoryError(f"{where}: completion time is before its invoke")
            op.completion = event
            op.status = etype
            if etype == OK:
                op.output = event.get("value")
                op.ret = event["time"]
            elif etype == FAIL:
                op.ret = event["time"]
        if not include_fail:
            ops = [op for op in ops if op.status != FAIL]
        return ops

    def nemesis_intervals(self) -> list[NemesisInterval]:
        """Fault windows from nemesis ``start``/``stop`` events, matched by (fault, target)."""
        out: list[NemesisInterval] = []
        open_: dict[str, NemesisInterval] = {}
        for event in self.events:
            if not is_nemesis(event):
                continue
            value = event.get("value")
            fault = value.get("fault") if isinstance(value, dict) else value
            target = value.get("target") if isinstance(value, dict) else None
            ident = json.dumps([fault, target], sort_keys=True, default=str)
            if event["f"] == "start":
                interval = NemesisInterval(fault, target, event["time"], None, value)
                open_[ident] = interval
                out.append(interval)
            elif event["f"] == "stop" and ident in open_:
                open_.pop(ident).stop = event["time"]
        return out


def operations_of(history: History | Iterable[dict] | Iterable[Operation]) -> list[Operation]:
    """The operations of a History, of raw events, or a list of Operations as it is."""
    if isinstance(history, History):
        return history.operations()
    items = list(history)
    if items and all(isinstance(x, Operation) for x in items):
        return items
    return History(items).operations()


def _parse_lines(lines: Iterable[str]) -> Iterator[dict]:
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"line {lineno}: invalid JSON: {exc}") from None
        yield _check_event(event, f"line {lineno}")


def _dump_event(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), default=str) + "\n"


class Recorder:
    """Records a history as a workload runs; safe to call from several threads.

    ``invoke`` returns the invoke event; pass it to ``ok`` / ``fail`` / ``info`` when the
    client gets an answer. Times come from ``clock`` (``time.monotonic_ns``). With ``sink``
    (an open text file), every event is also written as one JSON line and flushed at once,
    so a crashed runner still leaves a readable history.

    Conventions that keep histories checkable: one outstanding op per process; after an
    ``info`` the client should continue under a fresh process id; write unique values.
    """

    def __init__(
        self,
        sink: IO[str] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ):
        self.history = History()
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()

    def _emit(self, fields: dict) -> dict:
        with self._lock:
            event = {"index": len(self.history.events), **fields, "time": self._clock()}
            self.history.append(event)
            if self._sink is not None:
                self._sink.write(_dump_event(event))
                self._sink.flush()
            return event

    def invoke(self, process: Any, f: str, key: Any = None, value: Any = None, **extra) -> dict:
        return self._emit(
            {"type": INVOKE, "process": process, "f": f, "key": key, "value": value, **extra}
        )

    def complete(self, invoke: dict, type: str, value: Any = _UNSET, **extra) -> dict:
        """Complete ``invoke`` with ``type`` ok/fail/info; ``value`` defaults to the invoke's."""
        if type not in COMPLETION_TYPES:
            raise ValueError(f"completion type must be one of {sorted(COMPLETION_TYPES)}")
        if value is _UNSET:
            value = invoke.get("value")
        fields = {
            "type": type,
            "process": invoke["process"],
            "f": invoke["f"],
            "key": invoke.get("key"),
            "value": value,
            **extra,
        }
        return self._emit(fields)

    def ok(self, invoke: dict, value: Any = _UNSET, **extra) -> dict:
        return self.complete(invoke, OK, value, **extra)

    def fail(self, invoke: dict, value: Any = _UNSET, **extra) -> dict:
        return self.complete(invoke, FAIL, value, **extra)

    def info(self, invoke: dict, value: Any = _UNSET, **extra) -> dict:
        return self.complete(invoke, INFO, value, **extra)

    def nemesis(self, f: str, fault: str, target: Any = None, **extra) -> dict:
        """Record a nemesis ``start`` or ``stop`` (``f``) of ``fault`` on ``target``."""
        value = {"fault": fault, "target": target, **extra}
        return self._emit({"type": INFO, "process": NEMESIS, "f": f, "key": None, "value": value})

    def nemesis_start(self, fault: str, target: Any = None, **extra) -> dict:
        return self.nemesis("start", fault, target, **extra)

    def nemesis_stop(self, fault: str, target: Any = None, **extra) -> dict:
        return self.nemesis("stop", fault, target, **extra)
