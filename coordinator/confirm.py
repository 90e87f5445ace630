"""Strong-read confirmation rounds, batched (DESIGN 4.4: "a ReadIndex-style round trip,
batched across concurrent requests").

Owns: single-flight ConfirmToken rounds to the metaroot leader. A request joins the next
round that *starts after it arrived* (so the confirmed token covers every event committed
before the request), never a round already in flight; all requests waiting when a round
starts share its answer. Counts rounds, requests and batch sizes for diagnostics.

Never: decides whether a read is served (coordinator.serving does), caches a token across
rounds, or reads a wall clock.
"""

from __future__ import annotations

from typing import Any

import trio

from nokvpy.protocol.metaroot_rpc import ConfirmTokenRequest
from nokvpy.protocol.records import RootToken


class _Round:
    __slots__ = ("done", "token", "error", "size")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.token: RootToken | None = None
        self.error: BaseException | None = None
        self.size = 0


class ConfirmBatcher:
    """`await confirm()` -> the leader-confirmed current root token (raises on failure)."""

    def __init__(self, meta: Any, timeout: float = 2.0) -> None:
        self.meta = meta
        self.timeout = timeout
        self._next: _Round | None = None  # collecting waiters; starts when the runner is free
        self._wake = trio.Event()
        self.rounds = 0
        self.requests = 0
        self.failures = 0
        self.max_batch = 0
        self.last_batch = 0
        self.batch_sizes: dict[int, int] = {}  # batch size -> rounds of that size

    async def confirm(self) -> RootToken:
        if self._next is None:
            self._next = _Round()
        r = self._next
        r.size += 1
        self.requests += 1
        self._wake.set()
        await r.done.wait()
        if r.error is not None:
            raise r.error
        assert r.token is not None
        return r.token

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._next is not None:
                r, self._next = self._next, None
                self.rounds += 1
                self.last_batch = r.size
                self.max_batch = max(self.max_batch, r.size)
                self.batch_sizes[r.size] = self.batch_sizes.get(r.size, 0) + 1
                try:
                    reply = await self.meta.call(ConfirmTokenRequest(), timeout=self.timeout,
                                                 leader=True)
                    r.token = reply.token
                except trio.Cancelled:
                    r.error = RuntimeError("coordinator shutting down")
                    r.done.set()
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to every waiter
                    self.failures += 1
                    r.error = exc
                r.done.set()

    def stats(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "requests": self.requests,
            "failures": self.failures,
            "max_batch": self.max_batch,
            "last_batch": self.last_batch,
            "mean_batch_x100": (self.requests * 100 // self.rounds) if self.rounds else 0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }
