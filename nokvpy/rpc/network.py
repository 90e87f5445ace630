"""Where byte streams come from: TCP, TLS over any network, or (see `memory.py`) an in-memory
network.

Owns: the two-method `Network` interface (`open_listener`, `connect`) that is the ONLY
difference between a real and an in-memory deployment, `TlsNetwork` (the same streams inside
TLS with mutual certificate authentication, `nokvpy.rpc.tls`), and `secure(stream)`, the
step between opening a stream and its first protocol byte (the TLS handshake), which the
server and client run under their handshake deadline. The server and client share every
other line of protocol code. Never frames, encodes or authenticates records.
"""

from __future__ import annotations

import ssl
from typing import Protocol

import trio

from nokvpy.rpc.tls import TlsConfig, TlsStream


class Network(Protocol):
    async def open_listener(self, host: str, port: int) -> tuple[trio.abc.Listener, int]:
        """Listen on host:port (port 0 = pick one); return the listener and the bound port."""
        ...

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a stream to host:port; raise OSError when nobody listens."""
        ...


class TcpNetwork:
    """Real sockets (TCP_NODELAY is set by trio)."""

    async def open_listener(self, host: str, port: int) -> tuple[trio.abc.Listener, int]:
        listeners = await trio.open_tcp_listeners(port, host=host)
        for extra in listeners[1:]:
            await extra.aclose()
        listener = listeners[0]
        return listener, listener.socket.getsockname()[1]

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)


TCP = TcpNetwork()


class TlsListener(trio.abc.Listener[TlsStream]):
    """Accepts streams of `base` as server-side TLS streams. `accept` never waits for a
    handshake (the server's accept loop is one task); `secure` runs it."""

    def __init__(self, base: trio.abc.Listener, context: ssl.SSLContext) -> None:
        self.base = base
        self.context = context

    async def accept(self) -> TlsStream:
        stream = await self.base.accept()
        return TlsStream(stream, self.context, server_side=True)

    async def aclose(self) -> None:
        await self.base.aclose()


class TlsNetwork:
    """`base` (TCP by default) with TLS on every stream: listeners present `config.cert` and
    require a client certificate signed by `config.ca`; connections present `config.cert`
    and verify the server against `config.ca` and the dialled host."""

    def __init__(self, config: TlsConfig, base: Network | None = None) -> None:
        self.config = config
        self.base: Network = base if base is not None else TCP

    async def open_listener(self, host: str, port: int) -> tuple[trio.abc.Listener, int]:
        context = self.config.server_context  # TlsConfigError before anything listens
        listener, bound = await self.base.open_listener(host, port)
        return TlsListener(listener, context), bound

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        context = self.config.client_context
        stream = await self.base.connect(host, port)
        return TlsStream(stream, context, server_side=False,
                         server_hostname=self.config.server_hostname or host)


def with_tls(network: Network, config: TlsConfig | None) -> Network:
    """`network` with TLS on top when `config` is set (a TlsNetwork is left as it is)."""
    if config is None or isinstance(network, TlsNetwork):
        return network
    return TlsNetwork(config, network)


async def secure(stream: trio.abc.Stream) -> None:
    """Make a stream from `connect` or `accept` ready for the protocol: run the TLS handshake
    of a TLS stream (TlsHandshakeError when it fails); nothing for other streams."""
    if isinstance(stream, TlsStream):
        await stream.do_handshake()
