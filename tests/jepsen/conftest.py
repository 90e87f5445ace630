"""Shared fixtures for the jepsen-lite checker tests: import path and a history builder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import jepsen_lite  # noqa: F401
except ImportError:  # not installed yet: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jepsen-lite"))


def build_history(*ops: dict) -> list[dict]:
    """Events for ops given as dicts with ``p`` (process), ``f``, ``v`` (invoke value),
    ``t`` = (call, ret) times, ``out`` (completion value, default ``v``), ``type``
    (ok/fail/info, default ok; ``ret`` None = never completed) and ``key`` (default "x")."""
    raw = []
    for op in ops:
        call, ret = op["t"]
        common = {"process": op.get("p", 0), "f": op["f"], "key": op.get("key", "x")}
        raw.append((call, 1, {"type": "invoke", **common, "value": op.get("v")}))
        if ret is not None:
            out = op.get("out", op.get("v"))
            raw.append((ret, 0, {"type": op.get("type", "ok"), **common, "value": out}))
    raw.sort(key=lambda item: (item[0], item[1]))
    return [{"index": i, **event, "time": t} for i, (t, _, event) in enumerate(raw)]


def op(p, f, v=None, t=(0, 1), **kw) -> dict:
    """One operation for :func:`build_history`."""
    return {"p": p, "f": f, "v": v, "t": t, **kw}


class HistoryBuilder:
    """``hb(hb.op(...), ...)`` builds an event list; ``hb.op`` makes one operation."""

    op = staticmethod(op)

    def __call__(self, *ops: dict) -> list[dict]:
        return build_history(*ops)


@pytest.fixture(scope="session")
def hb() -> HistoryBuilder:
    return HistoryBuilder()
