"""The jepsen-lite fault schedule: deterministic fault windows from a seed.

Owns: :class:`Window` (one fault window), :class:`ScheduleOptions` and
:func:`build_schedule`: the main track is a sequence of windows separated by quiet periods,
each window's fault drawn from a seeded shuffled deck of the enabled faults; ``churn`` runs on
its own track (a share of its windows begins with a store fault re-add,
:func:`churn_store_fault`). Each window's target and parameters are drawn here too (the
``lease``, ``tick-stretch`` and ``hostile`` ones by :mod:`.lease` and
:mod:`.hostile_plan`). The same seed, fault list, time limit and process names always give
the same schedule. Never injects a fault (:mod:`.nemesis`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from . import lease
from .disk import disk_params
from .faults import (
    CRASH_POINTS,
    DISK_FAULTS,
    LEADER,
    METAROOT_CRASH_POINTS,
    PUBLISH_FAILPOINTS,
    NemesisError,
    parse_faults,
)
from .hostile_plan import hostile_params
from .membership import MEMBERSHIP_FAULTS, membership_params


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
        return hostile_params(rng, by_kind)
    if fault in NET_EXTRA:
        return _net_extra_params(fault, rng, by_kind, opts)
    if fault in DISK_FAULTS:
        return disk_params(fault, rng, by_kind)
    if fault == "clock-skew":
        return lease.clock_skew_params(rng, by_kind)
    if fault in MEMBERSHIP_FAULTS:
        return membership_params(fault, rng, by_kind)
    raise NemesisError(f"unknown fault {fault!r}")


NET_EXTRA = ("one-way", "bridge", "ring", "blackhole", "duplicate", "reorder", "corrupt")


def _net_extra_params(
    fault: str, rng: random.Random, by_kind: dict[str, list[str]], opts: ScheduleOptions
) -> tuple[str | None, dict]:
    """Target and parameters of the network faults beyond partition / lossy / slow-net:

    * ``one-way``: a process (sometimes the leader store) and the ``direction`` that is lost
      (``out``: what it sends; ``in``: what the other servers send it);
    * ``bridge`` / ``ring``: every server in a seeded ``order`` (the bridge is the middle
      one, the window's target; the ring's neighbours are next to each other);
    * ``blackhole``: a process (sometimes the leader store);
    * ``duplicate`` / ``reorder``: the share of raft batches and how long a copy or a held
      batch may wait (``hold``, seconds);
    * ``corrupt``: the share of frames the servers send that are damaged."""
    if fault in ("one-way", "blackhole"):
        target = _pick_process(rng, by_kind, opts.leader_share)
        if fault == "blackhole":
            return target, {}
        return target, {"direction": rng.choice(["out", "in"])}
    if fault in ("bridge", "ring"):
        order = sorted(n for names in by_kind.values() for n in names)
        rng.shuffle(order)
        if fault == "ring":
            return "servers", {"order": order}
        return (order[len(order) // 2] if len(order) >= 3 else None), {"order": order}
    if fault == "duplicate":
        return "servers", {"probability": rng.choice([0.1, 0.3, 0.5]),
                           "hold": rng.choice([0.0, 0.02, 0.1])}
    if fault == "reorder":
        return "servers", {"probability": rng.choice([0.1, 0.3, 0.5]),
                           "hold": rng.choice([0.01, 0.05, 0.1])}
    if fault == "corrupt":
        return "servers", {"probability": rng.choice([0.05, 0.1, 0.2])}


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
