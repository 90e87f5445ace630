"""Running one request on an authenticated connection of the RPC server.

Owns: a connection's reader loop once the handshake admitted it (requests, client cancels,
frames that do not decode), the per-request decision (route lookup, role authorization,
fault injection rules, the in-flight limit), deadlines and client cancellation, running a
handler (unary, inline or streaming) and turning its result or exception into a `Response`,
`StreamItem`/`StreamEnd` or `ErrorReply` on the connection's writer, and the fault rules
(`nokvpy.rpc.faults`) on what it receives (requests, which a rule may drop, delay, deliver
twice or hold back behind the next one, and cancels) and sends (every reply, which a rule
may drop or corrupt). Never accepts connections, runs handshakes or enforces connection
limits (`nokvpy.rpc.server`, whose `RpcServer` mixes `RequestDispatch` in), and never
swallows `trio.Cancelled`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from nokvpy import failpoints
from nokvpy.protocol import roles
from nokvpy.protocol.base import TAGS
from nokvpy.protocol.enums import ErrorKind
from nokvpy.rpc.errors import RemoteError
from nokvpy.rpc.faults import CANCEL, REPLY, FaultRules, FaultVerdict
from nokvpy.rpc.framed import ConnectionClosedError, FramedStream, UndecodableFrame
from nokvpy.rpc.identity import Counters, Identity, PeerIdentity
from nokvpy.rpc.logthrottle import LogThrottle
from nokvpy.wire import (
    Cancel,
    DecodeLimits,
    EncodeError,
    ErrorReply,
    Request,
    Response,
    StreamEnd,
    StreamItem,
    encode,
    frame,
    peek_record,
)

logger = logging.getLogger("nokvpy.rpc")
REQUEST_TAG = Request.__wire_tag__  # type: ignore[attr-defined]

Handler = Callable[[Any, "CallContext"], Awaitable[Any]]
StreamHandler = Callable[[Any, "CallContext"], AsyncIterator[Any]]


class CallContext:
    """What a handler knows about the call it serves."""

    __slots__ = ("peer", "request_id", "deadline", "server")

    def __init__(self, peer: PeerIdentity, request_id: int, deadline: float,
                 server: RequestDispatch):
        self.peer = peer
        self.request_id = request_id  # 0 for a one-way request
        self.deadline = deadline  # trio time; math.inf when the caller set none
        self.server = server

    @property
    def one_way(self) -> bool:
        return self.request_id == 0

    def remaining(self) -> float:
        """Seconds left before the caller's deadline (math.inf if none)."""
        return self.deadline - trio.current_time()


@dataclass(slots=True)
class Route:
    """A registered handler: `stream` (an async generator), `inline` (run in the reader)."""

    handler: Callable[..., Any]
    stream: bool
    inline: bool


class ActiveCall:
    """A running request's cancel scope; `by_client`: cancelled by the client's Cancel."""

    __slots__ = ("scope", "by_client")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.by_client = False


class Connection:
    """An authenticated connection: its stream, peer, nursery and running requests."""

    __slots__ = ("framed", "peer", "nursery", "active", "in_flight", "last_active", "held")

    def __init__(self, framed: FramedStream, peer: PeerIdentity, nursery: trio.Nursery) -> None:
        self.framed = framed
        self.peer = peer
        self.nursery = nursery
        self.active: dict[int, ActiveCall] = {}
        # Requests and streams spawned and not finished (inline handlers are not counted).
        self.in_flight = 0
        # trio time of the last frames received, or of the last request finishing.
        self.last_active = trio.current_time()
        # one-way requests a reorder rule holds back, in arrival order: (route, body, ctx)
        self.held: list[tuple[Route, object, CallContext]] = []


class ProtocolViolationError(Exception):
    """A client sent a record only a server may send: the connection is closed."""


class RequestDispatch:
    """The request half of `RpcServer` (mixed in; see the module docstring). The server sets
    the attributes below; `_routes` maps a request type to its `Route`."""

    identity: Identity
    counters: Counters
    limits: DecodeLimits
    faults: FaultRules
    max_in_flight: int
    enable_failpoints: bool | None
    policy: Callable[[str, str, str], bool] | None
    _routes: dict[type, Route]
    _log: LogThrottle

    async def _read_loop(self, conn: Connection) -> None:
        framed = conn.framed
        while True:
            try:
                batch = await framed.receive_batch(lenient=True)
            except ConnectionClosedError:
                return
            conn.last_active = trio.current_time()
            for msg in batch:
                t = type(msg)
                if t is Request:
                    await self._on_request(conn, msg)  # type: ignore[arg-type]
                elif t is UndecodableFrame:
                    self._on_undecodable(conn, msg)  # type: ignore[arg-type]
                elif t is Cancel:
                    if self.faults.rules and self.faults.decide(
                            conn.peer.name, self.identity.name, "Cancel", kind=CANCEL,
                            sending=False).drop:
                        self.counters.inc("fault_blackholed")
                        continue
                    active = conn.active.get(msg.request_id)  # type: ignore[attr-defined]
                    if active is not None:
                        active.by_client = True
                        active.scope.cancel()
                else:
                    raise ProtocolViolationError(f"unexpected {t.__name__} from a client")

    def _on_undecodable(self, conn: Connection, bad: UndecodableFrame) -> None:
        """A frame that fails to decode: when it is a request whose id can still be read
        (e.g. a field holds an unknown enum value), answer that request with the reason and
        keep the connection (other requests on it are unaffected); otherwise the stream is
        not speaking our protocol: close it as before."""
        raw = peek_record(bad.data, self.limits)
        rid = raw[1] if raw is not None and raw[0] == REQUEST_TAG and len(raw) == 4 else None
        if type(rid) is not int or rid < 0:
            raise bad.error
        body_tag = raw[3][0] if type(raw[3]) is list and raw[3] and type(raw[3][0]) is int else None
        body = TAGS.get(body_tag)
        what = body.__name__ if body is not None else f"record tag {body_tag!r}"
        self.counters.inc("bad_requests", reason="decode_error")
        self._log.warning("bad_request", "refused a request from %s: %s does not decode: %s",
                          conn.peer.name, what, bad.error.reason)
        if rid:
            self._reply(conn, rid, ErrorReply(rid, ErrorKind.INVALID_ARGUMENT, "decode_error",
                                              f"{what} does not decode: {bad.error.reason}"),
                        what)

    async def _on_request(self, conn: Connection, req: Request) -> None:
        self.counters["requests"] += 1
        rid = req.request_id
        body = req.body
        route = self._routes.get(type(body))
        if route is None:
            self.counters.inc("unhandled_requests", type=type(body).__name__)
            self._reply(
                conn, rid,
                ErrorReply(rid, ErrorKind.INVALID_ARGUMENT, "unhandled_request_type",
                           f"{self.identity.name} has no handler for {type(body).__name__}"),
                type(body),
            )
            return
        denied = self._authorize(conn.peer, type(body).__name__)
        if denied is not None:
            reason, detail = denied
            self.counters.inc("permission_denied", role=conn.peer.node_kind,
                              rpc=type(body).__name__)
            self._log.warning(reason, "refused %s from %s: %s", type(body).__name__,
                              conn.peer.name, detail)
            self._reply(conn, rid, ErrorReply(
                rid, ErrorKind.PERMISSION_DENIED, reason, detail,
                {"role": conn.peer.node_kind, "rpc": type(body).__name__}), type(body))
            return
        if conn.in_flight >= self.max_in_flight:
            self.counters.inc("rejected_requests", reason="too_many_in_flight")
            self._reply(
                conn, rid,
                ErrorReply(rid, ErrorKind.UNAVAILABLE, "too_many_in_flight",
                           f"more than {self.max_in_flight} requests in flight on one connection",
                           {"retry": True}),
                type(body),
            )
            return
        delay = 0.0
        verdict = None
        if self.faults.rules:
            verdict = self.faults.decide(conn.peer.name, self.identity.name, type(body).__name__,
                                         one_way=not rid, sending=False)
            if verdict.drop:
                self.counters.inc("fault_blackholed" if verdict.blackhole else "fault_dropped")
                return
            delay = verdict.delay
        if req.deadline_ms > 0:
            deadline = trio.current_time() + req.deadline_ms / 1000.0
        elif req.deadline_ms == 0:
            deadline = math.inf
        else:
            deadline = -math.inf
        ctx = CallContext(conn.peer, rid, deadline, self)
        if verdict is not None and not verdict.plain:
            await self._deliver_faulted(conn, route, body, ctx, delay, verdict)
            return
        await self._dispatch(conn, route, body, ctx, delay)
        if conn.held:  # a request held back by a reorder rule goes after this one
            await self._release_held(conn)

    async def _dispatch(self, conn: Connection, route: Route, body: object, ctx: CallContext,
                        delay: float) -> None:
        rid = ctx.request_id
        if route.stream:
            if rid == 0:
                self.counters.inc("rejected_requests", reason="one_way_stream")
                return
            conn.in_flight += 1  # counted from the spawn, so one batch cannot overshoot
            conn.nursery.start_soon(self._run_stream, conn, route, body, ctx, delay)
        elif route.inline and not delay:
            await self._run_inline(conn, route, body, ctx)
        else:
            conn.in_flight += 1
            conn.nursery.start_soon(self._run_unary, conn, route, body, ctx, delay)

    async def _deliver_faulted(self, conn: Connection, route: Route, body: object,
                               ctx: CallContext, delay: float, verdict: FaultVerdict) -> None:
        """A one-way request that a rule delivers twice and/or holds back (`reorder`: until
        the next request on the connection, or its hold time)."""
        if verdict.reorder is not None:
            self.counters.inc("fault_reordered")
            item = (route, body, ctx)
            conn.held.append(item)
            conn.nursery.start_soon(self._release_later, conn, item, verdict.reorder)
        else:
            await self._dispatch(conn, route, body, ctx, delay)
            if conn.held:
                await self._release_held(conn)
        if verdict.duplicate is not None:
            self.counters.inc("fault_duplicated")
            if verdict.duplicate <= 0:
                await self._dispatch(conn, route, body, ctx, delay)
            else:
                conn.nursery.start_soon(self._deliver_later, conn, route, body, ctx,
                                        verdict.duplicate)

    async def _release_held(self, conn: Connection) -> None:
        held, conn.held = conn.held, []
        for route, body, ctx in held:
            await self._dispatch(conn, route, body, ctx, 0.0)

    async def _release_later(self, conn: Connection, item: tuple[Route, object, CallContext],
                             after: float) -> None:
        await trio.sleep(after)
        for i, held in enumerate(conn.held):
            if held is item:
                del conn.held[i]
                await self._dispatch(conn, *item, 0.0)
                return

    async def _deliver_later(self, conn: Connection, route: Route, body: object,
                             ctx: CallContext, after: float) -> None:
        await trio.sleep(after)
        await self._dispatch(conn, route, body, ctx, 0.0)

    async def _run_unary(
        self, conn: Connection, route: Route, body: object, ctx: CallContext, delay: float
    ) -> None:
        rid = ctx.request_id
        active = ActiveCall(trio.CancelScope(deadline=ctx.deadline))
        if rid:
            conn.active[rid] = active
        reply: object = None
        try:
            with active.scope:
                if delay:
                    await trio.sleep(delay)
                try:
                    reply = Response(rid, await route.handler(body, ctx))
                except RemoteError as e:
                    self.counters.inc("remote_errors", kind=e.kind)
                    reply = ErrorReply(rid, e.kind, e.reason, e.message, e.details)
                except Exception as e:
                    reply = self._internal_error(rid, body, ctx, e)
            if active.scope.cancelled_caught:
                reply = self._cancelled_reply(rid, body, ctx, active)
        finally:
            conn.in_flight -= 1
            if not conn.in_flight:
                conn.last_active = trio.current_time()
            if rid:
                conn.active.pop(rid, None)
        if rid and reply is not None:
            self._reply(conn, rid, reply, type(body))

    async def _run_inline(self, conn: Connection, route: Route, body: object, ctx: CallContext) -> None:
        """Run a non-blocking handler in the reader task: no task, no cancel scope (it cannot
        be cancelled by a Cancel that the reader has not read yet)."""
        rid = ctx.request_id
        if ctx.deadline < trio.current_time():
            self._reply(conn, rid, self._cancelled_reply(rid, body, ctx, None), type(body))
            return
        try:
            reply: object = Response(rid, await route.handler(body, ctx))
        except RemoteError as e:
            self.counters.inc("remote_errors", kind=e.kind)
            reply = ErrorReply(rid, e.kind, e.reason, e.message, e.details)
        except Exception as e:
            reply = self._internal_error(rid, body, ctx, e)
        self._reply(conn, rid, reply, type(body))

    async def _run_stream(
        self, conn: Connection, route: Route, body: object, ctx: CallContext, delay: float
    ) -> None:
        rid = ctx.request_id
        active = ActiveCall(trio.CancelScope(deadline=ctx.deadline))
        conn.active[rid] = active
        reply: object = None
        framed = conn.framed
        try:
            with active.scope:
                if delay:
                    await trio.sleep(delay)
                agen = route.handler(body, ctx)
                try:
                    async for item in agen:
                        if self.faults.rules:
                            self._reply(conn, rid, StreamItem(rid, item), type(body), True)
                        else:
                            framed.send(StreamItem(rid, item))
                        await framed.wait_writable()
                    reply = StreamEnd(rid)
                except RemoteError as e:
                    self.counters.inc("remote_errors", kind=e.kind)
                    reply = ErrorReply(rid, e.kind, e.reason, e.message, e.details)
                except EncodeError as e:
                    reply = self._internal_error(rid, body, ctx, e)
                except ConnectionClosedError:
                    return
                except Exception as e:
                    reply = self._internal_error(rid, body, ctx, e)
                finally:
                    aclose = getattr(agen, "aclose", None)
                    if aclose is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                            await aclose()
            if active.scope.cancelled_caught:
                reply = self._cancelled_reply(rid, body, ctx, active)
        finally:
            conn.in_flight -= 1
            if not conn.in_flight:
                conn.last_active = trio.current_time()
            conn.active.pop(rid, None)
        if reply is not None:
            self._reply(conn, rid, reply, type(body))

    def _cancelled_reply(
        self, rid: int, body: object, ctx: CallContext, active: ActiveCall | None
    ) -> ErrorReply | None:
        if active is not None and active.by_client:
            self.counters.inc("cancelled_by_client")
            return None
        self.counters.inc("deadline_exceeded")
        logger.info(
            "cancelled %s from %s: deadline exceeded", type(body).__name__, ctx.peer.name
        )
        return ErrorReply(rid, ErrorKind.TIMEOUT, "deadline_exceeded",
                          f"{type(body).__name__} exceeded its deadline on {self.identity.name}")

    def _internal_error(self, rid: int, body: object, ctx: CallContext, e: Exception) -> ErrorReply:
        self.counters.inc("handler_errors", type=type(body).__name__)
        logger.exception("handler for %s from %s failed", type(body).__name__, ctx.peer.name)
        return ErrorReply(rid, ErrorKind.INTERNAL, "handler_exception",
                          f"{type(e).__name__}: {e}"[:1000], {"request_type": type(body).__name__})

    def _reply(self, conn: Connection, rid: int, reply: object, request: type | str | None = None,
               stream_item: bool = False) -> None:
        """Send `reply` to request `rid` (whose body type or name is `request`, for the fault
        rules). A stream item that does not encode raises EncodeError (the stream ends with
        an error reply) and one on a closed connection raises ConnectionClosedError."""
        if not rid:
            if type(reply) is ErrorReply:
                self.counters.inc("one_way_errors", kind=reply.kind)  # type: ignore[attr-defined]
            return
        if stream_item:
            data = frame(encode(reply))
        else:
            try:
                data = frame(encode(reply))
            except EncodeError as e:
                self.counters.inc("handler_errors", type="unencodable_response")
                logger.error("cannot encode the reply to request %d: %s", rid, e)
                data = frame(encode(ErrorReply(rid, ErrorKind.INTERNAL, "unencodable_response",
                                               e.reason[:1000])))
        if self.faults.rules:
            what = request if isinstance(request, str) else getattr(request, "__name__", "")
            verdict = self.faults.decide(self.identity.name, conn.peer.name, what, kind=REPLY)
            if verdict.drop:
                self.counters.inc("fault_blackholed" if verdict.blackhole else "fault_dropped")
                return
            if verdict.corrupt:
                self.counters.inc("fault_corrupted")
                data = self.faults.corrupt_frame(data)
        if stream_item:
            conn.framed.enqueue(data)
            return
        try:
            conn.framed.enqueue(data)
        except ConnectionClosedError:
            self.counters.inc("replies_lost")

    def _authorize(self, peer: PeerIdentity, rpc: str) -> tuple[str, str] | None:
        """None, or (reason, detail) refusing `rpc` from `peer` (nokvpy.protocol.roles). Roles
        are enforced when this server authenticates (a cluster secret): without one a role is
        only a claim. Fault injection also needs enable_failpoints, whoever asks."""
        enabled = failpoints.remote_enabled() if self.enable_failpoints is None \
            else self.enable_failpoints
        if rpc in roles.FAULT_RPCS and not enabled:
            return ("failpoints_disabled", f"{rpc} refused: {self.identity.name} was started "
                    "without --enable-failpoints")
        if self.identity.secret and self.policy is not None and \
                not self.policy(self.identity.node_kind, peer.node_kind, rpc):
            return ("permission_denied", f"role {peer.node_kind!r} may not call {rpc} on "
                    f"{self.identity.name} (allowed: "
                    f"{', '.join(sorted(roles.allowed_roles(self.identity.node_kind, rpc))) or 'none'})")
        return None
