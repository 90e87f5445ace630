"""The driver's clock: the ticks owed to its raw nodes, from trio's monotonic clock.

Owns: the `ElapsedTicks` of one driver (a pause, a CPU starvation or a stalled turn is fed as
the ticks that really elapsed: see nokvpy/raft/ticks.py and "Leader leases" in
docs/protocols.md), the `driver.tick` failpoint, the ticker task that wakes the loop once a
tick is due, and the test-only `NOKV_UNSAFE_LEASE` switch. Never ticks a raw node itself: the
loop feeds the ticks `take` returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.raft.ticks import ElapsedTicks


def unsafe_lease_from_env(environ: dict[str, str] | None = None) -> bool:
    """`NOKV_UNSAFE_LEASE=1`: the test-only switch that restores the old tick rule (one tick
    per wake-up, so a paused leader keeps its lease); see "Leader leases" in
    docs/protocols.md."""
    env = os.environ if environ is None else environ
    return env.get("NOKV_UNSAFE_LEASE", "") not in ("", "0")


def new_clock(tick_interval: float) -> ElapsedTicks:
    """A driver's clock (its origin is set when the loop starts)."""
    return ElapsedTicks(tick_interval, 0.0, unsafe=unsafe_lease_from_env())


def take_ticks(clock: ElapsedTicks) -> int:
    """The ticks to feed this turn. The `driver.tick` failpoint: `sleep(ms)` stalls the
    whole process here (CPU starvation), `return(f)` makes a tick last f intervals from
    now on (clock-rate skew; `return(1)` restores it)."""
    try:
        fp = failpoints.check("driver.tick")
    except failpoints.FailpointError:
        fp = None  # `raise` means nothing here
    now = trio.current_time()
    if isinstance(fp, failpoints.Return):
        value: Any = fp.value  # the failpoint's text (or whatever a test put there)
        try:
            stretch = float(value)
        except (TypeError, ValueError):
            stretch = 1.0
        if stretch > 0:
            clock.set_stretch(now, stretch)
    return clock.take(now)


async def run_ticker(clock: ElapsedTicks, on_due: Callable[[], None]) -> None:
    """Calls `on_due` once a tick is due; the number fed comes from the clock."""
    while True:
        now = trio.current_time()
        if not clock.due(now):
            await trio.sleep(max(0.0, (clock.fed + 1) * clock.interval * clock.stretch
                                 - (now - clock.origin)) + 1e-4)
            continue
        on_due()
        await trio.sleep(clock.interval * clock.stretch / 2)
