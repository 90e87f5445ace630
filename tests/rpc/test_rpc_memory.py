"""The in-memory network: the same server and client, under MockClock (no wall time)."""

from __future__ import annotations

import pytest
import trio
from rpc_helpers import Add, Count, Sum, ident

from nokvpy.rpc import (
    FaultRules,
    MemoryNetwork,
    RaftTransport,
    RpcClient,
    RpcServer,
    RpcTimeoutError,
    RpcUnavailableError,
)
from nokvpy.wire import Ping, RaftBatch


async def test_memory_network_under_mock_clock(autojump_clock):
    net = MemoryNetwork()
    faults = FaultRules(seed=3)
    server = RpcServer(ident("store", 1, b"s"), network=net, faults=faults, policy=None)

    async def slow_add(req: Add, ctx) -> Sum:
        await trio.sleep(10)  # ten virtual seconds
        return Sum(req.a + req.b)

    async def count(req: Count, ctx):
        for i in range(req.n):
            await trio.sleep(1)
            yield Sum(i)

    server.register(Add, slow_add)
    server.register_stream(Count, count)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "node-1", 0)
        addr = f"{host}:{port}"
        async with RpcClient(ident("client", 9, b"s"), network=net) as client:
            start = trio.current_time()
            assert (await client.call(addr, Add(1, 2), timeout=30)).total == 3
            assert trio.current_time() - start == pytest.approx(10, abs=0.01)
            with pytest.raises(RpcTimeoutError):
                await client.call(addr, Add(1, 2), timeout=5)
            async with client.stream(addr, Count(3)) as items:
                assert [s.total async for s in items] == [0, 1, 2]
            faults.partition({"client-9"}, {"store-1"})
            with pytest.raises(RpcTimeoutError):
                await client.call(addr, Ping(), timeout=60)
            faults.heal()
            assert (await client.call(addr, Ping(), timeout=1)).node_name == "store-1"
            with pytest.raises(RpcUnavailableError):
                await client.call("node-2:1", Ping(), timeout=1)
        nursery.cancel_scope.cancel()


async def test_raft_transport_over_memory(autojump_clock):
    net = MemoryNetwork()
    server = RpcServer(ident("store", 2), network=net)
    got: list[RaftBatch] = []
    done = trio.Event()

    async def on_batch(batch: RaftBatch, ctx) -> None:
        got.append(batch)
        done.set()

    server.register(RaftBatch, on_batch, inline=True)
    from test_rpc_raft_transport import _env

    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "store2", 0)
        client = RpcClient(ident("store", 1), network=net, nursery=nursery)
        transport = RaftTransport(client, {2: f"{host}:{port}"}.get, 1)
        await nursery.start(transport.run)
        transport.send([_env(i) for i in range(10)])
        await done.wait()
        assert len(got) == 1 and len(got[0].envelopes) == 10
        await client.aclose()
        nursery.cancel_scope.cancel()
