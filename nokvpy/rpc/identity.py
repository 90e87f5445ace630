"""Who a process is on the network, and small address and counter helpers.

Owns: `Identity` (with the cluster secret, never sent), `PeerIdentity` (what a handshake
proved about the other side), address parsing and the `Counters` bag the server and client
expose. Never opens sockets.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field

# The roles a connection authenticates as (its node kind). Each role has its own credential,
# derived from the cluster secret: a process holding the secret can prove (and check) any
# role; a client given only its role's credential can prove that role and no other.
ROLES = ("metaroot", "coordinator", "store", "client", "admin")


def role_key(secret: bytes, role: str) -> bytes:
    """The credential of `role` in the cluster whose secret is `secret`."""
    return hmac.new(secret, b"nokvpy-role-v1\0" + role.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Identity:
    """This process: `node_kind` is its role ("store", "coordinator", "metaroot", "client",
    "admin"); `name` is what fault rules and logs use.

    `secret` is the cluster secret (servers and local operators hold it): when set, both sides
    must prove the credential of the connecting side's role. `credential` is one role's
    credential alone (`role_key(secret, node_kind)`), for a client that must not hold the
    secret: it can connect as that role only, and cannot serve.
    """

    cluster_id: str
    node_kind: str
    node_id: int
    secret: bytes | None = field(default=None, repr=False)
    credential: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The node name fault rules match on, e.g. "store-2"."""
        return f"{self.node_kind}-{self.node_id}"

    @property
    def authenticates(self) -> bool:
        return bool(self.secret or self.credential)

    def own_key(self) -> bytes | None:
        """The credential this side proves when it connects as `node_kind`."""
        if self.credential:
            return self.credential
        return role_key(self.secret, self.node_kind) if self.secret else None

    def key_for(self, role: str) -> bytes | None:
        """Server side: the credential a peer claiming `role` must prove (None: no secret,
        or `role` is not a role)."""
        if not self.secret or role not in ROLES:
            return None
        return role_key(self.secret, role)


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The other side of a connection, as established by the handshake."""

    cluster_id: str
    node_kind: str
    node_id: int
    address: str = ""  # remote address as seen on the socket, for logs

    @property
    def name(self) -> str:
        return f"{self.node_kind}-{self.node_id}"


def parse_addr(addr: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port). ValueError with the bad address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad address {addr!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Counters(Counter):
    """A dict of counters keyed "name" or "name{label=value,...}"."""

    def inc(self, name: str, n: int = 1, **labels: object) -> None:
        if labels:
            name = name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
        self[name] += n
