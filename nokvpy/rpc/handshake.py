"""The connection handshake: cluster membership, protocol version, mutual authentication.

Owns: the four-message exchange (Handshake, HandshakeReply, HandshakeProof, HandshakeResult)
and the HMAC transcript. The connecting side claims a role (its node kind: metaroot,
coordinator, store, client, admin); the key of the exchange is that role's credential,
`role_key(cluster secret, role)`. Each side sends a fresh 32-byte nonce and proves the key with
HMAC-SHA256(key, direction | nonce-of-the-other-side | cluster id | own node name), so a proof
cannot be replayed on another connection or reflected to the other direction, and a peer
holding one role's credential cannot claim another role (a client cannot be `store-2`). The
server derives every role's credential from the secret; a client needs only its own. With no
secret configured on both sides the proofs are empty and skipped (roles are then unproven); a
secret on only one side is refused. Never sends requests and never encrypts: with TLS
configured (nokvpy.rpc.tls) it runs inside the TLS stream; without it, run on a private
network.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from nokvpy.rpc.errors import HandshakeRefusedError
from nokvpy.rpc.framed import FramedStream
from nokvpy.rpc.identity import ROLES, Identity, PeerIdentity
from nokvpy.wire import Handshake, HandshakeProof, HandshakeReply, HandshakeResult

PROTOCOL_VERSION = 1
NONCE_SIZE = 32


class HandshakeRejectedError(Exception):
    """Server side: this client was refused (already told, connection to be closed)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def proof(secret: bytes, role: str, nonce: bytes, cluster_id: str, name: str) -> bytes:
    transcript = b"\0".join(
        [b"nokvpy-rpc-v1", role.encode(), nonce, cluster_id.encode(), name.encode()]
    )
    return hmac.new(secret, transcript, hashlib.sha256).digest()


Admit = Callable[[PeerIdentity], "tuple[str, str] | None"]


async def server_handshake(framed: FramedStream, me: Identity, remote: str,
                           admit: Admit | None = None) -> PeerIdentity:
    """Run the server side; the proven peer, or HandshakeRejectedError (the peer was told).

    `admit(peer)` is asked once the peer has proven itself, before it is told it is in: None
    admits it, `(reason, detail)` refuses it with that reason (e.g. a connection cap)."""
    async def refuse(reason: str, detail: str, *, final: bool = False) -> None:
        try:
            if final:
                await framed.send_now(HandshakeResult(False, reason))
            else:
                await framed.send_now(HandshakeReply(False, reason))
        except Exception:  # noqa: S110 - best effort: the connection is being dropped anyway
            pass
        raise HandshakeRejectedError(reason, detail)

    hello = await framed.receive_one()
    if type(hello) is not Handshake:
        await refuse("unexpected_message", f"expected Handshake, got {type(hello).__name__}")
    assert isinstance(hello, Handshake)
    if hello.protocol_version != PROTOCOL_VERSION:
        await refuse(
            "version_mismatch",
            f"peer speaks protocol {hello.protocol_version}, we speak {PROTOCOL_VERSION}",
        )
    if hello.cluster_id != me.cluster_id:
        await refuse(
            "cluster_mismatch", f"peer cluster {hello.cluster_id!r}, ours {me.cluster_id!r}"
        )
    if len(hello.nonce) != NONCE_SIZE:
        await refuse("bad_nonce", f"nonce of {len(hello.nonce)} bytes")
    peer = PeerIdentity(hello.cluster_id, hello.node_kind, hello.node_id, remote)
    key = me.key_for(hello.node_kind)
    if me.secret and key is None:
        await refuse("unknown_role", f"{peer.name} claims the role {hello.node_kind!r}; roles "
                     f"are {', '.join(ROLES)}")
    my_nonce = secrets.token_bytes(NONCE_SIZE)
    my_proof = b""
    if key:
        my_proof = proof(key, "server", hello.nonce, me.cluster_id, me.name)
    await framed.send_now(
        HandshakeReply(
            True, "", me.cluster_id, me.node_kind, me.node_id, PROTOCOL_VERSION, my_nonce, my_proof
        )
    )
    answer = await framed.receive_one()
    if type(answer) is not HandshakeProof:
        await refuse(
            "unexpected_message", f"expected HandshakeProof, got {type(answer).__name__}",
            final=True,
        )
    assert isinstance(answer, HandshakeProof)
    if key:
        expected = proof(key, "client", my_nonce, me.cluster_id, peer.name)
        if not answer.hmac:
            await refuse("missing_hmac", f"{peer.name} sent no credential proof", final=True)
        if not hmac.compare_digest(expected, answer.hmac):
            await refuse("bad_hmac", f"{peer.name} failed the proof of the "
                         f"{hello.node_kind} credential", final=True)
    elif answer.hmac:
        await refuse(
            "secret_mismatch",
            f"{peer.name} authenticates but this server has no cluster secret configured",
            final=True,
        )
    if admit is not None:
        refusal = admit(peer)
        if refusal is not None:
            await refuse(*refusal, final=True)
    await framed.send_now(HandshakeResult(True))
    return peer


async def client_handshake(framed: FramedStream, me: Identity, addr: str) -> PeerIdentity:
    my_nonce = secrets.token_bytes(NONCE_SIZE)
    await framed.send_now(
        Handshake(me.cluster_id, me.node_kind, me.node_id, PROTOCOL_VERSION, my_nonce)
    )
    reply = await framed.receive_one()
    if type(reply) is not HandshakeReply:
        raise HandshakeRefusedError(addr, "unexpected_message", type(reply).__name__)
    assert isinstance(reply, HandshakeReply)
    if not reply.ok:
        raise HandshakeRefusedError(addr, reply.reason or "refused", "refused by server")
    if reply.cluster_id != me.cluster_id:
        raise HandshakeRefusedError(
            addr, "cluster_mismatch", f"server cluster {reply.cluster_id!r}, ours {me.cluster_id!r}"
        )
    if reply.protocol_version != PROTOCOL_VERSION:
        raise HandshakeRefusedError(addr, "version_mismatch", f"server {reply.protocol_version}")
    if len(reply.nonce) != NONCE_SIZE:
        raise HandshakeRefusedError(addr, "bad_nonce", f"{len(reply.nonce)} bytes")
    server = PeerIdentity(reply.cluster_id, reply.node_kind, reply.node_id, addr)
    key = me.own_key()
    if key:
        expected = proof(key, "server", my_nonce, me.cluster_id, server.name)
        if not reply.hmac:
            raise HandshakeRefusedError(addr, "missing_hmac", "server sent no credential proof")
        if not hmac.compare_digest(expected, reply.hmac):
            raise HandshakeRefusedError(addr, "bad_hmac", "server failed the credential proof")
        my_proof = proof(key, "client", reply.nonce, me.cluster_id, me.name)
    else:
        if reply.hmac:
            raise HandshakeRefusedError(
                addr, "secret_mismatch", "server authenticates but no cluster secret is configured"
            )
        my_proof = b""
    await framed.send_now(HandshakeProof(my_proof))
    result = await framed.receive_one()
    if type(result) is not HandshakeResult:
        raise HandshakeRefusedError(addr, "unexpected_message", type(result).__name__)
    assert isinstance(result, HandshakeResult)
    if not result.ok:
        raise HandshakeRefusedError(addr, result.reason or "refused", "refused by server")
    return server
