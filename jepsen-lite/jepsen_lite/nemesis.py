"""The jepsen-lite nemesis: a seeded fault schedule, and the bookkeeping that runs it.

Owns: the fault vocabulary (``FAULTS``), building a deterministic schedule of fault windows
from a seed (:func:`build_schedule`), injecting and healing each window through a cluster
control object (:class:`Nemesis`), recording every window as nemesis ``start``/``stop``
events in the history, and healing everything at the end (:meth:`Nemesis.heal_all`).

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
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import trio

from . import hostile, lease
from .hostile import json_safe as _json_safe
from .lease import LOOKUP_HOLDER, METAROOT_LEADER, Prober
from .topology import MEMBERSHIP_OPS

# -- vocabulary ----------------------------------------------------------------------------

FAULTS: dict[str, str] = {
    "kill": "kill -9 a process (metaroot peer, coordinator or store), restart it at the end",
    "pause": "SIGSTOP a process, SIGCONT it at the end",
    "partition": "cut the network between a node (or a minority of stores) and the rest",
    "lossy": "drop a share of the messages between servers",
    "slow-net": "delay messages between servers (with jitter)",
    "publish-fail": "fail the stores' planned/terminal publish to the root (failpoint raise); "
    "one split or merge is issued in the window so that a publish happens",
    "slow-fsync": "sleep in the storage commit (slow fsync) on one store",
    "crash-point": "crash one store (exit) at a named code point, restart it at the end",
    "churn": "topology churn: splits, merges, leader transfers, peer removals and re-adds, "
    "replica moves; some windows pause or kill a voter store, remove it, heal it and add it "
    "back",
    "lease": "SIGSTOP a leader (region leader store, metaroot leader or region_lookup grant "
    "holder) until it is replaced, write through the new one, SIGCONT and read straight at "
    "the old one at once",
    "tick-stretch": "driver.tick failpoint: stall a store's loop (sleep) a few times and read "
    "at it as it wakes, or skew a process's tick rate (return(f)), restored at the end",
    "hostile": "an attacker aims at one process: garbage bytes and frames, a replayed "
    "handshake, a forged role claim and privileged calls with the client credential; at the "
    "window's end nothing may have changed (checks[\"hostile\"])",
}
ALIASES: dict[str, list[str]] = {
    "all": [f for f in FAULTS],
    "none": [],
    "net": ["partition", "lossy", "slow-net"],
    "process": ["kill", "pause"],
    "failpoints": ["publish-fail", "slow-fsync", "crash-point"],
    "clock": ["lease", "tick-stretch"],
}
PUBLISH_FAILPOINTS = ("store.publish_terminal", "store.publish_planned")
CRASH_POINTS = (
    "store.before_persist",
    "store.after_persist_before_send",
    "store.before_apply",
    "store.after_apply",
    "store.after_apply_before_publish",
    "storage.before_commit",
)
METAROOT_CRASH_POINTS = ("storage.before_commit", "metaroot.before_append")
LEADER = ":leader"
"""A symbolic target: the leader store of a workload key's region, resolved at run time."""


class NemesisError(ValueError):
    """A bad nemesis specification (unknown fault name, bad option)."""


def parse_faults(spec: str | Iterable[str]) -> list[str]:
    """``"kill,partition"`` or a list -> fault names, aliases expanded, order kept, no dups."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        names = ALIASES.get(name, [name])
        for n in names:
            if n not in FAULTS:
                known = ", ".join([*FAULTS, *ALIASES])
                raise NemesisError(f"unknown nemesis {n!r} (known: {known})")
            if n not in out:
                out.append(n)
    return out


# -- schedule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One fault window, ``start``/``stop`` in seconds after the run started."""

    start: float
    stop: float
    fault: str
    target: str | None
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScheduleOptions:
    first_fault: tuple[float, float] = (2.0, 4.0)
    """Quiet time before the first window (uniform range, seconds)."""
    duration: tuple[float, float] = (3.0, 8.0)
    """Length of a fault window."""
    quiet: tuple[float, float] = (2.0, 5.0)
    """Quiet time between windows (lets the cluster recover and be measured healthy)."""
    tail: float = 3.0
    """No window is open during the last ``tail`` seconds of the run."""
    leader_share: float = 0.35
    """Share of kill/pause/partition windows that target the leader of a key's region."""
    churn_every: tuple[float, float] = (0.5, 2.0)
    """Time between two topology commands inside a churn window."""
    lease_modes: tuple[str, ...] = ("store", "metaroot", "coordinator")
    """Which leaders ``lease`` windows pause (stores 3x as often as the others)."""
    lease_isolate: float = 0.5
    """Share of ``lease`` windows that also cut the paused leader off from the other
    servers until the reads at it are done."""
    churn_store_fault: float = 0.5
    """Share of ``churn`` windows that begin with a store fault re-add: pause or kill (half
    each) a voter store of a region, remove that replica through the survivors, heal the
    store and add the replica back on it (``params["store_fault"]``)."""


def churn_store_fault(seed: int, share: float) -> dict:
    """The store fault of a churn window (drawn from the window's own seed, so that the
    schedule's other draws do not move): ``{"store_fault": "pause"|"kill"}`` or ``{}``."""
    if share <= 0:
        return {}
    frng = random.Random(f"jepsen-lite-churn-store-fault-{seed}")
    if frng.random() >= share:
        return {}
    return {"store_fault": frng.choice(["pause", "kill"])}


def _process_names(processes: Sequence[str] | dict[str, Sequence[str]]) -> dict[str, list[str]]:
    if isinstance(processes, dict):
        return {kind: sorted(names) for kind, names in processes.items()}
    by_kind: dict[str, list[str]] = {}
    for name in processes:
        by_kind.setdefault(name.rsplit("-", 1)[0], []).append(name)
    return {kind: sorted(names) for kind, names in sorted(by_kind.items())}


def _uniform(rng: random.Random, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return round(rng.uniform(low, high), 3)


def _pick_process(rng: random.Random, by_kind: dict[str, list[str]], leader_share: float) -> str:
    """Stores twice as often as control-plane processes; sometimes the leader store."""
    if by_kind.get("store") and rng.random() < leader_share:
        return LEADER
    weighted: list[str] = []
    for kind, names in sorted(by_kind.items()):
        weighted += names * (2 if kind == "store" else 1)
    return rng.choice(weighted)


def _window_params(
    fault: str, rng: random.Random, by_kind: dict[str, list[str]], opts: ScheduleOptions
) -> tuple[str | None, dict]:
    stores = by_kind.get("store", [])
    if fault in ("kill", "pause"):
        return _pick_process(rng, by_kind, opts.leader_share), {}
    if fault == "partition":
        mode = rng.choice(["isolate", "isolate", "split-stores"] if len(stores) >= 3 else ["isolate"])
        if mode == "isolate":
            return _pick_process(rng, by_kind, opts.leader_share), {"mode": "isolate"}
        minority = sorted(rng.sample(stores, (len(stores) - 1) // 2))
        return ",".join(minority), {"mode": "split-stores", "minority": minority}
    if fault == "lossy":
        return "servers", {"drop": rng.choice([0.1, 0.2, 0.3])}
    if fault == "slow-net":
        return "servers", {"delay": rng.choice([0.02, 0.05, 0.1]), "jitter": rng.choice([0.02, 0.05])}
    if fault == "publish-fail":
        failpoint = rng.choice(PUBLISH_FAILPOINTS)
        spec = rng.choice(["raise", "50%raise"])
        target = rng.choice(["stores", *stores]) if stores else "stores"
        return target, {"failpoint": failpoint, "spec": spec}
    if fault == "slow-fsync":
        ms = rng.choice([50, 100, 200, 400])
        return rng.choice(stores) if stores else None, {
            "failpoint": "storage.before_commit",
            "spec": f"sleep({ms})",
        }
    if fault == "crash-point":
        metaroots = by_kind.get("metaroot", [])
        if metaroots and rng.random() < 0.25:
            return rng.choice(metaroots), {
                "failpoint": rng.choice(METAROOT_CRASH_POINTS),
                "spec": "exit",
            }
        return rng.choice(stores) if stores else None, {
            "failpoint": rng.choice(CRASH_POINTS),
            "spec": "exit",
        }
    if fault == "churn":
        return "topology", {"seed": rng.randrange(2**31), "every": list(opts.churn_every)}
    if fault == "lease":
        return lease.lease_params(rng, by_kind, opts.lease_modes, opts.lease_isolate)
    if fault == "tick-stretch":
        return lease.tick_stretch_params(rng, by_kind, opts.leader_share)
    if fault == "hostile":
        return hostile.hostile_params(rng, by_kind)
    raise NemesisError(f"unknown fault {fault!r}")


def build_schedule(
    faults: Sequence[str] | str,
    time_limit: float,
    seed: int,
    processes: Sequence[str] | dict[str, Sequence[str]],
    options: ScheduleOptions | None = None,
) -> list[Window]:
    """A deterministic list of fault windows (sorted by start) for a run of ``time_limit``
    seconds. ``processes`` are the cluster's process names (or ``{kind: [names]}``)."""
    opts = options or ScheduleOptions()
    faults = parse_faults(faults)
    by_kind = _process_names(processes)
    rng = random.Random(f"jepsen-lite-nemesis-{seed}")
    end = time_limit - opts.tail
    windows: list[Window] = []
    main = [f for f in faults if f != "churn"]
    deck: list[str] = []
    t = _uniform(rng, opts.first_fault)
    while main and t < end - 0.5:
        if not deck:
            deck = list(main)
            rng.shuffle(deck)
        fault = deck.pop()
        stop = min(round(t + _uniform(rng, opts.duration), 3), round(end, 3))
        target, params = _window_params(fault, rng, by_kind, opts)
        windows.append(Window(t, stop, fault, target, params))
        t = round(stop + _uniform(rng, opts.quiet), 3)
    if "churn" in faults:
        crng = random.Random(f"jepsen-lite-churn-{seed}")
        t = _uniform(crng, opts.first_fault)
        while t < end - 0.5:
            stop = min(round(t + 2 * _uniform(crng, opts.duration), 3), round(end, 3))
            target, params = _window_params("churn", crng, by_kind, opts)
            if by_kind.get("store"):
                params.update(churn_store_fault(params["seed"], opts.churn_store_fault))
            windows.append(Window(t, stop, "churn", target, params))
            t = round(stop + _uniform(crng, opts.quiet), 3)
    windows.sort(key=lambda w: (w.start, w.fault))
    return windows


# -- control interface -----------------------------------------------------------------------


class ControlProtocol(Protocol):
    """What the nemesis needs from a cluster (``jepsen_lite.control.ClusterControl``).

    Fault rules are plain dicts ``{"src": [...], "dst": [...], "drop": p, "delay": s,
    "jitter": s, "label": str}`` (empty ``src``/``dst`` match any node)."""

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
        if fault == "partition":
            return await c.add_fault_rules(_label(fault, target), partition_rules(
                params.get("mode", "isolate"), target, c.names(), params.get("minority")))
        if fault == "lossy":
            servers = c.names()
            return await c.add_fault_rules(_label(fault, target), [
                {"src": servers, "dst": servers, "drop": params["drop"], "label": _label(fault, target)}
            ])
        if fault == "slow-net":
            servers = c.names()
            return await c.add_fault_rules(_label(fault, target), [
                {"src": servers, "dst": servers, "delay": params["delay"],
                 "jitter": params.get("jitter", 0.0), "label": _label(fault, target)}
            ])
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
        if fault in ("partition", "lossy", "slow-net"):
            return await c.remove_fault_rules(_label(fault, target))
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
        elif window.fault == "publish-fail" and window.params.get("topology", True):
            # a publish failpoint only fires when a store publishes: change the topology once
            # (a split, or a merge once every workload key is a boundary)
            try:
                result = await self.control.churn_step(
                    random.Random(f"{window.start}"), self.keys, ops=("split", "merge"))
            except Exception as exc:  # noqa: BLE001
                result = {"op": "?", "error": f"{type(exc).__name__}: {exc}"}
            result = _json_safe({"at": round(self.clock(), 3), "for": "publish-fail", **result})
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


def _label(fault: str, target: str | None) -> str:
    return f"jepsen:{fault}:{target}"


def partition_rules(
    mode: str, target: str | None, servers: Sequence[str], minority: Sequence[str] | None = None
) -> list[dict]:
    """Fault rules (plain dicts) for a partition among the cluster's processes.

    * ``isolate``: ``target`` cannot talk to any other server (clients still reach it);
    * ``split-stores``: the ``minority`` stores on one side, every other server on the
      other.
    Rules drop in both directions (a rule per direction)."""
    if mode == "isolate":
        side_a = [target] if target else []
    elif mode == "split-stores":
        side_a = list(minority or [])
    else:
        raise NemesisError(f"unknown partition mode {mode!r}")
    side_b = [n for n in servers if n not in side_a]
    if not side_a or not side_b:
        return []
    label = _label("partition", target)
    return [
        {"src": sorted(side_a), "dst": sorted(side_b), "drop": 1.0, "label": label},
        {"src": sorted(side_b), "dst": sorted(side_a), "drop": 1.0, "label": label},
    ]


__all__ = [
    "ALIASES",
    "FAULTS",
    "LEADER",
    "ActiveFault",
    "ControlProtocol",
    "IntervalRecord",
    "Nemesis",
    "NemesisError",
    "ScheduleOptions",
    "Window",
    "build_schedule",
    "churn_store_fault",
    "parse_faults",
    "partition_rules",
]
