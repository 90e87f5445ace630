"""The ``lease`` and ``tick-stretch`` nemeses: fool a leader's sense of time, then ask it.

Owns the fault sequences that test leader leases (docs/protocols.md, "Leader leases"):

* ``lease`` / store: SIGSTOP the leader store of a workload key's region until the other
  voters have elected a new leader (at least ``min_pause``), write every key of the region
  through the new leader (recorded ``write``/``append`` operations sent straight to it), then
  SIGCONT the old leader and *at once* send ``reads`` linearizable gets straight at it (a
  client whose route cache still names it), recorded as ordinary ``read`` operations, so the
  linearizability checker judges them. A leader that still trusts its lease answers with the
  value from before the pause: a stale read. With ``isolate`` the old leader is also cut off
  from every other server (fault rules, set *before* the pause so that it holds them too: a
  store's RPC client does not apply the rules its server was given) until the reads are done,
  so no message from the new term reaches it first: the lease alone must refuse the reads.
* ``lease`` / metaroot: the same with the metaroot leader: pause it, wait until a new leader
  confirms a root index past the old one's (``root-confirm`` operations), resume, and send
  ``ConfirmToken`` straight at the old leader and STRONG route reads through every
  coordinator; the route checker requires every confirmed / STRONG token to cover every root
  index observed before the request (``confirm_stale`` / ``strong_stale``).
* ``lease`` / coordinator: pause the coordinator holding the ``region_lookup`` duty grant
  until another one holds it (or ``max_pause``), then send STRONG route reads straight at it.
* ``tick-stretch``: the ``driver.tick`` failpoint. ``stall``: ``1*sleep(ms)`` stalls a
  store's whole loop once (CPU starvation), repeatedly during the window; when it leads a
  region, a stall long enough for an election is followed like a store lease window (writes
  through the new leader), and reads are sent straight at it just before it wakes, so that it
  finds them with the new leader's messages; ``skew``: ``return(f)`` makes a process's ticks
  last ``f`` intervals (clock-rate skew), restored with ``return(1)`` (a cleared failpoint
  would leave the rate where it was).

Every client-visible request goes through :func:`jepsen_lite.workloads.perform` (or records a
``root-confirm`` itself), under a fresh process id, marked ``"probe": "lease" |
"tick-stretch"`` and the process it was sent to. Never decides when a window opens (the
schedule), never judges a result (the checkers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .direct import DirectStoreClient
from .faults import partition_rules
from .workloads import Op, Outcome, RoutesWorkload, classify_error, perform

LEASE_MODES = ("store", "metaroot", "coordinator")
METAROOT_LEADER = ":metaroot-leader"
LOOKUP_HOLDER = ":lookup-holder"
TICK_FAILPOINT = "driver.tick"
STALL_MS = (300, 800, 1500, 3000)
ELECTION_STALL_MS = 1500
"""Stalls this long or longer may see the leader replaced (10-20 ticks of 100 ms)."""
STALL_READ_LEAD = 0.2
"""Seconds before a stall is due to end that the reads are sent: they wait in the socket
with the new leader's messages, and the first loop turn after the stall sees both."""
SKEWS = (0.9, 0.95, 1.05, 1.1)
"""Tick-rate factors: mild (the lease argument tolerates 28 %, docs/protocols.md)."""
PROBE_PROCESS_BASE = 2_000_000

# Defaults per mode: (min_pause, max_pause) seconds. A store or metaroot leader is replaced
# within 1-2 election timeouts (1-2 s with a 100 ms tick and 10-tick elections); a
# coordinator's grant lives for its TTL (6 s) plus the clock-skew allowance.
PAUSES = {"store": (2.5, 8.0), "metaroot": (2.5, 8.0), "coordinator": (7.5, 12.0)}
SOLE_COORDINATOR_PAUSE = 3.0


def lease_params(rng: random.Random, by_kind: dict[str, list[str]],
                 allowed: tuple[str, ...] | list[str] = LEASE_MODES,
                 isolate_share: float = 0.5) -> tuple[str, dict]:
    """(symbolic target, params) for a ``lease`` window of one of the ``allowed`` modes:
    stores three times as often as the metaroot or coordinator (when the cluster has them)."""
    modes = ["store"] * 3 if by_kind.get("store") and "store" in allowed else []
    modes += ["metaroot"] if by_kind.get("metaroot") and "metaroot" in allowed else []
    modes += ["coordinator"] if by_kind.get("coordinator") and "coordinator" in allowed else []
    mode = rng.choice(modes or ["store"])
    low, high = PAUSES[mode]
    params = {"mode": mode, "min_pause": low, "max_pause": high,
              "hold": rng.choice([0.5, 1.0, 1.5]), "reads": 16,
              "isolate": rng.random() < isolate_share}
    target = {"store": ":leader", "metaroot": METAROOT_LEADER, "coordinator": LOOKUP_HOLDER}[mode]
    return target, params


def tick_stretch_params(rng: random.Random, by_kind: dict[str, list[str]],
                        leader_share: float) -> tuple[str | None, dict]:
    """(target, params) for a ``tick-stretch`` window: a store stall (``1*sleep(ms)`` a few
    times), or a rate skew of a store or metaroot peer."""
    stores = by_kind.get("store", [])
    if stores and rng.random() < 0.6:
        ms = rng.choice(STALL_MS)
        # a stall long enough for an election is aimed at a region leader
        leader = ms >= ELECTION_STALL_MS or rng.random() < max(leader_share, 0.5)
        target = ":leader" if leader else rng.choice(stores)
        return target, {"mode": "stall", "ms": ms, "every": [1.0, 2.5], "reads": 8}
    drivers = stores + by_kind.get("metaroot", [])
    return (rng.choice(drivers) if drivers else None), {"mode": "skew",
                                                         "factor": rng.choice(SKEWS)}


CLOCK_SKEW_FAST = (1.05, 1.1, 1.12)
CLOCK_SKEW_SLOW = (0.9, 0.95)


def clock_skew_params(rng: random.Random, by_kind: dict[str, list[str]]
                      ) -> tuple[str | None, dict]:
    """(target, params) for a ``clock-skew`` window: one raft process (store or metaroot
    peer) ticks fast and, when there is another, one ticks slow. The two rates differ by at
    most 1.12 / 0.9 = 24 %, inside the 28 % the leases assume (docs/protocols.md)."""
    drivers = sorted(by_kind.get("store", []) + by_kind.get("metaroot", []))
    if not drivers:
        return None, {}
    chosen = rng.sample(drivers, min(2, len(drivers)))
    factors = {chosen[0]: rng.choice(CLOCK_SKEW_FAST)}
    if len(chosen) > 1:
        factors[chosen[1]] = rng.choice(CLOCK_SKEW_SLOW)
    return ",".join(chosen), {"factors": factors}


# -- plans -------------------------------------------------------------------------------


@dataclass
class StorePlan:
    """The region whose leader is paused, the workload keys in it, its other voters."""

    descriptor: Any
    keys: list[str]
    others: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"region": self.descriptor.region_id, "keys": self.keys, "others": self.others}


async def plan_store(control: Any, keys: list[str], rng: random.Random,
                     target: str | None = None) -> tuple[str | None, StorePlan | None]:
    """Pick a workload key's region and its leader store (or, with ``target``, a region that
    store leads); ``(None, None)`` when no region has a known leader."""
    order = list(keys)
    rng.shuffle(order)
    for key in order:
        try:
            descriptor, leader = await control.route_of(key.encode())
        except Exception:  # noqa: BLE001 - no coordinator answered: try the next key
            continue
        if descriptor is None:
            continue
        voters = {p.store_id for p in descriptor.voters()}
        names = {sid: await control.store_name(sid) for sid in voters}
        if target is not None:
            if control.node_id(target) not in voters:
                continue
            leader = target
        if leader is None or not await control.leads_region(leader, descriptor.region_id):
            # the coordinator's view lags: ask the voters themselves
            leader = await control.region_leader(descriptor.region_id,
                                                 [n for n in names.values() if n])
        if leader is None or (target is not None and leader != target):
            continue
        in_region = [k for k in keys if descriptor.contains(k.encode())]
        others = sorted(n for n in names.values() if n and n != leader)
        return leader, StorePlan(descriptor, in_region, others)
    return None, None


# -- recording ------------------------------------------------------------------------------


class Prober:
    """Records the nemesis's own client operations (fresh process ids, ``probe`` marks)."""

    def __init__(self, recorder: Any, workload: Any, op_timeout: float,
                 clock: Callable[[], float]):
        self.recorder = recorder
        self.workload = workload
        self.op_timeout = op_timeout
        self.clock = clock
        self._next = PROBE_PROCESS_BASE

    def process(self) -> int:
        self._next += 1
        return self._next

    @property
    def kv(self) -> bool:
        """Whether the workload has KV operations to probe with (not ``routes``)."""
        return self.workload is not None and getattr(self.workload, "model", None) is not None

    async def read(self, client: Any, key: str, **marks: Any) -> Any:
        op = Op(self.workload.read_f, key, None, False)
        return await perform(self.workload, client, self.recorder, self.process(), op,
                             self.op_timeout, **marks)

    async def write(self, client: Any, key: str, **marks: Any) -> Any:
        op = self.workload.probe_write(key)
        if op is None:
            return None
        return await perform(self.workload, client, self.recorder, self.process(), op,
                             self.op_timeout, **marks)

    async def strong_route(self, control: Any, coordinator: str, key: str, **marks: Any) -> Any:
        from nokvpy.client import Client

        client = Client([control.address(coordinator)], rpc=control.probe_rpc,
                        timeout=self.op_timeout)  # shares probe_rpc: never aclose()d here
        request = {"freshness": "STRONG", "max_root_lag": None, "required_root_token": None}
        return await perform(RoutesWorkload(), client, self.recorder, self.process(),
                             Op("route", key, request, False), self.op_timeout,
                             coordinator=coordinator, **marks)

    async def root_confirm(self, control: Any, metaroot: str, **marks: Any) -> Outcome:
        """``ConfirmToken`` straight at ``metaroot``, recorded as ``root-confirm`` (ok value:
        the confirmed root index; any error: fail, a read)."""
        invoke = self.recorder.invoke(self.process(), "root-confirm", "root", None,
                                      metaroot=metaroot, **marks)
        outcome = Outcome("fail", None, {"error": "harness_timeout"})
        with trio.move_on_after(2 * self.op_timeout + 1):
            try:
                token = await control.confirm_token(metaroot, rpc=control.probe_rpc,
                                                    timeout=self.op_timeout)
                outcome = Outcome("ok", token)
            except Exception as exc:  # noqa: BLE001 - a refusal is a failed read
                outcome = Outcome("fail", None, {"error": classify_error(exc, False)[1],
                                                 "message": str(exc)[:200]})
        self.recorder.complete(invoke, outcome.type, outcome.value, **outcome.extra)
        return outcome


def tally(outcomes: list[Any]) -> dict:
    """``{"ok": n, "fail": n, "info": n, "values": [...distinct ok values], "errors": {...}}``."""
    out: dict[str, Any] = {"ok": 0, "fail": 0, "info": 0, "values": [], "errors": {}}
    for o in outcomes:
        if o is None:
            continue
        kind = o.type
        out[kind] = out.get(kind, 0) + 1
        if kind == "ok":
            value = o.value
            if isinstance(value, dict):
                value = value.get("served_root_token")
            if value not in out["values"] and len(out["values"]) < 8:
                out["values"].append(value)
        elif hasattr(o, "extra") and o.extra.get("error"):
            label = str(o.extra["error"])
            out["errors"][label] = out["errors"].get(label, 0) + 1
    return out


async def _gather(jobs: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(jobs)

    async def one(i: int) -> None:
        results[i] = await jobs[i]()

    async with trio.open_nursery() as nursery:
        for i in range(len(jobs)):
            nursery.start_soon(one, i)
    return results


# -- lease windows -----------------------------------------------------------------------------


def isolation_label(target: str) -> str:
    return f"jepsen:lease-isolate:{target}"


async def _pause(control: Any, target: str, params: dict) -> dict:
    """(Isolate, then) SIGSTOP ``target``."""
    out: dict[str, Any] = {}
    if params.get("isolate"):
        rules = partition_rules("isolate", target, control.names())
        label = isolation_label(target)
        out["isolate"] = await control.add_fault_rules(label, [dict(r, label=label)
                                                               for r in rules])
    out["pause"] = await control.pause(target)
    return out


async def _unisolate(control: Any, target: str, params: dict) -> dict:
    if not params.get("isolate"):
        return {}
    return {"unisolate": await control.remove_fault_rules(isolation_label(target))}


async def _wait_for(clock: Callable[[], float], t0: float, params: dict,
                    replaced: Callable[[], Any], poll: float = 0.05) -> tuple[Any, float | None]:
    """Poll ``replaced()`` until it returns something (then hold ``hold`` s more) and
    ``min_pause`` has passed, or until ``max_pause``. Returns (what it returned, when)."""
    found, at = None, None
    while True:
        now = clock()
        if found is None:
            found = await replaced()
            if found:
                at = clock()
        now = clock()
        if found and now >= max(t0 + params["min_pause"], at + params.get("hold", 0.0)):
            return found, at
        if now >= t0 + params["max_pause"]:
            return found, at
        await trio.sleep(poll)


async def store_window(control: Any, prober: Prober, target: str, plan: StorePlan,
                       params: dict, clock: Callable[[], float]) -> dict:
    """The store lease sequence (module docstring); returns the window's details."""
    d = plan.descriptor
    rpc = control.probe_rpc
    old = DirectStoreClient(rpc, control.address(target), control.node_id(target), d,
                            timeout=prober.op_timeout)
    out: dict[str, Any] = {"mode": "store", **plan.summary()}
    await control.ping(target, rpc)
    t0 = clock()
    out.update(await _pause(control, target, params))
    new_leader: str | None = None
    wrote: list[Any] = []

    async def replaced() -> str | None:
        nonlocal new_leader, wrote
        leader = await control.region_leader(d.region_id, plan.others)
        if leader and new_leader is None and prober.kv:
            # write every key of the region through the new leader while the old one sleeps
            new_leader = leader
            new = DirectStoreClient(rpc, control.address(leader), control.node_id(leader), d,
                                    timeout=prober.op_timeout)
            wrote = await _gather([lambda k=k: prober.write(new, k, probe="lease", store=leader)
                                   for k in plan.keys])
        return leader

    found, at = await _wait_for(clock, t0, params, replaced)
    out["new_leader"] = found
    out["elected_after_s"] = None if at is None else round(at - t0, 3)
    out["writes"] = tally(wrote)
    reads: list[Any] = []
    if prober.kv and plan.keys:
        jobs = [lambda k=plan.keys[i % len(plan.keys)]: prober.read(old, k, probe="lease",
                                                                    store=target)
                for i in range(int(params.get("reads", 16)))]
        control.sigcont(target)  # resumed: ask it at once, before anything else
        out["paused_s"] = round(clock() - t0, 3)
        reads = await _gather(jobs)
    else:
        control.sigcont(target)
        out["paused_s"] = round(clock() - t0, 3)
    out["resume"] = await control.resume(target)
    out.update(await _unisolate(control, target, params))
    out["probe_reads"] = tally(reads)
    return out


async def metaroot_window(control: Any, prober: Prober, target: str, params: dict,
                          clock: Callable[[], float]) -> dict:
    """The metaroot lease sequence (module docstring)."""
    rpc = control.probe_rpc
    out: dict[str, Any] = {"mode": "metaroot"}
    before = await control.metaroot_status(target)
    floor = before.applied_token.index if before is not None else 0
    out["token_before"] = floor
    others = [n for n in control.names("metaroot") if n != target]
    coordinators = control.names("coordinator")
    await control.ping(target, rpc)
    t0 = clock()
    out.update(await _pause(control, target, params))
    confirmed: list[Any] = []

    async def replaced() -> str | None:
        leader = await control.metaroot_leader(exclude=[target]) if others else None
        if leader is None:
            return None
        status = await control.metaroot_status(leader)
        if status is None or status.applied_token.index <= floor:
            return None  # nothing new committed yet: a confirm could not tell stale from fresh
        confirm = await prober.root_confirm(control, leader, probe="lease")
        confirmed.append(confirm)
        return leader if confirm.type == "ok" and confirm.value > floor else None

    # a single peer has no successor: pause it for min_pause only
    wait = params if others else {**params, "max_pause": params["min_pause"]}
    found, at = await _wait_for(clock, t0, wait, replaced, poll=0.1)
    out["new_leader"] = found
    out["moved_on_after_s"] = None if at is None else round(at - t0, 3)
    out["confirms_during"] = tally(confirmed)
    during = await _gather([lambda c=c: prober.strong_route(control, c, _route_key(prober),
                                                            probe="lease")
                            for c in coordinators])
    out["strong_during"] = tally(during)
    n = int(params.get("reads", 16))
    jobs = [lambda: prober.root_confirm(control, target, probe="lease") for _ in range(n)]
    jobs += [lambda c=c: prober.strong_route(control, c, _route_key(prober), probe="lease")
             for c in coordinators]
    control.sigcont(target)
    out["paused_s"] = round(clock() - t0, 3)
    after = await _gather(jobs)
    out["resume"] = await control.resume(target)
    out.update(await _unisolate(control, target, params))
    out["confirms_after"] = tally(after[:n])
    out["strong_after"] = tally(after[n:])
    return out


async def coordinator_window(control: Any, prober: Prober, target: str, params: dict,
                             clock: Callable[[], float]) -> dict:
    """The coordinator lease sequence (module docstring)."""
    out: dict[str, Any] = {"mode": "coordinator"}
    others = [n for n in control.names("coordinator") if n != target]
    await control.ping(target, control.probe_rpc)
    t0 = clock()
    out.update(await _pause(control, target, params))

    async def replaced() -> str | None:
        if not others:
            return None
        holder = await control.lookup_grant_holder()
        return holder if holder and holder != target else None

    # a single coordinator has no successor: a short pause, then STRONG reads at it
    wait = params if others else {**params, "min_pause": SOLE_COORDINATOR_PAUSE,
                                  "max_pause": SOLE_COORDINATOR_PAUSE}
    found, at = await _wait_for(clock, t0, wait, replaced, poll=0.2)
    out["new_holder"] = found
    out["taken_over_after_s"] = None if at is None else round(at - t0, 3)
    leader = await control.metaroot_leader()
    jobs = [lambda c=c: prober.strong_route(control, c, _route_key(prober), probe="lease")
            for c in others]
    if leader is not None:
        jobs.append(lambda: prober.root_confirm(control, leader, probe="lease"))
    out["during"] = tally(await _gather(jobs))
    n = int(params.get("reads", 16))
    jobs = [lambda: prober.strong_route(control, target, _route_key(prober), probe="lease")
            for _ in range(n)]
    control.sigcont(target)
    out["paused_s"] = round(clock() - t0, 3)
    after = await _gather(jobs)
    out["resume"] = await control.resume(target)
    out.update(await _unisolate(control, target, params))
    out["strong_after"] = tally(after)
    return out


def _route_key(prober: Prober) -> str:
    keys = prober.workload.keys() if prober.workload is not None else ["k0"]
    return keys[prober._next % len(keys)] if keys else "k0"


# -- tick-stretch -----------------------------------------------------------------------------


async def stall_once(control: Any, prober: Prober, target: str, ms: int, reads: int,
                     rng: random.Random, clock: Callable[[], float]) -> dict:
    """Stall ``target``'s loop once for ``ms`` (``1*sleep(ms)`` at its next loop turn, which
    under load is at once, maybe before it answers the FailpointSet). For a store leading a
    workload key's region: when the stall is long enough for an election, write every key of
    the region through a new leader as soon as one is seen (recorded); send ``reads``
    linearizable gets straight at the stalled store shortly before the stall is due to end,
    so that it finds them with the new leader's messages when it wakes."""
    plan = None
    if prober.kv:
        _, plan = await plan_store(control, prober.workload.keys(), rng, target=target)
    if plan is not None:
        await control.ping(target, control.probe_rpc)
    out: dict[str, Any] = {"ms": ms}
    rpc = control.probe_rpc
    results: list[Any] = []
    wrote: list[Any] = []

    async def set_stall(task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(clock())
        out["set"] = await control.set_failpoint(target, TICK_FAILPOINT, f"1*sleep({ms})")

    async with trio.open_nursery() as nursery:
        t0 = await nursery.start(set_stall)  # its reply may only come after the stall
        out["at"] = round(t0, 3)
        if plan is None or not plan.keys:
            return out
        send_at = t0 + max(0.0, ms / 1000 - STALL_READ_LEAD)
        d = plan.descriptor
        if ms >= ELECTION_STALL_MS:
            while clock() < send_at:
                leader = await control.region_leader(d.region_id, plan.others)
                if leader is not None:
                    out["new_leader"] = leader
                    new = DirectStoreClient(rpc, control.address(leader),
                                            control.node_id(leader), d, timeout=prober.op_timeout)
                    wrote = await _gather([lambda k=k, new=new, leader=leader: prober.write(
                        new, k, probe="tick-stretch", store=leader) for k in plan.keys])
                    break
                await trio.sleep(0.05)
        await trio.sleep(max(0.0, send_at - clock()))
        old = DirectStoreClient(rpc, control.address(target), control.node_id(target), d,
                                timeout=prober.op_timeout)
        results = await _gather([lambda k=plan.keys[i % len(plan.keys)]: prober.read(
            old, k, probe="tick-stretch", store=target) for i in range(reads)])
    out.update(region=plan.descriptor.region_id, probe_reads=tally(results))
    if wrote:
        out["writes"] = tally(wrote)
    return out


async def restore_rate(control: Any, target: str, timeout: float = 3.0) -> dict:
    """``return(1)`` until the driver has seen it (its hit count moved), then clear: a
    cleared ``return(f)`` would leave the tick rate at ``f``."""
    if not control.alive(target):
        return {"process": "down"}
    seen: bool | str = False
    try:
        await control.set_failpoint(target, TICK_FAILPOINT, "return(1)")
        before = (await control.failpoint_hits(target)).get(TICK_FAILPOINT, 0)
        deadline = trio.current_time() + timeout
        while trio.current_time() < deadline:
            await trio.sleep(0.15)
            if (await control.failpoint_hits(target)).get(TICK_FAILPOINT, 0) > before:
                seen = True
                break
    except Exception as exc:  # noqa: BLE001 - clear it anyway; a restart restores the rate
        seen = f"{type(exc).__name__}: {exc}"
    result = await control.clear_failpoint(target, TICK_FAILPOINT)
    return {"restored": seen, **result}


__all__ = [
    "LEASE_MODES",
    "LOOKUP_HOLDER",
    "METAROOT_LEADER",
    "PROBE_PROCESS_BASE",
    "Prober",
    "StorePlan",
    "coordinator_window",
    "lease_params",
    "metaroot_window",
    "plan_store",
    "restore_rate",
    "stall_once",
    "store_window",
    "tally",
    "tick_stretch_params",
]
