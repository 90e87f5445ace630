"""Helpers of the topology acceptance tests: a real local cluster (`LocalCluster`: metaroot,
coordinator and store processes on loopback), always killed in `finally`, and async helpers
to drive transitions and read their story (admin requests to region leaders, execution
status, ListTransitions with recovery records, failpoints). A uniquely named module: tests/
has no packages."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import trio

from nokvpy.client import Client
from nokvpy.client.admin import wait_cluster_ready
from nokvpy.cluster.local import LocalCluster, pid_alive, wait_gone
from nokvpy.protocol import Freshness
from nokvpy.protocol.admin import FailpointClearRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import ListTransitionsRequest, ScanRegionsRequest
from nokvpy.protocol.store_rpc import AdminRequest, ExecutionStatusRequest
from nokvpy.rpc import Identity, RpcClient, RpcError

REPO = Path(__file__).resolve().parents[2]


class Topo:
    """One local cluster for a test (or a module)."""

    def __init__(self, root: Path, *, stores: int = 3, replication: int = 3,
                 scheduler: str | None = None, coordinators: int = 1):
        self.root = root
        self.cluster = LocalCluster(root)
        self.spec = self.cluster.create(stores=stores, replication=replication,
                                        coordinators=coordinators)
        if scheduler:
            for proc in self.spec.of_kind("coordinator"):
                proc.extra_args += ["--scheduler", scheduler]
            self.cluster.save(self.spec)
        self.pids: dict[str, int] = {}

    # ---- processes -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Topo:
        """Start every process and wait until the cluster serves (outside trio)."""
        for proc in self.spec.processes:
            self.start_process(proc.name)
        wait_cluster_ready(self.spec, timeout=timeout)
        return self

    async def astart(self, timeout: float = 60.0) -> Topo:
        """`start` from inside a trio test."""
        for proc in self.spec.processes:
            self.start_process(proc.name)
        await self.wait_ready(timeout)
        return self

    async def wait_store(self, client: Client, name: str, timeout: float = 30.0) -> None:
        """Until store `name` answers and its heartbeats reach the coordinator."""

        async def up():
            body = await self.status(client, name)
            return body.get("heartbeats_sent", 0) > 0 and body.get("joined")

        await wait_until(up, timeout, 0.1, f"{name} to serve", errors_ok=True)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        from nokvpy.protocol.coordinator_rpc import ListStoresRequest

        want = len(self.spec.of_kind("store"))
        async with self.client(timeout=2.0) as client:

            async def ready():
                stores = await client.call_coordinator(ListStoresRequest())
                if sum(1 for s in stores.stores if s.state.name == "UP") < want:
                    return False
                route = await client.route(b"", Freshness.BOUNDED, max_root_lag=0)
                return route.descriptor is not None and route.leader_store_id

            await wait_until(ready, timeout, 0.25, "the cluster to serve", errors_ok=True)

    def start_process(self, name: str, env: dict[str, str] | None = None) -> int:
        child_env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        child_env.update(env or {})
        pid = self.cluster.start(self.spec, self.spec.get(name), env=child_env)
        self.pids[name] = pid
        return pid

    def kill(self, name: str) -> None:
        self.cluster.kill(name)

    def alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        return pid is not None and pid_alive(pid)

    def stop_all(self) -> None:
        """SIGKILL every process this test started (never anything else)."""
        for name, pid in list(self.pids.items()):
            if pid_alive(pid) and self.cluster.pid(name) == pid:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                wait_gone(pid, 5.0)
            self.cluster.pid_path(name).unlink(missing_ok=True)

    def addr(self, name: str) -> str:
        return self.spec.get(name).address

    def store_names(self) -> list[str]:
        return [p.name for p in self.spec.of_kind("store")]

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.cluster.log_path(name).read_text().splitlines()[-lines:])
        except OSError:
            return ""

    # ---- clients -----------------------------------------------------------------------------

    def client(self, timeout: float = 20.0) -> Client:
        return Client(self.spec.coordinator_addrs(), cluster_id=self.spec.cluster_id,
                      secret=self.spec.secret.encode(), timeout=timeout, role="admin")

    def rpc_as(self, role: str, node_id: int = 99) -> RpcClient:
        """A raw RPC client proving `role` (e.g. "coordinator": what a coordinator could send
        to metaroot, for tests of root's own guards)."""
        return RpcClient(Identity(self.spec.cluster_id, role, node_id, self.spec.secret.encode()))

    async def status(self, client: Client, name: str, tid: str = "") -> dict[str, Any]:
        reply = await client.rpc.call(self.addr(name), ExecutionStatusRequest(0, tid),
                                      timeout=5.0)
        return reply.body

    async def tracked(self, client: Client, name: str, tid: str) -> dict[str, Any] | None:
        try:
            body = await self.status(client, name, tid)
        except RpcError:
            return None
        return body.get("transitions", {}).get(tid)

    async def transitions(self, client: Client):
        return await client.call_coordinator(ListTransitionsRequest(include_history=True))

    async def phase(self, client: Client, tid: str) -> str:
        """The coordinator's phase of `tid`: ADMITTED while pending, else its latest history
        phase ("" when unknown)."""
        reply = await self.transitions(client)
        for e in reply.entries:
            if e.transition_id == tid:
                return e.phase.name
        return ""

    async def recovery_records(self, client: Client, tid: str) -> list[Any]:
        reply = await self.transitions(client)
        return [r for r in (reply.recovery_records or []) if r.transition_id == tid]

    async def regions(self, client: Client) -> list[Any]:
        reply = await client.call_coordinator(
            ScanRegionsRequest(b"", b"", 10_000, Freshness.BEST_EFFORT))
        return list(reply.descriptors)

    async def leader_store(self, client: Client, key: bytes, timeout: float = 20.0) -> int:
        with trio.fail_after(timeout):
            while True:
                try:
                    route = await client.route(key, Freshness.STRONG)
                    if route.leader_store_id:
                        return route.leader_store_id
                except Exception:  # noqa: BLE001 - keep asking until the deadline
                    pass
                await trio.sleep(0.1)

    async def admin(self, client: Client, req: AdminRequest, store_id: int = 0,
                    timeout: float = 60.0):
        """Send an admin request to `store_id` (default: the first peer of the region; the
        store forwards it to the leader)."""
        if not store_id:
            for d in await self.regions(client):
                if d.region_id == req.region_id:
                    store_id = d.voters()[0].store_id
        return await client.rpc.call(self.addr(f"store-{store_id}"), req, timeout=timeout)

    async def split(self, client: Client, key: bytes, wait: bool = True):
        route = await client.route(key, Freshness.STRONG)
        leader = await self.leader_store(client, key)
        return await self.admin(client, AdminRequest("split", route.descriptor.region_id,
                                                     split_key=key, wait=wait), leader)

    async def failpoint(self, client: Client, name: str, fp: str, spec: str | None) -> None:
        req = FailpointSetRequest(fp, spec) if spec else FailpointClearRequest(fp)
        await client.rpc.call(self.addr(name), req, timeout=5.0)


async def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "",
                     errors_ok: bool = False):
    """Poll the async `predicate` until it returns a truthy value (returned). RPC errors
    count as "not yet" (any error with `errors_ok`)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await predicate()
        except RpcError as exc:
            last = exc
        except Exception as exc:
            if not errors_ok:
                raise
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: "
                                 f"last {last!r}")
        await trio.sleep(interval)
