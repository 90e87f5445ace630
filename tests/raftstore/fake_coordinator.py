"""A tiny fake coordinator for raftstore tests: joins, heartbeats, routes, store list.

Bootstrap rule: once `expected_stores` stores have joined, region 1 = [b"", +inf) at epoch
(1, 1) exists with one voter per joined store (peer id = 100 + store id), and every
heartbeat reply tells its stores to host it. Routes answer that region with the leader
store last reported by a heartbeat. Tests may add tombstones (`tombstoned`).
"""

from __future__ import annotations

import trio

from nokvpy.protocol import (
    CatchUpState,
    DegradedMode,
    Freshness,
    PeerMeta,
    RegionDescriptor,
    RegionEpoch,
    RootToken,
    RouteWitness,
    ServingClass,
    StoreState,
    SyncHealth,
)
from nokvpy.protocol.coordinator_rpc import (
    GetRegionByKeyRequest,
    ListStoresReply,
    ListStoresRequest,
    RouteReply,
    StoreHeartbeatReply,
    StoreHeartbeatRequest,
    StoreInfo,
    StoreJoinReply,
    StoreJoinRequest,
)
from nokvpy.rpc import Identity, RpcServer, format_addr

TOKEN = RootToken(1, 1)


class FakeCoordinator:
    def __init__(self, expected_stores: int = 3, cluster_id: str = "nokv"):
        self.expected = expected_stores
        self.cluster_id = cluster_id
        self.stores: dict[int, str] = {}
        self.region: RegionDescriptor | None = None
        self.leader_store = 0
        self.heartbeats: dict[int, StoreHeartbeatRequest] = {}
        self.heartbeat_count: dict[int, int] = {}
        self.tombstoned: list[int] = []
        self.withhold: set[int] = set()  # stores not told to host anything (yet)
        self.address = ""

    async def serve(self, host: str = "127.0.0.1", port: int = 0,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        server = RpcServer(Identity(self.cluster_id, "coordinator", 1))
        server.register(StoreJoinRequest, self.on_join)
        server.register(StoreHeartbeatRequest, self.on_heartbeat)
        server.register(GetRegionByKeyRequest, self.on_route)
        server.register(ListStoresRequest, self.on_list_stores)
        async with trio.open_nursery() as nursery:
            h, p = await nursery.start(server.serve, host, port)
            self.address = format_addr(h, p)
            task_status.started(self.address)

    def _maybe_bootstrap(self) -> None:
        if self.region is None and len(self.stores) >= self.expected:
            sids = sorted(self.stores)[: self.expected]
            self.region = RegionDescriptor(
                1, b"", b"", RegionEpoch(1, 1), tuple(PeerMeta(s, 100 + s) for s in sids))

    def preregister(self, store_id: int) -> None:
        """Count a store as joined (no address yet): the region includes it."""
        self.stores.setdefault(store_id, "")
        self._maybe_bootstrap()

    async def on_join(self, req: StoreJoinRequest, ctx) -> StoreJoinReply:
        self.stores[req.store_id] = req.address
        self._maybe_bootstrap()
        return StoreJoinReply(req.store_id, self.cluster_id, TOKEN)

    async def on_heartbeat(self, req: StoreHeartbeatRequest, ctx) -> StoreHeartbeatReply:
        self.stores[req.store_id] = req.address
        self.heartbeats[req.store_id] = req
        self.heartbeat_count[req.store_id] = self.heartbeat_count.get(req.store_id, 0) + 1
        self._maybe_bootstrap()
        for hb in req.regions:
            if hb.is_leader:
                self.leader_store = req.store_id
        host = []
        if (self.region is not None and self.region.peer_on(req.store_id) is not None
                and req.store_id not in self.withhold):
            host = [self.region]
        addrs = {sid: a for sid, a in self.stores.items() if a}
        return StoreHeartbeatReply(True, host, list(self.tombstoned), [], addrs, TOKEN)

    async def on_route(self, req: GetRegionByKeyRequest, ctx) -> RouteReply:
        witness = RouteWitness(TOKEN, TOKEN, 0, req.freshness or Freshness.BOUNDED, True,
                               CatchUpState.FRESH, DegradedMode.HEALTHY,
                               ServingClass.AUTHORITATIVE, SyncHealth.HEALTHY, 0, 1)
        addrs = {sid: a for sid, a in self.stores.items() if a}
        return RouteReply(self.region, witness, self.leader_store, addrs)

    async def on_list_stores(self, req: ListStoresRequest, ctx) -> ListStoresReply:
        return ListStoresReply([
            StoreInfo(sid, addr, StoreState.UP, 0, 1 if self.region else 0,
                      1 if sid == self.leader_store else 0)
            for sid, addr in sorted(self.stores.items())])


def main() -> None:
    """`python -m tests.raftstore.fake_coordinator PORT [N]`: serve until killed; prints the
    address on stdout once listening."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    async def run():
        fake = FakeCoordinator(n)
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(fake.serve, "127.0.0.1", port)
            print(addr, flush=True)

    trio.run(run)


if __name__ == "__main__":
    main()
