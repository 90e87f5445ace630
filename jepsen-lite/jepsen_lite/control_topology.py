"""The topology half of the jepsen-lite cluster control: the catalog, admin requests, churn.

Owns: the coordinator catalog as the control reads it (:meth:`TopologyControl.regions`,
store names), every store's own view of its replicas, admin requests to a region leader's
store, executing a churn command (split, merge, leader transfer, peer removal and re-addition,
replica move; the choice itself is :func:`jepsen_lite.topology.plan_churn`), a remove/re-add
around a paused or killed store, bringing every region back to the replication factor after
a run, and the coordinators' transitions. :class:`TopologyControl` is mixed into
:class:`jepsen_lite.control.ClusterControl`, which provides the processes, the RPC client and
the lookups it uses (``rpc``, ``names``, ``node_id``, ``alive``, ``pause`` ...). Never decides
which fault to inject or when, and never records history events.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import trio

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    GetRegionByKeyRequest,
    ListStoresRequest,
    ListTransitionsRequest,
    ScanRegionsRequest,
)
from nokvpy.protocol.store_rpc import AdminRequest, ExecutionStatusRequest
from nokvpy.rpc import RemoteError

from .topology import applied, plan_churn, repair_plan

UNSUPPORTED_REASONS = {"unhandled_request_type", "unsupported", "not_implemented"}
MEMBERSHIP_TIMEOUT = 25.0
"""Deadline of an add_peer / remove_peer admin call (an addition waits for the learner)."""
CATALOG_SETTLE = 5.0
"""How long a membership step waits for the coordinator catalog to show its result."""


class ControlError(RuntimeError):
    """The cluster could not be started or healed."""


class TopologyControl:
    """Topology commands of a :class:`jepsen_lite.control.ClusterControl` (mixed in)."""

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
        (ExecutionStatus body["regions"]) or "error", and "blocked" (its outbox entries)
        when its publish outbox holds an event root refused for good}}``; a dead or paused
        store is not asked (``live`` False)."""
        out: dict[int, dict] = {}
        for name in self.names("store"):
            view: dict[str, Any] = {"name": name,
                                    "live": self.alive(name) and name not in self._paused}
            if view["live"]:
                try:
                    reply = await self.rpc.call(self._addr(name), ExecutionStatusRequest(0),
                                                timeout=self.rpc_timeout)
                    view["regions"] = dict(reply.body.get("regions") or {})
                    if (reply.body.get("restart_state") or {}).get("blocked_events"):
                        view["blocked"] = list(reply.body.get("outbox") or [])
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
