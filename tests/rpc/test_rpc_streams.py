"""Server streaming: items in order, end, errors, deadline, cancellation by the caller."""

from __future__ import annotations

import pytest
import trio
from rpc_helpers import Count, Sum, ident, serving

from nokvpy.protocol import ErrorKind
from nokvpy.rpc import RemoteError, RpcClient, RpcServer, RpcTimeoutError, RpcUnavailableError


def _stream_server(cancelled: trio.Event | None = None) -> RpcServer:
    server = RpcServer(ident())

    async def count(req: Count, ctx):
        try:
            i = 0
            while req.n < 0 or i < req.n:
                yield Sum(i)
                i += 1
                await trio.sleep(0)
            if req.n == 3:
                raise RemoteError(ErrorKind.CONFLICT, "halfway", "stopped on purpose", {"at": i})
        finally:
            if cancelled is not None:
                cancelled.set()

    server.register_stream(Count, count)
    return server


async def test_stream_delivers_every_item_then_ends():
    async with serving(_stream_server()) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            async with client.stream(addr, Count(500)) as items:
                got = [item.total async for item in items]
    assert got == list(range(500))


async def test_stream_error_after_items():
    async with serving(_stream_server()) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            got = []
            with pytest.raises(RemoteError) as exc:
                async with client.stream(addr, Count(3)) as items:
                    async for item in items:
                        got.append(item.total)
    assert got == [0, 1, 2]
    assert exc.value.reason == "halfway" and exc.value.details == {"at": 3}


async def test_leaving_the_stream_early_cancels_the_server_generator():
    cancelled = trio.Event()
    server = _stream_server(cancelled)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            async with client.stream(addr, Count(-1)) as items:
                async for item in items:
                    if item.total == 10:
                        break
            await cancelled.wait()
            while server.counters["cancelled_by_client"] != 1:
                await trio.sleep(0)
            with pytest.raises(RpcUnavailableError, match="use client.stream"):
                await client.call(addr, Count(2), 5)


async def test_stream_deadline():
    server = RpcServer(ident())

    async def slow(req: Count, ctx):
        yield Sum(1)
        await trio.sleep_forever()

    server.register_stream(Count, slow)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            got = []
            with pytest.raises(RpcTimeoutError):
                async with client.stream(addr, Count(1), timeout=0.3) as items:
                    async for item in items:
                        got.append(item)
            assert got == [Sum(1)]
