"""LogThrottle: at most one line per key per interval, the next one counts what was held back.

Under MockClock(autojump_threshold=0) through trio.current_time, like the services that use it.
"""

from __future__ import annotations

import logging

import trio

from nokvpy.rpc.logthrottle import OVERFLOW_KEY, LogThrottle

log = logging.getLogger("tests.logthrottle")


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


async def test_one_line_per_key_per_interval(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    throttle = LogThrottle(log, 10.0)
    for i in range(2056):  # the flood of issue 16
        throttle.warning("bad_hmac", "refused %d", i)
        await trio.sleep(0.001)
    assert messages(caplog) == ["refused 0"]
    assert throttle.suppressed("bad_hmac") == 2055
    await trio.sleep(10)
    assert throttle.warning("bad_hmac", "refused %d", 9999)
    last = messages(caplog)[-1]
    assert last.startswith("refused 9999 (2055 similar lines suppressed in the last")
    assert throttle.suppressed("bad_hmac") == 0
    assert not throttle.warning("bad_hmac", "refused again")  # a new window


async def test_keys_are_independent_and_bounded(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    throttle = LogThrottle(log, 10.0, max_keys=3)
    for key in ("a", "b", "c"):
        assert throttle.info(key, "first %s", key)
        assert not throttle.info(key, "second %s", key)
    assert throttle.info("d", "first d")  # a fourth key shares the overflow bucket ...
    assert not throttle.info("e", "first e")  # ... with every later one
    assert throttle.suppressed(OVERFLOW_KEY) == 1
    assert messages(caplog) == ["first a", "first b", "first c", "first d"]


def test_disabled_level_costs_nothing_and_any_clock_works(caplog):
    now = [0.0]
    throttle = LogThrottle(log, 5.0, clock=lambda: now[0])  # usable outside trio
    caplog.set_level(logging.WARNING, logger=log.name)
    assert not throttle.info("k", "hidden")  # INFO is off: not logged, not counted
    assert throttle.suppressed("k") == 0
    assert throttle.warning("k", "shown")
    now[0] = 4.9
    assert not throttle.warning("k", "held")
    now[0] = 5.0
    assert throttle.warning("k", "shown again")
    assert messages(caplog) == ["shown", "shown again (1 similar lines suppressed in the last 5s)"]
