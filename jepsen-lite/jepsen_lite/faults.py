"""The jepsen-lite fault vocabulary: fault names, aliases, failpoints, symbolic targets, and
the network fault rules of a partition.

Owns: ``FAULTS`` (every fault a schedule may hold, with its meaning), ``ALIASES``,
:func:`parse_faults`, the failpoints the failpoint faults choose from, the ``:leader``
target, the label of a window's fault rules (:func:`fault_label`) and the rules of a
partition (:func:`partition_rules`, plain dicts). Imports nothing of jepsen-lite, so the
schedule, the nemesis and the lease sequences all use it without an import cycle. Never
injects a fault and never builds a schedule (:mod:`.schedule`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
    # disk and power (jepsen_lite.disk; every window judged in checks["disk"])
    "disk-full": "ENOSPC on a store's next WAL writes (or a metaroot peer's LMDB commits): the "
    "process stops (fail-stop) and is restarted at the window's end",
    "eio": "EIO on a store's WAL write or fdatasync (or a metaroot peer's LMDB commit): "
    "fail-stop, restarted at the window's end",
    "lose-unsynced": "crash a store between a WAL write and its fdatasync and restart it losing "
    "every byte it never fdatasynced (a power loss of that machine)",
    "torn-frame": "crash a store between a WAL write and its fdatasync and cut its newest frame "
    "short: inside the unsynced tail it must recover, inside the synced part it must refuse to "
    "start (then the bytes are put back)",
    "bit-flip": "flip one bit in the synced part of a stopped store's newest WAL segment: it "
    "must refuse to start with a corrupt-log error (then the bit is put back)",
    "power-loss": "kill -9 every process at once, then restart them all, the stores losing "
    "every write they never fdatasynced",
    "clock-skew": "skew the tick rate of one or two raft processes (stores, metaroot peers) "
    "apart: driver.tick return(0.5..2), one fast and one slow, restored at the end",
}
DISK_FAULTS = ("disk-full", "eio", "lose-unsynced", "torn-frame", "bit-flip", "power-loss")
ALIASES: dict[str, list[str]] = {
    "all": [f for f in FAULTS],
    "none": [],
    "net": ["partition", "lossy", "slow-net"],
    "process": ["kill", "pause"],
    "failpoints": ["publish-fail", "slow-fsync", "crash-point"],
    "clock": ["lease", "tick-stretch", "clock-skew"],
    "disk": list(DISK_FAULTS),
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


def fault_label(fault: str, target: str | None) -> str:
    """The label of the fault rules a window of ``fault`` on ``target`` sets."""
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
    label = fault_label("partition", target)
    return [
        {"src": sorted(side_a), "dst": sorted(side_b), "drop": 1.0, "label": label},
        {"src": sorted(side_b), "dst": sorted(side_a), "drop": 1.0, "label": label},
    ]
