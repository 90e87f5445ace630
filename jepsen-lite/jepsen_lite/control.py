"""Cluster control for jepsen-lite runs: processes, network fault rules, failpoints, topology.

Owns: a local nokvpy cluster inside a run directory (``RUN/cluster``, through
``nokvpy.cluster.local.LocalCluster``): starting it and waiting until it serves, kill -9 and
restart, SIGSTOP / SIGCONT, the cluster-wide network fault rules (``SetFaultRules``: the same
rule set goes to every process, and is pushed again to a process that was paused or
restarted), failpoints (``FailpointSet`` / ``FailpointClear``; a restarted process gets its
wanted failpoints through ``NOKV_FAILPOINTS``), topology commands for churn (split, merge,
leader transfer, peer removal and re-addition, replica moves, and a remove/re-add around a
paused or killed store, through ``AdminRequest`` to the region leader's store; the choice
itself is :func:`jepsen_lite.topology.plan_churn`), bringing every region back to the
replication factor after a run, every store's view of its replicas for the topology
recovery check, and healing everything at the end.

The topology commands (the catalog, admin requests, churn, restoring the replication
factor, transitions) are the :class:`jepsen_lite.control_topology.TopologyControl` mixin.

Implements :class:`jepsen_lite.nemesis.ControlProtocol`. Never decides which fault to inject
or when (that is :mod:`jepsen_lite.nemesis`), and never records history events.

Every method that talks to processes is async (trio); blocking process work (waiting for a
killed process to exit, the readiness probe) runs in a worker thread.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from nokvpy.cluster.local import ClusterSpec, LocalCluster
from nokvpy.protocol import Freshness
from nokvpy.protocol.admin import FailpointClearRequest, FailpointListRequest, FailpointSetRequest
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    ListStoresRequest,
)
from nokvpy.protocol.metaroot_rpc import ConfirmTokenRequest, MetarootStatusRequest
from nokvpy.protocol.store_rpc import ExecutionStatusRequest
from nokvpy.rpc import Identity, RpcClient
from nokvpy.wire import FaultRule, SetFaultRules

from . import membership
from .control_topology import (
    CATALOG_SETTLE,
    MEMBERSHIP_TIMEOUT,
    UNSUPPORTED_REASONS,
    ControlError,
    TopologyControl,
)


class ClusterControl(TopologyControl):
    """A local cluster in ``root`` (created on :meth:`create`), driven by a jepsen-lite run.

    ``env`` is added to every process's environment (for example ``NOKV_UNSAFE_READS=1``);
    ``seed`` seeds failpoint probability draws and fault-rule randomness.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        metaroots: int = 1,
        coordinators: int = 1,
        stores: int = 3,
        replication: int = 3,
        env: dict[str, str] | None = None,
        seed: int = 0,
        rpc_timeout: float = 2.0,
        log: Callable[[str], None] | None = None,
    ):
        self.root = Path(root)
        self.cluster = LocalCluster(self.root)
        self.shape = {
            "metaroots": metaroots,
            "coordinators": coordinators,
            "stores": stores,
            "replication": replication,
        }
        self.env = dict(env or {})
        self.seed = seed
        self.rpc_timeout = rpc_timeout
        self.log = log or (lambda msg: None)
        self.spec: ClusterSpec | None = None
        self._rpc: RpcClient | None = None
        self._probe_rpc: RpcClient | None = None
        self._rules: dict[str, list[FaultRule]] = {}
        self._rules_version = 0
        self._rules_applied: dict[str, int] = {}
        self._failpoints: dict[str, dict[str, str]] = {}
        self._paused: set[str] = set()
        self._held: set[str] = set()  # kept down while a disk fault edits their files
        self._fresh: set[str] = set()  # started by us, no rules pushed since
        self._store_names: dict[int, str] = {}
        self._removed: dict[int, int] = {}  # region id -> store a churn removal took it from

    # -- set-up --------------------------------------------------------------------------

    def create(self) -> ClusterSpec:
        shape = dict(self.shape)
        if os.environ.get("NOKV_TEST_TLS") == "1":
            shape.setdefault("tls", True)  # a run on a TLS cluster (the smoke run under TLS)
        self.spec = self.cluster.create(**shape)
        return self.spec

    @property
    def rpc(self) -> RpcClient:
        if self._rpc is None:
            assert self.spec is not None
            secret = self.spec.secret.encode() if self.spec.secret else None
            self._rpc = RpcClient(Identity(self.spec.cluster_id, "admin", 0, secret), seed=self.seed)
        return self._rpc

    @property
    def probe_rpc(self) -> RpcClient:
        """A client-identity connection pool for operations the nemesis records as client
        operations (direct reads at a resumed leader): kept apart from the control calls."""
        if self._probe_rpc is None:
            self._probe_rpc = RpcClient(self.client_identity(900), seed=self.seed + 900)
        return self._probe_rpc

    async def aclose(self) -> None:
        for attr in ("_rpc", "_probe_rpc"):
            rpc = getattr(self, attr)
            if rpc is not None:
                setattr(self, attr, None)
                await rpc.aclose()

    def client_identity(self, index: int) -> Identity:
        assert self.spec is not None
        secret = self.spec.secret.encode() if self.spec.secret else None
        return Identity(self.spec.cluster_id, "client", index, secret)

    def coordinator_addrs(self) -> list[str]:
        assert self.spec is not None
        return self.spec.coordinator_addrs()

    def _env_for(self, name: str) -> dict[str, str]:
        env = dict(self.env)
        env.setdefault("NOKV_FAILPOINTS_SEED", str(self.seed))
        wanted = self._failpoints.get(name)
        if wanted:
            base = env.get("NOKV_FAILPOINTS", "")
            extra = ";".join(f"{fp}={spec}" for fp, spec in sorted(wanted.items()))
            env["NOKV_FAILPOINTS"] = f"{base};{extra}" if base else extra
        return env

    async def start_all(self, ready_timeout: float = 60.0) -> float:
        """Start every process and wait until the cluster serves; returns the seconds taken."""
        assert self.spec is not None
        t0 = time.monotonic()
        for proc in self.spec.processes:
            await trio.to_thread.run_sync(self.cluster.start, self.spec, proc, self._env_for(proc.name))
            self._fresh.add(proc.name)
        await self.wait_ready(ready_timeout)
        return time.monotonic() - t0

    async def wait_ready(self, timeout: float) -> None:
        """Wait until some coordinator sees every store UP and routes the empty key to a
        region with a leader. (Each store heartbeats one coordinator, so only the one it
        talks to has its liveness; ``wait_cluster_ready`` asks the first coordinator only.)"""
        assert self.spec is not None
        deadline = time.monotonic() + timeout
        want = len(self.names("store"))  # a retired store is never UP again
        last = "starting"
        while True:
            for addr in self.coordinator_addrs():
                try:
                    stores = await self.rpc.call(addr, ListStoresRequest(), timeout=1.0)
                    up = [s for s in stores.stores if s.state.name == "UP"]
                    if len(up) < want:
                        last = f"{addr}: {len(up)}/{want} stores up"
                        continue
                    reply = await self.rpc.call(
                        addr, GetRegionByKeyRequest(b"", Freshness.BOUNDED, None, 0), timeout=1.0
                    )
                    if reply.descriptor is not None and reply.leader_store_id:
                        return
                    last = f"{addr}: no leader for the first region yet"
                except Exception as exc:  # noqa: BLE001 - still starting
                    last = f"{addr}: {type(exc).__name__}: {exc}"[:160]
            if time.monotonic() > deadline:
                raise ControlError(
                    f"cluster not ready within {timeout:.0f}s: {last} (logs in {self.root / 'logs'})"
                )
            await trio.sleep(0.25)

    def stop_all(self, grace: float = 3.0) -> list[str]:
        """SIGCONT + SIGTERM every process (SIGKILL after ``grace``). Synchronous."""
        if self.spec is None:
            return []
        return self.cluster.stop_all(self.spec, grace)

    # -- process faults ------------------------------------------------------------------

    def names(self, kind: str | None = None) -> list[str]:
        assert self.spec is not None
        return [p.name for p in self.spec.processes
                if (kind is None or p.kind == kind) and not p.retired]

    def alive(self, name: str) -> bool:
        return self.cluster.pid(name) is not None

    def retired(self, name: str) -> bool:
        """Was process ``name`` retired (a store drained and STORE_RETIRED rooted)?"""
        assert self.spec is not None
        return self.spec.get(name).retired

    async def add_store(self) -> dict:
        """Add a store to the running cluster and wait until a coordinator lists it UP."""
        return await membership.add_store(self)

    def data_dir(self, name: str) -> Path:
        """The data directory of process ``name`` (for the disk faults)."""
        assert self.spec is not None
        return Path(self.spec.get(name).data_dir)

    def log_path(self, name: str) -> Path:
        return self.cluster.log_path(name)

    def paused(self) -> set[str]:
        return set(self._paused)

    async def kill(self, name: str) -> dict:
        pid = await trio.to_thread.run_sync(self.cluster.kill, name)
        self._paused.discard(name)
        self._rules_applied.pop(name, None)
        return {"pid": pid, "action": "SIGKILL" if pid else "not running"}

    async def kill_all(self) -> dict:
        """kill -9 every process at once (a power loss): every SIGKILL is sent before any
        is waited for."""
        pids = {name: self.cluster.signal(name, signal.SIGKILL)  # a SIGSTOPped one dies too
                for name in self.names()}
        for name in pids:
            await self.kill(name)  # reaps it and forgets its pid file and paused state
        return pids

    def hold(self, name: str) -> None:
        """Keep ``name`` down: until ``release``, only a ``start(..., force=True)`` starts it
        (a disk fault edits its files: no heal or churn restart may race it)."""
        self._held.add(name)

    def release(self, name: str) -> None:
        self._held.discard(name)

    async def start(self, name: str, extra_env: dict[str, str] | None = None, *,
                    force: bool = False) -> dict:
        """Start ``name`` if it is not running (``extra_env`` added to its environment for
        this start only, e.g. ``NOKV_LOSE_UNSYNCED=1``); a held process only with ``force``."""
        assert self.spec is not None
        if name in self._held and not force:
            return {"pid": None, "action": "held down by a disk fault"}
        proc = self.spec.get(name)
        was = self.cluster.pid(name)
        env = {**self._env_for(name), **(extra_env or {})}
        pid = await trio.to_thread.run_sync(self.cluster.start, self.spec, proc, env)
        if was is None:
            self._rules_applied.pop(name, None)
            self._fresh.add(name)
        await self._push_rules_to(name, attempts=20)
        return {"pid": pid, "action": "already running" if was else "restarted"}

    async def pause(self, name: str) -> dict:
        pid = self.cluster.signal(name, signal.SIGSTOP)
        if pid is not None:
            self._paused.add(name)
        return {"pid": pid, "action": "SIGSTOP" if pid else "not running"}

    async def resume(self, name: str) -> dict:
        pid = self.cluster.signal(name, signal.SIGCONT)
        self._paused.discard(name)
        if pid is not None:
            await self._push_rules_to(name, attempts=5)
        return {"pid": pid, "action": "SIGCONT" if pid else "not running"}

    def sigcont(self, name: str) -> int | None:
        """SIGCONT only, at once (no await): the lease nemesis sends its reads right after;
        call :meth:`resume` afterwards for the bookkeeping (fault rules)."""
        return self.cluster.signal(name, signal.SIGCONT)

    # -- network fault rules --------------------------------------------------------------

    def current_rules(self) -> list[FaultRule]:
        return [r for rules in self._rules.values() for r in rules]

    async def add_fault_rules(self, label: str, rules: list[dict]) -> dict:
        self._rules[label] = [to_fault_rule(r, label) for r in rules]
        return await self._push_rules()

    async def remove_fault_rules(self, label: str) -> dict:
        self._rules.pop(label, None)
        return await self._push_rules()

    async def clear_fault_rules(self) -> dict:
        self._rules.clear()
        return await self._push_rules(force=True)

    async def _push_rules(self, force: bool = False) -> dict:
        self._rules_version += 1
        if force:
            self._rules_applied.clear()
        result: dict[str, str] = {}

        async def one(name: str) -> None:
            result[name] = await self._push_rules_to(name)

        async with trio.open_nursery() as nursery:
            for name in self.names():
                nursery.start_soon(one, name)
        return {"rules": len(self.current_rules()), "pushed": result}

    async def _push_rules_to(self, name: str, attempts: int = 1) -> str:
        """Send the current rule set to ``name`` unless it already has it. A paused or dead
        process is skipped: it gets the rules when it is resumed or restarted."""
        version = self._rules_version
        if self._rules_applied.get(name) == version:
            return "current"
        if name in self._paused:
            return "paused"
        if not self.alive(name):
            return "down"
        if name in self._fresh and not self.current_rules():
            self._rules_applied[name] = version  # a fresh process starts with no rules
            return "current"
        assert self.spec is not None
        addr = self.spec.get(name).address
        request = SetFaultRules(self.seed + version, tuple(self.current_rules()))
        last = ""
        for attempt in range(attempts):
            try:
                self._fresh.discard(name)
                await self.rpc.call(addr, request, timeout=self.rpc_timeout)
                self._rules_applied[name] = version
                return "ok"
            except Exception as exc:  # noqa: BLE001 - reported, retried by heal
                last = f"{type(exc).__name__}"
                if attempt + 1 < attempts:
                    await trio.sleep(0.25)
        return f"failed ({last})"

    # -- failpoints ------------------------------------------------------------------------

    async def set_failpoint(self, name: str, failpoint: str, spec: str) -> dict:
        self._failpoints.setdefault(name, {})[failpoint] = spec
        addr = self._addr(name)
        reply = await self.rpc.call(addr, FailpointSetRequest(failpoint, spec), timeout=self.rpc_timeout)
        return {"active": dict(reply.active)}

    async def clear_failpoint(self, name: str, failpoint: str) -> dict:
        self._failpoints.get(name, {}).pop(failpoint, None)
        if not self.alive(name):
            return {"process": "down"}
        reply = await self.rpc.call(
            self._addr(name), FailpointClearRequest(failpoint), timeout=self.rpc_timeout
        )
        return {"hits": int(reply.hits.get(failpoint, 0))}

    async def failpoint_hits(self, name: str) -> dict[str, int]:
        reply = await self.rpc.call(self._addr(name), FailpointListRequest(), timeout=self.rpc_timeout)
        return {k: int(v) for k, v in reply.hits.items()}

    def _addr(self, name: str) -> str:
        assert self.spec is not None
        return self.spec.get(name).address

    # -- lookups for the lease nemesis ---------------------------------------------------

    def node_id(self, name: str) -> int:
        assert self.spec is not None
        return self.spec.get(name).node_id

    def address(self, name: str) -> str:
        return self._addr(name)

    async def ping(self, name: str, rpc: RpcClient | None = None, timeout: float = 1.0) -> bool:
        """One cheap call (FailpointList) so that ``rpc`` holds an open connection to
        ``name`` before a fault: a request sent right after SIGCONT then needs no handshake."""
        try:
            await (rpc or self.rpc).call(self._addr(name), FailpointListRequest(), timeout=timeout)
            return True
        except Exception:  # noqa: BLE001
            return False

    async def route_of(self, key: bytes) -> tuple[Any, str | None]:
        """(descriptor, leader store name) of ``key``'s region as a coordinator sees it
        (BEST_EFFORT); (None, None) when no coordinator knows."""
        reply = await self._call_coordinator(GetRegionByKeyRequest(key, Freshness.BEST_EFFORT))
        if reply.descriptor is None:
            return None, None
        leader = await self.store_name(reply.leader_store_id) if reply.leader_store_id else None
        return reply.descriptor, leader

    async def leads_region(self, name: str, region_id: int, timeout: float = 0.5) -> bool | None:
        """Whether store ``name`` says it leads ``region_id`` (None: no answer)."""
        try:
            reply = await self.rpc.call(self._addr(name), ExecutionStatusRequest(region_id),
                                        timeout=timeout)
        except Exception:  # noqa: BLE001
            return None
        region = (reply.body.get("regions") or {}).get(str(region_id)) or {}
        return bool(region.get("leader"))

    async def region_leader(self, region_id: int, names: Sequence[str]) -> str | None:
        """The first of the stores ``names`` that says it leads ``region_id``."""
        for name in names:
            if await self.leads_region(name, region_id):
                return name
        return None

    async def metaroot_status(self, name: str, timeout: float = 0.5) -> Any | None:
        try:
            return await self.rpc.call(self._addr(name), MetarootStatusRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001
            return None

    async def metaroot_leader(self, exclude: Sequence[str] = ()) -> str | None:
        """The metaroot peer that says it is the leader (skipping ``exclude``)."""
        for name in self.names("metaroot"):
            if name in exclude:
                continue
            status = await self.metaroot_status(name)
            if status is not None and status.is_leader:
                return name
        return None

    async def confirm_token(self, name: str, rpc: RpcClient | None = None,
                            timeout: float | None = None) -> int:
        """``ConfirmToken`` straight at metaroot peer ``name``: the root index it confirms
        as committed (a linearizable read of the root's commit point). Raises on refusal."""
        reply = await (rpc or self.rpc).call(self._addr(name), ConfirmTokenRequest(),
                                             timeout=timeout or self.rpc_timeout)
        return int(reply.token.index)

    async def lookup_grant_holder(self) -> str | None:
        """The coordinator that says it holds the ``region_lookup`` duty grant."""
        for name in self.names("coordinator"):
            try:
                reply = await self.rpc.call(self._addr(name), DiagnosticsRequest(), timeout=1.0)
            except Exception:  # noqa: BLE001, S112 - paused or down: ask the next
                continue
            if "region_lookup" in (reply.body.get("grants_held") or []):
                return name
        return None

    # -- healing ---------------------------------------------------------------------------

    async def heal(self, ready_timeout: float = 60.0) -> dict:
        """Resume every process, restart every dead one, clear every fault rule and failpoint,
        and wait until the cluster serves."""
        t0 = time.monotonic()
        resumed, restarted = [], []
        for name in self.names():
            pid = self.cluster.pid(name)
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pid = None
                if name in self._paused:
                    resumed.append(name)
        self._paused.clear()
        self._failpoints.clear()
        self._rules.clear()
        self._rules_version += 1
        for name in self.names():
            if self.cluster.pid(name) is None:
                await self.start(name)
                restarted.append(name)
        deadline = time.monotonic() + ready_timeout
        pushed = await self._push_rules(force=True)
        while any(v != "ok" and v != "current" for v in pushed["pushed"].values()):
            if time.monotonic() > deadline:
                raise ControlError(f"could not clear the fault rules: {pushed}")
            await trio.sleep(0.5)
            pushed = await self._push_rules()
        cleared: dict[str, str] = {}
        for name in self.names():
            try:
                await self.rpc.call(self._addr(name), FailpointClearRequest(""), timeout=self.rpc_timeout)
                cleared[name] = "ok"
            except Exception as exc:  # noqa: BLE001
                cleared[name] = f"failed ({type(exc).__name__})"
        await self.wait_ready(max(5.0, deadline - time.monotonic()))
        return {
            "resumed": resumed,
            "restarted": restarted,
            "failpoints_cleared": cleared,
            "seconds": round(time.monotonic() - t0, 3),
        }


def to_fault_rule(rule: dict, label: str = "") -> FaultRule:
    """A plain-dict rule (jepsen_lite.faults) as the wire record; missing keys take the
    record's defaults."""
    return FaultRule(
        src=frozenset(rule.get("src") or ()),
        dst=frozenset(rule.get("dst") or ()),
        message_types=frozenset(rule.get("message_types") or ()),
        drop=float(rule.get("drop", 0.0)),
        delay=float(rule.get("delay", 0.0)),
        jitter=float(rule.get("jitter", 0.0)),
        label=rule.get("label") or label,
        duplicate=float(rule.get("duplicate", 0.0)),
        reorder=float(rule.get("reorder", 0.0)),
        hold=float(rule.get("hold", 0.0)),
        corrupt=float(rule.get("corrupt", 0.0)),
        blackhole=bool(rule.get("blackhole", False)),
    )


__all__ = [
    "CATALOG_SETTLE",
    "MEMBERSHIP_TIMEOUT",
    "UNSUPPORTED_REASONS",
    "ClusterControl",
    "ControlError",
    "TopologyControl",
    "to_fault_rule",
]
