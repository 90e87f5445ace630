"""The async KV client: routes through coordinators, executes on stores, retries by reason.

Owns: the route cache (descriptors ordered by start key, the leader store of each region and
a descriptor-revision floor per key range), the suspect lists of stores and coordinators
(`failover.Suspects`), the retry policy per admission reason, deadlines, and turning remote
errors into typed client errors. Never retries a write whose outcome is unknown: it raises
`OutcomeUnknownError` instead.

Retry policy (each attempt re-reads the route cache and picks its store with
`failover.pick_store`: the believed leader unless it is suspect, else the next voter that is
neither suspect nor tried in this round):

| reason                              | action                                                  |
|-------------------------------------|---------------------------------------------------------|
| NOT_LEADER with a leader hint       | believe the hinted store; retry at once unless suspect  |
| NOT_LEADER without a hint           | try the next peer's store after a short backoff         |
| every voter not suspect refused     | re-ask a coordinator for the route, back off, new round |
| EPOCH_MISMATCH, KEY_NOT_IN_REGION,  | drop the cached region, raise the revision floor of the |
| NOT_HOSTED, STORE_NOT_MATCH         | key to (old revision + 1), re-route                     |
| QUEUE_SATURATED, SCHEDULER_DEGRADED | exponential backoff with jitter                         |
| store unreachable (never sent)      | suspect the store, next peer's store, backoff           |
| read attempt timed out (either side)| suspect the store, next peer's store at once            |
| INVALID, CANCELED, TIMED_OUT, STALE | raise                                                   |
| BOUNDED route refused: root_unavail-| route by BEST_EFFORT (counted in `stats`, logged at most |
| able, root lag, revision, pending   | every 10 s); the store's epoch check guards the route    |
| write sent, reply lost / deadline   | suspect the store, raise OutcomeUnknownError            |
| operation deadline passed           | raise DeadlineExceededError                             |

Attempts and suspects: a read attempt lasts at most `attempt_timeout` (doubling with each
timed-out attempt of the same operation, never past the operation's deadline; a region
with one voter gets the whole deadline), so a read leaves a hung store within the
operation. A write attempt gets the rest of the operation's deadline: cutting it short
could only turn a slow write into an unknown outcome. A store that timed out (either side
of the wire) or could not be reached is suspect for a few seconds (`suspect_base`, doubling
on each further failure, cleared by its next success), and its region's believed leader
moves to the next voter: the *next* operation goes elsewhere even when this one surfaced as
outcome unknown. A read refused as TIMED_OUT before the operation's deadline counts as a
timed-out attempt. A NOT_LEADER hint naming a suspect store is believed but not followed
until the store's latest failure is `suspect_base` seconds old (then it is forgiven): until
the election, the followers still name the hung leader. Coordinators: a read-only request
(`COORDINATOR_READS`) gets `attempt_timeout` per coordinator while another is left to try,
the last one the rest of the deadline; other requests keep one full `timeout` per
coordinator; unreachable or timed-out coordinators are suspect and tried last.

Multi-key operations: `Client.txn` and `Client.delete_range` are nokvpy.client.txn's
(`TxnOps`), `Client.scan` is nokvpy.client.scan's (`ScanOps`); `Client` inherits them and
they run on its routes and on `_execute` (this retry policy).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from sortedcontainers import SortedDict

from nokvpy import grantsig
from nokvpy.client.checks import check_key, check_value
from nokvpy.client.errors import (
    DeadlineExceededError,
    NokvError,
    OutcomeUnknownError,
    RejectedError,
    RouteRejectedError,
    UnavailableError,
)
from nokvpy.client.failover import SUSPECT_BASE, Suspects, next_voter, pick_store
from nokvpy.client.leases import LeaseNotFoundError, LeaseOps  # noqa: F401 - re-exported
from nokvpy.client.loopcheck import require_trio
from nokvpy.client.scan import ScanOps, ScanResult  # noqa: F401 - ScanResult re-exported
from nokvpy.client.txn import (  # noqa: F401 - the builders and result types re-exported
    Compare,
    DeleteRangeResult,
    Op,
    RegionDeleted,
    TxnOps,
    TxnResponse,
)
from nokvpy.client.watch import (  # noqa: F401 - the watch types re-exported
    Watch,
    WatchCompactedError,
    WatchEvent,
    WatchOps,
    WatchSegment,
)
from nokvpy.protocol import Freshness, RegionDescriptor, RootToken
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    ListStoresRequest,
    ListTransitionsRequest,
    RouteReply,
    ScanRegionsReply,
    ScanRegionsRequest,
)
from nokvpy.protocol.grants import Duty
from nokvpy.protocol.store_rpc import (
    BatchGetRequest,
    CasRequest,
    DeleteRequest,
    GetRequest,
    KvContext,
    PutRequest,
    ReadMode,
    WriteReply,
)
from nokvpy.rpc import Identity, RemoteError, RpcClient, RpcTimeoutError, RpcUnavailableError
from nokvpy.rpc.logthrottle import LogThrottle

# a BOUNDED route refused for one of these is retried as BEST_EFFORT (metaroot unreachable
# included: the coordinator's last catalog still routes; the store checks the epoch)
BEST_EFFORT_FALLBACK = frozenset({"required_descriptor", "root_lag_exceeded",
                                  "range_change_pending", "root_unavailable"})
_throttle = LogThrottle(logging.getLogger("nokvpy.client"), 10.0)
REROUTE_REASONS = {"EPOCH_MISMATCH", "KEY_NOT_IN_REGION", "NOT_HOSTED", "STORE_NOT_MATCH"}
BACKOFF_REASONS = {"QUEUE_SATURATED", "SCHEDULER_DEGRADED"}
# coordinator requests that change nothing: safe to resend to another coordinator early
COORDINATOR_READS = (GetRegionByKeyRequest, ScanRegionsRequest, ListStoresRequest,
                     ListTransitionsRequest, DiagnosticsRequest)


@dataclass(slots=True)
class CachedRoute:
    descriptor: RegionDescriptor
    leader_store_id: int


class Client(ScanOps, TxnOps, WatchOps, LeaseOps):
    """Async client. `coordinators`: addresses; `timeout`: default deadline per operation;
    `attempt_timeout`: longest read attempt on one store or coordinator before trying
    another (None: the whole deadline); `suspect_base`: seconds a store or coordinator that
    timed out or was unreachable is tried last (doubles per failure, up to 8x); `tls`: a
    `nokvpy.rpc.tls.TlsConfig` or a mapping of `cert`, `key` and `ca` PEM paths to talk TLS
    with mutual authentication (None: the process default, `nokvpy.rpc.tls.configure`;
    False: plain TCP)."""

    def __init__(
        self,
        coordinators: list[str],
        *,
        cluster_id: str = "nokv",
        secret: bytes | None = None,
        credential: bytes | None = None,
        role: str = "client",
        grant_public_key: bytes | None = None,
        timeout: float = 10.0,
        attempt_timeout: float | None = 1.0,
        suspect_base: float = SUSPECT_BASE,
        rpc: RpcClient | None = None,
        rng: random.Random | None = None,
        tls: Any = None,
    ):
        if not coordinators:
            raise ValueError("at least one coordinator address is needed")
        if attempt_timeout is not None and attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be positive or None, got {attempt_timeout}")
        self.coordinators = list(coordinators)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        # `role`: "client" (KV and routes) or "admin" (also topology commands, failpoints);
        # `secret` (the cluster secret) proves any role, `credential` only its own role's
        self.rpc = rpc or RpcClient(Identity(cluster_id, role, 0, secret, credential), tls=tls)
        self.cluster_id = cluster_id
        # STRONG answers are trusted only with grant evidence that checks under this key
        # (derived from the secret when one is given; None: not checked, no key known)
        self.grant_public_key = grant_public_key or (grantsig.public_key(secret) if secret
                                                     else None)
        self._routes: SortedDict = SortedDict()  # start_key -> CachedRoute
        self._floors: dict[bytes, int] = {}  # region start key -> min descriptor revision
        self._stores: dict[int, str] = {}
        self._coord_index = 0
        self.store_suspects: Suspects[int] = Suspects(suspect_base, 8 * suspect_base)
        self.coordinator_suspects: Suspects[str] = Suspects(suspect_base, 8 * suspect_base)
        self.rng = rng or random.Random()
        self.stats = {"route_refreshes": 0, "retries": 0, "not_leader": 0, "timeouts": 0,
                      "unreachable": 0, "best_effort_routes": 0}

    @classmethod
    def from_cluster_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> Client:
        """A client of the local cluster in `path` (`nokv cluster up --dir path`): its
        coordinators, cluster id and secret come from path/cluster.json; `kwargs` as for
        `Client(...)`."""
        from nokvpy.client.settings import cluster_dir_settings

        return cls(**(cluster_dir_settings(path) | kwargs))

    async def aclose(self) -> None:
        await self.rpc.aclose()

    async def __aenter__(self) -> Client:
        require_trio()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # ---- routes ----------------------------------------------------------------------

    async def call_coordinator(self, request: Any, timeout: float | None = None) -> Any:
        """Call a coordinator, failing over across the configured addresses (suspects last).

        A read-only request (`COORDINATOR_READS`) shares one deadline of `timeout` and gives
        each coordinator but the last at most `attempt_timeout`; any other request gives each
        coordinator a whole `timeout`, as it always did."""
        require_trio()
        timeout = timeout or self.timeout
        read_only = isinstance(request, COORDINATOR_READS)
        deadline = trio.current_time() + timeout
        n = len(self.coordinators)
        rotated = [self.coordinators[(self._coord_index + i) % n] for i in range(n)]
        order = self.coordinator_suspects.order(rotated, trio.current_time())
        last: Exception | None = None
        for i, addr in enumerate(order):
            budget = timeout
            if read_only:
                budget = deadline - trio.current_time()
                if budget <= 0:
                    break
                if i < n - 1 and self.attempt_timeout is not None:
                    budget = min(budget, self.attempt_timeout)
            try:
                reply = await self.rpc.call(addr, request, timeout=budget)
            except (RpcUnavailableError, RpcTimeoutError) as exc:
                self.coordinator_suspects.mark(addr, trio.current_time())
                last = exc
                continue
            except RemoteError as exc:
                failover = (exc.kind in ("not_leader", "unavailable")
                            or bool(exc.details.get("try_another_coordinator")))
                if failover and i < n - 1:
                    last = exc
                    continue
                raise
            self.coordinator_suspects.clear(addr)
            self._coord_index = self.coordinators.index(addr)
            return reply
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
        self._check_evidence(freshness, reply.witness)
        if reply.store_addrs:
            self._stores.update(reply.store_addrs)
        if reply.descriptor is not None:
            self._remember(reply.descriptor, reply.leader_store_id)
        return reply

    async def scan_regions(self, start: bytes = b"", end: bytes = b"", limit: int = 1000,
                           freshness: Freshness = Freshness.BEST_EFFORT) -> ScanRegionsReply:
        reply = await self.call_coordinator(ScanRegionsRequest(start, end, limit, freshness))
        self._check_evidence(freshness, reply.witness)
        return reply

    def _check_evidence(self, freshness: Freshness, witness: Any) -> None:
        """A STRONG answer claims it comes from the region_lookup grant holder: believe it
        only if metaroot's signature over that grant checks, names the answering
        coordinator, and has not expired on this client's clock."""
        if freshness != Freshness.STRONG or self.grant_public_key is None:
            return
        try:
            grantsig.verify(self.grant_public_key, self.cluster_id,
                            getattr(witness, "grant_evidence", None),
                            holder_prefix=f"coordinator-{getattr(witness, 'coordinator_id', 0)}",
                            duty=Duty.REGION_LOOKUP, now_ms=int(time.time() * 1000))
        except grantsig.EvidenceError as exc:
            self.stats["evidence_refused"] = self.stats.get("evidence_refused", 0) + 1
            raise RouteRejectedError(f"STRONG answer refused: {exc}", exc.reason,
                                     witness) from None

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

    def cached_leader(self, key: bytes) -> int | None:
        """The store this client believes leads the region of `key` (None: not cached)."""
        route = self._cached(key)
        return route.leader_store_id if route is not None else None

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
            if exc.reason not in BEST_EFFORT_FALLBACK:
                raise
            # the route may be stale: the store's epoch check refuses it if the range moved
            # (then the client re-routes), so reads and writes stay correct on it
            self.stats["best_effort_routes"] += 1
            _throttle.log(logging.WARNING, exc.reason, "routing %r by a BEST_EFFORT route: "
                          "the coordinator refused BOUNDED (%s)", key[:64], exc)
            reply = await self.route(key, Freshness.BEST_EFFORT)
        if reply.descriptor is None:
            raise NokvError(f"no region holds key {key!r} yet (cluster not bootstrapped?)",
                            "not_found")
        route = self._cached(key)
        assert route is not None
        return route

    async def _refresh_route(self, key: bytes, route: CachedRoute, timeout: float) -> None:
        """Re-ask a coordinator for the region of `key` (its leader may have moved). Keeps
        the cached route when no coordinator answers or the answer is older."""
        self.stats["route_refreshes"] += 1
        try:
            reply = await self.call_coordinator(
                GetRegionByKeyRequest(key, Freshness.BEST_EFFORT, None, None, None), timeout)
        except (NokvError, RemoteError):
            return
        if reply.store_addrs:
            self._stores.update(reply.store_addrs)
        fresh = reply.descriptor
        if fresh is not None and fresh.contains(key) and fresh.revision >= route.descriptor.revision:
            self._remember(fresh, reply.leader_store_id)

    async def _store_addr(self, store_id: int) -> str:
        addr = self._stores.get(store_id)
        if addr is None:
            reply = await self.call_coordinator(ListStoresRequest())
            for s in reply.stores:
                self._stores[s.store_id] = s.address
            addr = self._stores.get(store_id)
        if addr is None:
            raise UnavailableError(f"store {store_id} has no known address")
        return addr

    # ---- execution -------------------------------------------------------------------

    async def _execute(self, key: bytes, build, *, write: bool, read_mode: ReadMode = ReadMode.LINEARIZABLE,
                       timeout: float | None = None,
                       seen: Callable[[RegionDescriptor], None] | None = None,
                       attempt: float | None = None) -> Any:
        """Run `build(ctx)` on the region holding `key`, retrying by reason (see the module
        docstring). `seen(descriptor)` is told the region of each attempt: the answer is
        that of the last one. `attempt`: a read attempt's budget instead of
        `attempt_timeout` (a request known to take long, such as a region export)."""
        require_trio()
        deadline = trio.current_time() + (timeout or self.timeout)
        backoff = 0.01
        last_reason = ""
        attempt = 0
        tried: set[int] = set()  # stores that failed or refused in this round
        timeouts = 0  # attempts of this operation that timed out
        suspects = self.store_suspects
        while True:
            attempt += 1
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise DeadlineExceededError(f"deadline exceeded after {attempt - 1} attempts "
                                            f"(last: {last_reason or 'none'})")
            route = await self._locate(key)
            d = route.descriptor
            voters = [p.store_id for p in d.voters()]
            store_id = pick_store(voters, route.leader_store_id, suspects, trio.current_time(),
                                  tried)
            if store_id is None:  # every voter not suspect refused or failed: new round
                tried.clear()
                await self._refresh_route(key, route, remaining)
                await trio.sleep(min(backoff, max(deadline - trio.current_time(), 0)))
                backoff = min(backoff * 2, 0.25)
                continue
            try:
                addr = await self._store_addr(store_id)
            except UnavailableError:
                self._invalidate(route)
                await trio.sleep(min(backoff, remaining))
                continue
            ctx = KvContext(d.region_id, d.epoch, store_id, read_mode)
            if seen is not None:
                seen(d)
            budget = remaining
            per_attempt = attempt if attempt is not None else self.attempt_timeout
            if not write and per_attempt is not None and len(voters) > 1:
                budget = min(remaining, per_attempt * 2 ** timeouts)
            try:
                reply = await self.rpc.call(addr, build(ctx), timeout=budget)
            except RemoteError as exc:
                last_reason = exc.reason
                if exc.kind == "timeout" and exc.reason == "outcome_unknown":
                    self._failed(route, store_id, voters)
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
                    suspects.clear(store_id)  # it answered
                    tried.add(store_id)
                    hint = getattr(adm, "leader_store_id", 0) if adm is not None else 0
                    if hint and hint != store_id and d.peer_on(hint) is not None:
                        route.leader_store_id = hint
                        tried.discard(hint)  # named afresh: worth another try
                        if suspects.vouch(hint, trio.current_time()):
                            continue
                    else:
                        route.leader_store_id = next_voter(voters, store_id, suspects,
                                                           trio.current_time())
                    await trio.sleep(min(backoff, remaining))
                    backoff = min(backoff * 2, 0.25)
                    continue
                if exc.reason in REROUTE_REASONS:
                    if attempt > 2:  # the route did not settle at once: the range is moving
                        await trio.sleep(min(backoff, max(remaining, 0)))
                        backoff = min(backoff * 2, 0.5)
                    self._invalidate(route)
                    tried.clear()
                    if adm is not None and getattr(adm, "descriptor", None) is not None:
                        fresh = adm.descriptor
                        if fresh.contains(key) and fresh.revision >= d.revision:
                            self._remember(fresh, getattr(adm, "leader_store_id", 0))
                    continue
                if (exc.reason == "TIMED_OUT" and not write
                        and trio.current_time() < deadline):
                    # the store gave up when the attempt's (not the operation's) deadline
                    # passed, e.g. a deposed leader that cannot confirm a read index
                    self._failed(route, store_id, voters)
                    tried.add(store_id)
                    timeouts += 1
                    continue
                if exc.reason in BACKOFF_REASONS:
                    await trio.sleep(min(backoff * (1 + self.rng.random()), remaining))
                    backoff = min(backoff * 2, 1.0)
                    continue
                raise RejectedError(f"{exc.reason}: {exc.message}", exc.reason, adm,
                                    exc.details) from None
            except RpcUnavailableError as exc:
                last_reason = "store_unreachable"
                self.stats["unreachable"] += 1
                self._failed(route, store_id, voters)
                tried.add(store_id)
                if write and exc.outcome_unknown:
                    raise OutcomeUnknownError(f"connection to store {store_id} lost during a "
                                              f"write; it may or may not have applied") from None
                await trio.sleep(min(backoff, max(deadline - trio.current_time(), 0)))
                backoff = min(backoff * 2, 0.5)
            except RpcTimeoutError as exc:
                last_reason = "store_timeout"
                self.stats["timeouts"] += 1
                self._failed(route, store_id, voters)
                tried.add(store_id)
                if write and exc.sent:
                    raise OutcomeUnknownError(f"write to region {d.region_id} timed out; it may "
                                              f"or may not have applied") from None
                if trio.current_time() >= deadline:
                    raise DeadlineExceededError(f"request for {key!r} timed out "
                                                f"({'sent' if exc.sent else 'never sent'})") from None
                timeouts += 1  # a read attempt (or an unsent one) cut short: try elsewhere
            else:
                suspects.clear(store_id)
                if write or read_mode == ReadMode.LINEARIZABLE:
                    route.leader_store_id = store_id
                return reply

    def _failed(self, route: CachedRoute, store_id: int, voters: list[int]) -> None:
        """`store_id` timed out or was unreachable: suspect it, and believe the next voter
        leads its region unless a hint already moved the belief elsewhere."""
        now = trio.current_time()
        self.store_suspects.mark(store_id, now)
        if route.leader_store_id == store_id:
            route.leader_store_id = next_voter(voters, store_id, self.store_suspects, now)

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

    async def put(self, key: bytes, value: bytes, timeout: float | None = None, *,
                  lease: int = 0) -> int:
        """Write `key`; returns the raft index it applied at. With `lease` (from `grant`)
        the key lives only while the lease does (LeaseNotFoundError: it is gone)."""
        check_key(key)
        check_value(value)
        if lease:
            await self._check_lease(lease, timeout)
        reply: WriteReply = await self._execute(
            key, lambda ctx: PutRequest(ctx, key, value, lease), write=True, timeout=timeout)
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


def overlaps(a: RegionDescriptor, b: RegionDescriptor) -> bool:
    a_end_after_b_start = not a.end_key or a.end_key > b.start_key
    b_end_after_a_start = not b.end_key or b.end_key > a.start_key
    return a_end_after_b_start and b_end_after_a_start

