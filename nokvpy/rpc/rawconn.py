"""Raw connections to an RPC server: for fault injection and tests only.

Owns: `RawConnection`, a byte stream to one server (TLS when the cluster is configured for it,
as `RpcClient`) that writes whatever bytes it is given (garbage, a frame header declaring a
huge length, a truncated frame, a captured handshake replayed), runs the connecting side of
the handshake *as an attacker would* (it sends its proof without checking the server's, so a
wrong role claim reaches the server's check), keeps a copy of every byte it wrote (`sent`),
and reads what the server answers record by record until it closes the connection.

jepsen-lite's `hostile` nemesis uses it (only nokvpy/rpc opens sockets: tests/test_layering.py).
Never used by a process or by a client library: `RpcClient` is the way to talk to a server.
"""

from __future__ import annotations

import secrets

import trio

from nokvpy.rpc.framed import ConnectionClosedError, FramedStream
from nokvpy.rpc.handshake import NONCE_SIZE, PROTOCOL_VERSION, proof
from nokvpy.rpc.identity import Identity, parse_addr
from nokvpy.rpc.network import TCP, secure, with_tls
from nokvpy.rpc.tls import resolve
from nokvpy.wire import (
    DEFAULT_MAX_FRAME_SIZE,
    DecodeError,
    Handshake,
    HandshakeProof,
    HandshakeReply,
    HandshakeResult,
    encode,
    frame,
)


class _Recording(trio.abc.Stream):
    """A stream that keeps a copy of every chunk written to it (no `socket` attribute, so a
    FramedStream over it never writes around it)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        self.sent.append(chunk)
        await self.inner.send_all(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        send_eof = getattr(self.inner, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class HandshakeOutcome:
    """What the server said to a handshake: `ok` (admitted), `reason` of a refusal, and the
    records it sent (`HandshakeReply`, then `HandshakeResult` when it got that far)."""

    __slots__ = ("ok", "reason", "records")

    def __init__(self, ok: bool, reason: str, records: list[object]) -> None:
        self.ok = ok
        self.reason = reason
        self.records = records

    def __repr__(self) -> str:
        return f"HandshakeOutcome(ok={self.ok}, reason={self.reason!r})"


class RawConnection:
    """`conn = await RawConnection.open("127.0.0.1:20160", cluster_id="c1")`; then `send`,
    `send_record`, `handshake`, `receive`, `read_until_closed`; `aclose` at the end."""

    def __init__(self, stream: trio.abc.Stream, address: str,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.address = address
        self._stream = _Recording(stream)
        self.framed = FramedStream(self._stream, max_frame_size=max_frame_size)

    @classmethod
    async def open(cls, address: str, *, cluster_id: str = "", tls: object = None,
                   timeout: float = 5.0) -> RawConnection:
        """Connect (and run the TLS handshake when `tls`, or the process default of
        `cluster_id`, says so). OSError / trio.TooSlowError / TlsHandshakeError on failure."""
        host, port = parse_addr(address)
        network = with_tls(TCP, resolve(tls, cluster_id))
        with trio.fail_after(timeout):
            stream = await network.connect(host, port)
            try:
                await secure(stream)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return cls(stream, address)

    @property
    def sent(self) -> list[bytes]:
        """Every chunk written so far, in order (a handshake's frames one per chunk)."""
        return self._stream.sent

    async def send(self, data: bytes) -> None:
        """Write `data` as it is. ConnectionClosedError when the server already closed."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ConnectionClosedError(str(e) or type(e).__name__) from None

    async def send_record(self, record: object) -> None:
        await self.send(frame(encode(record)))

    async def receive(self, timeout: float) -> object:
        """The next record the server sends. ConnectionClosedError when it closes first,
        trio.TooSlowError when nothing comes within `timeout`, DecodeError for garbage."""
        with trio.fail_after(timeout):
            return await self.framed.receive_one()

    async def read_until_closed(self, timeout: float) -> tuple[list[object], bool]:
        """Every record the server sends until it closes the connection or `timeout` passes:
        `(records, closed)`; `closed` is False when the connection was still open."""
        records: list[object] = []
        with trio.move_on_after(timeout):
            while True:
                try:
                    records.append(await self.framed.receive_one())
                except (ConnectionClosedError, DecodeError):
                    return records, True
        return records, False

    async def handshake(self, identity: Identity, *, timeout: float = 5.0,
                        nonce: bytes | None = None) -> HandshakeOutcome:
        """Claim `identity.node_kind` / `node_id` and prove `identity.own_key()` over the
        server's nonce, without checking the server's proof (a forged claim must be judged
        by the server, not given up by the client). Never raises for a refusal."""
        records: list[object] = []
        try:
            with trio.fail_after(timeout):
                await self.send_record(Handshake(
                    identity.cluster_id, identity.node_kind, identity.node_id, PROTOCOL_VERSION,
                    nonce if nonce is not None else secrets.token_bytes(NONCE_SIZE)))
                reply = await self.framed.receive_one()
                records.append(reply)
                if type(reply) is not HandshakeReply:
                    return HandshakeOutcome(False, f"unexpected {type(reply).__name__}", records)
                if not reply.ok:
                    return HandshakeOutcome(False, reply.reason or "refused", records)
                key = identity.own_key()
                mine = proof(key, "client", reply.nonce, identity.cluster_id, identity.name) \
                    if key else b""
                await self.send_record(HandshakeProof(mine))
                result = await self.framed.receive_one()
                records.append(result)
                if type(result) is not HandshakeResult:
                    return HandshakeOutcome(False, f"unexpected {type(result).__name__}", records)
                return HandshakeOutcome(bool(result.ok), result.reason, records)
        except trio.TooSlowError:
            return HandshakeOutcome(False, "no answer (timeout)", records)
        except ConnectionClosedError:
            return HandshakeOutcome(False, "closed by the server", records)
        except DecodeError as e:
            return HandshakeOutcome(False, f"undecodable answer: {e}", records)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)


__all__ = ["HandshakeOutcome", "RawConnection"]
