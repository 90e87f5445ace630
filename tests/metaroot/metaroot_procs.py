"""Real metaroot peer processes for the cluster tests: start, kill -9, restart, poll, and
grow the group (`new_peer` + `start(join=True)`, then a MetarootConfChangeRequest).

Every peer is `python -m nokvpy.cli.main metaroot serve ...` on a free 127.0.0.1 port with
its data dir under the test's tmp_path and its output in `<root>/metaroot-<id>.log`. The
owner must call `kill_all()` in a `finally` (each process is killed by its pid).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from nokvpy.client.meta import MetaClient
from nokvpy.protocol import EventKind, RootEvent, StoreMembership
from nokvpy.protocol.metaroot_rpc import MetarootStatus, MetarootStatusRequest
from nokvpy.rpc import Identity, RpcClient
from nokvpy.rpc.ports import free_ports

REPO = Path(__file__).resolve().parents[2]


def joined(store_id: int, request_id: str, addr: str = "") -> RootEvent:
    """The simplest valid rooted event: a store joined at a unique address."""
    return RootEvent(EventKind.STORE_JOINED,
                     StoreMembership(store_id, addr or f"10.0.0.1:{store_id}"), request_id)


class MetarootProcs:
    def __init__(self, root: Path, n: int = 3, cluster_id: str = "mr-test",
                 retained_tail: int | None = None):
        self.root = Path(root)
        self.n = n
        self.cluster_id = cluster_id
        self.retained_tail = retained_tail
        ports = free_ports(n)
        self.addrs = {i + 1: f"127.0.0.1:{ports[i]}" for i in range(n)}
        self.procs: dict[int, subprocess.Popen] = {}
        self._logs: dict[int, object] = {}

    # ---- processes ---------------------------------------------------------------------

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"metaroot-{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.root / f"metaroot-{node_id}.log"

    def argv(self, node_id: int, *, cluster_id: str | None = None,
             peers: dict[int, str] | None = None, data: Path | None = None,
             join: bool = False) -> list[str]:
        peers = self.addrs if peers is None else peers
        argv = [sys.executable, "-m", "nokvpy.cli.main", "metaroot", "serve",
                "--id", str(node_id), "--listen", self.addrs[node_id],
                "--cluster-id", cluster_id or self.cluster_id,
                "--data", str(data or self.data_dir(node_id))]
        for pid, addr in sorted(peers.items()):
            argv += ["--peer", f"{pid}={addr}"]
        if self.retained_tail is not None:
            argv += ["--retained-tail", str(self.retained_tail)]
        if join:
            argv += ["--join"]
        return argv

    def new_peer(self, node_id: int) -> str:
        """A free address for a peer that will join the running group (`start(join=True)`)."""
        taken = set(self.addrs.values())
        port = next(p for p in free_ports(4) if f"127.0.0.1:{p}" not in taken)
        self.addrs[node_id] = f"127.0.0.1:{port}"
        return self.addrs[node_id]

    def start(self, node_id: int, join: bool = False) -> subprocess.Popen:
        assert node_id not in self.procs, f"metaroot-{node_id} is running"
        out = open(self.log_path(node_id), "ab")  # noqa: SIM115 - closed in kill()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(self.argv(node_id, join=join), stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.procs[node_id] = proc
        self._logs[node_id] = out
        return proc

    def start_all(self) -> None:
        for node_id in self.addrs:
            self.start(node_id)

    def kill(self, node_id: int) -> None:
        """kill -9 by pid, and reap."""
        proc = self.procs.pop(node_id, None)
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        out = self._logs.pop(node_id, None)
        if out is not None:
            out.close()

    def kill_all(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    # ---- clients -----------------------------------------------------------------------

    def rpc(self, client_id: int = 900) -> RpcClient:
        return RpcClient(Identity(self.cluster_id, "client", client_id), backoff_max=0.2)

    def meta(self, rpc: RpcClient, timeout: float = 10.0) -> MetaClient:
        return MetaClient(rpc, [self.addrs[i] for i in sorted(self.addrs)], timeout=timeout)

    async def status(self, rpc: RpcClient, node_id: int,
                     timeout: float = 0.5) -> MetarootStatus | None:
        try:
            return await rpc.call(self.addrs[node_id], MetarootStatusRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001 - "not answering" is the answer
            return None

    async def wait_leader(self, rpc: RpcClient, deadline: float = 20.0,
                          among: list[int] | None = None) -> int:
        """Poll until one peer of `among` says it leads; its id."""
        among = among or sorted(self.procs)
        with trio.fail_after(deadline):
            while True:
                for node_id in among:
                    st = await self.status(rpc, node_id)
                    if st is not None and st.is_leader:
                        return node_id
                await trio.sleep(0.05)

    async def wait_token(self, rpc: RpcClient, node_id: int, index: int,
                         deadline: float = 20.0) -> MetarootStatus:
        """Poll until `node_id` has applied rooted index >= `index`."""
        with trio.fail_after(deadline):
            while True:
                st = await self.status(rpc, node_id)
                if st is not None and st.applied_token.index >= index:
                    return st
                await trio.sleep(0.05)
