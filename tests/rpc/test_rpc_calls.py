"""Unary calls over real sockets: concurrency, errors, deadlines, reconnects."""

from __future__ import annotations

import pytest
import trio
from rpc_helpers import Add, Sum, ident, serving

from nokvpy.protocol import ErrorKind, RootToken
from nokvpy.rpc import (
    RemoteError,
    RpcClient,
    RpcServer,
    RpcTimeoutError,
    RpcUnavailableError,
)
from nokvpy.wire import Echo, Ping, Pong


async def test_one_thousand_concurrent_requests_share_one_connection():
    server = RpcServer(ident("store", 1))
    arrived = 0
    all_arrived = trio.Event()

    async def add(req: Add, ctx) -> Sum:
        nonlocal arrived
        arrived += 1
        if arrived == 1000:
            all_arrived.set()
        await all_arrived.wait()  # every handler is in flight at once
        return Sum(req.a + req.b)

    server.register(Add, add)
    results: dict[int, int] = {}
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:

        async def one(i: int) -> None:
            results[i] = (await client.call(addr, Add(i, 1), timeout=30)).total

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, i)
        assert results == {i: i + 1 for i in range(1000)}
        assert client.counters["connects"] == 1
        assert server.counters["connections_accepted"] == 1


async def test_builtin_ping_and_echo():
    server = RpcServer(ident("store", 3))
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            assert await client.call(addr, Ping(b"hi"), 5) == Pong(b"hi", "store-3")
            assert await client.call(addr, Echo(b"x"), 5) == Echo(b"x")
            assert client.peer_of(addr).name == "store-3"


async def test_remote_error_round_trip_with_details():
    server = RpcServer(ident())

    async def refuse(req: Add, ctx):
        raise RemoteError(ErrorKind.NOT_LEADER, "not_leader", "ask store 3",
                          {"leader_store_id": 3, "token": RootToken(4, 9), "hints": [1, "x"]})

    server.register(Add, refuse)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10), pytest.raises(RemoteError) as exc:
            await client.call(addr, Add(1, 2), 5)
    e = exc.value
    assert (e.kind, e.reason, e.message) == ("not_leader", "not_leader", "ask store 3")
    assert e.details == {"leader_store_id": 3, "token": RootToken(4, 9), "hints": [1, "x"]}
    assert server.counters["remote_errors{kind=not_leader}"] == 1


async def test_handler_crash_is_an_internal_error_and_the_server_keeps_serving(caplog):
    server = RpcServer(ident())

    async def crash(req: Add, ctx):
        raise KeyError("boom")

    server.register(Add, crash)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            with pytest.raises(RemoteError) as exc:
                await client.call(addr, Add(1, 2), 5)
            assert exc.value.kind == "internal" and "KeyError" in exc.value.message
            assert await client.call(addr, Ping(), 5) == Pong(b"", "store-1")
            with pytest.raises(RemoteError) as exc:
                await client.call(addr, Sum(1), 5)  # a record nobody handles
            assert exc.value.reason == "unhandled_request_type"
    assert "handler for Add" in caplog.text


async def test_expired_deadline_times_out_on_both_sides():
    server = RpcServer(ident())
    started, cancelled = trio.Event(), trio.Event()

    async def stuck(req: Add, ctx):
        started.set()
        assert ctx.remaining() <= 0.3
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server.register(Add, stuck)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            with pytest.raises(RpcTimeoutError) as exc:
                await client.call(addr, Add(1, 2), timeout=0.3)
            assert exc.value.sent and "outcome UNKNOWN" in str(exc.value)
            await cancelled.wait()
            assert started.is_set()
            while server.counters["deadline_exceeded"] != 1:  # counted right after the cancel
                await trio.sleep(0)
            assert server.counters["cancelled_by_client"] == 0


async def test_caller_cancellation_cancels_the_server_handler():
    server = RpcServer(ident())
    started, cancelled = trio.Event(), trio.Event()

    async def stuck(req: Add, ctx):
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server.register(Add, stuck)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call, addr, Add(1, 2), 60)
                await started.wait()
                nursery.cancel_scope.cancel()
            await cancelled.wait()
            while server.counters["cancelled_by_client"] != 1:
                await trio.sleep(0)


async def test_connect_refused_is_unavailable_and_not_sent():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    async with RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            with pytest.raises(RpcUnavailableError) as exc:
                await client.call(f"127.0.0.1:{port}", Ping(), 5)
            assert not exc.value.outcome_unknown
            with pytest.raises(RpcUnavailableError) as exc:  # fails fast during backoff
                await client.call(f"127.0.0.1:{port}", Ping(), 5)
            assert exc.value.retry_after is not None


async def test_reconnect_after_server_restart():
    client = RpcClient(ident("client", 9))
    try:
        with trio.fail_after(20):
            async with serving(RpcServer(ident("store", 1))) as addr:
                assert (await client.call(addr, Ping(), 5)).node_name == "store-1"
            port = int(addr.rsplit(":", 1)[1])
            with pytest.raises(RpcUnavailableError):
                await client.call(addr, Ping(), 5)
            async with serving(RpcServer(ident("store", 1)), port=port):
                while True:
                    try:
                        pong = await client.call(addr, Ping(), 5)
                        break
                    except RpcUnavailableError as e:  # still in reconnect backoff
                        await trio.sleep(e.retry_after or 0.01)
                assert pong.node_name == "store-1"
                assert client.counters["connects"] >= 2
    finally:
        await client.aclose()


async def test_connection_lost_mid_request_says_outcome_unknown():
    server = RpcServer(ident())
    started = trio.Event()

    async def stuck(req: Add, ctx):
        started.set()
        await trio.sleep_forever()

    server.register(Add, stuck)
    server_scope = trio.CancelScope()

    async def run_server(task_status=trio.TASK_STATUS_IGNORED):
        with server_scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)

    async def kill_server_once_started():
        await started.wait()
        server_scope.cancel()  # the server dies mid-request

    async with RpcClient(ident("client", 9)) as client:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(run_server)
                nursery.start_soon(kill_server_once_started)
                with pytest.raises(RpcUnavailableError) as exc:
                    await client.call(f"{host}:{port}", Add(1, 1), 30)
            assert exc.value.outcome_unknown and "UNKNOWN" in str(exc.value)


def test_free_ports_are_distinct():
    from nokvpy.rpc.ports import free_ports

    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(p > 0 for p in ports)


async def test_frames_written_directly_and_by_the_writer_keep_their_order():
    """On TCP, `enqueue` writes a frame itself when nothing is queued and the writer is idle;
    frames queued behind a busy writer still leave in order (many calls in flight at once)."""
    server = RpcServer(ident())
    seen: list[int] = []

    async def on_echo(req: Echo, ctx) -> Echo:
        seen.append(int(req.payload.rstrip(b"x")))
        return req

    server.register(Echo, on_echo, inline=True)
    async with serving(server) as addr, RpcClient(ident("client", 9)) as client:
        with trio.fail_after(20):
            for i in range(50):  # one at a time: every request and reply written directly
                assert await client.call(addr, Echo(b"%d" % i), 5) == Echo(b"%d" % i)
            async with trio.open_nursery() as nursery:  # bursts: writer busy, frames queue
                for i in range(50, 450):
                    nursery.start_soon(client.call, addr, Echo(b"%d" % i + b"x" * 4000), 5)
    assert seen[:50] == list(range(50))
    assert sorted(seen) == list(range(450))
