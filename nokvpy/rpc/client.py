"""The RPC client: one multiplexed connection per address, calls, streams, one-way sends.

Owns: connecting (with a handshake) and reconnecting (fail fast during a jittered exponential
backoff after a failed connect), request ids, deadlines carried in every request, matching
replies to callers (by request id, into the call and stream slots of `nokvpy.rpc.calls`),
consulting the fault rules (`nokvpy.rpc.faults`) only while the process holds some (what is
then done with their verdicts on the requests and cancels it sends and the replies it
receives is `nokvpy.rpc.clientfaults`), and turning every failure into a typed error
(`RpcTimeoutError`, `RpcUnavailableError`, `HandshakeRefusedError`, `RemoteError`) that says
whether the request's outcome is unknown. Never retries a request: retry policy belongs to
the caller, who knows whether the request is idempotent.

With TLS (`tls=`, default `nokvpy.rpc.tls.configured(cluster id)`), a connection runs the TLS
handshake (presenting this side's certificate, verifying the server's against the cluster CA)
and then the cluster-secret handshake, both within `handshake_timeout`; a failed TLS
handshake is a `HandshakeRefusedError` with reason `tls_handshake_failed`.

Each connection is driven by one background task (reader) plus a writer task; they run in
the `nursery` given to the constructor, or as trio system tasks when none is given, so a
client can be created anywhere inside `trio.run`. Call `aclose()` (or use `async with`).
A frame that fails its checksum (`FrameChecksumError`) closes its connection: it is counted
(`frame_checksum_errors`), logged rate-limited, and the calls pending on it fail with their
outcome unknown.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nokvpy.rpc import clientfaults
from nokvpy.rpc.calls import RpcStream, StreamCall, UnaryCall, is_deadline_reply
from nokvpy.rpc.errors import (
    HandshakeRefusedError,
    RemoteError,
    RpcTimeoutError,
    RpcUnavailableError,
)
from nokvpy.rpc.faults import FaultRules
from nokvpy.rpc.framed import ConnectionClosedError, FramedStream, sole_error
from nokvpy.rpc.handshake import client_handshake
from nokvpy.rpc.identity import Counters, Identity, PeerIdentity, parse_addr
from nokvpy.rpc.logthrottle import LogThrottle
from nokvpy.rpc.network import TCP, Network, secure, with_tls
from nokvpy.rpc.tls import TlsConfig, TlsHandshakeError, resolve
from nokvpy.wire import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_FRAME_SIZE,
    Cancel,
    DecodeError,
    DecodeLimits,
    ErrorReply,
    FrameChecksumError,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    encode,
    frame,
)

logger = logging.getLogger("nokvpy.rpc")

_CONNECTING, _READY, _CLOSED = 0, 1, 2


def _remote_error(msg: ErrorReply) -> RemoteError:
    return RemoteError(msg.kind, msg.reason, msg.message, msg.details)


class _Conn:
    __slots__ = ("addr", "host", "port", "state", "ready", "finished", "error", "framed",
                 "peer", "pending", "next_id", "scope")

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.host, self.port = parse_addr(addr)
        self.state = _CONNECTING
        self.ready = trio.Event()  # set when READY or when the connect attempt failed
        self.finished = trio.Event()
        self.error: RpcUnavailableError | None = None
        self.framed: FramedStream | None = None
        self.peer: PeerIdentity | None = None
        self.pending: dict[int, UnaryCall | StreamCall] = {}
        self.next_id = 0
        self.scope = trio.CancelScope()


class _Backoff:
    __slots__ = ("failures", "until", "error")

    def __init__(self) -> None:
        self.failures = 0
        self.until = -math.inf
        self.error: RpcUnavailableError | None = None


class _ProtocolViolationError(Exception):
    pass


class RpcClient:
    """Calls services over one multiplexed connection per address. See module docstring."""

    def __init__(
        self,
        identity: Identity,
        *,
        network: Network | None = None,
        faults: FaultRules | None = None,
        nursery: trio.Nursery | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        limits: DecodeLimits = DEFAULT_LIMITS,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        max_stream_buffer: int = 4096,
        seed: int | None = None,
        tls: TlsConfig | Any = None,
    ) -> None:
        self.identity = identity
        # TLS of every connection: a TlsConfig (or a mapping of cert/key/ca paths); None:
        # the process default for this cluster (nokvpy.rpc.tls.configure); False: none
        self.tls: TlsConfig | None = resolve(tls, identity.cluster_id)
        self.network: Network = with_tls(network if network is not None else TCP, self.tls)
        if self.tls is not None:
            self.tls.check()  # TlsConfigError now, not at the first connection
        self.faults = faults if faults is not None else FaultRules()
        self.max_frame_size = max_frame_size
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_stream_buffer = max_stream_buffer
        self.counters = Counters()
        self._log = LogThrottle(logger)
        self._nursery = nursery
        self._rng = random.Random(seed)
        self._conns: dict[str, _Conn] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._closed = False

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- public API ---------------------------------------------------------------------

    async def call(self, addr: str, request: object, timeout: float) -> Any:
        """Send `request` to the server at "host:port" and return its response record.

        Raises RpcTimeoutError (deadline passed; `sent` tells whether the outcome is
        unknown), RpcUnavailableError (connect failed, or connection lost: then
        `outcome_unknown`), HandshakeRefusedError, RemoteError (the server's error reply).
        """
        deadline = trio.current_time() + timeout
        slot = UnaryCall(type(request))
        sent = False
        with trio.CancelScope(deadline=deadline) as scope:
            conn = await self._connection(addr)
            verdict = None
            if self.faults.rules:
                verdict = await clientfaults.outbound(self, conn, request, one_way=False)
                if verdict.drop:
                    sent = True
                    await trio.sleep_forever()  # dropped: looks like packet loss to the caller
            conn.next_id += 1
            rid = conn.next_id
            ms = int((deadline - trio.current_time()) * 1000.0)
            data = frame(encode(Request(rid, ms if ms > 0 else 1, request)))
            framed = conn.framed
            assert framed is not None
            conn.pending[rid] = slot
            try:
                if verdict is None:
                    framed.enqueue(data)
                else:
                    clientfaults.send(self, conn, data, verdict)
                sent = True
                await slot.event.wait()
            except ConnectionClosedError:
                raise RpcUnavailableError(addr, "connection closed") from None
            finally:
                if not slot.done:
                    conn.pending.pop(rid, None)
                    if sent and trio.current_time() < deadline:  # caller gave up early
                        self._send_cancel(conn, rid)
        if scope.cancelled_caught and not slot.done:
            self.counters.inc("timeouts")
            raise RpcTimeoutError(addr, type(request).__name__, timeout, sent=sent)
        if slot.error is not None:
            if is_deadline_reply(slot.error):
                raise RpcTimeoutError(addr, type(request).__name__, timeout, sent=True)
            raise slot.error
        return slot.result

    def try_notify_now(self, addr: str, request: object) -> bool:
        """The synchronous fast path of `notify`: queue `request` on an open connection at
        once, without a task switch. Returns False (nothing sent) when that is not possible
        right now: no open connection, fault rules installed (they may delay or drop), or
        the send buffer above its high-water mark; then use `notify`. Raises EncodeError."""
        if self.faults.rules:
            return False
        conn = self._conns.get(addr)
        if conn is None or conn.state != _READY:
            return False
        framed = conn.framed
        if framed is None or framed.closed or framed.over_high_water():
            return False
        framed.enqueue(frame(encode(Request(0, 0, request))))
        return True

    async def notify(self, addr: str, request: object, timeout: float = 5.0) -> None:
        """One-way send: returns once queued on the connection; no reply, no outcome.

        Waits (within `timeout`) for the connection and for room in its send buffer.
        """
        with trio.move_on_after(timeout):
            conn = await self._connection(addr)
            verdict = None
            if self.faults.rules:
                verdict = await clientfaults.outbound(self, conn, request, one_way=True)
                if verdict.drop:
                    return
            framed = conn.framed
            assert framed is not None
            await framed.wait_writable()
            try:
                data = frame(encode(Request(0, 0, request)))
                if verdict is None:
                    framed.enqueue(data)
                else:
                    clientfaults.send(self, conn, data, verdict)
            except ConnectionClosedError:
                raise RpcUnavailableError(addr, "connection closed") from None
            return
        raise RpcTimeoutError(addr, type(request).__name__, timeout, sent=False)

    @asynccontextmanager
    async def stream(
        self, addr: str, request: object, timeout: float | None = None
    ) -> AsyncIterator[RpcStream]:
        """Open a server stream: `async with client.stream(addr, Watch(...)) as items:
        async for item in items: ...`. Leaving the block early cancels the stream on the
        server. `timeout` bounds the whole stream (None: no deadline)."""
        now = trio.current_time()
        deadline = math.inf if timeout is None else now + timeout
        what = type(request).__name__
        with trio.move_on_at(deadline) as scope:
            conn = await self._connection(addr)
        if scope.cancelled_caught:
            raise RpcTimeoutError(addr, what, timeout, sent=False)
        slot = StreamCall(self.max_stream_buffer, type(request))
        conn.next_id += 1
        rid = conn.next_id
        verdict = None
        if self.faults.rules:
            verdict = await clientfaults.outbound(self, conn, request, one_way=False)
        dropped = verdict is not None and verdict.drop
        if not dropped:
            ms = 0 if timeout is None else max(1, int((deadline - trio.current_time()) * 1000))
            data = frame(encode(Request(rid, ms, request)))
            conn.pending[rid] = slot
            assert conn.framed is not None
            try:
                if verdict is None:
                    conn.framed.enqueue(data)
                else:
                    clientfaults.send(self, conn, data, verdict)
            except ConnectionClosedError:
                conn.pending.pop(rid, None)
                raise RpcUnavailableError(addr, "connection closed") from None
        try:
            yield RpcStream(slot, addr, what, deadline, timeout)
        finally:
            if not slot.done and not dropped:
                conn.pending.pop(rid, None)
                self._send_cancel(conn, rid)
            slot.on_error(RpcUnavailableError(addr, "stream closed by the caller"))

    async def aclose(self) -> None:
        """Close every connection; pending calls fail with RpcUnavailableError."""
        self._closed = True
        conns = list(self._conns.values())
        for conn in conns:
            conn.scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for conn in conns:
                await conn.finished.wait()

    def peer_of(self, addr: str) -> PeerIdentity | None:
        """The identity proven by the server at `addr`, if connected."""
        conn = self._conns.get(addr)
        return conn.peer if conn is not None and conn.state == _READY else None

    # ---- connections --------------------------------------------------------------------

    async def _connection(self, addr: str) -> _Conn:
        while True:
            if self._closed:
                raise RpcUnavailableError(addr, "client closed")
            conn = self._conns.get(addr)
            if conn is not None:
                if conn.state == _READY:
                    return conn
                if conn.state == _CONNECTING:
                    await conn.ready.wait()
                    if conn.state == _READY:
                        return conn
                    raise _copy_error(conn.error, addr)
                if self._conns.get(addr) is conn:
                    del self._conns[addr]
            backoff = self._backoff.get(addr)
            if backoff is not None:
                left = backoff.until - trio.current_time()
                if left > 0:
                    if isinstance(backoff.error, HandshakeRefusedError):
                        raise _copy_error(backoff.error, addr)
                    reason = backoff.error.reason if backoff.error else "recent failure"
                    raise RpcUnavailableError(addr, reason, retry_after=left)
            conn = _Conn(addr)
            self._conns[addr] = conn
            if self._nursery is not None:
                self._nursery.start_soon(self._run_connection, conn)
            else:
                trio.lowlevel.spawn_system_task(self._run_connection, conn)

    async def _run_connection(self, conn: _Conn) -> None:
        addr = conn.addr
        stream: trio.abc.Stream | None = None
        self.counters.inc("connects")
        try:
            with conn.scope:
                try:
                    with trio.fail_after(self.connect_timeout):
                        stream = await self.network.connect(conn.host, conn.port)
                except (OSError, trio.TooSlowError) as e:
                    raise RpcUnavailableError(addr, f"connect failed: {e or 'timed out'}") from None
                framed = FramedStream(stream, max_frame_size=self.max_frame_size,
                                      limits=self.limits)
                try:
                    with trio.fail_after(self.handshake_timeout):
                        await secure(stream)  # the TLS handshake, if any
                        conn.peer = await client_handshake(framed, self.identity, addr)
                except trio.TooSlowError:
                    raise RpcUnavailableError(addr, "handshake timed out") from None
                except TlsHandshakeError as e:
                    self.counters.inc("tls_handshake_failed")
                    raise HandshakeRefusedError(addr, "tls_handshake_failed", e.reason) from None
                except ConnectionClosedError as e:
                    hint = (" (the server may have refused this client's certificate)"
                            if self.tls else " (does the server require TLS? this client uses none)")
                    raise RpcUnavailableError(addr, f"closed during handshake: {e}{hint}") from None
                conn.framed = framed
                conn.state = _READY
                self._backoff.pop(addr, None)
                conn.ready.set()
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(framed.writer_loop)
                        await self._read_loop(conn)
                except BaseExceptionGroup as group:  # strict exception groups (trio >= 0.25)
                    raise sole_error(group) from None
        except RpcUnavailableError as e:  # includes HandshakeRefusedError
            conn.error = e
            self.counters.inc("connect_failures", reason=type(e).__name__)
            logger.info("%s: %s", addr, e)
        except ConnectionClosedError as e:
            conn.error = RpcUnavailableError(addr, f"connection lost: {e}")
            logger.info("connection to %s lost: %s", addr, e)
        except FrameChecksumError as e:
            # the stream is damaged: nothing more read from it can be trusted
            self.counters.inc("frame_checksum_errors")
            conn.error = RpcUnavailableError(addr, f"damaged frame from server: {e}")
            self._log.warning("frame_checksum", "closing connection to %s: %s", addr, e)
        except (DecodeError, _ProtocolViolationError) as e:
            self.counters.inc("protocol_errors")
            conn.error = RpcUnavailableError(addr, f"protocol violation by server: {e}")
            logger.warning("closing connection to %s: protocol violation: %s", addr, e)
        except Exception as e:
            conn.error = RpcUnavailableError(addr, f"internal error: {e!r}")
            logger.exception("connection to %s failed", addr)
        finally:
            was_ready = conn.state == _READY
            conn.state = _CLOSED
            if conn.error is None:
                conn.error = RpcUnavailableError(addr, "connection closed")
            if not was_ready and not self._closed:
                self._bump_backoff(addr, conn.error)
            self._fail_pending(conn, was_ready)
            if self._conns.get(addr) is conn:
                del self._conns[addr]
            conn.ready.set()
            conn.finished.set()
            if stream is not None:
                await trio.aclose_forcefully(stream)

    def _bump_backoff(self, addr: str, error: RpcUnavailableError) -> None:
        b = self._backoff.get(addr)
        if b is None:
            b = self._backoff[addr] = _Backoff()
        b.failures += 1
        span = min(self.backoff_max, self.backoff_base * (2 ** (b.failures - 1)))
        b.until = trio.current_time() + span * self._rng.uniform(0.5, 1.0)
        b.error = error

    def _fail_pending(self, conn: _Conn, sent: bool) -> None:
        pending, conn.pending = conn.pending, {}
        reason = conn.error.reason if conn.error else "connection closed"
        for slot in pending.values():
            slot.on_error(RpcUnavailableError(conn.addr, reason, outcome_unknown=sent))

    async def _read_loop(self, conn: _Conn) -> None:
        framed = conn.framed
        assert framed is not None
        pending = conn.pending
        faults = self.faults
        while True:
            for msg in await framed.receive_batch():
                t = type(msg)
                if t is Response:
                    slot = pending.pop(msg.request_id, None)  # type: ignore[attr-defined]
                    if slot is not None:
                        if faults.rules and clientfaults.reply_dropped(self, conn, slot.what):
                            pending[msg.request_id] = slot  # type: ignore[attr-defined]
                            continue
                        slot.on_response(msg.body)  # type: ignore[attr-defined]
                        continue
                elif t is StreamItem:
                    slot = pending.get(msg.request_id)  # type: ignore[attr-defined]
                    if slot is not None:
                        if faults.rules and clientfaults.reply_dropped(self, conn, slot.what):
                            continue
                        if not slot.on_item(msg.body):  # type: ignore[attr-defined]
                            del pending[msg.request_id]  # type: ignore[attr-defined]
                            if type(slot) is UnaryCall:
                                reason = "server streams this request: use client.stream()"
                            else:
                                self.counters.inc("stream_overflows")
                                reason = "stream consumer fell behind: items were lost"
                            slot.on_error(RpcUnavailableError(conn.addr, reason,
                                                              outcome_unknown=True))
                            self._send_cancel(conn, msg.request_id)  # type: ignore[attr-defined]
                        continue
                elif t is ErrorReply:
                    slot = pending.pop(msg.request_id, None)  # type: ignore[attr-defined]
                    if slot is not None:
                        if faults.rules and clientfaults.reply_dropped(self, conn, slot.what):
                            pending[msg.request_id] = slot  # type: ignore[attr-defined]
                            continue
                        slot.on_error(_remote_error(msg))  # type: ignore[arg-type]
                        continue
                elif t is StreamEnd:
                    slot = pending.pop(msg.request_id, None)  # type: ignore[attr-defined]
                    if slot is not None and faults.rules and clientfaults.reply_dropped(
                            self, conn, slot.what):
                        pending[msg.request_id] = slot  # type: ignore[attr-defined]
                        continue
                    if type(slot) is UnaryCall:
                        slot.on_error(RpcUnavailableError(
                            conn.addr, "server streams this request: use client.stream()",
                            outcome_unknown=True))
                        continue
                    if slot is not None:
                        slot.on_end(None)
                        continue
                else:
                    raise _ProtocolViolationError(f"unexpected {t.__name__} from a server")
                self.counters.inc("late_replies")  # the caller already gave up

    def _send_cancel(self, conn: _Conn, rid: int) -> None:
        framed = conn.framed
        if framed is not None and conn.state == _READY:
            if self.faults.rules and clientfaults.cancel_dropped(self, conn):
                return
            try:
                framed.send(Cancel(rid))
            except ConnectionClosedError:
                pass


def _copy_error(error: RpcUnavailableError | None, addr: str) -> RpcUnavailableError:
    """A fresh exception per caller (one instance must not be raised in many tasks)."""
    if error is None:
        return RpcUnavailableError(addr, "connection closed")
    if isinstance(error, HandshakeRefusedError):
        return HandshakeRefusedError(addr, error.reason, error.detail)
    return RpcUnavailableError(addr, error.reason, outcome_unknown=False)
