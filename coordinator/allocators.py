"""ID and TSO allocators: monotone counters served from windows fenced in metaroot (DESIGN 6).

Owns: the next value and the window high of each allocator, and their reset when a new grant
era starts. A window is the range a grant's monotone bound covers; raising the bound
(`GrantLoop.raise_bound`) fences the allocator in metaroot in the same rooted event, so no
value is ever handed out above the rooted fence, and any restart (this or another
coordinator) resumes above it: nothing is ever reissued after any crash.

Window start when an era begins:
- an era this process had issued fresh: exactly after the rooted fence that preceded that
  grant (every value ever served lies under some grant bound, and every bound was folded into
  the fence when issued or raised);
- an era taken over in place (a restart renewing its own live grant): after the current
  rooted fence, skipping the rest of that window (values the previous incarnation may have
  served are never reissued).

Never: serves without a duty admission (GrantLoop.serving), lowers `next`, or reads a clock.
"""

from __future__ import annotations

from typing import Any

import trio

from coordinator.grantloop import GateRejected, GrantLoop
from nokvpy.protocol.enums import AllocatorKind, Duty, ErrorKind, RetryClass
from nokvpy.protocol.grants import Violation
from nokvpy.rpc.errors import RemoteError

MAX_COUNT = 1_000_000


class Allocator:
    def __init__(self, kind: AllocatorKind, grants: GrantLoop, sub: Any, window: int) -> None:
        self.kind = kind
        self.duty = Duty.ALLOC_ID if kind == AllocatorKind.ID else Duty.TSO
        self.grants = grants
        self.sub = sub
        self.window = max(1, window)
        # Invariant: next <= high + 1; every value < next was handed out (or skipped).
        self.next = 1
        self.high = 0
        self.era = 0
        self.lock = trio.Lock()
        self.served = 0  # values handed out by this process
        self.extensions = 0
        self.resets = 0

    def _rooted_fence(self) -> int:
        state = self.sub.state
        return state.id_fence if self.kind == AllocatorKind.ID else state.tso_fence

    async def allocate(self, count: int = 1) -> tuple[int, int]:
        """(first value, era): `count` consecutive values. Raises GateRejected when this
        coordinator may not serve the duty, RemoteError when the window cannot be fenced."""
        count = count or 1
        if count < 0 or count > MAX_COUNT:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "invalid_count",
                              f"count must be in 1..{MAX_COUNT}")
        async with self.grants.serving(self.duty) as g:
            async with self.lock:
                if g.era != self.era:
                    await self._reset(g)
                if self.next + count - 1 > self.high:
                    await self._extend(count)
                first = self.next
                self.next += count
                self.served += count
                return first, self.era

    async def _reset(self, g) -> None:
        st = self.grants.states[self.duty]
        if not await self.sub.wait_served(st.acquired_token.index, 5.0):
            raise RemoteError(ErrorKind.UNAVAILABLE, "catalog_behind",
                              "the rooted view has not caught up with the grant yet",
                              {"retry_class": RetryClass.RETRY.name})
        start = self._rooted_fence() + 1
        if st.acquired_issued and st.acquired_era == g.era:
            before = self.sub.fence_before_grant.get(g.grant_id)
            if before is not None:
                start = (before[0] if self.kind == AllocatorKind.ID else before[1]) + 1
        self.next = max(self.next, start)
        self.high = g.bound_for(self.duty) or 0
        self.era = g.era
        self.resets += 1

    async def _extend(self, count: int) -> None:
        base = max(self.high, self.next - 1)
        want = base + max(self.window, count)
        try:
            g = await self.grants.raise_bound(self.duty, want)
        except GateRejected:
            raise
        except Exception as exc:
            raise RemoteError(ErrorKind.UNAVAILABLE, "fence_failed",
                              f"could not fence the {self.duty} window: {exc}",
                              {"retry_class": RetryClass.RETRY.name}) from None
        if g.era != self.era:
            raise GateRejected(self.duty, "grant_superseded", "era changed while fencing",
                               Violation.SILENCE)
        # only what this request fenced is ours: a larger bound was raised by someone else
        self.high = min(g.bound_for(self.duty) or 0, want)
        self.extensions += 1
        if self.next + count - 1 > self.high:
            raise RemoteError(ErrorKind.UNAVAILABLE, "fence_short",
                              f"window high {self.high} < {self.next + count - 1}")

    def consumed_frontier(self) -> int:
        """The highest value handed out or skipped (the exact usage for a seal)."""
        return self.next - 1

    def describe(self) -> dict[str, Any]:
        return {
            "next": self.next,
            "window_high": self.high,
            "era": self.era,
            "rooted_fence": self._rooted_fence(),
            "window": self.window,
            "served": self.served,
            "extensions": self.extensions,
            "resets": self.resets,
        }
