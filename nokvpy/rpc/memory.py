"""An in-memory network for tests under `trio.testing.MockClock`.

Owns: `MemoryNetwork`, a drop-in replacement for TCP: pass `network=net` to `RpcServer` and
`RpcClient` and they listen on / connect to in-memory addresses ("host:port") with
`trio.testing.memory_stream_pair` streams. Everything above the byte stream (framing,
handshake, deadlines, faults) is the same code as over TCP. Never touches the OS.
"""

from __future__ import annotations

import trio
import trio.testing


class MemoryListener(trio.abc.Listener):
    def __init__(self, network: MemoryNetwork, key: tuple[str, int]) -> None:
        self._network = network
        self._key = key
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](128)
        self._closed = False

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("memory listener closed") from None

    def _deliver(self, stream: trio.abc.Stream) -> None:
        try:
            self._send.send_nowait(stream)
        except trio.WouldBlock:
            raise ConnectionRefusedError(f"memory listener {self._key} backlog full") from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._listeners.pop(self._key, None)
            self._send.close()
            # Streams accepted by nobody are closed so the connecting side sees EOF.
            while True:
                try:
                    stream = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await trio.aclose_forcefully(stream)
            self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """A namespace of in-memory listeners keyed by (host, port)."""

    def __init__(self, first_port: int = 20000) -> None:
        self._listeners: dict[tuple[str, int], MemoryListener] = {}
        self._next_port = first_port

    async def open_listener(self, host: str, port: int) -> tuple[trio.abc.Listener, int]:
        await trio.lowlevel.checkpoint()
        if port == 0:
            while (host, self._next_port) in self._listeners:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        key = (host, port)
        if key in self._listeners:
            raise OSError(f"memory network: {host}:{port} already in use")
        listener = MemoryListener(self, key)
        self._listeners[key] = listener
        return listener, port

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get((host, port))
        if listener is None:
            raise ConnectionRefusedError(f"memory network: nothing listens on {host}:{port}")
        client_end, server_end = trio.testing.memory_stream_pair()
        listener._deliver(server_end)
        return client_end
