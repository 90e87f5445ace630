"""Raft message transport between stores: buffered, batched, fire-and-forget.

Owns: per-destination-store send buffers and the sender tasks that flush each buffer as ONE
`RaftBatch` one-way request per loop turn (or, when a destination has nothing pending and an
open connection, `send()` writes the batch to it directly). `send()` never blocks (the raft ready loop calls
it synchronously); a full buffer drops the envelope and counts it; an unresolvable or
unreachable store is counted and reported through `on_unreachable(store_id)` so the raft
layer can call `report_unreachable`. Never retries a batch: raft retransmits on its own.
The receiving side is a service handler: `server.register(RaftBatch, handler, inline=True)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from nokvpy.rpc.client import RpcClient
from nokvpy.rpc.errors import RpcError
from nokvpy.rpc.identity import Counters
from nokvpy.wire import EncodeError, RaftBatch, RaftEnvelope

logger = logging.getLogger("nokvpy.rpc")


class _Destination:
    __slots__ = ("store_id", "queue", "wake", "busy")

    def __init__(self, store_id: int) -> None:
        self.store_id = store_id
        self.queue: list[RaftEnvelope] = []
        self.wake: trio.Event | None = None
        self.busy = False  # the sender task is handing a batch to the client


class RaftTransport:
    """Send raft envelopes to other stores. Start with `await nursery.start(transport.run)`."""

    def __init__(
        self,
        client: RpcClient,
        resolve: Callable[[int], str | None],
        local_store_id: int,
        *,
        on_unreachable: Callable[[int], None] | None = None,
        max_queue: int = 4096,
        send_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.resolve = resolve
        self.local_store_id = local_store_id
        self.on_unreachable = on_unreachable
        self.max_queue = max_queue
        self.send_timeout = send_timeout
        self.counters = Counters()
        self._dests: dict[int, _Destination] = {}
        self._nursery: trio.Nursery | None = None

    def send(self, envelopes: list[RaftEnvelope]) -> None:
        """Queue envelopes for their `to_store`; never blocks, never raises for the network.

        Fast path: a destination with nothing queued or in hand, whose connection is open,
        gets this call's envelopes as one batch written to the connection at once (no task
        switch; order is kept because nothing of that destination is pending). Everything
        else goes through the destination's sender task."""
        touched: list[_Destination] = []
        for env in envelopes:
            dest = self._dests.get(env.to_store)
            if dest is None:
                dest = self._dests[env.to_store] = _Destination(env.to_store)
                if self._nursery is not None:
                    self._nursery.start_soon(self._sender, dest)
            if len(dest.queue) >= self.max_queue:
                self.counters.inc("dropped", reason="queue_full")
                continue
            if not dest.queue:
                touched.append(dest)
            dest.queue.append(env)
        for dest in touched:
            if not dest.busy and self._send_now(dest):
                continue
            wake = dest.wake
            if wake is not None:
                dest.wake = None
                wake.set()

    def _send_now(self, dest: _Destination) -> bool:
        addr = self.resolve(dest.store_id)
        if addr is None:
            return False
        batch = dest.queue
        try:
            sent = self.client.try_notify_now(
                addr, RaftBatch(self.local_store_id, dest.store_id, batch))
        except EncodeError:
            dest.queue = []
            self.counters.inc("dropped", n=len(batch), reason="unencodable")
            logger.exception("cannot encode a raft batch to store %d", dest.store_id)
            return True
        if sent:
            dest.queue = []
            self.counters["batches_sent"] += 1
            self.counters["envelopes_sent"] += len(batch)
            self.counters["sent_inline"] += 1
        return sent

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the per-destination senders until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for dest in self._dests.values():
                    nursery.start_soon(self._sender, dest)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def queued(self, store_id: int) -> int:
        dest = self._dests.get(store_id)
        return len(dest.queue) if dest is not None else 0

    async def _sender(self, dest: _Destination) -> None:
        while True:
            if not dest.queue:
                wake = dest.wake = trio.Event()
                await wake.wait()
                continue
            batch, dest.queue = dest.queue, []
            addr = self.resolve(dest.store_id)
            if addr is None:
                self._unreachable(dest.store_id, len(batch), "unresolved")
                continue
            dest.busy = True
            try:
                await self.client.notify(
                    addr, RaftBatch(self.local_store_id, dest.store_id, batch), self.send_timeout
                )
            except RpcError as e:
                self._unreachable(dest.store_id, len(batch), type(e).__name__)
                logger.debug("raft batch to store %d at %s lost: %s", dest.store_id, addr, e)
                continue
            except EncodeError:
                self.counters.inc("dropped", n=len(batch), reason="unencodable")
                logger.exception("cannot encode a raft batch to store %d", dest.store_id)
                continue
            finally:
                dest.busy = False
            self.counters["batches_sent"] += 1
            self.counters["envelopes_sent"] += len(batch)

    def _unreachable(self, store_id: int, lost: int, reason: str) -> None:
        self.counters.inc("unreachable", reason=reason)
        self.counters.inc("dropped", n=lost, reason="unreachable")
        if self.on_unreachable is not None:
            try:
                self.on_unreachable(store_id)
            except Exception:
                logger.exception("on_unreachable(%d) failed", store_id)
