"""Admin handlers every process answers: failpoint set / clear / list.

Owns: registering the failpoint admin requests (`nokvpy.protocol.admin`) on an `RpcServer`.
Never decides where failpoints are placed (call sites do) and never holds state of its own
(the registry lives in `nokvpy.failpoints`).
"""

from __future__ import annotations

from nokvpy import failpoints
from nokvpy.protocol.admin import (
    FailpointClearRequest,
    FailpointListReply,
    FailpointListRequest,
    FailpointSetRequest,
)
from nokvpy.protocol.enums import ErrorKind
from nokvpy.rpc import RemoteError


def register_failpoint_admin(server) -> None:
    """Answer FailpointSet / FailpointClear / FailpointList on `server`."""

    async def on_set(req: FailpointSetRequest, ctx) -> FailpointListReply:
        if req.name not in failpoints.KNOWN:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "unknown_failpoint",
                              f"no failpoint named {req.name!r} (known: "
                              f"{', '.join(sorted(failpoints.KNOWN))})")
        try:
            failpoints.set(req.name, req.spec)
        except ValueError as exc:
            raise RemoteError(ErrorKind.INVALID_ARGUMENT, "bad_failpoint", str(exc)) from None
        return failpoint_list()

    async def on_clear(req: FailpointClearRequest, ctx) -> FailpointListReply:
        if req.name:
            failpoints.clear(req.name)
        else:
            failpoints.clear_all()
        return failpoint_list()

    async def on_list(req: FailpointListRequest, ctx) -> FailpointListReply:
        return failpoint_list()

    server.register(FailpointSetRequest, on_set)
    server.register(FailpointClearRequest, on_clear)
    server.register(FailpointListRequest, on_list)


def failpoint_list() -> FailpointListReply:
    active = failpoints.list_active()
    return FailpointListReply({k: str(v) for k, v in active.items()},
                              {k: int(v) for k, v in failpoints.hits().items()})
