"""Telling a caller that awaited the trio client from another event loop what to use instead.

Owns: `WrongEventLoopError` and `require_trio`, which the client calls at the top of every
operation (and on `async with`), so that a client awaited under asyncio (or outside any
loop) fails with a message naming `SyncClient` instead of trio's "must be called from async
context". Never changes what a call does under trio.
"""

from __future__ import annotations

import trio


class WrongEventLoopError(RuntimeError):
    """The async client was awaited outside trio (under asyncio, for example)."""


def explain(library: str | None) -> str:
    where = f"under {library}" if library else "outside trio"
    return (f"nokvpy.Client is a trio client and was awaited {where}: run it under trio "
            "(trio.run), or use nokvpy.SyncClient, the blocking client (from asyncio, call it "
            "through asyncio.to_thread); see docs/client.md")


def current_library() -> str | None:
    """"asyncio" when an asyncio loop runs in this thread, else None (only called on the
    failure path: asyncio is not imported otherwise)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def require_trio() -> None:
    """Raise WrongEventLoopError unless trio runs in this thread (one cheap check at the top
    of every client operation)."""
    if not trio.lowlevel.in_trio_run():
        raise WrongEventLoopError(explain(current_library()))
