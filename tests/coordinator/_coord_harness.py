"""A real metaroot peer and real coordinators in one trio run, over loopback sockets.

Used by tests/coordinator/test_service_*.py: `async with open_env(tmp_path) as env:` starts a
one-peer metaroot (real LMDB in tmp_path); `await env.start_coordinator(1)` starts
`coordinator.main.serve`; `env.crash(1)` cancels a coordinator abruptly (no seal);
`await env.stop(1)` stops it gracefully (seals its grants). `env.call(cid, request)` talks
to a coordinator as a client would.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import trio

from coordinator.main import serve as coordinator_serve
from metaroot.main import serve as metaroot_serve
from nokvpy.client.meta import MetaClient
from nokvpy.protocol.coordinator_rpc import (
    AllocIdRequest,
    DiagnosticsRequest,
    RegionHeartbeat,
    StoreHeartbeatRequest,
    StoreJoinRequest,
)
from nokvpy.protocol.enums import EventKind
from nokvpy.protocol.records import (
    PeerMeta,
    RangeSplit,
    RegionDescriptor,
    RegionEpoch,
    RootEvent,
)
from nokvpy.rpc import Identity, RpcClient
from nokvpy.rpc.ports import free_ports

CLUSTER = "ctest"


async def wait_until(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `pred` (sync or async) until truthy; returns its value."""
    deadline = trio.current_time() + timeout
    last: Any = None
    while True:
        try:
            last = pred()
            if hasattr(last, "__await__"):
                last = await last
        except Exception as exc:  # noqa: BLE001 - still converging
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}: last={last!r}")
        await trio.sleep(interval)


class Env:
    def __init__(self, nursery: trio.Nursery, tmp_path) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.rpc = RpcClient(Identity(CLUSTER, "client", 0))
        self.meta_addr = ""
        self.meta: MetaClient | None = None
        self.coordinators: dict[int, Any] = {}
        self.addrs: dict[int, str] = {}
        self._scopes: dict[int, trio.CancelScope] = {}

    async def start_metaroot(self, retained_tail: int = 4096) -> None:
        if not self.meta_addr:
            self.meta_addr = f"127.0.0.1:{free_ports(1)[0]}"
        await self.nursery.start(self._run_metaroot, retained_tail)
        self.meta = MetaClient(self.rpc, [self.meta_addr])

    async def _run_metaroot(self, retained_tail: int, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            self._meta_scope = scope
            await metaroot_serve(1, self.meta_addr, CLUSTER, {1: self.meta_addr},
                                 str(self.tmp_path / "metaroot"), retained_tail,
                                 task_status=task_status)

    def stop_metaroot(self) -> None:
        self._meta_scope.cancel()

    async def start_metaroot_group(self, n: int = 3) -> dict[int, Any]:
        """Replace the single peer by an `n`-peer group (call before any coordinator)."""
        self.stop_metaroot()
        peers = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(n))}
        self.group_peers = peers
        self.group_scopes: dict[int, trio.CancelScope] = {}
        self.group_services: dict[int, Any] = {}
        for nid in peers:
            self.group_services[nid] = await self.nursery.start(self._run_group_peer, nid)
        self.meta_addrs = list(peers.values())
        self.meta_addr = ",".join(self.meta_addrs)
        self.meta = MetaClient(self.rpc, self.meta_addrs)
        return self.group_services

    async def _run_group_peer(self, nid: int, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as scope:
            self.group_scopes[nid] = scope
            await metaroot_serve(nid, self.group_peers[nid], CLUSTER, self.group_peers,
                                 str(self.tmp_path / f"metaroot-{nid}"), task_status=task_status)

    def stop_group_peer(self, nid: int) -> None:
        self.group_scopes[nid].cancel()

    async def _run_coordinator(self, cid: int, addr: str, kwargs: dict,
                               task_status=trio.TASK_STATUS_IGNORED) -> None:
        node_id = kwargs.pop("node_id", None) or cid
        with trio.CancelScope() as scope:
            self._scopes[cid] = scope
            await coordinator_serve(node_id, addr, CLUSTER, self.meta_addr.split(","),
                                    handle_signals=False,
                                    task_status=task_status, **kwargs)

    async def start_coordinator(self, cid: int, *, replication: int = 3, grant_ttl: float = 2.0,
                                staleness_window: float = 3.0, wait_grants: bool = False,
                                node_id: int | None = None, **service_options) -> Any:
        """Start coordinator `cid` (its --id is `node_id`, default `cid`)."""
        addr = self.addrs.get(cid) or f"127.0.0.1:{free_ports(1)[0]}"
        self.addrs[cid] = addr
        kwargs = dict(replication=replication, grant_ttl=grant_ttl, node_id=node_id,
                      staleness_window=staleness_window, service_options=service_options)
        svc = await self.nursery.start(self._run_coordinator, cid, addr, kwargs)
        self.coordinators[cid] = svc
        if wait_grants:
            await wait_until(lambda: len(svc.grants.held_duties()) == 3, 15,
                             what=f"coordinator-{cid} grants")
        return svc

    def crash(self, cid: int) -> None:
        self._scopes[cid].cancel()
        self.coordinators.pop(cid, None)

    async def stop(self, cid: int) -> dict[str, str]:
        svc = self.coordinators.pop(cid)
        out = await svc.shutdown()
        return out

    async def call(self, cid: int, request: Any, timeout: float = 10.0) -> Any:
        return await self.rpc.call(self.addrs[cid], request, timeout=timeout)

    async def diag(self, cid: int) -> dict:
        return (await self.call(cid, DiagnosticsRequest())).body

    async def join_stores(self, cid: int, n: int, base_port: int = 30000) -> list[int]:
        ids = []
        for i in range(n):
            reply = await self.call(cid, StoreJoinRequest(0, f"127.0.0.1:{base_port + i}"))
            ids.append(reply.store_id)
        return ids

    async def heartbeat(self, cid: int, store_id: int, regions: list[RegionHeartbeat],
                        address: str = "") -> Any:
        return await self.call(cid, StoreHeartbeatRequest(
            store_id, address or f"127.0.0.1:{30000 + store_id}", regions))


@asynccontextmanager
async def open_env(tmp_path, retained_tail: int = 4096):
    async with trio.open_nursery() as nursery:
        env = Env(nursery, tmp_path)
        await env.start_metaroot(retained_tail)
        try:
            yield env
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await env.rpc.aclose()


async def bootstrapped(env: Env, cid: int = 1, stores: int = 3) -> tuple[list[int], Any]:
    """Join `stores` stores and wait until the first region exists; returns (ids, region)."""
    from nokvpy.protocol import Freshness
    from nokvpy.protocol.coordinator_rpc import GetRegionByKeyRequest

    ids = await env.join_stores(cid, stores)

    async def region():
        reply = await env.call(cid, GetRegionByKeyRequest(b"", Freshness.BEST_EFFORT))
        return reply.descriptor

    d = await wait_until(region, 15, what="first region")
    return ids, d


def leader_report(d, store_id: int, leader: bool = True, epoch=None) -> RegionHeartbeat:
    peer = d.peer_on(store_id)
    return RegionHeartbeat(d.region_id, epoch or d.epoch, peer.peer_id if peer else 99,
                           leader, 0, 10)


async def plan_split(env, d, key: bytes, kind=EventKind.SPLIT_PLANNED):
    alloc = await env.call(1, AllocIdRequest(1 + len(d.peers)))
    rid = alloc.first
    left = RegionDescriptor(d.region_id, d.start_key, key,
                            RegionEpoch(d.epoch.version + 1, d.epoch.conf_ver), d.peers)
    right = RegionDescriptor(rid, key, d.end_key, RegionEpoch(d.epoch.version + 1, d.epoch.conf_ver),
                             tuple(PeerMeta(p.store_id, rid + 1 + i) for i, p in enumerate(d.peers)))
    return RootEvent(kind, RangeSplit(d.region_id, key, left, right, d))
