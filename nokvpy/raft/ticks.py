"""Elapsed time to raft ticks: how many ticks a driver owes its raw nodes.

Owns: the conversion from a monotonic clock reading to a number of ticks, so that a process
that was stopped (SIGSTOP), starved of CPU or whose loop stalled feeds its raft groups every
tick that really elapsed, not one tick per wake-up. The raft core measures its lease and its
followers' promises in ticks (`Raft.lease_valid`, `Raft.in_lease`); those are only worth
anything if a tick means `interval` seconds of real time. Never reads a clock itself (the
caller passes `now`, from `trio.current_time()` in the driver or the simulator's clock), never
touches a raft node.

`unsafe=True` (test-only: the driver sets it from `NOKV_UNSAFE_LEASE=1`) restores the old rule: at most
one tick per `take`, however long the caller slept, so a leader that was paused believes its
lease survived the pause. It exists so fault runs can show they catch it.
"""

from __future__ import annotations

__all__ = ["ElapsedTicks", "MAX_FEED"]

# The most ticks a driver feeds in one turn: more than any election timeout in use (10 ticks),
# so a lease or a vote promise measured in ticks has certainly run out after a longer pause;
# the rest are dropped (feeding hundreds of ticks to thousands of groups would only cost CPU).
MAX_FEED = 64


class ElapsedTicks:
    """Ticks elapsed since `origin`, handed out once each.

    Invariant: `fed <= int((now - origin) / interval)` for every `now` seen so far."""

    __slots__ = ("interval", "origin", "fed", "unsafe", "stretch")

    def __init__(self, interval: float, now: float, *, unsafe: bool = False):
        if interval <= 0:
            raise ValueError(f"tick interval must be positive, got {interval!r}")
        self.interval = interval
        self.origin = now
        self.fed = 0
        self.unsafe = unsafe
        # Clock-rate skew for fault runs (the `driver.tick` failpoint): a tick takes
        # `interval * stretch` seconds. 1.0 outside fault runs.
        self.stretch = 1.0

    def _elapsed(self, now: float) -> int:
        # (+1e-9: 100.1 - 100.0 is 0.0999... and must count as one tick of 0.1)
        return int((now - self.origin) / (self.interval * self.stretch) + 1e-9)

    def due(self, now: float) -> int:
        """Ticks that elapsed but were not handed out yet (0 when up to date)."""
        return max(0, self._elapsed(now) - self.fed)

    def take(self, now: float) -> int:
        """Hand out the ticks due at `now` (see `due`); afterwards `due(now) == 0`."""
        n = self.due(now)
        if n <= 0:
            return 0
        self.fed += n
        if self.unsafe:
            return 1
        return n

    def set_stretch(self, now: float, stretch: float) -> None:
        """Change the clock rate from `now` on without handing out or losing a tick."""
        if stretch <= 0:
            raise ValueError(f"tick stretch must be positive, got {stretch!r}")
        if stretch == self.stretch:
            return
        # Keep the position (whole and fractional ticks since origin) and change the rate.
        position = (now - self.origin) / (self.interval * self.stretch)
        self.stretch = stretch
        self.origin = now - position * self.interval * stretch
