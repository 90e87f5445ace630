"""Where byte streams come from: TCP, or (see `memory.py`) an in-memory network.

Owns: the two-method `Network` interface (`open_listener`, `connect`) that is the ONLY
difference between a real and an in-memory deployment; the server and client share every
other line of protocol code. Never frames, encodes or authenticates anything.
"""

from __future__ import annotations

from typing import Protocol

import trio


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
