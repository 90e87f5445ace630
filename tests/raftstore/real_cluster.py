"""A whole cluster in one trio run for raftstore tests that need topology: one metaroot
peer, one coordinator and N stores (`raftstore.main.serve`), over loopback sockets, data
under the test's tmp_path. Unlike `store_cluster.InProcCluster` (a fake coordinator that
knows one region), routes follow splits, so a client reaches every region."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from coordinator.main import serve as coordinator_serve
from metaroot.main import serve as metaroot_serve
from nokvpy.client import Client
from nokvpy.protocol import Freshness
from nokvpy.protocol.store_rpc import AdminReply, AdminRequest
from nokvpy.rpc.ports import free_ports
from raftstore.main import serve as store_serve
from raftstore.store import Store

CLUSTER_ID = "nokv"


class RealCluster:
    def __init__(self, nursery: trio.Nursery, root: Path, n: int = 3, tick: float = 0.05,
                 heartbeat: float = 0.2):
        self.nursery = nursery
        self.root = root
        self.n = n
        self.tick = tick
        self.heartbeat = heartbeat
        self.meta_addr = ""
        self.coord_addr = ""
        self.stores: dict[int, Store] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.stopped: dict[int, trio.Event] = {}

    async def start(self) -> None:
        meta_port, coord_port = free_ports(2)
        self.meta_addr = f"127.0.0.1:{meta_port}"
        self.coord_addr = f"127.0.0.1:{coord_port}"
        await self.nursery.start(self._run_metaroot)
        await self.nursery.start(self._run_coordinator)
        for sid in range(1, self.n + 1):
            await self.start_store(sid)

    async def _run_metaroot(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await metaroot_serve(1, self.meta_addr, CLUSTER_ID, {1: self.meta_addr},
                             str(self.root / "metaroot"), task_status=task_status)

    async def _run_coordinator(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await coordinator_serve(1, self.coord_addr, CLUSTER_ID, [self.meta_addr],
                                replication=self.n, grant_ttl=2.0, handle_signals=False,
                                task_status=task_status)

    async def start_store(self, sid: int) -> Store:
        scope = trio.CancelScope()
        stopped = trio.Event()
        self.scopes[sid] = scope
        self.stopped[sid] = stopped

        async def runner(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await store_serve(sid, "127.0.0.1:0", [self.coord_addr],
                                      str(self.root / f"store-{sid}"), CLUSTER_ID,
                                      tick_interval=self.tick,
                                      heartbeat_interval=self.heartbeat,
                                      task_status=task_status)
            finally:
                stopped.set()

        self.stores[sid] = await self.nursery.start(runner)
        return self.stores[sid]

    async def kill(self, sid: int) -> None:
        self.scopes[sid].cancel()
        await self.stopped[sid].wait()

    def live(self) -> list[Store]:
        return [s for sid, s in self.stores.items() if not self.stopped[sid].is_set()]

    def leader(self, rid: int) -> Store | None:
        for s in self.live():
            p = s.peers.get(rid)
            if p is not None and p.is_leader:
                return s
        return None

    async def wait_leader(self, rid: int, timeout: float = 20.0) -> Store:
        with trio.fail_after(timeout):
            while (s := self.leader(rid)) is None:
                await trio.sleep(0.02)
            return s

    def client(self, timeout: float = 10.0) -> Client:
        return Client([self.coord_addr], cluster_id=CLUSTER_ID, timeout=timeout, role="admin")

    async def first_region(self, client: Client, timeout: float = 30.0) -> int:
        """Wait until the cluster serves: the first region has a leader; its id."""
        with trio.fail_after(timeout):
            while True:
                try:
                    route = await client.route(b"", Freshness.BEST_EFFORT)
                except Exception:  # noqa: BLE001 - still starting
                    route = None
                if route is not None and route.descriptor is not None:
                    rid = route.descriptor.region_id
                    if self.leader(rid) is not None:
                        return rid
                await trio.sleep(0.1)

    async def split(self, client: Client, region_id: int, key: bytes) -> Any:
        """Split `region_id` at `key` on its leader; the new right region's id."""
        leader = await self.wait_leader(region_id)
        reply: AdminReply = await client.rpc.call(
            leader.cfg.address, AdminRequest("split", region_id, split_key=key), timeout=20)
        assert reply.outcome == "APPLIED", reply
        with trio.fail_after(20):
            while True:
                route = await client.route(key, Freshness.BEST_EFFORT)
                d = route.descriptor
                if d is not None and d.start_key == key and self.leader(d.region_id):
                    return d.region_id
                await trio.sleep(0.05)
