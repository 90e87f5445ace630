"""The jepsen-lite nemesis: a seeded fault schedule, and the bookkeeping that runs it.

Owns: injecting and healing each window of a schedule through a cluster control object
(:class:`Nemesis`), recording every window as nemesis ``start``/``stop`` events in the
history, and healing everything at the end (:meth:`Nemesis.heal_all`). The fault vocabulary
(``FAULTS``) is :mod:`.faults`; the deterministic schedule of fault windows built from a
seed (:func:`build_schedule`) is :mod:`.schedule`.

Never talks to processes itself: every action goes through the control object (see
:class:`ControlProtocol`; the real one is :class:`jepsen_lite.control.ClusterControl`), so
the bookkeeping can be tested with a fake. Never decides whether a history is correct.

Schedule. ``--nemesis kill,partition,publish-fail`` enables those faults. The main track is
a sequence of windows separated by quiet periods; each window carries one fault, taken from
a seeded shuffled deck of the enabled faults (so every fault gets its turn). ``churn``
(topology changes) runs on its own track and may overlap the others; a share of its windows
(``churn_store_fault``) starts with a pause or kill of a voter store, its removal through the
survivors, and its re-addition once the store is back. The same seed, fault
list, time limit and process names always give the same schedule; targets are concrete
process names, or symbolic: ``":leader"`` (resolved when the window opens to the store leading
the region of a workload key), ``":metaroot-leader"``, ``":lookup-holder"`` (the coordinator
holding the ``region_lookup`` grant); the resolved name is recorded in the history.

``lease`` and ``tick-stretch`` windows run the sequences of :mod:`jepsen_lite.lease`, which
also send (and record, as ordinary client operations) reads straight at the resumed process.
``hostile`` windows run :mod:`jepsen_lite.hostile` (attempts recorded as nemesis ``event``s;
the heal is the check that they changed nothing, recorded in the ``stop`` event).
The network faults (``partition``, ``lossy``, ``slow-net`` and the ``net-extra`` ones:
``one-way``, ``bridge``, ``ring``, ``blackhole``, ``duplicate``, ``reorder``, ``corrupt``)
are injected and healed by :mod:`.netfaults` (fault rules labelled by the window, set on
every process when it opens and removed when it closes), the disk faults by :mod:`.disk`.

This module re-exports the public names of :mod:`.faults` and :mod:`.schedule`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from . import disk, hostile, lease, membership, netfaults
from .faults import (
    ALIASES,
    CRASH_POINTS,
    DISK_FAULTS,
    FAULTS,
    LEADER,
    METAROOT_CRASH_POINTS,
    PUBLISH_FAILPOINTS,
    NemesisError,
    blackhole_rules,
    bridge_rules,
    corrupt_rules,
    duplicate_rules,
    fault_label,
    one_way_rules,
    parse_faults,
    partition_rules,
    reorder_rules,
    ring_rules,
)
from .history import json_safe as _json_safe
from .lease import LOOKUP_HOLDER, METAROOT_LEADER, Prober
from .schedule import ScheduleOptions, Window, build_schedule, churn_store_fault
from .topology import MEMBERSHIP_OPS

# -- control interface -----------------------------------------------------------------------


class ControlProtocol(Protocol):
    """What the nemesis needs from a cluster (``jepsen_lite.control.ClusterControl``).

    Fault rules are plain dicts ``{"src": [...], "dst": [...], "drop": p, "delay": s,
    "jitter": s, "label": str}`` (empty ``src``/``dst`` match any node), and optionally
    ``message_types``, ``duplicate``, ``reorder``, ``hold``, ``corrupt``, ``blackhole``
    (:func:`jepsen_lite.control.to_fault_rule`)."""

    def names(self, kind: str | None = None) -> list[str]: ...

    async def kill(self, name: str) -> dict: ...

    async def start(self, name: str) -> dict: ...

    async def pause(self, name: str) -> dict: ...

    async def resume(self, name: str) -> dict: ...

    def alive(self, name: str) -> bool: ...

    async def add_fault_rules(self, label: str, rules: list[dict]) -> dict: ...

    async def remove_fault_rules(self, label: str) -> dict: ...

    async def set_failpoint(self, name: str, failpoint: str, spec: str) -> dict: ...

    async def clear_failpoint(self, name: str, failpoint: str) -> dict: ...

    async def leader_store(self, key: bytes) -> str | None: ...

    async def churn_step(
        self, rng: random.Random, keys: Sequence[bytes], ops: Sequence[str] | None = None
    ) -> dict: ...

    async def heal(self) -> dict: ...

    # optional (used when present): the churn's membership changes
    #   async def churn_store_fault(self, rng, mode) -> dict  (a store fault re-add)
    #   async def restore_replication(self, timeout) -> dict  (after the run, in heal_all)

    # used by the lease and tick-stretch windows (jepsen_lite.lease)

    probe_rpc: Any

    def sigcont(self, name: str) -> int | None: ...

    def node_id(self, name: str) -> int: ...

    def address(self, name: str) -> str: ...

    async def ping(self, name: str, rpc: Any = None, timeout: float = 1.0) -> bool: ...

    async def route_of(self, key: bytes) -> tuple[Any, str | None]: ...

    async def store_name(self, store_id: int) -> str | None: ...

    async def leads_region(self, name: str, region_id: int) -> bool | None: ...

    async def region_leader(self, region_id: int, names: Sequence[str]) -> str | None: ...

    async def metaroot_status(self, name: str) -> Any | None: ...

    async def metaroot_leader(self, exclude: Sequence[str] = ()) -> str | None: ...

    async def confirm_token(self, name: str, rpc: Any = None, timeout: float | None = None
                            ) -> int: ...

    async def lookup_grant_holder(self) -> str | None: ...

    async def failpoint_hits(self, name: str) -> dict[str, int]: ...


# -- running -------------------------------------------------------------------------------


@dataclass
class ActiveFault:
    window: Window
    target: str | None
    """The resolved target (``:leader`` replaced by a process name)."""
    details: dict
    started_at: float


@dataclass
class IntervalRecord:
    """A fault window as it actually ran, for results.json (seconds after the run start)."""

    fault: str
    target: str | None
    planned_start: float
    planned_stop: float
    start: float | None = None
    stop: float | None = None
    details: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Nemesis:
    """Runs a schedule against ``control``, recording windows in ``recorder``.

    ``keys`` are workload keys (bytes) for ``:leader`` targets and split points.
    ``clock`` returns seconds since the run started. ``workload`` (optional) lets the lease
    and tick-stretch windows record their own reads and writes as client operations (each
    with the client deadline ``op_timeout``). ``restore_timeout`` bounds the re-additions
    :meth:`heal_all` asks for after churn changed memberships.
    """

    def __init__(
        self,
        control: ControlProtocol,
        recorder: Any,
        *,
        keys: Sequence[bytes] = (b"",),
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        log: Callable[[str], None] | None = None,
        workload: Any = None,
        op_timeout: float = 2.0,
        restore_timeout: float = 30.0,
    ):
        self.control = control
        self.restore_timeout = restore_timeout
        self.recorder = recorder
        self.keys = list(keys) or [b""]
        self.rng = random.Random(f"jepsen-lite-nemesis-run-{seed}")
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        self.log = log or (lambda msg: None)
        self.active: dict[tuple[str, str | None], ActiveFault] = {}
        self.intervals: list[IntervalRecord] = []
        self.events: list[dict] = []  # churn steps and other point events
        self._records: dict[int, IntervalRecord] = {}
        self.prober = Prober(recorder, workload, op_timeout, self.clock)
        self._plans: dict[tuple[str, str | None], lease.StorePlan] = {}
        self._hostile: dict[tuple[str, str | None], hostile.HostileWindow] = {}

    # -- one window ---------------------------------------------------------------------

    async def _resolve(self, target: str | None) -> str | None:
        if target in (METAROOT_LEADER, LOOKUP_HOLDER):
            return await self._resolve_role(target)
        if target != LEADER:
            return target
        key = self.rng.choice(self.keys)
        try:
            name = await self.control.leader_store(key)
        except Exception as exc:  # noqa: BLE001 - fall back to a random store
            self.log(f"leader lookup failed: {exc}")
            name = None
        if name is None:
            stores = self.control.names("store")
            name = self.rng.choice(stores) if stores else None
        return name

    async def _resolve_role(self, target: str) -> str | None:
        kind = "metaroot" if target == METAROOT_LEADER else "coordinator"
        try:
            if target == METAROOT_LEADER:
                name = await self.control.metaroot_leader()
            else:
                name = await self.control.lookup_grant_holder()
        except Exception as exc:  # noqa: BLE001 - fall back to any process of the kind
            self.log(f"{target} lookup failed: {exc}")
            name = None
        if name is None:
            names = self.control.names(kind)
            name = self.rng.choice(names) if names else None
        return name

    def _retired(self, target: str | None) -> bool:
        """Is ``target`` a process retired during the run (never started again)?"""
        retired = getattr(self.control, "retired", None)
        if target is None or retired is None:
            return False
        try:
            return bool(retired(target))
        except Exception:  # noqa: BLE001 - not one process name ("servers", "a,b", ...)
            return False

    async def _plan_lease(self, window: Window) -> str | None:
        """Resolve a store ``lease`` window: a region with a leader and the workload keys in
        it (the plan is kept for ``_inject``)."""
        if not self.prober.kv:
            return await self._resolve(window.target)
        try:
            target, plan = await lease.plan_store(self.control, self.prober.workload.keys(),
                                                  self.rng)
        except Exception as exc:  # noqa: BLE001
            self.log(f"lease plan failed: {exc}")
            target, plan = None, None
        if target is None or plan is None:
            return await self._resolve(window.target)
        self._plans[(window.fault, target)] = plan
        return target

    async def start(self, window: Window) -> ActiveFault:
        """Inject ``window``'s fault; records a nemesis ``start`` event first."""
        record = IntervalRecord(window.fault, window.target, window.start, window.stop)
        self.intervals.append(record)
        if window.fault == "lease" and window.params.get("mode") == "store":
            target = await self._plan_lease(window)
        else:
            target = await self._resolve(window.target)
        ident = (window.fault, target)
        if window.fault != "retire" and self._retired(target):  # a store retired earlier
            record.errors.append("target retired")
            record.target, record.start = target, self.clock()
            record.stop = record.start
            return ActiveFault(window, target, {"skipped": "target retired"}, record.start)
        if ident in self.active:  # the same fault is already on that target: skip
            record.errors.append("already active")
            record.target = target
            return self.active[ident]
        details: dict = {"planned": [window.start, window.stop], **window.params}
        if window.target == LEADER:
            details["leader_of"] = True
        elif window.target in (METAROOT_LEADER, LOOKUP_HOLDER):
            details["role"] = window.target
        record.target = target
        record.start = self.clock()
        self.recorder.nemesis_start(window.fault, target, **_json_safe(details))
        active = ActiveFault(window, target, details, record.start)
        self.active[ident] = active
        self._records[id(active)] = record
        try:
            result = await self._inject(window.fault, target, window.params)
            details.update(result or {})
        except Exception as exc:  # noqa: BLE001 - a failed injection is recorded, not fatal
            record.errors.append(f"start: {type(exc).__name__}: {exc}")
            self.log(f"nemesis {window.fault} on {target}: start failed: {exc}")
        record.details = _json_safe(details)
        return active

    async def stop(self, active: ActiveFault) -> None:
        """Heal ``active``; records a nemesis ``stop`` event after the heal completed."""
        ident = (active.window.fault, active.target)
        if self.active.get(ident) is not active:
            return
        record = self._records.get(id(active))
        result: dict = {}
        try:
            result = await self._heal(active) or {}
        except Exception as exc:  # noqa: BLE001
            if record is not None:
                record.errors.append(f"stop: {type(exc).__name__}: {exc}")
            self.log(f"nemesis {active.window.fault} on {active.target}: stop failed: {exc}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
        del self.active[ident]
        self.recorder.nemesis_stop(active.window.fault, active.target, **_json_safe(result))
        if record is not None:
            record.stop = self.clock()
            record.details.update(_json_safe({f"stop_{k}": v for k, v in result.items()}))

    async def _inject(self, fault: str, target: str | None, params: dict) -> dict:
        c = self.control
        if fault == "kill":
            return await c.kill(target)
        if fault == "pause":
            return await c.pause(target)
        if fault in netfaults.NET_FAULTS:
            return await netfaults.inject(c, fault, target, params)
        if fault in ("publish-fail", "slow-fsync", "crash-point"):
            out: dict = {}
            for name in self._fp_targets(target):
                out[name] = await c.set_failpoint(name, params["failpoint"], params["spec"])
            return {"set": out}
        if fault == "churn":
            return {}  # steps run in the window loop (see run_window)
        if fault == "lease":
            return await self._inject_lease(target, params)
        if fault == "tick-stretch":
            if params.get("mode") == "skew":
                return {"set": await c.set_failpoint(target, lease.TICK_FAILPOINT,
                                                     f"return({params['factor']})")}
            return {}  # stalls run in the window loop (see run_window)
        if fault in DISK_FAULTS:
            return await disk.inject(c, fault, target, params)
        if fault in membership.MEMBERSHIP_FAULTS:
            return await membership.inject(c, fault, target, params)
        if fault == "clock-skew":
            return {"set": {name: await c.set_failpoint(name, lease.TICK_FAILPOINT, f"return({f})")
                            for name, f in params.get("factors", {}).items()}}
        if fault == "hostile":
            # kept before the attempts: a run that ends mid-window still checks what was done
            window = hostile.HostileWindow(target, params)
            self._hostile[(fault, target)] = window
            return await hostile.open_window(c, self.recorder, window, self.clock, self.log)
        raise NemesisError(f"unknown fault {fault!r}")

    async def _inject_lease(self, target: str | None, params: dict) -> dict:
        if target is None:
            return {"skipped": "no target"}
        mode = params.get("mode", "store")
        if mode == "metaroot":
            return await lease.metaroot_window(self.control, self.prober, target, params,
                                               self.clock)
        if mode == "coordinator":
            return await lease.coordinator_window(self.control, self.prober, target, params,
                                                  self.clock)
        plan = self._plans.pop(("lease", target), None)
        if plan is None:  # no region to read: a plain pause of the replaced length
            paused = await self.control.pause(target)
            await trio.sleep(params.get("min_pause", 2.5))
            self.control.sigcont(target)
            return {"mode": "store", "pause": paused, "resume": await self.control.resume(target),
                    "note": "no region planned: no reads"}
        return await lease.store_window(self.control, self.prober, target, plan, params,
                                        self.clock)

    def _fp_targets(self, target: str | None) -> list[str]:
        if target in ("stores", None):
            return self.control.names("store")
        return [target]

    async def _heal(self, active: ActiveFault) -> dict:
        c = self.control
        fault, target, params = active.window.fault, active.target, active.window.params
        if fault == "kill":
            return await c.start(target)
        if fault == "pause":
            return await c.resume(target)
        if fault in netfaults.NET_FAULTS:
            return await netfaults.heal(c, fault, target)
        if fault in ("publish-fail", "slow-fsync", "crash-point"):
            out: dict = {}
            for name in self._fp_targets(target):
                try:
                    out[name] = await c.clear_failpoint(name, params["failpoint"])
                except Exception as exc:  # noqa: BLE001 - a crashed process has no failpoints
                    out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if fault == "crash-point":
                for name in self._fp_targets(target):
                    crashed = not c.alive(name)
                    out.setdefault(name, {})
                    if isinstance(out[name], dict):
                        out[name]["crashed"] = crashed
                    if crashed:
                        await c.start(name)
            return {"cleared": out}
        if fault == "churn":
            return {"steps": active.details.get("steps", 0)}
        if fault == "lease":
            if not target:
                return {}
            out = {"resume": await c.resume(target)}
            if params.get("isolate"):
                out["unisolate"] = await c.remove_fault_rules(lease.isolation_label(target))
            return out
        if fault == "tick-stretch":
            if target is None:
                return {}
            if params.get("mode") == "skew":
                return await lease.restore_rate(c, target)
            if not c.alive(target):
                return {"process": "down", "stalls": len(active.details.get("stalls", []))}
            cleared = await c.clear_failpoint(target, lease.TICK_FAILPOINT)
            return {"stalls": len(active.details.get("stalls", [])), **cleared}
        if fault in DISK_FAULTS:
            return await disk.heal(c, fault, target, params)
        if fault in membership.MEMBERSHIP_FAULTS:
            return await membership.heal(c, fault, target, params)
        if fault == "clock-skew":
            return {name: await lease.restore_rate(c, name) for name in params.get("factors", {})}
        if fault == "hostile":  # nothing to heal: the check (recorded in the stop event)
            window = self._hostile.pop((fault, target), None)
            if window is None:
                return {"skipped": "the window never opened"}
            # a churn window's store fault (pause / kill) may take a store target down too
            churn = any(f == "churn" for f, _ in self.active) or any(
                e.get("at", -1) >= active.started_at for e in self.events
                if e.get("store_fault"))
            return await hostile.close_window(c, window, churn_overlap=churn)
        raise NemesisError(f"unknown fault {fault!r}")

    async def run_window(self, window: Window) -> None:
        """Open ``window`` at its start time, keep it open until its stop time, heal it."""
        await self._sleep_until(window.start)
        active = await self.start(window)
        if window.fault == "churn":
            crng = random.Random(window.params.get("seed", 0))
            every = tuple(window.params.get("every", (0.5, 2.0)))
            steps = 0
            store_fault = window.params.get("store_fault")
            fault_step = getattr(self.control, "churn_store_fault", None)
            while self.clock() < window.stop:
                try:
                    if store_fault and fault_step is not None and steps == 0:
                        result = await fault_step(crng, store_fault)
                    else:
                        result = await self.control.churn_step(crng, self.keys)
                except Exception as exc:  # noqa: BLE001
                    result = {"op": "?", "error": f"{type(exc).__name__}: {exc}"}
                steps += 1
                result = _json_safe({"at": round(self.clock(), 3), **result})
                self.events.append(result)
                self.recorder.nemesis("event", "churn", "topology", **result)
                if result.get("unsupported"):
                    break
                await self._sleep_until(min(window.stop, self.clock() + crng.uniform(*every)))
            active.details["steps"] = steps
        elif ((window.fault == "publish-fail" and window.params.get("topology", True))
              or (window.fault in ("disk-full", "eio")
                  and window.params.get("failpoint") == "storage.before_commit")):
            # a publish failpoint only fires when a store publishes, and a metaroot peer
            # commits only when the rooted state changes: change the topology once (a split,
            # or a merge once every workload key is a boundary)
            try:
                result = await self.control.churn_step(
                    random.Random(f"{window.start}"), self.keys, ops=("split", "merge"))
            except Exception as exc:  # noqa: BLE001
                result = {"op": "?", "error": f"{type(exc).__name__}: {exc}"}
            result = _json_safe({"at": round(self.clock(), 3), "for": window.fault, **result})
            self.events.append(result)
            self.recorder.nemesis("event", "churn", "topology", **result)
        elif (window.fault == "tick-stretch" and window.params.get("mode") == "stall"
              and active.target is not None):
            await self._stall_loop(window, active)
        await self._sleep_until(window.stop)
        await self.stop(active)

    async def _stall_loop(self, window: Window, active: ActiveFault) -> None:
        """Stall the target's loop once, read at it as it wakes, rest, repeat while another
        stall fits in the window (each stall is recorded as a nemesis ``event``)."""
        srng = random.Random(f"stall-{window.start}")
        ms = int(window.params.get("ms", 800))
        every = tuple(window.params.get("every", (1.0, 2.5)))
        stalls: list[dict] = active.details.setdefault("stalls", [])
        while not stalls or self.clock() + ms / 1000 < window.stop:  # at least one
            try:
                result = await lease.stall_once(self.control, self.prober, active.target, ms,
                                                int(window.params.get("reads", 8)), srng,
                                                self.clock)
            except Exception as exc:  # noqa: BLE001 - recorded, the window goes on
                result = {"ms": ms, "error": f"{type(exc).__name__}: {exc}"}
            result = _json_safe(result)
            stalls.append(result)
            self.recorder.nemesis("event", "tick-stretch", active.target, **result)
            await self._sleep_until(min(window.stop, self.clock() + srng.uniform(*every)))
        record = self._records.get(id(active))
        if record is not None:
            record.details["stalls"] = _json_safe(stalls)

    async def run(self, schedule: Sequence[Window]) -> None:
        """Run every window of ``schedule`` (windows of one track never overlap; churn
        windows run concurrently with the main track)."""
        tracks: dict[str, list[Window]] = {}
        for w in schedule:
            tracks.setdefault("churn" if w.fault == "churn" else "main", []).append(w)

        async def track(windows: list[Window]) -> None:
            for w in windows:
                await self.run_window(w)

        async with trio.open_nursery() as nursery:
            for windows in tracks.values():
                nursery.start_soon(track, windows)

    async def _sleep_until(self, t: float) -> None:
        delay = t - self.clock()
        if delay > 0:
            await trio.sleep(delay)

    # -- the end -----------------------------------------------------------------------

    def membership_changed(self) -> bool:
        """Whether the churn tried a peer removal, addition or move (even a failed attempt
        may have applied)."""
        return any(e.get("op") in MEMBERSHIP_OPS for e in self.events)

    async def heal_all(self) -> dict:
        """Stop every open window (cancelled runs leave some), then ask the control to heal
        everything it knows of: rules, failpoints, paused and dead processes; and, when the
        churn changed memberships, to bring every region back to the replication factor
        (``replication`` in the result; its ``error`` is for the recovery check to judge)."""
        with trio.CancelScope(shield=True):
            for active in list(self.active.values()):
                await self.stop(active)
            self.recorder.nemesis_start("heal", "all")
            result: dict = {}
            try:
                result = await self.control.heal() or {}
            except Exception as exc:  # noqa: BLE001
                result = {"error": f"{type(exc).__name__}: {exc}"}
            restore = getattr(self.control, "restore_replication", None)
            if restore is not None and self.membership_changed():
                try:
                    result["replication"] = await restore(self.restore_timeout)
                except Exception as exc:  # noqa: BLE001
                    result["replication"] = {"error": f"{type(exc).__name__}: {exc}"}
            self.recorder.nemesis_stop("heal", "all", **_json_safe(result))
            return result


__all__ = [
    "ALIASES",
    "CRASH_POINTS",
    "FAULTS",
    "LEADER",
    "METAROOT_CRASH_POINTS",
    "PUBLISH_FAILPOINTS",
    "ActiveFault",
    "ControlProtocol",
    "IntervalRecord",
    "Nemesis",
    "NemesisError",
    "ScheduleOptions",
    "Window",
    "blackhole_rules",
    "bridge_rules",
    "build_schedule",
    "churn_store_fault",
    "corrupt_rules",
    "duplicate_rules",
    "fault_label",
    "one_way_rules",
    "parse_faults",
    "partition_rules",
    "reorder_rules",
    "ring_rules",
]
