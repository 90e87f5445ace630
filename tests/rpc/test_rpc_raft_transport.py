"""Raft transport: one RaftBatch per destination per loop turn; unreachable stores reported."""

from __future__ import annotations

import trio
from rpc_helpers import ident, serving

from nokvpy.raft.types import Entry, Message, MessageType
from nokvpy.rpc import RaftTransport, RpcClient, RpcServer
from nokvpy.wire import RaftBatch, RaftEnvelope


def _env(i: int, to_store: int = 2) -> RaftEnvelope:
    msg = Message(MessageType.APP, to=20, frm=10, term=1, index=i,
                  entries=[Entry(1, i + 1, 0, b"x" * 10)])
    return RaftEnvelope(group_id=7, from_store=1, to_store=to_store, epoch_version=1,
                        epoch_conf_ver=1, message=msg)


class _Collector:
    """Store 2's side: records every RaftBatch; `arrived` is set once `want` envelopes came."""

    def __init__(self, want: int) -> None:
        self.server = RpcServer(ident("store", 2))
        self.batches: list[RaftBatch] = []
        self.want = want
        self.first, self.arrived = trio.Event(), trio.Event()
        self.server.register(RaftBatch, self.on_batch, inline=True)

    async def on_batch(self, batch: RaftBatch, ctx) -> None:
        self.batches.append(batch)
        self.first.set()
        if len(self.indexes()) >= self.want:
            self.arrived.set()

    def indexes(self) -> list[int]:
        return [e.message.index for b in self.batches for e in b.envelopes]


async def test_envelopes_sent_in_one_turn_arrive_as_one_batch():
    store2 = _Collector(50)
    batches, arrived = store2.batches, store2.arrived
    async with serving(store2.server) as addr, RpcClient(ident("store", 1)) as client:
        transport = RaftTransport(client, {2: addr}.get, local_store_id=1)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                transport.send([_env(i) for i in range(30)])  # same turn: no checkpoint between
                transport.send([_env(i) for i in range(30, 50)])
                await arrived.wait()
                nursery.cancel_scope.cancel()
    assert len(batches) == 1
    assert batches[0].from_store == 1 and batches[0].to_store == 2
    assert [e.message.index for e in batches[0].envelopes] == list(range(50))
    assert batches[0].envelopes[3] == _env(3)
    assert transport.counters["batches_sent"] == 1


async def test_unreachable_and_unresolved_stores_are_reported():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    dead = f"127.0.0.1:{listener.socket.getsockname()[1]}"
    await listener.aclose()
    reported: list[int] = []
    both = trio.Event()

    def on_unreachable(store_id: int) -> None:
        reported.append(store_id)
        if {3, 4} <= set(reported):
            both.set()

    async with RpcClient(ident("store", 1)) as client:
        transport = RaftTransport(client, {3: dead}.get, 1, on_unreachable=on_unreachable)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                transport.send([_env(1, to_store=3), _env(2, to_store=4)])
                await both.wait()
                nursery.cancel_scope.cancel()
    assert transport.counters["unreachable{reason=unresolved}"] == 1
    assert transport.counters["unreachable{reason=RpcUnavailableError}"] == 1


def test_queue_overflow_drops_and_counts():
    client = RpcClient(ident("store", 1))
    transport = RaftTransport(client, lambda s: None, 1, max_queue=2)
    transport.send([_env(i) for i in range(5)])  # not running: nothing drains the queue
    assert transport.queued(2) == 2
    assert transport.counters["dropped{reason=queue_full}"] == 3


async def test_an_open_connection_gets_batches_inline_and_in_order():
    """Once a destination's connection is open and nothing is pending for it, `send()`
    writes the batch at once (no sender task switch); order is kept throughout."""
    store2 = _Collector(41)
    async with serving(store2.server) as addr, RpcClient(ident("store", 1)) as client:
        transport = RaftTransport(client, {2: addr}.get, local_store_id=1)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                transport.send([_env(0)])  # opens the connection through the sender task
                await store2.first.wait()
                assert transport.counters["sent_inline"] == 0
                for i in range(1, 21):
                    transport.send([_env(i)])
                    await trio.sleep(0)
                    assert transport.queued(2) == 0  # written inline, nothing queued
                for i in range(21, 41):  # back to back in one turn: still one write each
                    transport.send([_env(i)])
                await store2.arrived.wait()
                nursery.cancel_scope.cancel()
    assert store2.indexes() == list(range(41))
    assert transport.counters["sent_inline"] == 40
