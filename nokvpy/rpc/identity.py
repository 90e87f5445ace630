"""Who a process is on the network, and small address and counter helpers.

Owns: `Identity` (with the cluster secret, never sent), `PeerIdentity` (what a handshake
proved about the other side), address parsing and the `Counters` bag the server and client
expose. Never opens sockets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """This process: `node_kind` is "store", "coordinator", "metaroot", "client", ...

    `secret` is the cluster secret; when set, both sides must prove they hold it.
    """

    cluster_id: str
    node_kind: str
    node_id: int
    secret: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The node name fault rules match on, e.g. "store-2"."""
        return f"{self.node_kind}-{self.node_id}"


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
