"""The server's connection limits (issue 16, item 3), on the in-memory network under
MockClock(autojump_threshold=0): no wall time passes for the deadlines.

Before authentication: a small maximum frame, a handshake deadline, a cap on connections in
their handshake. After it: a cap on connections, an idle timeout that spares connections with
a running request or stream, a per-connection in-flight limit answered with a typed error.
"""

from __future__ import annotations

import logging

import pytest
import trio
from rpc_helpers import Add, Count, RawPeer, Sum, ident

from nokvpy.rpc import HandshakeRefusedError, MemoryNetwork, RemoteError, RpcClient, RpcServer
from nokvpy.rpc.server import PREAUTH_MAX_FRAME_SIZE
from nokvpy.wire import (
    FRAME_HEADER_SIZE,
    Echo,
    Handshake,
    HandshakeReply,
    Ping,
    Pong,
    Request,
    Response,
    frame,
)

SECRET = b"limits-secret"


class Served:
    """A server on a MemoryNetwork; `addr`, and raw or authenticated peers to it."""

    def __init__(self, server: RpcServer, net: MemoryNetwork, addr: str) -> None:
        self.server = server
        self.net = net
        self.addr = addr

    async def raw(self) -> RawPeer:
        host, port = self.addr.rsplit(":", 1)
        return RawPeer(await self.net.connect(host, int(port)))

    def client(self, node_id: int = 9, **kw) -> RpcClient:
        return RpcClient(ident("client", node_id, SECRET), network=self.net, **kw)

    def connections(self) -> dict[str, int]:
        return self.server.status()["connections"]


async def serve(nursery: trio.Nursery, **limits) -> Served:
    net = MemoryNetwork()
    server = RpcServer(ident("store", 1, SECRET), network=net, policy=None, **limits)
    host, port = await nursery.start(server.serve, "node-1", 0)
    return Served(server, net, f"{host}:{port}")


async def test_handshake_deadline_closes_silent_and_slow_peers(autojump_clock):
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, handshake_timeout=5.0)
        start = trio.current_time()
        silent = await s.raw()  # sends nothing
        assert await silent.closed_by_server()
        assert trio.current_time() - start == pytest.approx(5.0)

        start = trio.current_time()
        slow = await s.raw()  # sends its Handshake, never its proof
        await slow.send(Handshake("test-cluster", "client", 5, 1, b"n" * 32))
        assert isinstance(await slow.receive(), HandshakeReply)
        assert await slow.closed_by_server()
        assert trio.current_time() - start == pytest.approx(5.0)

        assert s.server.counters["handshake_timeouts"] == 2
        assert s.server.counters["rejected_handshake{reason=timeout}"] == 2
        assert s.connections() == {"unauthenticated": 0, "authenticated": 0}
        async with s.client() as client:  # others are served as usual
            assert await client.call(s.addr, Ping(b"x"), 1) == Pong(b"x", "store-1")
        nursery.cancel_scope.cancel()


async def test_frames_are_small_until_the_peer_authenticates(autojump_clock):
    async with trio.open_nursery() as nursery:
        s = await serve(nursery)
        start = trio.current_time()
        raw = await s.raw()
        await raw.send_raw((PREAUTH_MAX_FRAME_SIZE + 1).to_bytes(4, "big") + b"\0" * 1000)
        assert await raw.closed_by_server()
        assert trio.current_time() - start < 0.01  # at once, not at the handshake deadline
        assert s.server.counters["frame_too_large{phase=handshake}"] == 1
        assert s.server.counters["protocol_errors{reason=frame_too_large}"] == 1

        raw = await s.raw()  # the same size is fine once authenticated
        assert (await raw.handshake(ident("client", 5, SECRET))).ok
        big = b"b" * (256 * 1024)
        await raw.send(Request(1, 1000, Echo(big)))
        assert await raw.receive() == Response(1, Echo(big))
        await raw.aclose()
        nursery.cancel_scope.cancel()


async def test_a_connection_beyond_the_unauthenticated_cap_evicts_the_oldest(autojump_clock):
    """Silent connections cannot lock others out: at the cap, the newest connection evicts
    the oldest one still in its handshake, and a real client still gets through."""
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, max_unauthenticated=3, handshake_timeout=5.0)
        start = trio.current_time()
        holders = [await s.raw() for _ in range(3)]
        await trio.sleep(0.1)
        assert s.connections()["unauthenticated"] == 3
        extra = await s.raw()
        assert await holders[0].closed_by_server()
        assert trio.current_time() - start < 1.0  # evicted at once, not at the deadline
        assert s.server.counters["preauth_evicted"] == 1
        assert s.connections()["unauthenticated"] == 3
        async with s.client() as client:  # evicts the next oldest and completes
            assert await client.call(s.addr, Ping(b"x"), 1) == Pong(b"x", "store-1")
        assert s.server.counters["preauth_evicted"] == 2
        for raw in holders[2:] + [extra]:  # the deadline frees the rest
            assert await raw.closed_by_server()
        assert s.connections()["unauthenticated"] == 0
        await trio.sleep(1)
        nursery.cancel_scope.cancel()


async def test_authenticated_connection_cap_refuses_in_the_handshake(autojump_clock):
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, max_connections=2)
        first, second, third = s.client(1), s.client(2), s.client(3)
        assert await first.call(s.addr, Ping(), 1) == Pong(b"", "store-1")
        assert await second.call(s.addr, Ping(), 1) == Pong(b"", "store-1")
        with pytest.raises(HandshakeRefusedError) as err:
            await third.call(s.addr, Ping(), 1)
        assert err.value.reason == "too_many_connections"
        assert s.server.counters["too_many_connections"] == 1
        assert s.server.counters["rejected_handshake{reason=too_many_connections}"] == 1
        assert s.connections() == {"unauthenticated": 0, "authenticated": 2}
        await first.aclose()
        await trio.sleep(1)
        assert s.connections()["authenticated"] == 1
        await trio.sleep(third.backoff_max)  # past the refused client's reconnect backoff
        assert await third.call(s.addr, Ping(), 1) == Pong(b"", "store-1")
        await second.aclose()
        await third.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_the_idle_timeout(autojump_clock):
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, idle_timeout=300.0)
        async with s.client() as client:
            for _ in range(5):  # traffic every 200 s keeps it open
                assert await client.call(s.addr, Ping(), 1) == Pong(b"", "store-1")
                await trio.sleep(200)
            assert s.server.counters["idle_closed"] == 0
            assert client.counters["connects"] == 1
            start = trio.current_time()
            await trio.sleep(99.9)  # 299.9 s since the last request
            assert s.connections()["authenticated"] == 1
            await trio.sleep(0.2)
            assert s.connections()["authenticated"] == 0
            assert s.server.counters["idle_closed"] == 1
            assert trio.current_time() - start < 101
            # the client reconnects on its next call
            assert await client.call(s.addr, Ping(), 1) == Pong(b"", "store-1")
            assert client.counters["connects"] == 2
        nursery.cancel_scope.cancel()


async def test_a_frame_trickled_in_slower_than_the_idle_timeout_is_cut(autojump_clock):
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, idle_timeout=300.0)
        raw = await s.raw()
        assert (await raw.handshake(ident("client", 5, SECRET))).ok
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):  # the server closes its end
            await raw.send_raw(frame(b"x" * 1024)[:FRAME_HEADER_SIZE])  # a header: 1024 B
            for _ in range(1024):  # one byte every 10 s: the frame would take 10240 s
                await raw.send_raw(b"x")
                await trio.sleep(10)
        assert trio.current_time() - start == pytest.approx(300, abs=11)
        assert s.server.counters["idle_closed"] == 1
        assert s.connections()["authenticated"] == 0
        nursery.cancel_scope.cancel()


def test_status_reports_limits_connections_and_counters():
    server = RpcServer(ident(), max_connections=7, idle_timeout=60.0)
    status = server.status()
    assert status["limits"] == {
        "preauth_max_frame_size": PREAUTH_MAX_FRAME_SIZE, "handshake_timeout": 5.0,
        "max_unauthenticated": 64, "max_frame_size": 64 * 1024 * 1024, "max_connections": 7,
        "max_in_flight_per_connection": 10_000, "idle_timeout": 60.0}
    assert status["connections"] == {"unauthenticated": 0, "authenticated": 0}
    assert status["counters"] == {}


async def test_a_quiet_stream_or_a_long_request_is_not_idle(autojump_clock):
    """A watch that delivers nothing for an hour, or a request running for an hour, keeps its
    connection; the idle period starts when the last of them ends."""
    release = trio.Event()

    async def quiet_watch(req: Count, ctx):
        await release.wait()
        yield Sum(1)

    async def slow_add(req: Add, ctx) -> Sum:
        await trio.sleep(3600)
        return Sum(req.a + req.b)

    async with trio.open_nursery() as nursery:
        s = await serve(nursery, idle_timeout=300.0)
        s.server.register_stream(Count, quiet_watch)
        s.server.register(Add, slow_add)
        async with s.client() as client:
            assert (await client.call(s.addr, Add(1, 2), 4000)).total == 3
            assert s.server.counters["idle_closed"] == 0
            async with client.stream(s.addr, Count(1)) as items:
                await trio.sleep(3600)
                assert s.connections()["authenticated"] == 1
                release.set()
                assert [i.total async for i in items] == [1]
            ended = trio.current_time()
            assert s.server.counters["idle_closed"] == 0
            await trio.sleep(299)
            assert s.connections()["authenticated"] == 1
            await trio.sleep(2)
            assert s.server.counters["idle_closed"] == 1
            assert trio.current_time() - ended < 302
            assert client.counters["connects"] == 1
        nursery.cancel_scope.cancel()


async def test_requests_beyond_the_in_flight_limit_get_a_typed_error(autojump_clock):
    gate = trio.Event()

    async def held_add(req: Add, ctx) -> Sum:
        await gate.wait()
        return Sum(req.a + req.b)

    async with trio.open_nursery() as nursery:
        s = await serve(nursery, max_in_flight_per_connection=2)
        s.server.register(Add, held_add)
        async with s.client() as client:
            results: list[object] = []

            async def call(n: int) -> None:
                try:
                    results.append((await client.call(s.addr, Add(n, 0), 10)).total)
                except RemoteError as e:
                    results.append((e.kind, e.reason, e.details))

            async with trio.open_nursery() as calls:
                for n in range(3):
                    calls.start_soon(call, n)
                    await trio.sleep(0.01)
                await trio.sleep(1)
                gate.set()
            assert sorted(map(str, results)) == sorted(
                ["0", "1", str(("unavailable", "too_many_in_flight", {"retry": True}))])
            assert s.server.counters["rejected_requests{reason=too_many_in_flight}"] == 1
            assert (await client.call(s.addr, Add(5, 5), 1)).total == 10  # the connection lives
        nursery.cancel_scope.cancel()


async def test_refusal_logs_are_throttled_but_every_refusal_is_counted(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="nokvpy.rpc")
    async with trio.open_nursery() as nursery:
        s = await serve(nursery, log_interval=10.0)
        for _ in range(40):
            raw = await s.raw()
            await raw.send_raw((1 << 31).to_bytes(4, "big"))
            assert await raw.closed_by_server()
        lines = [r.getMessage() for r in caplog.records if "frame_too_large" in r.getMessage()]
        assert len(lines) == 1
        assert s.server.counters["frame_too_large{phase=handshake}"] == 40
        await trio.sleep(10)
        raw = await s.raw()
        await raw.send_raw((1 << 31).to_bytes(4, "big"))
        assert await raw.closed_by_server()
        lines = [r.getMessage() for r in caplog.records if "frame_too_large" in r.getMessage()]
        assert len(lines) == 2 and "39 similar lines suppressed" in lines[1]
        nursery.cancel_scope.cancel()
