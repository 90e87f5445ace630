"""The ``hostile`` nemesis: an attacker on the cluster's network, and the check that it
changed nothing (issue 16, build item 6).

A ``hostile`` window aims at one process (a store, a coordinator or a metaroot peer: the
kind is drawn first, then the process, from the schedule's seed) and makes a seeded mix of
attempts (:func:`plan_attempts`), each of one kind:

* ``garbage``: raw TCP (inside TLS on a TLS cluster) before any handshake: random bytes, a
  frame header declaring a huge length, a truncated frame, valid msgpack of an unknown record
  tag; and after a real ``client`` handshake: a request whose body has an unknown tag (the
  server must answer ``invalid_argument/decode_error`` and count ``bad_requests``) or a frame
  that is not a record at all. The server must close the pre-handshake connections (at once,
  or at its handshake deadline for a truncated frame).
* ``replay``: a full handshake plus one request made with the client credential, recorded
  byte for byte, then sent again on a new connection, all at once (``pipelined``) or record
  by record (``stepwise``). The server's fresh nonce makes the recorded proof wrong: it must
  answer ``bad_hmac`` and never dispatch the request.
* ``role-claim``: the handshake claims ``store`` (and sometimes ``admin``, ``coordinator`` or
  ``metaroot``) proving the client credential; the attacker does not check the server's proof,
  so the claim reaches the server's check, which must refuse it (``bad_hmac``).
* ``privileged``: requests only other roles may send, with the client credential
  (``Identity(cluster_id, "client", n, credential=role_key(secret, "client"))``):
  FailpointSet (``exit`` at a point of the target's kind), FailpointClear, SetFaultRules
  dropping everything; to a store a RaftBatch and an AdminRequest; to a metaroot peer an
  AppendRequest of a RECOVERY_RECORDED event carrying the window's marker, a GrantRequest
  SEAL of the current ``region_lookup`` grant (holder read from a coordinator's Diagnostics,
  which a client may call) and a RaftBatch; to a coordinator PauseCatchUp and RemoveRegion.
  Each must be refused ``permission_denied``.

Every attempt and its answer is a nemesis ``event`` in the history (``window`` = the
window's marker, ``attempt``, ``kind``, ``op``, ``outcome`` = ``refused`` | ``accepted`` |
``no_answer``, ``answer``, and ``counter``: the server counter a refusal increments right
before the server sends it). The window's ``stop`` event carries what an admin connection
observed before the attempts and at the window's end (:func:`observe`): the target's pid,
its active failpoints and fault rules, the coordinator's catch-up pause, root's recovery
records naming a hostile marker (a metaroot snapshot and every coordinator's
ListTransitions), the grants live in root and the SEALED ones, the ``region_lookup`` holder,
and the refusal lines the target logged during the window (nokvpy.rpc's rate-limited
WARNINGs, with their suppressed counts).

:func:`window_effects` turns one window's attempts and observations into effects (each naming
the attempt that asked for it); :func:`check_history` judges every window of a history: an
effect makes the run INVALID (``checks["hostile"]``). The server's counters are not readable
over RPC (``RpcServer.status()`` is in no reply yet), so "the attempt reached the server" is
the typed refusal itself: the server increments ``permission_denied{role=client,rpc=..}``,
``rejected_handshake{reason=..}``, ``protocol_errors{..}`` or ``bad_requests{..}`` right
before it answers or closes, plus the log lines as corroboration.

Never heals anything (there is nothing to heal but the check) and never decides when a window
opens (:mod:`jepsen_lite.nemesis`).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from nokvpy.protocol.admin import (
    FailpointClearRequest,
    FailpointListRequest,
    FailpointSetRequest,
)
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    ListTransitionsRequest,
    PauseCatchUpRequest,
    RemoveRegionRequest,
)
from nokvpy.protocol.enums import EventKind
from nokvpy.protocol.grants import GrantCommand, GrantCommandKind, RetirementMode
from nokvpy.protocol.metaroot_rpc import AppendRequest, GrantRequest, SnapshotRequest
from nokvpy.protocol.records import RecoveryRecord, RootEvent
from nokvpy.protocol.store_rpc import AdminRequest
from nokvpy.rpc.framed import ConnectionClosedError
from nokvpy.rpc.identity import Identity, role_key
from nokvpy.rpc.rawconn import RawConnection
from nokvpy.wire import (
    DecodeError,
    ErrorReply,
    FaultRule,
    GetFaultRules,
    Handshake,
    HandshakeReply,
    HandshakeResult,
    Ping,
    Request,
    Response,
    SetFaultRules,
    encode,
    frame,
    registered_types,
)
from nokvpy.wire.codec import pack_raw
from nokvpy.wire.raft_msgs import RaftBatch

from .history import is_nemesis

KINDS = ("garbage", "replay", "privileged", "role-claim")
GARBAGE = ("random-bytes", "huge-length", "truncated", "unknown-tag", "unknown-body",
           "non-record")
PREAUTH_GARBAGE = ("random-bytes", "huge-length", "truncated", "unknown-tag")
REPLAYS = ("pipelined", "stepwise")
EXTRA_CLAIMS = ("admin", "coordinator", "metaroot")
HUGE_LENGTHS = (4097, 1 << 20, (64 << 20) + 1, (1 << 32) - 1)
FAILPOINTS: dict[str, tuple[tuple[str, str], ...]] = {
    "store": (("store.before_apply", "exit"), ("store.before_persist", "exit"),
              ("storage.before_commit", "exit"), ("driver.tick", "1*sleep(5000)")),
    "metaroot": (("metaroot.before_append", "exit"), ("storage.before_commit", "exit"),
                 ("driver.tick", "1*sleep(5000)")),
    "coordinator": (("coordinator.before_grant_issue", "exit"),
                    ("coordinator.before_root_append", "exit")),
}
PRIVILEGED: dict[str, tuple[str, ...]] = {
    "store": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules", "RaftBatch",
              "AdminRequest"),
    "metaroot": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules", "RaftBatch",
                 "AppendRequest", "GrantRequest"),
    "coordinator": ("FailpointSetRequest", "FailpointClearRequest", "SetFaultRules",
                    "PauseCatchUpRequest", "RemoveRegionRequest"),
}
# which privileged request would cause which effect (to name the attempt behind an effect)
CAUSES = {
    "process": ("FailpointSetRequest",),
    "failpoints": ("FailpointSetRequest", "FailpointClearRequest"),
    "fault_rules": ("SetFaultRules",),
    "recovery": ("AppendRequest",),
    "grant": ("GrantRequest",),
    "catch_up": ("PauseCatchUpRequest",),
}
MARKER_PREFIX = "hostile-"
ATTACKER_NODE_ID = 31337
CALL_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0
"""The servers' handshake deadline (RpcServer's default): a truncated frame is cut then."""
GARBAGE_WAIT = HANDSHAKE_TIMEOUT + 3.0
"""How long a garbage connection may stay open before it counts as not refused."""
READY_TIMEOUT = 15.0
OBSERVE_TIMEOUT = 6.0
LOG_TAIL_MAX = 4 * 1024 * 1024


def hostile_params(rng: random.Random, by_kind: dict[str, list[str]]) -> tuple[str | None, dict]:
    """(target, params) of a ``hostile`` window: a kind among store / coordinator / metaroot
    (each as likely), then one process of it; ``seed`` drives the attempt mix and ``marker``
    names the window (in forged events, so that root can be searched for them)."""
    kinds = [k for k in ("store", "coordinator", "metaroot") if by_kind.get(k)]
    if not kinds:
        return None, {"seed": rng.randrange(2**31), "marker": ""}
    kind = rng.choice(kinds)
    target = rng.choice(sorted(by_kind[kind]))
    seed = rng.randrange(2**31)
    return target, {"seed": seed, "marker": f"{MARKER_PREFIX}{seed:08x}"}


def kind_of(name: str | None) -> str:
    """The process kind of a name like ``store-2``."""
    return (name or "").rsplit("-", 1)[0]


def _unknown_tag(rng: random.Random) -> int:
    taken = set(registered_types())
    while True:
        tag = rng.randrange(1000, 60000)
        if tag not in taken:
            return tag


def plan_attempts(seed: int, kind: str) -> list[dict]:
    """The attempts of a window against a process of ``kind`` (deterministic in ``seed``):
    every kind of attempt at least once, in a seeded order; 2-4 garbage variants, 1-2
    replays, the ``store`` claim plus sometimes another, every privileged request of the
    target's kind (a seeded failpoint for FailpointSet)."""
    rng = random.Random(f"jepsen-lite-hostile-{seed}")
    out: list[dict] = []
    for op in rng.sample(GARBAGE, rng.randint(2, 4)):
        attempt: dict[str, Any] = {"kind": "garbage", "op": op}
        if op == "random-bytes":
            attempt["size"] = rng.randint(8, 256)
            attempt["bytes_seed"] = rng.randrange(2**31)
        elif op == "huge-length":
            attempt["length"] = rng.choice(HUGE_LENGTHS)
        elif op == "truncated":
            attempt["cut"] = rng.choice([0.25, 0.5, 0.75])
        elif op in ("unknown-tag", "unknown-body"):
            attempt["tag"] = _unknown_tag(rng)
        out.append(attempt)
    for op in rng.sample(REPLAYS, rng.randint(1, 2)):
        out.append({"kind": "replay", "op": op})
    out.append({"kind": "role-claim", "op": "claim-store", "role": "store"})
    if rng.random() < 0.5:
        role = rng.choice(EXTRA_CLAIMS)
        out.append({"kind": "role-claim", "op": f"claim-{role}", "role": role})
    for op in PRIVILEGED.get(kind, PRIVILEGED["store"]):
        attempt = {"kind": "privileged", "op": op}
        if op == "FailpointSetRequest":
            fp, spec = rng.choice(FAILPOINTS.get(kind, FAILPOINTS["store"]))
            attempt.update(failpoint=fp, spec=spec)
        out.append(attempt)
    rng.shuffle(out)
    for i, attempt in enumerate(out):
        attempt["attempt"] = f"a{i + 1:02d}"
    return out


# -- the attacker --------------------------------------------------------------------------


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
            return len(payload).to_bytes(4, "big") + payload[:cut]
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


# -- observing the target ------------------------------------------------------------------


_REFUSAL = re.compile(r" nokvpy\.rpc (WARNING|INFO) (refused |closing connection from )")
_SUPPRESSED = re.compile(r"\((\d+) similar lines suppressed")


def count_refusal_lines(text: str) -> dict:
    """nokvpy.rpc refusal lines in a log excerpt: ``{"lines": n, "suppressed": m}`` (each
    line may say how many like it were held back by the rate limit since the last one)."""
    lines = suppressed = 0
    for line in text.splitlines():
        if _REFUSAL.search(line):
            lines += 1
            m = _SUPPRESSED.search(line)
            if m:
                suppressed += int(m.group(1))
    return {"lines": lines, "suppressed": suppressed}


def _marked(records: Iterable[Any]) -> list[dict]:
    out = []
    for r in records or ():
        tid = str(getattr(r, "transition_id", ""))
        evidence = str(getattr(r, "failure_evidence", ""))
        if MARKER_PREFIX in tid or MARKER_PREFIX in evidence:
            out.append({"transition_id": tid, "action": str(getattr(r, "action", "")),
                        "failure_evidence": evidence[:200]})
    return out


async def _retry(fn: Callable[[], Any], timeout: float) -> Any:
    """``await fn()`` until it succeeds or ``timeout`` passes (then raise the last error)."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            return await fn()
        except Exception:
            if trio.current_time() >= deadline:
                raise
            await trio.sleep(0.3)


async def observe(control: Any, target: str, *, log_offset: int | None = None,
                  timeout: float = OBSERVE_TIMEOUT) -> dict:
    """What an admin connection sees of the cluster (see the module docstring); a field is
    None when it could not be asked (``errors`` says why)."""
    rpc = control.rpc
    addr = control.address(target)
    obs: dict[str, Any] = {"alive": bool(control.alive(target)), "errors": {}}
    cluster = getattr(control, "cluster", None)
    obs["pid"] = cluster.pid(target) if cluster is not None else None

    async def ask(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return await _retry(fn, timeout)
        except Exception as exc:  # noqa: BLE001 - recorded: the field stays None
            obs["errors"][name] = f"{type(exc).__name__}: {exc}"[:200]
            return None

    reply = await ask("failpoints", lambda: rpc.call(addr, FailpointListRequest(), 2.0))
    obs["failpoints"] = dict(reply.active) if reply is not None else None
    reply = await ask("fault_rules", lambda: rpc.call(addr, GetFaultRules(), 2.0))
    obs["fault_rules"] = None if reply is None else [
        {"label": r.label, "drop": r.drop, "delay": r.delay, "src": sorted(r.src),
         "dst": sorted(r.dst)} for r in reply.rules]
    # coordinators: the region_lookup holder, and the target's catch-up pause
    holder: dict | None = None
    for name in control.names("coordinator"):
        diag = await ask(f"diag:{name}", lambda n=name: rpc.call(
            control.address(n), DiagnosticsRequest(), 2.0))
        if diag is None:
            continue
        body = diag.body or {}
        duty = ((body.get("grants") or {}).get("duties") or {}).get("region_lookup") or {}
        if duty.get("held_by_self"):
            holder = {"coordinator": name, "holder": duty.get("holder", ""),
                      "grant_id": duty.get("grant_id", ""), "era": duty.get("era", 0)}
        elif holder is None and duty.get("holder"):
            holder = {"coordinator": "", "holder": duty.get("holder", ""),
                      "grant_id": duty.get("grant_id", ""), "era": duty.get("era", 0)}
        if name == target:
            obs["catch_up_paused"] = bool(body.get("paused"))
            obs["pause_requests"] = int((body.get("counters") or {}).get("pause_requests", 0))
    obs["lookup_grant"] = holder
    # root: a snapshot of a metaroot peer (the leader when one says so)
    leader = None
    try:
        leader = await control.metaroot_leader()
    except Exception:  # noqa: BLE001, S110 - any peer will do
        pass
    peers = ([leader] if leader else []) + [n for n in control.names("metaroot") if n != leader]
    obs["root"] = None
    for name in peers:
        snap = await ask(f"snapshot:{name}", lambda n=name: rpc.call(
            control.address(n), SnapshotRequest(), 3.0))
        if snap is None:
            continue
        cp = snap.checkpoint
        obs["root"] = {
            "peer": name,
            "index": int(getattr(snap.token, "index", 0)),
            "grants": [{"grant_id": g.grant_id, "holder": g.holder, "era": g.era,
                        "issued_at_ms": g.issued_at_ms, "predecessors": list(g.predecessors)}
                       for g in cp.grants],
            "sealed": [{"grant_id": r.grant_id, "holder": r.holder, "era": r.era,
                        "retired_at_ms": r.retired_at_ms}
                       for r in cp.retirements if r.mode == RetirementMode.SEALED_EXACT],
            "recovery_records": _marked(cp.recovery_records),
        }
        break
    listed: list[dict] | None = None
    for addr_c in control.coordinator_addrs():
        reply = await ask(f"transitions:{addr_c}", lambda a=addr_c: rpc.call(
            a, ListTransitionsRequest(include_history=True), 3.0))
        if reply is not None:
            listed = (listed or []) + _marked(reply.recovery_records or [])
    obs["listed_recovery_records"] = listed
    # the target's log: refusal lines since the window began
    log_path = cluster.log_path(target) if cluster is not None else None
    if log_path is not None:
        try:
            size = log_path.stat().st_size
            obs["log_offset"] = size
            if log_offset is not None and size >= log_offset:
                with open(log_path, "rb") as fh:
                    fh.seek(max(log_offset, size - LOG_TAIL_MAX))
                    text = fh.read().decode("utf-8", "replace")
                obs["log_refusals"] = count_refusal_lines(text)
        except OSError as exc:
            obs["errors"]["log"] = str(exc)[:200]
    if not obs["errors"]:
        del obs["errors"]
    return obs


# -- judging a window ----------------------------------------------------------------------


def _culprits(attempts: Sequence[dict], effect: str) -> str:
    ops = CAUSES.get(effect, ())
    named = [f"{a['attempt']} ({a['kind']} {a['op']}"
             + (f" {a['failpoint']}={a['spec']}" if a.get("failpoint") else "") + ")"
             for a in attempts if a.get("op") in ops]
    return ", ".join(named) if named else "no attempt of this window asked for it"


def window_effects(attempts: Sequence[dict], before: dict | None, after: dict | None,
                   target: str | None = None) -> dict:
    """Judge one window: ``{"effects": [{"attempt", "effect"}], "unchecked": [..],
    "notes": [..], "refused": n, "reached": bool}``. An effect is anything the attempts
    changed (or an attempt that was not refused); ``unchecked`` lists what could not be
    observed. Pure: works on the recorded attempts and observations."""
    effects: list[dict] = []
    unchecked: list[str] = []
    notes: list[str] = []

    def effect(kind: str | None, text: str, attempt: dict | None = None) -> None:
        if attempt is not None:
            name = (f"{attempt.get('attempt')} ({attempt.get('kind')} {attempt.get('op')}"
                    + (f" {attempt['failpoint']}={attempt['spec']}"
                       if attempt.get("failpoint") else "") + ")")
        else:
            name = _culprits(attempts, kind or "")
        effects.append({"attempt": name, "effect": text})

    for a in attempts:
        if a.get("outcome") == "accepted":
            effect(None, f"not refused: {a.get('answer')}", a)
    refused = sum(1 for a in attempts if a.get("outcome") == "refused")
    who = target or "the target"
    if not before or not after:
        unchecked.append("observations (the window has no before/after observation)")
        return {"effects": effects, "unchecked": unchecked, "notes": notes,
                "refused": refused, "reached": refused > 0}
    # the process (a churn store fault may stop or restart a store: a note then; an attempt
    # that could have done it, FailpointSet, is an effect of its own when not refused)
    down = None
    if not after.get("alive"):
        down = f"{who} is not running at the window's end (pid {before.get('pid')})"
    elif before.get("pid") and after.get("pid") and before["pid"] != after["pid"]:
        down = f"{who} was restarted during the window (pid {before['pid']} -> {after['pid']})"
    if down and after.get("churn_overlap") and kind_of(target) == "store":
        notes.append(f"{down}; a churn store fault ran meanwhile")
    elif down:
        effect("process", down)
    # failpoints
    fb, fa = before.get("failpoints"), after.get("failpoints")
    if fa is None or fb is None:
        if after.get("alive"):
            unchecked.append("failpoints")
    else:
        changed = {k: v for k, v in fa.items() if fb.get(k) != v}
        cleared = sorted(k for k in fb if k not in fa)
        if changed:
            effect("failpoints", f"failpoint(s) {changed} active on {who}")
        if cleared:
            effect("failpoints", f"failpoint(s) {cleared} cleared on {who}")
    # fault rules
    rb, ra = before.get("fault_rules"), after.get("fault_rules")
    if ra is None or rb is None:
        if after.get("alive"):
            unchecked.append("fault_rules")
    else:
        hostile = [r for r in ra if str(r.get("label", "")).startswith(MARKER_PREFIX)]
        if hostile:
            effect("fault_rules", f"{who} holds the attacker's fault rules "
                   f"{[r['label'] for r in hostile]}")
        elif ra != rb:
            effect("fault_rules", f"{who}'s fault rules changed: {rb} -> {ra}")
    # root: recovery records with a hostile marker
    root_b, root_a = before.get("root"), after.get("root")
    listed_a = after.get("listed_recovery_records")
    seen_before = {r["transition_id"] for r in (root_b or {}).get("recovery_records", [])}
    seen_before |= {r["transition_id"] for r in before.get("listed_recovery_records") or []}
    forged = [r for r in ((root_a or {}).get("recovery_records", []) + (listed_a or []))
              if r["transition_id"] not in seen_before]
    if root_a is None and listed_a is None:
        unchecked.append("recovery_records")
    elif forged:
        ids = sorted({r["transition_id"] for r in forged})
        effect("recovery", f"root holds RECOVERY_RECORDED event(s) {ids} with a hostile marker")
    # grants: a grant live at the start sealed since, without a same-instant successor
    if root_b is None or root_a is None:
        unchecked.append("grants")
    else:
        live = {g["grant_id"]: g for g in root_b.get("grants", [])}
        for r in root_a.get("sealed", []):
            if r["grant_id"] not in live:
                continue
            successor = [g for g in root_a.get("grants", [])
                         if r["grant_id"] in g.get("predecessors", [])
                         and g.get("issued_at_ms") == r.get("retired_at_ms")
                         and g.get("holder") == r.get("holder")]
            if successor:
                notes.append(f"grant {r['grant_id']} re-issued in place as "
                             f"{successor[0]['grant_id']} by its holder")
                continue
            effect("grant", f"grant {r['grant_id']} of {r['holder']} (era {r['era']}) was "
                   f"sealed during the window")
    gb, ga = before.get("lookup_grant"), after.get("lookup_grant")
    if gb and ga:
        if gb.get("grant_id") == ga.get("grant_id") and gb.get("holder") == ga.get("holder"):
            notes.append(f"region_lookup held by {ga.get('holder')} throughout (era "
                         f"{ga.get('era')})")
        else:
            notes.append(f"region_lookup moved {gb.get('holder')} ({gb.get('grant_id')}) -> "
                         f"{ga.get('holder')} ({ga.get('grant_id')}), not by a seal")
    # a coordinator's catch-up pause
    if "catch_up_paused" in after:
        if after.get("catch_up_paused") and not before.get("catch_up_paused"):
            effect("catch_up", f"{who} stopped applying root deltas (catch-up paused)")
        elif int(after.get("pause_requests", 0)) > int(before.get("pause_requests", 0)):
            effect("catch_up", f"{who} served PauseCatchUp ({before.get('pause_requests')} -> "
                   f"{after.get('pause_requests')} requests)")
    if refused == 0:
        unchecked.append("no attempt was refused by the server (none reached it)")
    return {"effects": effects, "unchecked": unchecked, "notes": notes, "refused": refused,
            "reached": refused > 0}


def window_verdict(judged: dict) -> Any:
    if judged["effects"]:
        return False
    if judged["unchecked"]:
        return "unknown"
    return True


# -- running a window ----------------------------------------------------------------------


@dataclass
class HostileWindow:
    """One window's state, from its opening to its check."""

    target: str | None
    params: dict
    marker: str = ""
    kind: str = ""
    plan: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    before: dict | None = None
    skipped: str = ""
    log_offset: int | None = None

    def __post_init__(self) -> None:
        self.marker = self.params.get("marker") or f"{MARKER_PREFIX}{self.params.get('seed', 0):08x}"
        self.kind = kind_of(self.target)
        self.plan = plan_attempts(int(self.params.get("seed", 0)), self.kind)


def attack_context(control: Any, window: HostileWindow) -> AttackContext | None:
    """The attacker's knowledge, from a real control (None for a control that has no cluster
    spec, e.g. a fake)."""
    spec = getattr(control, "spec", None)
    if spec is None or window.target is None or not hasattr(control, "rpc"):
        return None
    secret = spec.secret.encode() if spec.secret else b""
    if not secret:
        return None
    same = [control.node_id(n) for n in control.names(window.kind) if n != window.target]
    return AttackContext(spec.cluster_id, role_key(secret, "client"), window.target,
                         control.address(window.target), control.node_id(window.target),
                         window.marker, list(control.coordinator_addrs()), same)


async def _wait_ready(control: Any, target: str, timeout: float) -> bool:
    deadline = trio.current_time() + timeout
    while True:
        if control.alive(target):
            try:
                await control.rpc.call(control.address(target), FailpointListRequest(), 1.0)
                return True
            except Exception:  # noqa: BLE001, S110 - starting
                pass
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(0.2)


async def open_window(control: Any, recorder: Any, window: HostileWindow,
                      clock: Callable[[], float], log: Callable[[str], None] | None = None
                      ) -> dict:
    """Observe, then make every planned attempt (the pre-handshake garbage concurrently, the
    others one after another), recording each as a nemesis ``event`` as it completes."""
    log = log or (lambda msg: None)
    ctx = attack_context(control, window)
    if ctx is None:
        window.skipped = "the control has no authenticated cluster (no spec or secret)"
        return {"skipped": window.skipped, "window": window.marker}
    if not await _wait_ready(control, window.target, READY_TIMEOUT):
        window.skipped = f"{window.target} did not answer within {READY_TIMEOUT:g} s"
        return {"skipped": window.skipped, "window": window.marker}
    cluster = getattr(control, "cluster", None)
    try:
        window.log_offset = cluster.log_path(window.target).stat().st_size
    except (AttributeError, OSError):
        window.log_offset = None
    window.before = await observe(control, window.target)
    attacker = Attacker(ctx, clock)

    async def one(attempt: dict) -> None:
        result = await attacker.run(attempt)
        entry = {"window": window.marker, "at": round(clock(), 3), **{
            k: v for k, v in attempt.items() if k not in ("bytes_seed",)}, **result}
        window.attempts.append(entry)
        recorder.nemesis("event", "hostile", window.target, **json_safe(entry))
        if entry["outcome"] != "refused":
            log(f"hostile {window.target} {entry['attempt']} {entry['kind']} {entry['op']}: "
                f"{entry['outcome']}: {entry['answer']}")

    slow = [a for a in window.plan if a["kind"] == "garbage"]
    rest = [a for a in window.plan if a["kind"] != "garbage"]

    async def in_order() -> None:
        for attempt in rest:
            await one(attempt)

    async with trio.open_nursery() as nursery:
        for attempt in slow:
            nursery.start_soon(one, attempt)
        nursery.start_soon(in_order)
    return {"window": window.marker, "attempts": len(window.attempts),
            "refused": sum(1 for a in window.attempts if a["outcome"] == "refused")}


async def close_window(control: Any, window: HostileWindow, churn_overlap: bool = False
                       ) -> dict:
    """The window's check: observe again and judge (the ``stop`` event's value).
    ``churn_overlap``: a churn window ran meanwhile (its store faults may stop or restart
    a store target: then that is a note, not an effect)."""
    out: dict[str, Any] = {"window": window.marker, "kind": window.kind}
    if window.skipped:
        out["skipped"] = window.skipped
        return out
    if window.before is None and not window.attempts:  # cut short before the attempts
        out["skipped"] = "the run ended before the window's first attempt"
        return out
    after = None
    if window.before is not None:
        after = await observe(control, window.target, log_offset=window.log_offset)
        if churn_overlap:
            after["churn_overlap"] = True
    judged = window_effects(window.attempts, window.before, after, window.target)
    out.update(before=window.before, after=after, attempts=len(window.attempts),
               refused=judged["refused"], effects=judged["effects"],
               unchecked=judged["unchecked"], notes=judged["notes"],
               valid=window_verdict(judged))
    return json_safe(out)


# -- the run's check -----------------------------------------------------------------------


def _value(event: dict) -> dict:
    value = event.get("value")
    return value if isinstance(value, dict) else {}


def check_history(events: Iterable[dict]) -> dict:
    """``checks["hostile"]``: every ``hostile`` window of a history judged again from its
    recorded attempts and observations (:func:`window_effects`). INVALID when a window had an
    effect; unknown when a window could not be checked or no window made an attempt."""
    windows: dict[str, dict] = {}
    order: list[str] = []
    for event in events:
        if not is_nemesis(event):
            continue
        value = _value(event)
        if value.get("fault") != "hostile":
            continue
        marker = value.get("window") or value.get("marker") or ""
        if not marker:
            continue
        w = windows.get(marker)
        if w is None:
            w = windows[marker] = {"target": value.get("target"), "attempts": [], "stop": None,
                                   "start_ns": event.get("time")}
            order.append(marker)
        if event.get("f") == "event":
            w["attempts"].append(value)
        elif event.get("f") == "stop":
            w["stop"] = value
    by_kind = {k: {"made": 0, "refused": 0} for k in KINDS}
    effects: list[dict] = []
    unchecked: list[dict] = []
    skipped: list[dict] = []
    attempts = 0
    judged_windows = 0
    for marker in order:
        w = windows[marker]
        for a in w["attempts"]:
            row = by_kind.setdefault(a.get("kind", "?"), {"made": 0, "refused": 0})
            row["made"] += 1
            row["refused"] += a.get("outcome") == "refused"
        attempts += len(w["attempts"])
        stop = w["stop"]
        if stop is None:
            unchecked.append({"window": marker, "target": w["target"],
                              "what": "the window never stopped (no check)"})
            continue
        if stop.get("skipped"):
            skipped.append({"window": marker, "target": w["target"], "why": stop["skipped"]})
            continue
        judged_windows += 1
        judged = window_effects(w["attempts"], stop.get("before"), stop.get("after"),
                                w["target"])
        for e in judged["effects"]:
            effects.append({"window": marker, "target": w["target"], **e})
        for u in judged["unchecked"]:
            unchecked.append({"window": marker, "target": w["target"], "what": u})
    kinds = ", ".join(f"{k} {v['refused']}/{v['made']}" for k, v in by_kind.items())
    result: dict[str, Any] = {"windows": len(order), "checked": judged_windows,
                              "skipped": skipped, "attempts": attempts, "by_kind": by_kind,
                              "effects": effects, "unchecked": unchecked}
    if effects:
        e = effects[0]
        more = f" (+{len(effects) - 1} more)" if len(effects) > 1 else ""
        result["valid"] = False
        result["note"] = (f"window {e['window']} on {e['target']}: attempt {e['attempt']}: "
                          f"{e['effect']}{more}")
    elif unchecked or not judged_windows:
        result["valid"] = "unknown"
        why = unchecked[0] if unchecked else {"what": "no window was checked"}
        result["note"] = (f"{why.get('window', '')} {why.get('target') or ''}: "
                          f"{why['what']}").strip()
    else:
        result["valid"] = True
        result["note"] = (f"{judged_windows} windows, {attempts} attempts refused/made by kind: "
                          f"{kinds}; 0 effects")
    return result


def json_safe(value: Any) -> Any:
    """`value` as JSON-serialisable data (bytes decoded, unknown objects as str); shared with
    the nemesis module."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


__all__ = [
    "KINDS",
    "AttackContext",
    "Attacker",
    "HostileWindow",
    "check_history",
    "close_window",
    "count_refusal_lines",
    "hostile_params",
    "observe",
    "open_window",
    "plan_attempts",
    "window_effects",
    "window_verdict",
]
