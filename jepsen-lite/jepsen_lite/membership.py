"""Membership faults: a store joins the running cluster, a store is retired, a metaroot peer
is swapped (:mod:`.metaroot_swap`).

Owns: the meaning (``MEMBERSHIP_FAULTS``), the seeded parameters
(:func:`membership_params`), adding a store through the cluster control (:func:`add_store`),
and injecting and judging each window (:func:`inject`, :func:`heal`, whose results carry
``valid`` and ``outcome`` as ``jepsen_lite.disk``'s do; ``checks["membership"]`` gathers them:
:func:`check_history`). Never decides whether the history is
linearizable (the checkers do) and never moves a replica itself: the coordinator's
scheduler drains a retiring store (docs/operations.md "Retiring a store").

* ``join``: a new store process (next store id, free loopback ports, its own data
  directory: ``LocalCluster.add_store``) is started like the others; the window is valid
  when a coordinator lists it UP. New replicas then go to the least loaded live store.
* ``retire``: when the coordinator lists no more live stores than the replication, a store
  joins first (the retirement is then a replacement). Inject asks a
  coordinator to retire the store (RetireStore: it starts draining); heal waits until it
  is retired (``drain_timeout``), then checks that no catalog region lists a replica on it,
  that it is RETIRED in root (STORE_RETIRED) and that the cluster serves (the first region
  routes to a leader); the retired process is then stopped and recorded retired
  (``LocalCluster.retire``: never started again).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import trio

from nokvpy.protocol import Freshness
from nokvpy.protocol.coordinator_rpc import (
    DiagnosticsRequest,
    GetRegionByKeyRequest,
    ListStoresRequest,
    RetireStoreRequest,
    ScanRegionsRequest,
)
from nokvpy.rpc import RemoteError

from . import metaroot_swap
from .faults import FAULTS
from .history import is_nemesis

MEMBERSHIP_FAULTS: dict[str, str] = {name: FAULTS[name]
                                     for name in ("join", "retire", "metaroot-swap")}
JOIN_TIMEOUT = 30.0  # seconds a new store has to be listed UP
DRAIN_TIMEOUT = 90.0  # seconds a retiring store has to be drained and retired at heal
SERVE_TIMEOUT = 20.0  # seconds the cluster has to route the first region to a leader
POLL = 0.5
CALL_TIMEOUT = 5.0


class MembershipError(RuntimeError):
    """No coordinator answered a membership request."""


# -- parameters ------------------------------------------------------------------------------


def membership_params(fault: str, rng: random.Random, by_kind: dict[str, list[str]]
                      ) -> tuple[str | None, dict]:
    """The target and parameters of a window of membership ``fault`` (seeded). ``join``
    targets the cluster (the new store's name is decided when it is added); ``retire`` a
    store of ``by_kind``."""
    if fault == "join":
        return "cluster", {"timeout": JOIN_TIMEOUT}
    if fault == "retire":
        stores = sorted(by_kind.get("store", []))
        return (rng.choice(stores) if stores else None), {"drain_timeout": DRAIN_TIMEOUT}
    if fault == "metaroot-swap":
        return metaroot_swap.swap_params(rng, by_kind)
    raise ValueError(f"not a membership fault: {fault!r}")


# -- coordinator calls -------------------------------------------------------------------------


async def _call(control: Any, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """``request`` at the first coordinator that answers (a refusal is raised as is)."""
    last: Exception | None = None
    for addr in control.coordinator_addrs():
        try:
            return await control.rpc.call(addr, request, timeout=timeout)
        except RemoteError as exc:
            if exc.kind in ("not_leader", "unavailable"):
                last = exc
                continue
            raise
        except Exception as exc:  # noqa: BLE001 - down or paused: ask the next
            last = exc
    raise MembershipError(f"no coordinator answered {type(request).__name__}: {last}")


async def store_states(control: Any) -> dict[int, str]:
    """store id -> state name (UP, DOWN, UNKNOWN, RETIRED) as a coordinator lists them."""
    reply = await _call(control, ListStoresRequest())
    return {s.store_id: s.state.name for s in reply.stores}


async def _regions_on(control: Any, store_id: int) -> list[int]:
    reply = await _call(control, ScanRegionsRequest(b"", b"", 100000, Freshness.BEST_EFFORT))
    return sorted(d.region_id for d in reply.descriptors if d.peer_on(store_id) is not None)


async def _draining(control: Any) -> list[int]:
    reply = await _call(control, DiagnosticsRequest())
    return list((reply.body.get("scheduler") or {}).get("draining_stores") or [])


async def _serves(control: Any, timeout: float) -> str:
    """"ready" once a coordinator routes the empty key to a region with a leader."""
    deadline = trio.current_time() + timeout
    last = "no answer"
    while True:
        try:
            reply = await _call(control, GetRegionByKeyRequest(b"", Freshness.BOUNDED),
                                timeout=1.0)
            if reply.descriptor is not None and reply.leader_store_id:
                return "ready"
            last = "the first region has no leader"
        except Exception as exc:  # noqa: BLE001 - judged by the caller
            last = f"{type(exc).__name__}: {exc}"[:200]
        if trio.current_time() >= deadline:
            return last
        await trio.sleep(POLL)


# -- join --------------------------------------------------------------------------------------


async def add_store(control: Any, timeout: float = JOIN_TIMEOUT) -> dict:
    """Add a store to the control's cluster (its ``spec`` and cluster.json), start it with
    the control's process environment and wait until a coordinator lists it UP. (What a
    ``ClusterControl.add_store`` method would do.)"""
    spec = control.spec
    proc = await trio.to_thread.run_sync(control.cluster.add_store, spec)
    env = dict(getattr(control, "env", {}) or {})
    env.setdefault("NOKV_FAILPOINTS_SEED", str(getattr(control, "seed", 0)))
    pid = await trio.to_thread.run_sync(control.cluster.start, spec, proc, env)
    up = await _wait_up(control, proc.node_id, timeout)
    return {"added": proc.name, "store_id": proc.node_id, "address": proc.address, "pid": pid,
            "up": up}


async def _wait_up(control: Any, store_id: int, timeout: float) -> bool:
    deadline = trio.current_time() + timeout
    while True:
        try:
            if (await store_states(control)).get(store_id) == "UP":
                return True
        except Exception:  # noqa: BLE001, S110 - still starting
            pass
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(POLL)


def _newest_store(control: Any) -> Any:
    stores = [p for p in control.spec.of_kind("store") if not getattr(p, "retired", False)]
    return max(stores, key=lambda p: p.node_id) if stores else None


# -- inject / heal -----------------------------------------------------------------------------


async def inject(control: Any, fault: str, target: str | None, params: dict) -> dict:
    if fault == "join":
        return await add_store(control, params.get("timeout", JOIN_TIMEOUT))
    if fault == "retire":
        return await _start_retirement(control, target)
    if fault == "metaroot-swap":
        return await metaroot_swap.inject(control, params)
    raise ValueError(f"not a membership fault: {fault!r}")


async def _start_retirement(control: Any, target: str | None) -> dict:
    if target is None:
        return {"skipped": "no target"}
    proc = control.spec.get(target)
    if getattr(proc, "retired", False):
        return {"skipped": f"{target} is retired already"}
    states = await store_states(control)
    live = sorted(s for s, state in states.items() if state != "RETIRED")
    replication = control.spec.replication
    if states.get(proc.node_id) == "RETIRED":
        return {"skipped": f"{target} is retired already"}
    joined = None
    if len(live) <= replication:  # a replacement: a store joins first, then one retires
        joined = await add_store(control)
        if not joined["up"]:
            return {"joined": joined, "skipped": f"{joined['added']} did not come up"}
    try:
        reply = await _call(control, RetireStoreRequest(proc.node_id))
    except RemoteError as exc:
        if exc.reason == "not_enough_stores":
            return {"skipped": exc.message}
        raise
    return {"store_id": proc.node_id, "state": reply.state,
            "replicas_left": reply.replicas_left, **({"joined": joined} if joined else {})}


async def heal(control: Any, fault: str, target: str | None, params: dict) -> dict:
    """Judge the window (``valid`` and ``outcome`` in the result)."""
    if fault == "join":
        proc = _newest_store(control)
        if proc is None:
            return {"outcome": "no store", "valid": False}
        up = await _wait_up(control, proc.node_id, params.get("timeout", JOIN_TIMEOUT))
        return {"store": proc.name, "up": up, "outcome": "joined" if up else "not up",
                "valid": up}
    if fault == "retire":
        return await _finish_retirement(control, target, params)
    if fault == "metaroot-swap":
        return await metaroot_swap.heal(control, params)
    raise ValueError(f"not a membership fault: {fault!r}")


async def _finish_retirement(control: Any, target: str | None, params: dict) -> dict:
    if target is None:
        return {"skipped": "no target", "valid": True, "outcome": "skipped"}
    proc = control.spec.get(target)
    sid = proc.node_id
    states = await store_states(control)
    if states.get(sid) != "RETIRED" and sid not in await _draining(control):
        return {"skipped": f"{target} is not being retired", "valid": True,
                "outcome": "skipped"}
    timeout = params.get("drain_timeout", DRAIN_TIMEOUT)
    deadline = trio.current_time() + timeout
    out: dict[str, Any] = {"store": target, "store_id": sid}
    while True:  # RetireStore is idempotent: it answers the progress (and roots the end)
        try:
            reply = await _call(control, RetireStoreRequest(sid))
            out.update(state=reply.state, replicas_left=reply.replicas_left,
                       retired_index=reply.retired_index)
            if reply.state == "retired":
                break
        except Exception as exc:  # noqa: BLE001 - asked again until the deadline
            out["error"] = f"{type(exc).__name__}: {exc}"[:200]
        if trio.current_time() >= deadline:
            out.update(outcome=f"did not drain within {timeout:g}s", valid=False)
            return out
        await trio.sleep(POLL)
    out["regions_on_store"] = await _regions_on(control, sid)
    out["root_state"] = (await store_states(control)).get(sid, "?")
    out["serving"] = await _serves(control, SERVE_TIMEOUT)
    out["stopped"] = await trio.to_thread.run_sync(control.cluster.retire, control.spec, target)
    problems = []
    if out["regions_on_store"]:
        problems.append(f"the catalog lists replicas on it: {out['regions_on_store']}")
    if out["root_state"] != "RETIRED" or not out.get("retired_index"):
        problems.append(f"root lists it {out['root_state']}")
    if out["serving"] != "ready":
        problems.append(f"the cluster does not serve: {out['serving']}")
    out.update(outcome="retired, drained" if not problems else "; ".join(problems),
               valid=not problems)
    return out


# -- the check ---------------------------------------------------------------------------------


def check_history(events: Iterable[dict]) -> dict:
    """``checks["membership"]``: every membership window's own judgement (its stop event's
    ``valid``: the store joined and is UP; the retired store was drained, rooted RETIRED and
    the cluster serves; the metaroot group elected among its new voters and coordinators
    serve STRONG routes). INVALID when one was not; unknown when a window was never judged."""
    windows: list[dict] = []
    for event in events:
        if not is_nemesis(event) or event.get("f") != "stop":
            continue
        value = event.get("value") if isinstance(event.get("value"), dict) else {}
        if value.get("fault") not in MEMBERSHIP_FAULTS:
            continue
        windows.append({"fault": value.get("fault"), "target": value.get("target"),
                        "outcome": value.get("outcome") or value.get("skipped"),
                        "valid": value.get("valid")})
    bad = [w for w in windows if w["valid"] is False]
    unjudged = [w for w in windows if w["valid"] is None]
    outcomes: dict[str, int] = {}
    for w in windows:
        key = f"{w['fault']}: {w['outcome']}"
        outcomes[key] = outcomes.get(key, 0) + 1
    valid: bool | str = False if bad else ("unknown" if unjudged or not windows else True)
    return {"valid": valid, "windows": len(windows), "outcomes": outcomes, "violations": bad}
