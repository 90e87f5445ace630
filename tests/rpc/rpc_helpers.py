"""Shared helpers of the rpc tests: services under test and a raw protocol speaker."""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from nokvpy.protocol.base import wire_type
from nokvpy.rpc import Identity, RpcServer
from nokvpy.rpc.handshake import PROTOCOL_VERSION, proof
from nokvpy.wire import (
    DecodeError,
    FrameDecoder,
    Handshake,
    HandshakeProof,
    HandshakeReply,
    HandshakeResult,
    decode,
    encode,
    frame,
)

CLUSTER = "test-cluster"


@wire_type(64900)  # test-only tags live far above the production ranges
@dataclass(slots=True, frozen=True)
class Add:
    a: int
    b: int


@wire_type(64901)
@dataclass(slots=True, frozen=True)
class Sum:
    total: int


@wire_type(64902)
@dataclass(slots=True, frozen=True)
class Count:
    n: int  # stream n items; -1 = forever


def ident(kind: str = "store", node_id: int = 1, secret: bytes | None = None,
          cluster: str = CLUSTER) -> Identity:
    return Identity(cluster, kind, node_id, secret)


@asynccontextmanager
async def serving(server: RpcServer, port: int = 0):
    """Run `server` on 127.0.0.1; yield "host:port"; stop it on exit."""
    async with trio.open_nursery() as nursery:
        host, bound = await nursery.start(server.serve, "127.0.0.1", port)
        try:
            yield f"{host}:{bound}"
        finally:
            nursery.cancel_scope.cancel()


class RawPeer:
    """Speaks the wire protocol by hand, to send what a well-behaved client never would."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[bytes] = []

    @classmethod
    async def connect(cls, addr: str) -> RawPeer:
        host, port = addr.rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, record: object) -> None:
        await self.stream.send_all(frame(encode(record)))

    async def receive(self) -> object:
        while not self.frames:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.frames += self.decoder.feed(data)
        return decode(self.frames.pop(0))

    async def handshake(self, me: Identity, *, hmac: bytes | None = None) -> HandshakeResult:
        nonce = secrets.token_bytes(32)
        await self.send(Handshake(me.cluster_id, me.node_kind, me.node_id, PROTOCOL_VERSION,
                                  nonce))
        reply = await self.receive()
        assert isinstance(reply, HandshakeReply) and reply.ok, reply
        if hmac is None:
            key = me.own_key()
            hmac = proof(key, "client", reply.nonce, me.cluster_id, me.name) if key else b""
        await self.send(HandshakeProof(hmac))
        result = await self.receive()
        assert isinstance(result, HandshakeResult)
        return result

    async def closed_by_server(self) -> bool:
        """Drain until EOF; True when the server closed the connection."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return True
                self.frames += self.decoder.feed(data)
        except (trio.BrokenResourceError, DecodeError):
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()
