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

Implements :class:`jepsen_lite.nemesis.ControlProtocol`. Never decides which fault to inject
or when (that is :mod:`jepsen_lite.nemesis`), and never records history events.

Every method that talks to processes is async (trio); blocking process work (waiting for a
killed process to exit, the readiness probe) runs in a worker thread.
"""

from __future__ import annotations

import os
import random
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
    ListTransitionsRequest,
    ScanRegionsRequest,
)
from nokvpy.protocol.metaroot_rpc import ConfirmTokenRequest, MetarootStatusRequest
from nokvpy.protocol.store_rpc import AdminRequest, ExecutionStatusRequest
from nokvpy.rpc import Identity, RemoteError, RpcClient
from nokvpy.wire import FaultRule, SetFaultRules

from .topology import applied, plan_churn, repair_plan

UNSUPPORTED_REASONS = {"unhandled_request_type", "unsupported", "not_implemented"}
MEMBERSHIP_TIMEOUT = 25.0
"""Deadline of an add_peer / remove_peer admin call (an addition waits for the learner)."""
CATALOG_SETTLE = 5.0
"""How long a membership step waits for the coordinator catalog to show its result."""


class ControlError(RuntimeError):
    """The cluster could not be started or healed."""


class ClusterControl:
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
        want = len(self.spec.of_kind("store"))
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
        return [p.name for p in self.spec.processes if kind is None or p.kind == kind]

    def alive(self, name: str) -> bool:
        return self.cluster.pid(name) is not None

    def paused(self) -> set[str]:
        return set(self._paused)

    async def kill(self, name: str) -> dict:
        pid = await trio.to_thread.run_sync(self.cluster.kill, name)
        self._paused.discard(name)
        self._rules_applied.pop(name, None)
        return {"pid": pid, "action": "SIGKILL" if pid else "not running"}

    async def start(self, name: str) -> dict:
        assert self.spec is not None
        proc = self.spec.get(name)
        was = self.cluster.pid(name)
        pid = await trio.to_thread.run_sync(self.cluster.start, self.spec, proc, self._env_for(name))
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

    # -- topology ------------------------------------------------------------------------

    async def _call_coordinator(self, request: Any, timeout: float | None = None) -> Any:
        last: Exception | None = None
        for addr in self.coordinator_addrs():
            try:
                return await self.rpc.call(addr, request, timeout=timeout or self.rpc_timeout)
            except Exception as exc:  # noqa: BLE001 - try the next coordinator
                last = exc
        raise ControlError(f"no coordinator answered: {last}")

    async def store_name(self, store_id: int) -> str | None:
        if store_id in self._store_names:
            return self._store_names[store_id]
        assert self.spec is not None
        by_addr = {p.address: p.name for p in self.spec.of_kind("store")}
        try:
            reply = await self._call_coordinator(ListStoresRequest())
            for s in reply.stores:
                if s.address in by_addr:
                    self._store_names[s.store_id] = by_addr[s.address]
        except ControlError:
            pass
        if store_id not in self._store_names:
            guess = f"store-{store_id}"
            if guess in self.names("store"):
                return guess
        return self._store_names.get(store_id)

    async def leader_store(self, key: bytes) -> str | None:
        reply = await self._call_coordinator(GetRegionByKeyRequest(key, Freshness.BEST_EFFORT))
        if not reply.leader_store_id:
            return None
        return await self.store_name(reply.leader_store_id)

    async def regions(self, freshness: Freshness = Freshness.BEST_EFFORT) -> list[dict]:
        """The coordinator catalog (ScanRegions, BEST_EFFORT unless ``freshness`` says
        otherwise), sorted by start key: region id, range, leader store id (0: unknown),
        voter and learner store ids, peers and epoch ``[version, conf_ver]``."""
        reply = await self._call_coordinator(
            ScanRegionsRequest(b"", b"", 100000, freshness)
        )
        leaders = reply.leaders or {}
        return [
            {
                "region_id": d.region_id,
                "start": d.start_key,
                "end": d.end_key,
                "leader": leaders.get(d.region_id, 0),
                "voters": [p.store_id for p in d.voters()],
                "learners": [p.store_id for p in d.peers if p.learner],
                "peers": [{"store_id": p.store_id, "peer_id": p.peer_id, "learner": p.learner}
                          for p in d.peers],
                "epoch": [d.epoch.version, d.epoch.conf_ver],
            }
            for d in sorted(reply.descriptors, key=lambda d: d.start_key)
        ]

    @property
    def replication(self) -> int:
        """The cluster's replication factor (as the coordinators were started with it)."""
        if self.spec is not None:
            return int(self.spec.replication)
        return int(self.shape["replication"])

    def live_store_ids(self) -> list[int]:
        """Store ids of the stores that are running and not paused by us."""
        return sorted(self.node_id(n) for n in self.names("store")
                      if self.alive(n) and n not in self._paused)

    async def store_views(self) -> dict[int, dict]:
        """Every store's own view of its replicas: ``{store_id: {"name", "live", "regions"
        (ExecutionStatus body["regions"]) or "error"}}``; a dead or paused store is not
        asked (``live`` False)."""
        out: dict[int, dict] = {}
        for name in self.names("store"):
            view: dict[str, Any] = {"name": name,
                                    "live": self.alive(name) and name not in self._paused}
            if view["live"]:
                try:
                    reply = await self.rpc.call(self._addr(name), ExecutionStatusRequest(0),
                                                timeout=self.rpc_timeout)
                    view["regions"] = dict(reply.body.get("regions") or {})
                except Exception as exc:  # noqa: BLE001 - reported in the view
                    view["error"] = f"{type(exc).__name__}: {exc}"[:200]
            out[self.node_id(name)] = view
        return out

    async def admin(self, store_id: int, request: AdminRequest, timeout: float = 15.0) -> dict:
        name = await self.store_name(store_id)
        if name is None:
            return {"error": f"no process for store {store_id}"}
        try:
            reply = await self.rpc.call(self._addr(name), request, timeout=timeout)
        except RemoteError as exc:
            out = {"error": f"{exc.kind}/{exc.reason}: {exc.message}"[:300]}
            if exc.reason in UNSUPPORTED_REASONS:
                out["unsupported"] = True
            return out
        except Exception as exc:  # noqa: BLE001
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return {
            "transition_id": getattr(reply, "transition_id", ""),
            "outcome": str(getattr(reply, "outcome", "")),
            "stage": str(getattr(reply, "stage", "")),
            "detail": str(getattr(reply, "detail", ""))[:200],
        }

    async def churn_step(
        self, rng: random.Random, keys: Sequence[bytes], ops: Sequence[str] | None = None
    ) -> dict:
        """One random topology command (:func:`jepsen_lite.topology.plan_churn`): split at a
        workload key, merge two adjacent regions, transfer a region's leadership, remove a
        peer, add one back (on the store it was removed from when possible) or move one;
        ``ops`` restricts the choice."""
        regions = await self.regions()
        present = {r["region_id"] for r in regions}
        for rid in [rid for rid in self._removed if rid not in present]:
            del self._removed[rid]  # merged away
        plan = plan_churn(rng, regions, keys, live=self.live_store_ids(),
                          replication=self.replication, removed=self._removed, ops=ops)
        return await self.execute_churn(plan)

    async def execute_churn(self, plan: dict) -> dict:
        """Send the admin request(s) of a :func:`plan_churn` / :func:`repair_plan` command
        to the region leader's store; the result keeps the plan's fields plus the reply
        (``transition_id``, ``outcome``, ``stage``, ``detail``) or ``error``."""
        op = plan["op"]
        if op == "none":
            return dict(plan)
        rid, send_to = plan["region"], plan["send_to"]
        if op == "split":
            out = await self.admin(send_to, AdminRequest("split", rid, split_key=plan["key"]))
            return {"op": "split", "region": rid, "key": plan["key"], **out}
        if op == "merge":
            request = AdminRequest("merge", rid, other_region_id=plan["other"])
            out = await self.admin(send_to, request)
            return {"op": "merge", "region": rid, "other": plan["other"], **out}
        if op == "transfer_leader":
            request = AdminRequest("transfer_leader", rid, store_id=plan["to_store"])
            out = await self.admin(send_to, request)
            return {"op": "transfer_leader", "region": rid, "to_store": plan["to_store"], **out}
        if op == "remove_peer":
            out = await self._remove(send_to, rid, plan["store"], plan.get("mark", True))
            return {"op": "remove_peer", "region": rid, "store": plan["store"], **out}
        if op == "add_peer":
            out = await self._add(send_to, rid, plan["store"])
            return {"op": "add_peer", "region": rid, "store": plan["store"],
                    "readd": bool(plan.get("readd")), **out}
        if op == "move":
            head = {"op": "move", "region": rid, "to_store": plan["to_store"],
                    "from_store": plan["from_store"]}
            add = await self._add(send_to, rid, plan["to_store"])
            if not applied(add):
                return {**head, "add": add, "outcome": add.get("outcome", ""),
                        "error": f"add: {add.get('error') or add.get('outcome') or 'no reply'}"}
            out = await self._remove(send_to, rid, plan["from_store"], plan.get("mark", False))
            return {**head, "add": add, **out}
        raise ValueError(f"unknown churn op {op!r}")

    async def _add(self, send_to: int, rid: int, store: int) -> dict:
        out = await self.admin(send_to, AdminRequest("add_peer", rid, store_id=store),
                               timeout=MEMBERSHIP_TIMEOUT)
        if applied(out):
            self._removed.pop(rid, None)
            out["catalog_s"] = await self._catalog_shows(rid, lambda r: store in r["voters"])
        return out

    async def _remove(self, send_to: int, rid: int, store: int, mark: bool) -> dict:
        """Remove the peer on ``store``; ``mark``: remember the store for a re-add."""
        out = await self.admin(send_to, AdminRequest("remove_peer", rid, store_id=store),
                               timeout=MEMBERSHIP_TIMEOUT)
        if applied(out):
            if mark:
                self._removed[rid] = store
            out["catalog_s"] = await self._catalog_shows(
                rid, lambda r: store not in r["voters"] and store not in r["learners"])
        return out

    async def _catalog_shows(self, rid: int, predicate: Callable[[dict], bool],
                             timeout: float = CATALOG_SETTLE) -> float | None:
        """Seconds until the catalog's region ``rid`` satisfies ``predicate`` (None: not
        within ``timeout``, or the region is gone): the next step plans on a current view."""
        t0 = trio.current_time()
        while True:
            try:
                region = next((r for r in await self.regions() if r["region_id"] == rid), None)
                if region is None:
                    return None
                if predicate(region):
                    return round(trio.current_time() - t0, 3)
            except ControlError:
                pass
            if trio.current_time() - t0 > timeout:
                return None
            await trio.sleep(0.1)

    async def survivor_leader(self, rid: int, store_ids: Sequence[int],
                              timeout: float = 15.0) -> int | None:
        """The first of ``store_ids`` that says it leads region ``rid``, polled until
        ``timeout`` (None: none did)."""
        names = {sid: await self.store_name(sid) for sid in store_ids}
        deadline = trio.current_time() + timeout
        while True:
            for sid, name in names.items():
                if name is not None and await self.leads_region(name, rid):
                    return sid
            if trio.current_time() > deadline:
                return None
            await trio.sleep(0.2)

    async def _dropped(self, name: str, rid: int, peer_id: int, timeout: float) -> float | None:
        """Seconds until store ``name`` no longer hosts peer ``peer_id`` of ``rid`` (None:
        still there after ``timeout``)."""
        t0 = trio.current_time()
        while True:
            try:
                reply = await self.rpc.call(self._addr(name), ExecutionStatusRequest(rid),
                                            timeout=1.0)
                got = (reply.body.get("regions") or {}).get(str(rid))
                if got is None or got.get("peer_id") != peer_id:
                    return round(trio.current_time() - t0, 3)
            except Exception:  # noqa: BLE001, S110 - restarting
                pass
            if trio.current_time() - t0 > timeout:
                return None
            await trio.sleep(0.2)

    async def churn_store_fault(self, rng: random.Random, mode: str) -> dict:
        """A membership change around an unreachable replica: pick a region whose voters (at
        least 3) are all live, ``mode`` = ``pause`` (SIGSTOP) or ``kill`` one of its voter
        stores (the leader's too), remove that replica through the surviving leader, heal
        the store (SIGCONT / restart), wait until it dropped its old peer, and add a replica
        back on the same store. One churn step (op ``fault_readd``); ``remove`` and ``add``
        hold the two admin results, ``outcome`` / ``error`` summarize (no key may be named
        ``f``, ``fault`` or ``target``: the result is recorded as a nemesis event)."""
        regions = await self.regions()
        live = set(self.live_store_ids())
        need = max(3, self.replication)
        candidates = [r for r in regions if len(r["voters"]) >= need and not r["learners"]
                      and r["leader"] and set(r["voters"]) <= live
                      and r["region_id"] not in self._removed]
        if not candidates:
            return {"op": "fault_readd", "store_fault": mode,
                    "skipped": f"no region with {need} live voters and a leader"}
        region = rng.choice(candidates)
        rid = region["region_id"]
        victim = rng.choice(sorted(region["voters"]))
        name = await self.store_name(victim)
        if name is None:
            return {"op": "fault_readd", "region": rid, "store": victim, "store_fault": mode,
                    "error": f"no process for store {victim}"}
        old = next(p["peer_id"] for p in region["peers"] if p["store_id"] == victim)
        survivors = [s for s in region["voters"] if s != victim]
        out: dict[str, Any] = {"op": "fault_readd", "region": rid, "store": victim,
                               "store_fault": mode, "was_leader": victim == region["leader"],
                               "old_peer": old, "readd": True}
        t0 = trio.current_time()
        out["fault_result"] = await (self.pause(name) if mode == "pause" else self.kill(name))
        try:
            leader = await self.survivor_leader(rid, survivors)
            out["survivor_leader"] = leader
            if leader is None:
                out["error"] = f"no survivor of {survivors} leads region {rid}"
            else:
                out["remove"] = await self.admin(
                    leader, AdminRequest("remove_peer", rid, store_id=victim),
                    timeout=MEMBERSHIP_TIMEOUT)
        finally:
            out["heal"] = await (self.resume(name) if mode == "pause" else self.start(name))
            out["down_s"] = round(trio.current_time() - t0, 3)
        removed = out.get("remove")
        if not applied(removed):
            out.setdefault("error", "remove: " + str((removed or {}).get("error")
                                                     or (removed or {}).get("outcome")))
            out["outcome"] = (removed or {}).get("outcome", "")
            return out
        self._removed[rid] = victim
        out["dropped_s"] = await self._dropped(name, rid, old, timeout=30.0)
        leader = await self.survivor_leader(rid, survivors, timeout=10.0) or survivors[0]
        add = await self._add(leader, rid, victim)
        out["add"] = add
        out.update({k: add.get(k, "") for k in ("transition_id", "outcome", "stage")})
        if not applied(add):
            out["error"] = f"add: {add.get('error') or add.get('outcome') or 'no reply'}"
        return out

    async def restore_replication(self, timeout: float = 30.0) -> dict:
        """After the run: add (or remove) peers until every region has exactly the
        replication factor of voters and no learner (:func:`repair_plan`), for at most
        ``timeout`` seconds. The churn's own damage is undone here, as a killed process is
        restarted; whether the stores then agree is the recovery check's job. The catalog is
        read at STRONG freshness (a coordinator that has just reconnected to a restarted
        metaroot may serve an empty or stale BEST_EFFORT view); an empty one is not trusted."""
        t0 = trio.current_time()
        actions: list[dict] = []
        while True:
            plan: list[dict] = []
            try:
                regions = await self.regions(Freshness.STRONG)
                if not regions:
                    raise ControlError("the catalog lists no region")
                waiting = [r["region_id"] for r in regions if r["learners"]]
                plan = repair_plan(regions, self.live_store_ids(), self.replication,
                                   self._removed)
                last = f"regions with a learner {waiting}, still to do {plan}"
                if not plan and not waiting:
                    return {"actions": actions, "seconds": round(trio.current_time() - t0, 3)}
            except ControlError as exc:  # no (STRONG) catalog yet: try again
                last = str(exc)
            for step in plan:
                if trio.current_time() - t0 > timeout:
                    break
                result = await self.execute_churn(step)
                actions.append({k: v for k, v in result.items()
                                if k in ("op", "region", "store", "readd", "outcome", "error",
                                         "transition_id", "catalog_s")})
            if trio.current_time() - t0 > timeout:
                return {"actions": actions, "seconds": round(trio.current_time() - t0, 3),
                        "error": f"replication not restored within {timeout:g}s: {last}"[:500]}
            await trio.sleep(0.5)

    async def list_transitions(self) -> list[dict]:
        """Every coordinator's transitions (pending and the history it saw), deduplicated:
        ``[{"transition_id", "source_index", "kind", "phase", "coordinator"}]``; a
        transition instance is (id, root index of its plan): ids are reused when the same
        split is planned again later."""
        seen: dict[tuple, dict] = {}
        for addr in self.coordinator_addrs():
            try:
                reply = await self.rpc.call(
                    addr, ListTransitionsRequest(include_history=True), timeout=self.rpc_timeout
                )
            except Exception:  # noqa: BLE001, S112 - another coordinator may answer
                continue
            for entry in reply.entries:
                tid = getattr(entry, "transition_id", None)
                if not tid:
                    continue
                phase = getattr(getattr(entry, "phase", None), "name", str(getattr(entry, "phase", "")))
                kind = getattr(getattr(entry, "kind", None), "name", str(getattr(entry, "kind", "")))
                source = getattr(getattr(entry, "source_token", None), "index", None)
                seen.setdefault((tid, source, phase), {
                    "transition_id": tid, "source_index": source, "kind": kind,
                    "phase": phase, "coordinator": addr})
        return list(seen.values())

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
    return FaultRule(
        src=frozenset(rule.get("src") or ()),
        dst=frozenset(rule.get("dst") or ()),
        message_types=frozenset(rule.get("message_types") or ()),
        drop=float(rule.get("drop", 0.0)),
        delay=float(rule.get("delay", 0.0)),
        jitter=float(rule.get("jitter", 0.0)),
        label=rule.get("label") or label,
    )


__all__ = ["ClusterControl", "ControlError", "to_fault_rule"]
