"""How the RPC client applies fault rules (`nokvpy.rpc.faults`) to what it sends and receives.

Owns: the client side's verdicts and what it does with them: on an outgoing request
(:func:`outbound`: count a drop or a blackhole, sleep a delay), on writing that request
(:func:`send`: damage the framed bytes when the rule corrupts), on an outgoing cancel
(:func:`cancel_dropped`) and on a received reply (:func:`reply_dropped`: matched by the type
of the request it answers), with the fault counters of the client (`fault_dropped`,
`fault_blackholed`, `fault_corrupted`). The client (`nokvpy.rpc.client`) calls these only
while its `FaultRules` hold rules, so a process without rules pays nothing for them.

Never decides what a rule does to which message (`nokvpy.rpc.faults` does), never drops a
request or a reply itself (it says so, and the client leaves the request unsent or the reply
unread), and never opens, closes or reads a connection.
"""

from __future__ import annotations

from typing import Protocol

import trio

from nokvpy.rpc.faults import CANCEL, REPLY, FaultRules, FaultVerdict
from nokvpy.rpc.framed import FramedStream
from nokvpy.rpc.identity import Counters, Identity, PeerIdentity


class FaultedClient(Protocol):
    """What these functions read off the client (`nokvpy.rpc.client.RpcClient`)."""

    identity: Identity
    faults: FaultRules
    counters: Counters


class FaultedConn(Protocol):
    """What they read off one of its connections."""

    addr: str
    peer: PeerIdentity | None
    framed: FramedStream | None


def peer_name(conn: FaultedConn) -> str:
    """The server's name as the rules know it (its address until the handshake named it)."""
    return conn.peer.name if conn.peer is not None else conn.addr


async def outbound(client: FaultedClient, conn: FaultedConn, request: object,
                   one_way: bool) -> FaultVerdict:
    """Apply outbound fault rules to a request: count a drop, sleep a delay; the caller
    drops the request when `verdict.drop`, else sends it with :func:`send`."""
    verdict = client.faults.decide(client.identity.name, peer_name(conn),
                                   type(request).__name__, one_way=one_way)
    if verdict.drop:
        client.counters.inc("fault_blackholed" if verdict.blackhole else "fault_dropped")
        return verdict
    if verdict.delay:
        await trio.sleep(verdict.delay)
    return verdict


def send(client: FaultedClient, conn: FaultedConn, data: bytes, verdict: FaultVerdict) -> None:
    """Write one framed request as `verdict` says (damaged after framing, so that the
    receiver's frame check sees it). Raises ConnectionClosedError."""
    framed = conn.framed
    assert framed is not None
    if verdict.corrupt:
        data = client.faults.corrupt_frame(data)
        client.counters.inc("fault_corrupted")
    framed.enqueue(data)


def cancel_dropped(client: FaultedClient, conn: FaultedConn) -> bool:
    """Whether a rule swallows the cancel the client is about to send (counted)."""
    if client.faults.decide(client.identity.name, peer_name(conn), "Cancel", kind=CANCEL).drop:
        client.counters.inc("fault_blackholed")
        return True
    return False


def reply_dropped(client: FaultedClient, conn: FaultedConn, what: type | None) -> bool:
    """Inbound fault rules on a reply to a request of type `what` (counted when dropped)."""
    verdict = client.faults.decide(peer_name(conn), client.identity.name,
                                   getattr(what, "__name__", ""), kind=REPLY, sending=False)
    if verdict.drop:
        client.counters.inc("fault_blackholed" if verdict.blackhole else "fault_dropped")
        return True
    return False
