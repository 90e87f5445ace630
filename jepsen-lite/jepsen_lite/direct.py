"""Operations sent straight at one process, bypassing the client's routing and retries.

Owns :class:`DirectStoreClient`: ``get`` / ``put`` / ``compare_and_swap`` on one region
through one named store (a client whose route cache still names that store, for example the
leader that was just paused), with the same mapping of failures to typed client errors as
``nokvpy.client.Client`` (so the workloads' ``invoke`` and :func:`jepsen_lite.workloads.perform`
record them as ordinary operations: a refused request is ``fail``, a write whose outcome is
unknown is ``info``). One attempt per call: no re-routing, no failover, no retry.

Never chooses the store or the region (the lease nemesis does), never records history events
(``workloads.perform`` does).
"""

from __future__ import annotations

from typing import Any

from nokvpy.client.errors import (
    DeadlineExceededError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    UnavailableError,
)
from nokvpy.protocol import RegionDescriptor
from nokvpy.protocol.store_rpc import (
    CasRequest,
    GetRequest,
    KvContext,
    PutRequest,
    ReadMode,
)
from nokvpy.rpc import RemoteError, RpcClient, RpcTimeoutError, RpcUnavailableError


class DirectStoreClient:
    """The KV calls the workloads use, sent to ``addr`` (store ``store_id``) for the region
    ``descriptor`` with a LINEARIZABLE read mode, exactly once each."""

    def __init__(self, rpc: RpcClient, addr: str, store_id: int, descriptor: RegionDescriptor,
                 *, timeout: float = 2.0):
        self.rpc = rpc
        self.addr = addr
        self.store_id = store_id
        self.descriptor = descriptor
        self.timeout = timeout

    def _ctx(self) -> KvContext:
        d = self.descriptor
        return KvContext(d.region_id, d.epoch, self.store_id, ReadMode.LINEARIZABLE)

    async def _call(self, request: Any, *, write: bool, timeout: float | None) -> Any:
        where = f"store {self.store_id} ({self.addr}), region {self.descriptor.region_id}"
        try:
            return await self.rpc.call(self.addr, request, timeout=timeout or self.timeout)
        except RemoteError as exc:
            if exc.kind == "rejected":
                adm = exc.details.get("admission")
                raise RejectedError(f"{exc.reason}: {exc.message}", exc.reason, adm,
                                    exc.details) from None
            if write:
                raise OutcomeUnknownError(f"write to {where} failed with {exc.kind}/"
                                          f"{exc.reason}: {exc.message}") from None
            raise NokvError(f"{exc.kind}: {exc.message}", exc.reason, exc.details) from None
        except RpcUnavailableError as exc:
            if write and exc.outcome_unknown:
                raise OutcomeUnknownError(f"connection to {where} lost during a write") from None
            raise UnavailableError(f"{where} unreachable: {exc}") from None
        except RpcTimeoutError as exc:
            if write and exc.sent:
                raise OutcomeUnknownError(f"write to {where} timed out") from None
            raise DeadlineExceededError(f"request to {where} timed out "
                                        f"({'sent' if exc.sent else 'never sent'})") from None

    async def get(self, key: bytes, timeout: float | None = None) -> bytes | None:
        reply = await self._call(GetRequest(self._ctx(), key), write=False, timeout=timeout)
        return reply.value

    async def put(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        reply = await self._call(PutRequest(self._ctx(), key, value), write=True, timeout=timeout)
        return reply.applied_index

    async def compare_and_swap(self, key: bytes, expected: bytes | None, new: bytes | None,
                               timeout: float | None = None) -> tuple[bool, bytes | None]:
        reply = await self._call(CasRequest(self._ctx(), key, expected, new), write=True,
                                 timeout=timeout)
        return reply.succeeded, reply.current


__all__ = ["DirectStoreClient"]
