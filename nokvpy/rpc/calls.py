"""The caller's side of one pending RPC: where the client's reader delivers its replies.

Owns: the slot of a unary call (`UnaryCall`: its response or error, and the event its caller
waits on), the slot of a server stream (`StreamCall`: the items received but not yet read, up
to a limit, then its end or error), the iterator the caller reads a stream with
(`RpcStream`, which turns a deadline into `RpcTimeoutError`), and what counts as the server's
deadline reply (`is_deadline_reply`). The client (`nokvpy.rpc.client`) creates the slots,
keeps them by request id and feeds them from its connection's reader. Never touches a
connection, never sends (a cancel is the client's), and never retries.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from nokvpy.protocol.enums import ErrorKind
from nokvpy.rpc.errors import RemoteError, RpcTimeoutError


def is_deadline_reply(e: BaseException | None) -> bool:
    """Whether `e` is the server's answer that the request's deadline passed."""
    return isinstance(e, RemoteError) and e.kind == ErrorKind.TIMEOUT and (
        e.reason == "deadline_exceeded"
    )


class UnaryCall:
    """A pending unary call: its reply or error, and the event its caller waits on."""

    __slots__ = ("event", "result", "error", "done", "what")

    def __init__(self, what: type | None = None) -> None:
        self.what = what  # the request's type (fault rules match replies by its name)
        self.event = trio.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.done = False

    def on_response(self, body: object) -> None:
        self.result = body
        self.done = True
        self.event.set()

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self.event.set()

    def on_item(self, body: object) -> bool:
        return False  # a unary call cannot take stream items


class StreamCall:
    """A pending stream: the items received and not yet read (at most `limit`), its end or
    error, and the event a waiting reader sleeps on."""

    __slots__ = ("items", "error", "done", "wake", "limit", "what")

    def __init__(self, limit: int, what: type | None = None) -> None:
        self.what = what
        self.items: deque[object] = deque()
        self.error: BaseException | None = None
        self.done = False
        self.wake: trio.Event | None = None
        self.limit = limit

    def _notify(self) -> None:
        wake = self.wake
        if wake is not None:
            self.wake = None
            wake.set()

    def on_item(self, body: object) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(body)
        self._notify()
        return True

    def on_end(self, body: object = None) -> None:
        self.done = True
        self._notify()

    def on_response(self, body: object) -> None:
        self.on_item(body)  # a unary handler answered: a stream of one item
        self.on_end()

    def on_error(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self.done = True
        self._notify()


class RpcStream:
    """Async iterator over the records a server streams back (see `RpcClient.stream`)."""

    def __init__(self, slot: StreamCall, addr: str, what: str, deadline: float,
                 timeout: float | None) -> None:
        self._slot = slot
        self._addr = addr
        self._what = what
        self._deadline = deadline
        self._timeout = timeout

    def __aiter__(self) -> RpcStream:
        return self

    async def __anext__(self) -> Any:
        slot = self._slot
        while True:
            if slot.items:
                return slot.items.popleft()
            if slot.done:
                if slot.error is not None:
                    err = slot.error
                    if is_deadline_reply(err):
                        raise RpcTimeoutError(self._addr, self._what, self._timeout, sent=True)
                    raise err
                raise StopAsyncIteration
            wake = slot.wake = trio.Event()
            with trio.move_on_at(self._deadline):
                await wake.wait()
                continue
            raise RpcTimeoutError(self._addr, self._what, self._timeout, sent=True)
