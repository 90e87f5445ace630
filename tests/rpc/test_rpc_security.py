"""Hostile or misconfigured peers are disconnected, logged and counted; others keep working.

A request whose body does not decode (unknown tag, unknown enum value, wrong field type) but
whose envelope does is answered with `invalid_argument/decode_error` and the connection goes on;
anything else that does not decode closes the connection."""

from __future__ import annotations

import logging

import pytest
import trio
from rpc_helpers import CLUSTER, Add, RawPeer, ident, serving

from nokvpy.rpc import HandshakeRefusedError, RpcClient, RpcServer
from nokvpy.wire import ErrorReply, Ping, Pong, Request, Response, frame
from nokvpy.wire.codec import pack_raw

SECRET = b"cluster-secret"


async def _still_serving(addr: str, secret: bytes | None = None) -> None:
    async with RpcClient(ident("client", 77, secret)) as client:
        assert await client.call(addr, Ping(b"ok"), 5) == Pong(b"ok", "store-1")


@pytest.fixture(autouse=True)
def _log_level(caplog):
    caplog.set_level(logging.INFO, logger="nokvpy.rpc")


async def test_garbage_bytes_disconnect(caplog):
    server = RpcServer(ident())
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            await raw.send_raw(frame(b"\xc1" * 16))  # 0xc1: never valid msgpack
            assert await raw.closed_by_server()
            await raw.aclose()
            await _still_serving(addr)
    assert server.counters["protocol_errors{reason=decode_error}"] == 1
    assert "decode_error" in caplog.text


async def test_oversized_frame_disconnects_before_reading_the_body(caplog):
    server = RpcServer(ident(), max_frame_size=4096)
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            await raw.send_raw((1 << 31).to_bytes(4, "big"))  # 2 GiB announced, never sent
            assert await raw.closed_by_server()
            await raw.aclose()
            await _still_serving(addr)
    assert server.counters["protocol_errors{reason=frame_too_large}"] == 1
    assert "exceeds the limit of 4096" in caplog.text


async def test_unknown_message_type_disconnects_or_is_answered(caplog):
    server = RpcServer(ident())
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)  # before the handshake
            await raw.send_raw(frame(pack_raw([9999, 1])))
            assert await raw.closed_by_server()
            await raw.aclose()

            raw = await RawPeer.connect(addr)  # after the handshake, inside a request body:
            assert (await raw.handshake(ident("client", 5))).ok  # answered, connection kept
            body = pack_raw([Request.__wire_tag__, 1, 1000, [9999]])
            await raw.send_raw(frame(body))
            reply = await raw.receive()
            assert isinstance(reply, ErrorReply) and reply.request_id == 1
            assert (reply.kind, reply.reason) == ("invalid_argument", "decode_error")
            assert "unknown wire tag 9999" in reply.message
            await raw.send(Request(2, 1000, Ping(b"after")))  # the same connection goes on
            assert await raw.receive() == Response(2, Pong(b"after", "store-1"))
            await raw.aclose()

            raw = await RawPeer.connect(addr)  # a known record a client must not send
            assert (await raw.handshake(ident("client", 5))).ok
            await raw.send(Response(1, None))
            assert await raw.closed_by_server()
            await raw.aclose()
            await _still_serving(addr)
    assert server.counters["protocol_errors{reason=decode_error}"] == 1
    assert server.counters["bad_requests{reason=decode_error}"] == 1
    assert server.counters["protocol_errors{reason=unexpected_message}"] == 1
    assert "unknown wire tag 9999" in caplog.text


async def test_wrong_cluster_id_is_refused(caplog):
    server = RpcServer(ident())
    async with serving(server) as addr:
        with trio.fail_after(10):
            async with RpcClient(ident("client", 5, cluster="other-cluster")) as client:
                with pytest.raises(HandshakeRefusedError) as exc:
                    await client.call(addr, Ping(), 5)
                assert exc.value.reason == "cluster_mismatch"
            await _still_serving(addr)
    assert server.counters["rejected_handshake{reason=cluster_mismatch}"] == 1
    assert "cluster_mismatch" in caplog.text and "other-cluster" in caplog.text


async def test_protocol_version_mismatch_is_refused():
    from nokvpy.wire import Handshake, HandshakeReply

    server = RpcServer(ident())
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            await raw.send(Handshake(CLUSTER, "client", 5, 999, b"n" * 32))
            reply = await raw.receive()
            assert isinstance(reply, HandshakeReply) and not reply.ok
            assert reply.reason == "version_mismatch"
            assert await raw.closed_by_server()
            await raw.aclose()
    assert server.counters["rejected_handshake{reason=version_mismatch}"] == 1


async def test_bad_hmac_is_refused(caplog):
    server = RpcServer(ident(secret=SECRET), policy=None)  # test-only request types
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            result = await raw.handshake(ident("client", 5, SECRET), hmac=b"\x00" * 32)
            assert not result.ok and result.reason == "bad_hmac"
            assert await raw.closed_by_server()
            await raw.aclose()
            await _still_serving(addr, SECRET)
    assert server.counters["rejected_handshake{reason=bad_hmac}"] == 1
    assert "bad_hmac" in caplog.text


async def test_wrong_or_missing_secret_is_refused_by_either_side():
    server = RpcServer(ident(secret=SECRET), policy=None)  # test-only request types
    async with serving(server) as addr:
        with trio.fail_after(10):
            async with RpcClient(ident("client", 5, b"wrong")) as client:
                with pytest.raises(HandshakeRefusedError) as exc:
                    await client.call(addr, Ping(), 5)
                assert exc.value.reason == "bad_hmac"  # the client caught the server's proof
            async with RpcClient(ident("client", 6)) as client:
                with pytest.raises(HandshakeRefusedError) as exc:
                    await client.call(addr, Ping(), 5)
                assert exc.value.reason == "secret_mismatch"
            await _still_serving(addr, SECRET)
    plain = RpcServer(ident())
    async with serving(plain) as addr:
        with trio.fail_after(10):
            async with RpcClient(ident("client", 7, SECRET)) as client:
                with pytest.raises(HandshakeRefusedError) as exc:
                    await client.call(addr, Ping(), 5)
                assert exc.value.reason == "missing_hmac"


async def test_matching_secrets_authenticate_both_ways():
    server = RpcServer(ident(secret=SECRET), policy=None)  # test-only request types
    server.register(Add, lambda req, ctx: _sum(req, ctx))
    async with serving(server) as addr:
        with trio.fail_after(10):
            async with RpcClient(ident("client", 8, SECRET)) as client:
                assert (await client.call(addr, Add(2, 3), 5)).total == 5


async def _sum(req: Add, ctx):
    from rpc_helpers import Sum

    assert ctx.peer.name == "client-8"
    return Sum(req.a + req.b)


async def test_silent_client_times_out_of_the_handshake():
    server = RpcServer(ident(), handshake_timeout=0.2)
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            assert await raw.closed_by_server()
            await raw.aclose()
    assert server.counters["rejected_handshake{reason=timeout}"] == 1


async def test_a_request_with_a_bad_field_is_answered_and_others_on_the_connection_go_on(caplog):
    """A field that fails validation (a str where bytes are required) inside a well-formed
    request: the caller gets a clear error for that request only; a one-way request with a
    bad body is dropped and counted (nobody to answer)."""
    server = RpcServer(ident())
    async with serving(server) as addr:
        with trio.fail_after(10):
            raw = await RawPeer.connect(addr)
            assert (await raw.handshake(ident("client", 5))).ok
            bad = pack_raw([Request.__wire_tag__, 7, 1000, [Ping.__wire_tag__, "not bytes"]])
            oneway = pack_raw([Request.__wire_tag__, 0, 0, [Ping.__wire_tag__, 12]])
            good = pack_raw([Request.__wire_tag__, 8, 1000, [Ping.__wire_tag__, b"fine"]])
            await raw.send_raw(b"".join(frame(b) for b in (bad, oneway, good)))
            first, second = await raw.receive(), await raw.receive()
            assert isinstance(first, ErrorReply) and first.request_id == 7
            assert first.reason == "decode_error" and "Ping" in first.message
            assert second == Response(8, Pong(b"fine", "store-1"))
            await raw.aclose()
    assert server.counters["bad_requests{reason=decode_error}"] == 2
    assert server.counters["protocol_errors{reason=decode_error}"] == 0
    assert "Ping does not decode" in caplog.text
