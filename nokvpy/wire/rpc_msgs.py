"""Records of the RPC layer: handshake, request/response envelopes, admin and fault rules.

Owns: tags 100-149. The envelopes wrap service records (`body: object`), so any registered
record can travel as a request or response. Never holds behaviour (that is `nokvpy.rpc`).

Connection life: the client sends `Handshake`, the server answers `HandshakeReply` (its own
nonce and its proof over the client's nonce), the client sends `HandshakeProof` (its proof
over the server's nonce) and the server ends the handshake with `HandshakeResult`. After that
the client sends `Request` / `Cancel`; the server sends `Response`, `ErrorReply`,
`StreamItem`, `StreamEnd`. Request id 0 marks a one-way request (no reply of any kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nokvpy.protocol.base import wire_type

# ---- handshake (100-104) ------------------------------------------------------------------


@wire_type(100)
@dataclass(slots=True, frozen=True)
class Handshake:
    cluster_id: str
    node_kind: str
    node_id: int
    protocol_version: int
    nonce: bytes
    hmac: bytes = b""


@wire_type(101)
@dataclass(slots=True, frozen=True)
class HandshakeReply:
    ok: bool
    reason: str = ""
    cluster_id: str = ""
    node_kind: str = ""
    node_id: int = 0
    protocol_version: int = 0
    nonce: bytes = b""
    hmac: bytes = b""  # HMAC-SHA256(secret, transcript of the client's nonce), or b""


@wire_type(102)
@dataclass(slots=True, frozen=True)
class HandshakeProof:
    """The client's answer to the server's challenge: its HMAC over the server's nonce."""

    hmac: bytes = b""  # HMAC-SHA256(secret, transcript of the server's nonce), or b""


@wire_type(103)
@dataclass(slots=True, frozen=True)
class HandshakeResult:
    """The server's verdict on a handshake; `reason` names a refusal (bad_hmac, cluster...)."""

    ok: bool
    reason: str = ""


# ---- envelopes (110-119) ------------------------------------------------------------------


@wire_type(110)
@dataclass(slots=True, frozen=True)
class Request:
    """A call: `body` is the request record; `request_id` matches the reply (0: one-way, never
    answered) and `deadline_ms` is the budget the callee may spend."""

    request_id: int  # 0 = one-way
    deadline_ms: int  # remaining budget when sent, relative; 0 = no deadline
    body: object


@wire_type(111)
@dataclass(slots=True, frozen=True)
class Response:
    """The successful answer to the `Request` with the same `request_id`."""

    request_id: int
    body: object


@wire_type(112)
@dataclass(slots=True, frozen=True)
class ErrorReply:
    """The failed answer to the `Request` with the same `request_id`: `kind` and `reason`
    are stable codes, `details` carries hints (the leader, a retry class)."""

    request_id: int
    kind: str  # an ErrorKind value for service errors; "timeout"/"internal"/... from rpc
    reason: str = ""
    message: str = ""
    details: dict[str, object] = field(default_factory=dict)  # hints: leader, retry class...


@wire_type(113)
@dataclass(slots=True, frozen=True)
class StreamItem:
    """One item of a streamed answer to the `Request` with the same `request_id`; items
    arrive in order and the stream ends with a `StreamEnd` or an `ErrorReply`."""

    request_id: int
    body: object


@wire_type(114)
@dataclass(slots=True, frozen=True)
class StreamEnd:
    """The end of a streamed answer: no more `StreamItem`s for `request_id`, and the
    request is finished on both sides."""

    request_id: int


@wire_type(115)
@dataclass(slots=True, frozen=True)
class Cancel:
    """The caller gave up on `request_id`: the callee cancels its handler. Never answered;
    a reply already on its way is dropped by the caller."""

    request_id: int


# ---- built-in admin (120-129) -------------------------------------------------------------


@wire_type(120)
@dataclass(slots=True, frozen=True)
class Ping:
    """Answered inline by every server's reader task with a `Pong` (liveness): no handler
    task and no deadline scope, the cheapest round trip there is."""

    payload: bytes = b""


@wire_type(121)
@dataclass(slots=True, frozen=True)
class Pong:
    """The answer to a `Ping`: its payload back, and the answering node's name."""

    payload: bytes = b""
    node_name: str = ""


@wire_type(122)
@dataclass(slots=True, frozen=True)
class Echo:
    """Answered by every server with the same record, from a spawned handler task (unlike
    `Ping`, which is answered inline): a health check and benchmark of the full path."""

    payload: bytes = b""


# ---- fault rules (130-139) ----------------------------------------------------------------


@wire_type(130)
@dataclass(slots=True, frozen=True)
class FaultRule:
    """What happens to the messages from `src` to `dst` (node names like "store-2").

    Empty `src` / `dst` / `message_types` match anything. `message_types` holds request body
    class names (a reply matches by the type of the request it answers). `drop` is a
    probability in [0, 1] (requests and replies); the delay is `delay + uniform(0, jitter)`
    seconds (requests). On one-way requests, by the receiver: `duplicate` is the probability
    of delivering it twice (the copy right after it, or after uniform(0, `hold`) s);
    `reorder` the probability of holding it back until the next request on its connection
    (at most uniform(0, `hold` or 0.05) s). `corrupt` is the probability that the sender
    damages bytes of the framed message (requests and replies). `blackhole` swallows every record
    of every kind. `nokvpy.rpc.faults` says where each acts. Fields after `label` were added
    later and have defaults, so that a rule from an older sender still decodes.
    """

    src: frozenset[str] = frozenset()
    dst: frozenset[str] = frozenset()
    message_types: frozenset[str] = frozenset()
    drop: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    label: str = ""
    duplicate: float = 0.0
    reorder: float = 0.0
    hold: float = 0.0
    corrupt: float = 0.0
    blackhole: bool = False


@wire_type(131)
@dataclass(slots=True, frozen=True)
class SetFaultRules:
    """Replace the receiving node's fault rules (answered with `FaultRulesState`)."""

    seed: int = 0
    rules: tuple[FaultRule, ...] = ()


@wire_type(132)
@dataclass(slots=True, frozen=True)
class GetFaultRules:
    pass


@wire_type(133)
@dataclass(slots=True, frozen=True)
class FaultRulesState:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    dropped: int = 0
    delayed: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    blackholed: int = 0
