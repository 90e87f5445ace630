"""The ``hostile`` nemesis's attacker: makes one planned attempt against one process.

Owns: what the attacker knows (:class:`AttackContext`: the cluster id and the client
credential, never the secret) and how each kind of attempt is made and classified
(:class:`Attacker`): raw garbage before and after a handshake, a recorded legitimate
connection replayed, a forged role claim, privileged requests with the client credential.
Every connection is a fresh :class:`nokvpy.rpc.rawconn.RawConnection`. Never observes the
target's state (:mod:`.hostile_check`) and never records history events
(:mod:`.hostile`); see :mod:`.hostile` for the whole.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from nokvpy.protocol.admin import FailpointClearRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    PauseCatchUpRequest,
    RemoveRegionRequest,
)
from nokvpy.protocol.enums import EventKind
from nokvpy.protocol.grants import GrantCommand, GrantCommandKind
from nokvpy.protocol.metaroot_rpc import AppendRequest, GrantRequest
from nokvpy.protocol.records import RecoveryRecord, RootEvent
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc.framed import ConnectionClosedError
from nokvpy.rpc.identity import Identity
from nokvpy.rpc.rawconn import RawConnection
from nokvpy.wire import (
    FRAME_HEADER_SIZE,
    DecodeError,
    ErrorReply,
    FaultRule,
    Handshake,
    HandshakeReply,
    HandshakeResult,
    Ping,
    Request,
    Response,
    SetFaultRules,
    encode,
    frame,
)
from nokvpy.wire.codec import pack_raw
from nokvpy.wire.raft_msgs import RaftBatch

from .hostile_plan import ATTACKER_NODE_ID, PREAUTH_GARBAGE, kind_of

CALL_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0
"""The servers' handshake deadline (RpcServer's default): a truncated frame is cut then."""
GARBAGE_WAIT = HANDSHAKE_TIMEOUT + 3.0
"""How long a garbage connection may stay open before it counts as not refused."""



@dataclass
class AttackContext:
    """What the attacker knows: the cluster id and the client credential (never the
    secret), the target, the other processes' addresses, and the window's marker."""

    cluster_id: str
    client_key: bytes
    target: str
    address: str
    node_id: int
    marker: str
    coordinators: list[str] = field(default_factory=list)
    peer_ids: list[int] = field(default_factory=list)
    """Node ids of the target's kind other than the target (a plausible raft sender)."""

    def identity(self, role: str = "client", node_id: int = ATTACKER_NODE_ID) -> Identity:
        return Identity(self.cluster_id, role, node_id, credential=self.client_key)


def _answer(record: object) -> str:
    if isinstance(record, ErrorReply):
        return f"{record.kind}/{record.reason}"
    if isinstance(record, HandshakeReply):
        return "handshake reply ok" if record.ok else f"handshake refused: {record.reason}"
    if isinstance(record, HandshakeResult):
        return "handshake result ok" if record.ok else f"handshake refused: {record.reason}"
    return type(record).__name__


class Attacker:
    """Runs attempts against one process (every connection is a new RawConnection)."""

    def __init__(self, ctx: AttackContext, clock: Callable[[], float] | None = None):
        self.ctx = ctx
        self.clock = clock or time.monotonic

    async def _connect(self) -> RawConnection:
        return await RawConnection.open(self.ctx.address, cluster_id=self.ctx.cluster_id,
                                        timeout=CALL_TIMEOUT)

    async def call(self, body: object, address: str | None = None,
                   timeout: float = CALL_TIMEOUT) -> object:
        """A client handshake and one request: the reply record (Response or ErrorReply), or
        raise (ConnectionRefused, HandshakeFailed, trio.TooSlowError, OSError)."""
        conn = await RawConnection.open(address or self.ctx.address,
                                        cluster_id=self.ctx.cluster_id, timeout=timeout)
        try:
            hs = await conn.handshake(self.ctx.identity(), timeout=timeout)
            if not hs.ok:
                raise HandshakeFailed(hs.reason)
            await conn.send_record(Request(1, int(timeout * 1000), body))
            with trio.fail_after(timeout):
                while True:
                    record = await conn.framed.receive_one()
                    if isinstance(record, (Response, ErrorReply)) and record.request_id == 1:
                        return record
        finally:
            await conn.aclose()

    async def run(self, attempt: dict) -> dict:
        """Make one attempt; its result (``outcome``, ``answer``, ``counter``)."""
        t0 = self.clock()
        try:
            kind = attempt["kind"]
            if kind == "garbage":
                result = await self._garbage(attempt)
            elif kind == "replay":
                result = await self._replay(attempt)
            elif kind == "role-claim":
                result = await self._claim(attempt)
            else:
                result = await self._privileged(attempt)
        except (OSError, trio.TooSlowError, ConnectionClosedError, HandshakeFailed) as exc:
            result = {"outcome": "no_answer", "answer": f"{type(exc).__name__}: {exc}"[:200]}
        except Exception as exc:  # noqa: BLE001 - a broken attempt is recorded, not fatal
            result = {"outcome": "no_answer", "answer": f"{type(exc).__name__}: {exc}"[:200]}
        result["elapsed_s"] = round(self.clock() - t0, 3)
        return result

    # -- garbage ---------------------------------------------------------------------------

    def garbage_bytes(self, attempt: dict) -> bytes:
        """The bytes a pre-handshake garbage attempt sends (deterministic)."""
        op = attempt["op"]
        if op == "random-bytes":
            return random.Random(attempt["bytes_seed"]).randbytes(attempt["size"])
        if op == "huge-length":
            return attempt["length"].to_bytes(4, "big") + b"\xa5" * 64
        if op == "truncated":
            payload = encode(Handshake(self.ctx.cluster_id, "client", ATTACKER_NODE_ID, 1,
                                       b"\x07" * 32))
            cut = max(1, int(len(payload) * attempt["cut"]))
            return frame(payload)[:FRAME_HEADER_SIZE + cut]  # a valid header, a short body
        if op == "unknown-tag":
            return frame(pack_raw([attempt["tag"], self.ctx.marker, 1]))
        raise ValueError(f"not a pre-handshake garbage attempt: {op}")

    async def _garbage(self, attempt: dict) -> dict:
        op = attempt["op"]
        conn = await self._connect()
        try:
            if op in PREAUTH_GARBAGE:
                try:
                    await conn.send(self.garbage_bytes(attempt))
                except ConnectionClosedError:
                    return {"outcome": "refused", "answer": "closed by the server while sending",
                            "counter": _garbage_counter(op)}
                t0 = self.clock()
                records, closed = await conn.read_until_closed(GARBAGE_WAIT)
                if any(_admitted(r) for r in records):
                    return {"outcome": "accepted", "answer": "admitted: " +
                            ", ".join(_answer(r) for r in records)}
                if not closed:
                    return {"outcome": "accepted", "answer": f"connection still open after "
                            f"{GARBAGE_WAIT:g} s (past the handshake deadline)"}
                said = f" after {', '.join(_answer(r) for r in records)}" if records else ""
                return {"outcome": "refused", "counter": _garbage_counter(op),
                        "answer": f"closed by the server{said} after "
                                  f"{self.clock() - t0:.2f} s"}
            hs = await conn.handshake(self.ctx.identity())
            if not hs.ok:
                return {"outcome": "no_answer", "answer": f"client handshake failed: {hs.reason}"}
            if op == "unknown-body":
                data = frame(pack_raw([Request.__wire_tag__, 7, 2000,  # type: ignore[attr-defined]
                                       [attempt["tag"], self.ctx.marker]]))
            else:  # non-record: valid msgpack, not an array with a tag
                data = frame(pack_raw({"hostile": self.ctx.marker}))
            await conn.send(data)
            if op == "unknown-body":  # the connection goes on: read until our request's answer
                records, closed = await _read_reply(conn, 7, 3.0)
            else:
                records, closed = await conn.read_until_closed(GARBAGE_WAIT)
            replies = [r for r in records if isinstance(r, (Response, ErrorReply))]
            if any(isinstance(r, Response) for r in replies):
                return {"outcome": "accepted", "answer": "answered: " +
                        ", ".join(_answer(r) for r in replies)}
            if op == "unknown-body":
                if any(isinstance(r, ErrorReply) and r.kind == "invalid_argument"
                       and r.reason == "decode_error" for r in replies):
                    return {"outcome": "refused", "answer": "invalid_argument/decode_error",
                            "counter": "bad_requests{reason=decode_error}"}
                if closed:
                    return {"outcome": "refused", "answer": "closed by the server",
                            "counter": "protocol_errors{reason=decode_error}"}
                return {"outcome": "no_answer", "answer": "no reply within 3 s"}
            if closed:
                return {"outcome": "refused", "answer": "closed by the server",
                        "counter": "protocol_errors{reason=decode_error}"}
            return {"outcome": "accepted", "answer": f"connection still open after "
                    f"{GARBAGE_WAIT:g} s"}
        finally:
            await conn.aclose()

    # -- replay ----------------------------------------------------------------------------

    async def capture(self) -> list[bytes]:
        """A legitimate client connection (handshake + one Ping with the marker), recorded:
        the frames it sent, one per record. Raises when the legitimate call fails."""
        conn = await self._connect()
        try:
            hs = await conn.handshake(self.ctx.identity())
            if not hs.ok:
                raise HandshakeFailed(f"the legitimate handshake failed: {hs.reason}")
            await conn.send_record(Request(1, 5000, Ping(self.ctx.marker.encode())))
            reply = await conn.receive(CALL_TIMEOUT)
            if not isinstance(reply, Response):
                raise HandshakeFailed(f"the legitimate Ping was answered {_answer(reply)}")
            return list(conn.sent)
        finally:
            await conn.aclose()

    async def _replay(self, attempt: dict) -> dict:
        captured = await self.capture()
        conn = await self._connect()
        try:
            records: list[object] = []
            closed = False
            if attempt["op"] == "pipelined":
                await conn.send(b"".join(captured))
                records, closed = await conn.read_until_closed(GARBAGE_WAIT)
            else:  # stepwise: each recorded frame after the server's answer to the last
                for i, chunk in enumerate(captured):
                    try:
                        await conn.send(chunk)
                    except ConnectionClosedError:
                        closed = True
                        break
                    if i == len(captured) - 1:
                        more, closed = await conn.read_until_closed(3.0)
                        records += more
                        break
                    try:
                        records.append(await conn.receive(CALL_TIMEOUT))
                    except (ConnectionClosedError, trio.TooSlowError):
                        closed = True
                        break
            answer = ", ".join(_answer(r) for r in records) or "nothing"
            dispatched = [r for r in records if isinstance(r, (Response, ErrorReply))]
            if dispatched or any(isinstance(r, HandshakeResult) and r.ok for r in records):
                return {"outcome": "accepted", "answer": f"the replay was admitted: {answer}",
                        "frames": len(captured)}
            refused = [r for r in records if isinstance(r, (HandshakeResult, HandshakeReply))
                       and not r.ok]
            if refused:
                reason = refused[0].reason
                return {"outcome": "refused", "answer": f"{answer}; closed" if closed else answer,
                        "frames": len(captured), "counter": f"rejected_handshake{{reason={reason}}}"}
            return {"outcome": "no_answer", "answer": answer, "frames": len(captured)}
        finally:
            await conn.aclose()

    # -- role claim ------------------------------------------------------------------------

    async def _claim(self, attempt: dict) -> dict:
        role = attempt["role"]
        node_id = self.ctx.peer_ids[0] if self.ctx.peer_ids and role == kind_of(
            self.ctx.target) else 2
        conn = await self._connect()
        try:
            hs = await conn.handshake(self.ctx.identity(role, node_id))
            answer = ", ".join(_answer(r) for r in hs.records) or hs.reason
            if hs.ok:
                return {"outcome": "accepted", "answer": f"claimed {role}-{node_id}: {answer}"}
            if any(isinstance(r, (HandshakeReply, HandshakeResult)) and not r.ok
                   for r in hs.records):
                return {"outcome": "refused", "answer": answer,
                        "counter": f"rejected_handshake{{reason={hs.reason}}}"}
            return {"outcome": "no_answer", "answer": hs.reason}
        finally:
            await conn.aclose()

    # -- privileged ------------------------------------------------------------------------

    async def grant_holder(self) -> dict:
        """The region_lookup grant as a coordinator's Diagnostics shows it (a client may
        call Diagnostics): ``{"holder", "grant_id", "era"}`` or ``{}``."""
        found: dict = {}
        for addr in self.ctx.coordinators:
            try:
                reply = await self.call(DiagnosticsRequest(), address=addr, timeout=2.0)
            except Exception:  # noqa: BLE001, S112 - try the next coordinator
                continue
            if not isinstance(reply, Response):
                continue
            duty = (((reply.body.body or {}).get("grants") or {}).get("duties") or {}).get(
                "region_lookup") or {}
            if duty.get("holder"):
                found = {"holder": duty["holder"], "grant_id": duty.get("grant_id", ""),
                         "era": duty.get("era", 0)}
                if duty.get("held_by_self"):
                    return found
        return found

    async def request_for(self, attempt: dict) -> tuple[object, dict]:
        """The request body of a privileged attempt, and what it names (for the record)."""
        op, ctx = attempt["op"], self.ctx
        if op == "FailpointSetRequest":
            return FailpointSetRequest(attempt["failpoint"], attempt["spec"]), {}
        if op == "FailpointClearRequest":
            return FailpointClearRequest(""), {}
        if op == "SetFaultRules":
            rule = FaultRule(drop=1.0, label=ctx.marker)
            return SetFaultRules(1, (rule,)), {"rules": "drop everything"}
        if op == "RaftBatch":
            sender = ctx.peer_ids[0] if ctx.peer_ids else ctx.node_id + 1
            return RaftBatch(sender, ctx.node_id, []), {"from_node": sender}
        if op == "AdminRequest":
            return AdminRequest("transfer_leader", 1, store_id=ctx.node_id), {"admin": "transfer_leader"}
        if op == "AppendRequest":
            record = RecoveryRecord(ctx.marker, "compensated",
                                    f"{ctx.marker}: forged by the hostile nemesis")
            event = RootEvent(EventKind.RECOVERY_RECORDED, record, request_id=ctx.marker)
            return AppendRequest([event]), {"root_event": "RECOVERY_RECORDED"}
        if op == "GrantRequest":
            grant = await self.grant_holder()
            cmd = GrantCommand(GrantCommandKind.SEAL, grant.get("holder") or "coordinator-1",
                               grant.get("grant_id", ""), int(time.time() * 1000))
            return GrantRequest(cmd), {"seal": grant or "no holder seen"}
        if op == "PauseCatchUpRequest":
            return PauseCatchUpRequest(True), {}
        if op == "RemoveRegionRequest":
            return RemoveRegionRequest(2**31 - 1), {}
        raise ValueError(f"unknown privileged attempt {op}")

    async def _privileged(self, attempt: dict) -> dict:
        body, named = await self.request_for(attempt)
        reply = await self.call(body)
        rpc = type(body).__name__
        result: dict = dict(named)
        if isinstance(reply, ErrorReply) and reply.kind == "permission_denied":
            result.update(outcome="refused", answer=f"{reply.kind}/{reply.reason}",
                          counter=f"permission_denied{{role=client,rpc={rpc}}}")
        elif isinstance(reply, ErrorReply) and reply.reason in ("failpoints_disabled",
                                                                "unhandled_request_type"):
            result.update(outcome="refused", answer=f"{reply.kind}/{reply.reason}",
                          counter="permission_denied" if reply.reason == "failpoints_disabled"
                          else f"unhandled_requests{{type={rpc}}}")
        elif isinstance(reply, ErrorReply):  # the handler ran: the role check let it through
            result.update(outcome="accepted", answer=f"handler answered {reply.kind}/"
                          f"{reply.reason}: {reply.message}"[:200])
        else:
            result.update(outcome="accepted", answer=f"served: {type(getattr(reply, 'body', reply)).__name__}")
        return result


class HandshakeFailed(Exception):
    """The attacker's own (legitimate) client handshake did not go through."""


async def _read_reply(conn: RawConnection, request_id: int, timeout: float
                      ) -> tuple[list[object], bool]:
    """Records until the answer to ``request_id`` (or the server closes, or ``timeout``)."""
    records: list[object] = []
    with trio.move_on_after(timeout):
        while True:
            try:
                record = await conn.framed.receive_one()
            except (ConnectionClosedError, DecodeError):
                return records, True
            records.append(record)
            if isinstance(record, (Response, ErrorReply)) and record.request_id == request_id:
                return records, False
    return records, False


def _admitted(record: object) -> bool:
    return (isinstance(record, (HandshakeReply, HandshakeResult)) and record.ok) or \
        isinstance(record, (Response, ErrorReply))


def _garbage_counter(op: str) -> str:
    if op == "truncated":
        return "handshake_timeouts"
    if op == "huge-length":
        return "frame_too_large{phase=handshake}"
    return "protocol_errors"
