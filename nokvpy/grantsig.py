"""Grant evidence: metaroot signs every grant it issues or renews; clients check it.

Owns: the cluster's grant-signing key (Ed25519, derived from the cluster secret:
`signing_key`, `public_key`), `sign(cluster_id, grant)` and `verify(...)`, which a client runs
on the evidence a coordinator attaches to a STRONG answer: the signature checks under the
cluster's public key, the grant names the answering coordinator as holder, covers the duty,
and has not expired on the client's clock. The signed bytes are a fixed prefix, the cluster id
and the grant's wire encoding (deterministic for one grant). Never does I/O; uses the
`cryptography` package (Ed25519), never hand-written crypto.

A client that holds the secret derives the public key; one given only a role credential
(`nokvpy.rpc.identity.role_key(secret, "client")`) is given the public key too
(`public_key(secret)`, `Client(grant_public_key=...)`). A coordinator cannot forge
evidence: it never holds the signing key unless it is given the cluster secret, which local
clusters do give it (processes hold the secret): the evidence then proves that metaroot
issued the grant, not that the coordinator is honest. With TLS certificates per process the
signing key could live with metaroot alone.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nokvpy.protocol.grants import AuthorityGrant, Duty, GrantEvidence
from nokvpy.wire import encode

PREFIX = b"nokvpy-grant-v1\0"


class EvidenceError(Exception):
    """The evidence does not check; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def signing_key(secret: bytes) -> Ed25519PrivateKey:
    seed = hmac.new(secret, b"nokvpy-grant-signing-v1", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(secret: bytes) -> bytes:
    return signing_key(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _message(cluster_id: str, grant: AuthorityGrant) -> bytes:
    return PREFIX + cluster_id.encode() + b"\0" + encode(grant)


def sign(key: Ed25519PrivateKey, cluster_id: str, grant: AuthorityGrant) -> bytes:
    return key.sign(_message(cluster_id, grant))


def verify(public: bytes, cluster_id: str, evidence: object, *, holder_prefix: str,
           duty: Duty, now_ms: int) -> AuthorityGrant:
    """The grant, if `evidence` proves that metaroot granted `duty` to a holder named
    `holder_prefix`#... that has not expired at `now_ms`; else EvidenceError."""
    if not isinstance(evidence, GrantEvidence) or not isinstance(evidence.grant, AuthorityGrant):
        raise EvidenceError("grant_evidence_missing", "the answer carries no grant evidence")
    g = evidence.grant
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            bytes(evidence.signature), _message(cluster_id, g))
    except (InvalidSignature, ValueError, TypeError):
        raise EvidenceError("grant_signature_invalid",
                            f"grant {g.grant_id} is not signed by the cluster's key") from None
    if not str(g.holder).startswith(holder_prefix + "#"):
        raise EvidenceError("grant_holder_mismatch",
                            f"grant {g.grant_id} is held by {g.holder}, not {holder_prefix}")
    if g.bound_for(duty) is None:
        raise EvidenceError("grant_duty_missing", f"grant {g.grant_id} does not cover {duty}")
    if g.expires_at_ms <= now_ms:
        raise EvidenceError("grant_expired",
                            f"grant {g.grant_id} expired at {g.expires_at_ms} (now {now_ms})")
    return g
