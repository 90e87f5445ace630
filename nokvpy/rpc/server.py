"""The RPC server: accept, authenticate, dispatch requests to registered handlers.

Owns: the listening side of connections, handler registration, per-request deadlines and
cancellation, error replies, fault rules on inbound requests, and the built-in admin handlers
(`Ping`, `Echo`, `SetFaultRules`, `GetFaultRules`). Never crashes on remote input: a request
whose envelope decodes but whose body does not (unknown tag or enum value, wrong field type)
gets an `invalid_argument/decode_error` reply and the connection goes on; malformed frames
and other undecodable records close that one connection (logged and counted in `counters`);
handler exceptions become "internal" error replies. A frame whose CRC-32 does not match
(`FrameChecksumError`: bytes damaged on the way) closes its connection at once, in the
handshake as after it, since nothing read after it can be trusted: counted in
`frame_checksum_errors{phase=...}` and `protocol_errors{reason=frame_checksum}`, logged
rate-limited. Never swallows `trio.Cancelled`.

Concurrency: one reader task per connection decodes requests; each request runs in its own
task in the connection's nursery (or inline in the reader for `inline=True` handlers, which
must not block), and replies go through the connection's batching writer task.

Limits (docs/operations.md "Limits"): before authentication a connection may send frames of
at most `preauth_max_frame_size` bytes, must finish the handshake within `handshake_timeout`,
and at most `max_unauthenticated` such connections exist at once (a new one evicts the
oldest still in its handshake, so silent connections cannot lock others out). After it: frames up to `max_frame_size`, at most
`max_connections` authenticated connections (the next is refused in the handshake with
`too_many_connections`), at most `max_in_flight_per_connection` requests running per
connection (the next is answered `unavailable/too_many_in_flight`), and a connection with no
request running (streams included) and no complete frame received for `idle_timeout` seconds
is closed. Every refusal is counted; its log line is rate-limited per reason.

TLS (`tls=`, default: `nokvpy.rpc.tls.configured(cluster id)`, set by the serve commands'
--tls-* flags): every accepted stream runs its TLS handshake (a client certificate signed by
the cluster CA is required) before the cluster-secret handshake, under the same
`handshake_timeout` and as one of the `max_unauthenticated` connections; a failed TLS
handshake is counted in `tls_handshake_failed` and logged rate-limited like other refusals.

This module owns the listening side and the connection lifecycle (accepting, the handshake,
connection limits, the idle watchdog); what happens to each request on an admitted
connection is `nokvpy.rpc.dispatch` (`RequestDispatch`, mixed into `RpcServer`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from nokvpy.protocol import roles
from nokvpy.rpc.dispatch import (
    CallContext,
    Connection,
    ProtocolViolationError,
    RequestDispatch,
    Route,
)
from nokvpy.rpc.faults import FaultRules
from nokvpy.rpc.framed import ConnectionClosedError, FramedStream, sole_error
from nokvpy.rpc.handshake import HandshakeRejectedError, server_handshake
from nokvpy.rpc.identity import Counters, Identity, PeerIdentity, format_addr
from nokvpy.rpc.logthrottle import LogThrottle
from nokvpy.rpc.network import TCP, Network, secure, with_tls
from nokvpy.rpc.tls import TlsConfig, TlsHandshakeError, resolve
from nokvpy.wire import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_FRAME_SIZE,
    DecodeError,
    DecodeLimits,
    Echo,
    FrameChecksumError,
    FrameTooLargeError,
    GetFaultRules,
    Ping,
    Pong,
    SetFaultRules,
)

logger = logging.getLogger("nokvpy.rpc")


# Before authentication only the handshake records travel; the largest, a HandshakeReply, is
# about 110 bytes with a short cluster id. 4 KiB leaves room for any sane cluster id.
PREAUTH_MAX_FRAME_SIZE = 4096


class RpcServer(RequestDispatch):
    """Serve registered request types. See the module docstring."""

    def __init__(
        self,
        identity: Identity,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        limits: DecodeLimits = DEFAULT_LIMITS,
        network: Network | None = None,
        faults: FaultRules | None = None,
        handshake_timeout: float = 5.0,
        max_in_flight_per_connection: int = 10_000,
        preauth_max_frame_size: int = PREAUTH_MAX_FRAME_SIZE,
        max_unauthenticated: int = 64,
        max_connections: int = 1024,
        idle_timeout: float = 300.0,
        log_interval: float = 10.0,
        enable_failpoints: bool | None = None,
        policy: Callable[[str, str, str], bool] | None = roles.allowed,
        tls: TlsConfig | Any = None,
    ) -> None:
        self.identity = identity
        # TLS of every accepted connection: a TlsConfig (or a mapping of cert/key/ca paths);
        # None: the process default for this cluster (nokvpy.rpc.tls.configure); False: none
        self.tls: TlsConfig | None = resolve(tls, identity.cluster_id)
        # failpoints and fault rules over the wire (FAULT_RPCS); None: as the process says
        # (nokvpy.failpoints.remote_enabled: the serve commands' --enable-failpoints)
        self.enable_failpoints = enable_failpoints
        # policy(server kind, caller role, request type name) -> allowed; None: any role
        self.policy = policy
        self.max_frame_size = max_frame_size
        self.limits = limits
        self.network: Network = with_tls(network if network is not None else TCP, self.tls)
        if self.tls is not None:
            self.tls.check()  # TlsConfigError now, not at the first connection
        self.faults = faults if faults is not None else FaultRules()
        self.handshake_timeout = handshake_timeout
        self.max_in_flight = max_in_flight_per_connection
        self.preauth_max_frame_size = min(preauth_max_frame_size, max_frame_size)
        self.max_unauthenticated = max_unauthenticated
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout  # math.inf: never close an idle connection
        self.counters = Counters()
        self.address: tuple[str, int] | None = None
        self._routes: dict[type, Route] = {}
        self._connections: set[Connection] = set()
        # Invariant: _unauthenticated == connections accepted and not yet through (or out of)
        # the handshake; _sessions == connections admitted by the handshake and not yet closed.
        self._unauthenticated = 0
        # Handshake cancel scopes of the connections in their handshake, oldest first (the
        # one evicted when max_unauthenticated is reached).
        self._pending: dict[trio.CancelScope, None] = {}
        self._sessions = 0
        self._log = LogThrottle(logger, log_interval)
        self.register(Ping, self._on_ping, inline=True)
        self.register(Echo, self._on_echo)
        self.register(SetFaultRules, self._on_set_fault_rules, inline=True)
        self.register(GetFaultRules, self._on_get_fault_rules, inline=True)

    # ---- registration -------------------------------------------------------------------

    def register(
        self,
        request_type: type,
        handler: Callable[[Any, CallContext], Awaitable[Any]],
        *,
        inline: bool = False,
    ) -> None:
        """`await handler(request, ctx)` answers each `request_type` request with a record.

        Raise `RemoteError` to answer with an error. `inline=True` runs the handler in the
        connection's reader task (no task spawn, requests handled in arrival order); it must
        not block (e.g. only push into a queue). Re-registering a built-in replaces it.
        """
        self._add_route(request_type, Route(handler, stream=False, inline=inline))

    def register_stream(
        self, request_type: type, handler: Callable[[Any, CallContext], AsyncIterator[Any]]
    ) -> None:
        """`handler(request, ctx)` is an async generator; each yielded record is sent as a
        StreamItem, then StreamEnd. Raising `RemoteError` ends the stream with that error.
        Do not yield from inside a nursery or cancel scope (trio async generator rule)."""
        self._add_route(request_type, Route(handler, stream=True, inline=False))

    def _add_route(self, request_type: type, route: Route) -> None:
        if not hasattr(request_type, "__wire_tag__"):
            raise TypeError(f"{request_type!r} is not a registered wire record (@wire_type)")
        existing = self._routes.get(request_type)
        if existing is not None and not _is_builtin(existing.handler, self):
            raise ValueError(f"a handler for {request_type.__name__} is already registered")
        self._routes[request_type] = route

    def status(self) -> dict[str, Any]:
        """Limits, open connections and counters, for a process's status reply."""
        return {
            "limits": {
                "preauth_max_frame_size": self.preauth_max_frame_size,
                "handshake_timeout": self.handshake_timeout,
                "max_unauthenticated": self.max_unauthenticated,
                "max_frame_size": self.max_frame_size,
                "max_connections": self.max_connections,
                "max_in_flight_per_connection": self.max_in_flight,
                "idle_timeout": self.idle_timeout,
            },
            "connections": {"unauthenticated": self._unauthenticated,
                            "authenticated": self._sessions},
            "tls": self.tls is not None,
            "counters": dict(sorted(self.counters.items())),
        }

    # ---- serving ------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled. `await nursery.start(server.serve, host, port)`
        returns the bound (host, port) (port 0 picks a free one)."""
        listener, bound_port = await self.network.open_listener(host, port)
        self.address = (host, bound_port)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started((host, bound_port))
                logger.info("%s serving on %s", self.identity.name, format_addr(host, bound_port))
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:  # EMFILE and friends: back off, keep serving
                        self.counters.inc("accept_errors")
                        self._log.warning("accept", "accept failed: %s", e)
                        await trio.sleep(0.1)
                        continue
                    if self._unauthenticated >= self.max_unauthenticated and self._pending:
                        # Evict the oldest connection still in its handshake rather than
                        # refuse this one: a peer holding max_unauthenticated silent
                        # connections must not lock everyone else out (a real handshake
                        # takes milliseconds, so it is never the oldest for long).
                        oldest = next(iter(self._pending))
                        del self._pending[oldest]
                        oldest.cancel()
                        self.counters.inc("preauth_evicted")
                        self._log.warning(
                            "preauth_evicted", "closed the oldest connection in its handshake: "
                            "%d connections are in their handshake (max_unauthenticated); "
                            "newest from %s", self._unauthenticated, _remote_address(stream))
                    self._unauthenticated += 1
                    nursery.start_soon(self._handle_connection, stream)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection; the caller counted it in `_unauthenticated`."""
        remote = _remote_address(stream)
        framed = FramedStream(stream, max_frame_size=self.preauth_max_frame_size,
                              limits=self.limits)
        self.counters.inc("connections_accepted")
        conn: Connection | None = None
        in_handshake, admitted = True, False

        def admit(peer: PeerIdentity) -> tuple[str, str] | None:
            nonlocal admitted
            if self._sessions >= self.max_connections:
                self.counters.inc("too_many_connections")
                return ("too_many_connections",
                        f"{self._sessions} authenticated connections open (max_connections)")
            self._sessions += 1
            admitted = True
            return None

        try:
            peer = None
            with trio.move_on_after(self.handshake_timeout) as handshake_scope:
                self._pending[handshake_scope] = None
                try:
                    await secure(stream)  # the TLS handshake, if any: same deadline
                    peer = await server_handshake(framed, self.identity, remote, admit)
                finally:
                    self._pending.pop(handshake_scope, None)
            in_handshake = False
            self._unauthenticated -= 1
            if peer is None and trio.current_time() < handshake_scope.deadline:
                raise HandshakeRejectedError("evicted", "closed to make room for a newer "
                                             "connection (max_unauthenticated)")
            if peer is None:
                self.counters.inc("handshake_timeouts")
                raise HandshakeRejectedError("timeout",
                                             f"no handshake within {self.handshake_timeout}s")
            framed.max_frame_size = self.max_frame_size
            try:
                async with trio.open_nursery() as nursery:
                    conn = Connection(framed, peer, nursery)
                    self._connections.add(conn)
                    nursery.start_soon(framed.writer_loop)
                    if self.idle_timeout < math.inf:
                        nursery.start_soon(self._idle_watchdog, conn)
                    try:
                        await self._read_loop(conn)
                    finally:
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:  # strict exception groups (trio >= 0.25)
                raise sole_error(group) from None
        except TlsHandshakeError as e:
            self.counters.inc("tls_handshake_failed")
            self.counters.inc("rejected_handshake", reason="tls_handshake_failed")
            self._log.warning("handshake:tls_handshake_failed", "refused TLS handshake from %s: "
                              "%s", remote, e.reason)
        except HandshakeRejectedError as e:
            self.counters.inc("rejected_handshake", reason=e.reason)
            self._log.warning("handshake:" + e.reason, "refused handshake from %s: reason=%s (%s)",
                              remote, e.reason, e.detail)
        except FrameChecksumError as e:
            self.counters.inc("frame_checksum_errors", phase="session" if conn else "handshake")
            self._protocol_error(remote, conn, "frame_checksum", e.reason)
        except FrameTooLargeError as e:
            self.counters.inc("frame_too_large", phase="session" if conn else "handshake")
            self._protocol_error(remote, conn, "frame_too_large", e.reason)
        except DecodeError as e:
            self._protocol_error(remote, conn, "decode_error", e.reason)
        except ProtocolViolationError as e:
            self._protocol_error(remote, conn, "unexpected_message", str(e))
        except ConnectionClosedError as e:
            self.counters.inc("connections_closed")
            logger.debug("connection from %s closed: %s", remote, e)
        except Exception:
            self.counters.inc("connection_errors", reason="internal")
            logger.exception("connection from %s failed", remote)
        finally:
            if conn is not None:
                self._connections.discard(conn)
            if in_handshake:
                self._unauthenticated -= 1
            if admitted:
                self._sessions -= 1
            await trio.aclose_forcefully(stream)

    def _protocol_error(self, remote: str, conn: Connection | None, reason: str, detail: str) -> None:
        phase = "handshake" if conn is None else "session"
        self.counters.inc("protocol_errors", reason=reason)
        if conn is None:
            self.counters.inc("rejected_handshake", reason=reason)
        who = remote if conn is None else f"{conn.peer.name}@{remote}"
        self._log.warning(f"protocol:{phase}:{reason}", "closing connection from %s (%s): %s: %s",
                          who, phase, reason, detail)

    async def _idle_watchdog(self, conn: Connection) -> None:
        """Close `conn` once no frame was completed for `idle_timeout` seconds and no request or
        stream of it is running (a long watch stream keeps its connection however quiet)."""
        idle = self.idle_timeout
        while True:
            await trio.sleep_until(conn.last_active + idle)
            now = trio.current_time()
            if conn.in_flight:
                conn.last_active = now  # busy: the idle period starts when the last one ends
                continue
            if now - conn.last_active >= idle:
                self.counters.inc("idle_closed")
                self._log.info("idle", "closing connection from %s@%s: idle for %.0fs",
                               conn.peer.name, conn.peer.address, now - conn.last_active)
                conn.nursery.cancel_scope.cancel()
                return

    # ---- built-in handlers ----------------------------------------------------------------

    async def _on_ping(self, req: Ping, ctx: CallContext) -> Pong:
        return Pong(req.payload, self.identity.name)

    async def _on_echo(self, req: Echo, ctx: CallContext) -> Echo:
        return req

    async def _on_set_fault_rules(self, req: SetFaultRules, ctx: CallContext):
        logger.warning("fault rules set by %s: %d rules, seed %d", ctx.peer.name, len(req.rules),
                       req.seed)
        return self.faults.apply(req)

    async def _on_get_fault_rules(self, req: GetFaultRules, ctx: CallContext):
        return self.faults.state()


def _is_builtin(handler: Callable[..., Any], server: RpcServer) -> bool:
    return getattr(handler, "__self__", None) is server


def _remote_address(stream: trio.abc.Stream) -> str:
    # a TLS stream's address is its transport's
    sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
    if sock is None:
        return "memory"
    try:
        host, port = sock.getpeername()[:2]
        return format_addr(host, port)
    except OSError:
        return "unknown"

