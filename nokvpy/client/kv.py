"""The async KV client: routes through coordinators, executes on stores, retries by reason.

Owns: the route cache (descriptors ordered by start key, the leader store of each region and
a descriptor-revision floor per key range), the retry policy per admission reason, deadlines,
and turning remote errors into typed client errors. Never retries a write whose outcome is
unknown: it raises `OutcomeUnknownError` instead.

Retry policy (each attempt re-reads the route cache):

| reason                              | action                                                  |
|-------------------------------------|---------------------------------------------------------|
| NOT_LEADER with a leader hint       | switch to the hinted store, retry at once               |
| NOT_LEADER without a hint           | try the next peer's store after a short backoff         |
| EPOCH_MISMATCH, KEY_NOT_IN_REGION,  | drop the cached region, raise the revision floor of the |
| NOT_HOSTED, STORE_NOT_MATCH         | key to (old revision + 1), re-route                     |
| QUEUE_SATURATED, SCHEDULER_DEGRADED | exponential backoff with jitter                         |
| store unreachable (never sent)      | next peer's store, backoff                              |
| INVALID, CANCELED, TIMED_OUT, STALE | raise                                                   |
| write sent, reply lost / deadline   | raise OutcomeUnknownError (reads simply retry)          |
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import trio
from sortedcontainers import SortedDict

from nokvpy.client.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)
from nokvpy.protocol import Freshness, RegionDescriptor, RootToken
from nokvpy.protocol.coordinator_rpc import (
    GetRegionByKeyRequest,
    RouteReply,
    ScanRegionsReply,
    ScanRegionsRequest,
)
from nokvpy.protocol.store_rpc import (
    MAX_KEY_SIZE as MAX_KEY,
)
from nokvpy.protocol.store_rpc import (
    MAX_VALUE_SIZE as MAX_VALUE,
)
from nokvpy.protocol.store_rpc import (
    BatchGetRequest,
    CasRequest,
    DeleteRequest,
    GetRequest,
    KvContext,
    PutRequest,
    ReadMode,
    ScanRequest,
    WriteReply,
)
from nokvpy.rpc import Identity, RemoteError, RpcClient, RpcTimeoutError, RpcUnavailableError

REROUTE_REASONS = {"EPOCH_MISMATCH", "KEY_NOT_IN_REGION", "NOT_HOSTED", "STORE_NOT_MATCH"}
BACKOFF_REASONS = {"QUEUE_SATURATED", "SCHEDULER_DEGRADED"}


@dataclass(slots=True)
class CachedRoute:
    descriptor: RegionDescriptor
    leader_store_id: int


class Client:
    """Async client. `coordinators`: addresses; `timeout`: default deadline per operation."""

    def __init__(
        self,
        coordinators: list[str],
        *,
        cluster_id: str = "nokv",
        secret: bytes | None = None,
        timeout: float = 10.0,
        rpc: RpcClient | None = None,
        rng: random.Random | None = None,
    ):
        if not coordinators:
            raise ValueError("at least one coordinator address is needed")
        self.coordinators = list(coordinators)
        self.timeout = timeout
        self.rpc = rpc or RpcClient(Identity(cluster_id, "client", 0, secret))
        self._routes: SortedDict = SortedDict()  # start_key -> CachedRoute
        self._floors: dict[bytes, int] = {}  # region start key -> min descriptor revision
        self._stores: dict[int, str] = {}
        self._coord_index = 0
        self.rng = rng or random.Random()
        self.stats = {"route_refreshes": 0, "retries": 0, "not_leader": 0}

    async def aclose(self) -> None:
        await self.rpc.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # ---- routes ----------------------------------------------------------------------

    async def call_coordinator(self, request: Any, timeout: float | None = None) -> Any:
        """Call a coordinator, failing over across the configured addresses."""
        last: Exception | None = None
        n = len(self.coordinators)
        for i in range(n):
            addr = self.coordinators[(self._coord_index + i) % n]
            try:
                reply = await self.rpc.call(addr, request, timeout=timeout or self.timeout)
                self._coord_index = (self._coord_index + i) % n
                return reply
            except (RpcUnavailableError, RpcTimeoutError) as exc:
                last = exc
            except RemoteError as exc:
                failover = (exc.kind in ("not_leader", "unavailable")
                            or bool(exc.details.get("try_another_coordinator")))
                if failover and i < n - 1:
                    last = exc
                    continue
                raise
        raise UnavailableError(f"no coordinator reachable ({', '.join(self.coordinators)}): {last}")

    async def route(
        self,
        key: bytes,
        freshness: Freshness = Freshness.BOUNDED,
        max_root_lag: int | None = None,
        required_root_token: RootToken | int | None = None,
        required_descriptor_revision: int | None = None,
    ) -> RouteReply:
        """The region holding `key`, with the coordinator's freshness witness.

        Raises RouteRejectedError when the coordinator cannot answer at `freshness`."""
        check_key(key)
        if isinstance(required_root_token, int):
            required_root_token = RootToken(0, required_root_token)
        req = GetRegionByKeyRequest(key, freshness, required_root_token, max_root_lag,
                                    required_descriptor_revision)
        try:
            reply = await self.call_coordinator(req)
        except RemoteError as exc:
            raise RouteRejectedError(f"route for {key!r} rejected: {exc.reason}: {exc.message}",
                                     exc.reason, exc.details.get("witness"), exc.details) from None
        if reply.store_addrs:
            self._stores.update(reply.store_addrs)
        if reply.descriptor is not None:
            self._remember(reply.descriptor, reply.leader_store_id)
        return reply

    async def scan_regions(self, start: bytes = b"", end: bytes = b"", limit: int = 1000,
                           freshness: Freshness = Freshness.BEST_EFFORT) -> ScanRegionsReply:
        return await self.call_coordinator(ScanRegionsRequest(start, end, limit, freshness))

    def _remember(self, d: RegionDescriptor, leader_store_id: int) -> None:
        # drop cached regions overlapping the new one
        for start in list(self._routes.irange(minimum=None, maximum=d.end_key or None,
                                              inclusive=(True, False))):
            cached = self._routes[start].descriptor
            if overlaps(cached, d):
                del self._routes[start]
        if leader_store_id == 0 or d.peer_on(leader_store_id) is None:
            leader_store_id = d.voters()[0].store_id if d.voters() else 0
        self._routes[d.start_key] = CachedRoute(d, leader_store_id)

    def _cached(self, key: bytes) -> CachedRoute | None:
        idx = self._routes.bisect_right(key) - 1
        if idx < 0:
            return None
        route = self._routes.peekitem(idx)[1]
        return route if route.descriptor.contains(key) else None

    def _invalidate(self, route: CachedRoute) -> None:
        d = route.descriptor
        self._routes.pop(d.start_key, None)
        self._floors[d.start_key] = max(self._floors.get(d.start_key, 0), d.revision + 1)

    def _floor_for(self, key: bytes) -> int | None:
        best = None
        for start, floor in self._floors.items():
            if start <= key:
                best = max(best or 0, floor)
        return best

    async def _locate(self, key: bytes) -> CachedRoute:
        route = self._cached(key)
        if route is not None:
            return route
        self.stats["route_refreshes"] += 1
        floor = self._floor_for(key)
        try:
            reply = await self.route(key, Freshness.BOUNDED, required_descriptor_revision=floor)
        except RouteRejectedError as exc:
            if exc.reason not in ("required_descriptor", "root_lag_exceeded", "range_change_pending"):
                raise
            reply = await self.route(key, Freshness.BEST_EFFORT)
        if reply.descriptor is None:
            raise NokvError(f"no region holds key {key!r} yet (cluster not bootstrapped?)",
                            "not_found")
        route = self._cached(key)
        assert route is not None
        return route

    async def _store_addr(self, store_id: int) -> str:
        addr = self._stores.get(store_id)
        if addr is None:
            from nokvpy.protocol.coordinator_rpc import ListStoresRequest

            reply = await self.call_coordinator(ListStoresRequest())
            for s in reply.stores:
                self._stores[s.store_id] = s.address
            addr = self._stores.get(store_id)
        if addr is None:
            raise UnavailableError(f"store {store_id} has no known address")
        return addr

    # ---- execution -------------------------------------------------------------------

    async def _execute(self, key: bytes, build, *, write: bool, read_mode: ReadMode = ReadMode.LINEARIZABLE,
                       timeout: float | None = None) -> Any:
        deadline = trio.current_time() + (timeout or self.timeout)
        backoff = 0.01
        last_reason = ""
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise DeadlineExceededError(f"deadline exceeded after {attempt - 1} attempts "
                                            f"(last: {last_reason or 'none'})")
            route = await self._locate(key)
            d = route.descriptor
            store_id = route.leader_store_id
            try:
                addr = await self._store_addr(store_id)
            except UnavailableError:
                self._invalidate(route)
                await trio.sleep(min(backoff, remaining))
                continue
            ctx = KvContext(d.region_id, d.epoch, store_id, read_mode)
            try:
                return await self.rpc.call(addr, build(ctx), timeout=remaining)
            except RemoteError as exc:
                last_reason = exc.reason
                if exc.kind == "timeout" and exc.reason == "outcome_unknown":
                    raise OutcomeUnknownError(f"write to region {d.region_id} may or may not "
                                              f"have applied: {exc.message}") from None
                if exc.kind != "rejected":
                    if write:
                        raise OutcomeUnknownError(f"write to region {d.region_id} failed with "
                                                  f"{exc.kind}/{exc.reason}: {exc.message}") from None
                    raise NokvError(f"{exc.kind}: {exc.message}", exc.reason, exc.details) from None
                adm = exc.details.get("admission")
                self.stats["retries"] += 1
                if exc.reason == "NOT_LEADER":
                    self.stats["not_leader"] += 1
                    hint = getattr(adm, "leader_store_id", 0) if adm is not None else 0
                    if hint and hint != store_id and d.peer_on(hint) is not None:
                        route.leader_store_id = hint
                        continue
                    route.leader_store_id = next_store(d, store_id)
                    await trio.sleep(min(backoff, remaining))
                    backoff = min(backoff * 2, 0.5)
                    continue
                if exc.reason in REROUTE_REASONS:
                    if attempt > 2:  # the route did not settle at once: the range is moving
                        await trio.sleep(min(backoff, max(remaining, 0)))
                        backoff = min(backoff * 2, 0.5)
                    self._invalidate(route)
                    if adm is not None and getattr(adm, "descriptor", None) is not None:
                        fresh = adm.descriptor
                        if fresh.contains(key) and fresh.revision >= d.revision:
                            self._remember(fresh, getattr(adm, "leader_store_id", 0))
                    continue
                if exc.reason in BACKOFF_REASONS:
                    await trio.sleep(min(backoff * (1 + self.rng.random()), remaining))
                    backoff = min(backoff * 2, 1.0)
                    continue
                raise RejectedError(f"{exc.reason}: {exc.message}", exc.reason, adm,
                                    exc.details) from None
            except RpcUnavailableError as exc:
                last_reason = "store_unreachable"
                if write and exc.outcome_unknown:
                    raise OutcomeUnknownError(f"connection to store {store_id} lost during a "
                                              f"write; it may or may not have applied") from None
                route.leader_store_id = next_store(d, store_id)
                await trio.sleep(min(backoff, max(remaining, 0)))
                backoff = min(backoff * 2, 0.5)
            except RpcTimeoutError as exc:
                if write and exc.sent:
                    raise OutcomeUnknownError(f"write to region {d.region_id} timed out; it may "
                                              f"or may not have applied") from None
                raise DeadlineExceededError(f"request for {key!r} timed out "
                                            f"({'sent' if exc.sent else 'never sent'})") from None

    async def get(self, key: bytes, read_mode: ReadMode = ReadMode.LINEARIZABLE,
                  timeout: float | None = None) -> bytes | None:
        check_key(key)
        reply = await self._execute(key, lambda ctx: GetRequest(ctx, key), write=False,
                                    read_mode=read_mode, timeout=timeout)
        return reply.value

    async def batch_get(self, keys: list[bytes], timeout: float | None = None) -> dict[bytes, bytes | None]:
        out: dict[bytes, bytes | None] = {}
        pending = list(dict.fromkeys(keys))
        for k in pending:
            check_key(k)
        while pending:
            route = await self._locate(pending[0])
            group = [k for k in pending if route.descriptor.contains(k)]
            reply = await self._execute(group[0], lambda ctx, g=group: BatchGetRequest(ctx, g),
                                        write=False, timeout=timeout)
            out.update(zip(group, reply.values, strict=True))
            pending = [k for k in pending if k not in out]
        return out

    async def scan(self, start: bytes = b"", end: bytes = b"", limit: int = 100,
                   timeout: float | None = None) -> list[tuple[bytes, bytes]]:
        """Keys in [start, end) in order, across region boundaries, at most `limit`."""
        out: list[tuple[bytes, bytes]] = []
        cursor = start
        while len(out) < limit:
            route = await self._locate(cursor)
            region_end = route.descriptor.end_key
            reply = await self._execute(
                cursor, lambda ctx, c=cursor: ScanRequest(ctx, c, end, limit - len(out)),
                write=False, timeout=timeout)
            out.extend(reply.pairs)
            if reply.more or not region_end or (end and region_end >= end):
                break
            cursor = region_end
        return out[:limit]

    async def put(self, key: bytes, value: bytes, timeout: float | None = None) -> int:
        check_key(key)
        check_value(value)
        reply: WriteReply = await self._execute(key, lambda ctx: PutRequest(ctx, key, value),
                                                write=True, timeout=timeout)
        return reply.applied_index

    async def delete(self, key: bytes, timeout: float | None = None) -> int:
        check_key(key)
        reply: WriteReply = await self._execute(key, lambda ctx: DeleteRequest(ctx, key),
                                                write=True, timeout=timeout)
        return reply.applied_index

    async def compare_and_swap(self, key: bytes, expected: bytes | None, new: bytes | None,
                               timeout: float | None = None) -> tuple[bool, bytes | None]:
        """Set key to `new` (None deletes) iff its value is `expected` (None = absent).
        Returns (succeeded, value seen when it failed)."""
        check_key(key)
        if new is not None:
            check_value(new)
        reply: WriteReply = await self._execute(key, lambda ctx: CasRequest(ctx, key, expected, new),
                                                write=True, timeout=timeout)
        return reply.succeeded, reply.current


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise InvalidRequestError(f"keys are bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY:
        raise InvalidRequestError(f"key of {len(key)} bytes exceeds the limit of {MAX_KEY}")


def check_value(value: bytes) -> None:
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"values are bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise InvalidRequestError(f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE}")


def overlaps(a: RegionDescriptor, b: RegionDescriptor) -> bool:
    a_end_after_b_start = not a.end_key or a.end_key > b.start_key
    b_end_after_a_start = not b.end_key or b.end_key > a.start_key
    return a_end_after_b_start and b_end_after_a_start


def next_store(d: RegionDescriptor, current: int) -> int:
    voters = [p.store_id for p in d.voters()]
    if not voters:
        return current
    if current not in voters:
        return voters[0]
    return voters[(voters.index(current) + 1) % len(voters)]
